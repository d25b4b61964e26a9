-- Kiroku schema v1. Run by the kiroku_owner role (`kiroku migrate`); the app
-- and the workers connect as kiroku_app and kiroku_worker, each granted only
-- what it needs (see the GRANTs at the end and docs/architecture.md).

CREATE TABLE users (
    id                 uuid PRIMARY KEY,
    username           text NOT NULL UNIQUE
                       CHECK (username ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    -- Argon2id PHC string of the operator-issued temporary password; cleared
    -- by key setup, which it alone allows.
    temp_password_hash text,
    -- Argon2id PHC string of the browser-derived `auth` (CRYPTO.md §1).
    auth_hash          text,
    kdf_salt           bytea CHECK (kdf_salt IS NULL OR length(kdf_salt) = 16),
    kdf_m_kib          integer,
    kdf_t              integer,
    kdf_p              integer,
    -- nonce || AES-256-GCM(kek, pkcs8) (CRYPTO.md §2)
    private_key_enc    bytea,
    disabled           boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((kdf_m_kib IS NULL) OR (kdf_m_kib >= 19456 AND kdf_t >= 2 AND kdf_p >= 1)),
    CHECK (temp_password_hash IS NOT NULL OR auth_hash IS NOT NULL)
);

-- The public key lives apart so that the app's role can insert it once at
-- key setup and never change it (no UPDATE or DELETE is granted): a
-- compromised backend cannot make workers encrypt to an attacker's key.
CREATE TABLE user_public_keys (
    user_id    uuid PRIMARY KEY REFERENCES users (id),
    public_key bytea NOT NULL CHECK (length(public_key) BETWEEN 200 AND 600),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    participant text NOT NULL DEFAULT '' CHECK (length(participant) <= 200),
    language    text NOT NULL DEFAULT 'auto' CHECK (language IN ('auto', 'es', 'en')),
    stylize     boolean NOT NULL DEFAULT false,
    status      text NOT NULL DEFAULT 'recording',
    created_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at  timestamptz,
    duration_ms bigint CHECK (duration_ms IS NULL OR duration_ms >= 0)
);
CREATE INDEX projects_by_user ON projects (user_id, created_at DESC);

-- Sealed final files (CRYPTO.md §4). Written only by the workers.
CREATE TABLE artifacts (
    id            uuid PRIMARY KEY,
    project_id    uuid NOT NULL REFERENCES projects (id),
    kind          text NOT NULL CHECK (kind ~ '^[a-z0-9]{1,16}$'),
    content_type  text NOT NULL,
    file_name     text NOT NULL,
    object_key    text NOT NULL UNIQUE CHECK (object_key LIKE 'final/v1/%'),
    size          bigint NOT NULL CHECK (size >= 0),
    sha256        bytea NOT NULL CHECK (length(sha256) = 32),
    dek_enc       bytea NOT NULL,
    algorithm     text NOT NULL CHECK (algorithm = 'A256GCM+RSA-OAEP-256'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, kind)
);

-- Least privilege. Nothing is granted to PUBLIC.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;

GRANT SELECT, INSERT ON users TO kiroku_app;
GRANT UPDATE (temp_password_hash, auth_hash, kdf_salt, kdf_m_kib, kdf_t, kdf_p,
              private_key_enc, disabled, updated_at) ON users TO kiroku_app;
GRANT SELECT, INSERT ON user_public_keys TO kiroku_app;
GRANT SELECT, INSERT ON projects TO kiroku_app;
GRANT UPDATE (title, participant, status, stopped_at, duration_ms) ON projects TO kiroku_app;
GRANT SELECT ON artifacts TO kiroku_app;

GRANT SELECT (id, username, disabled) ON users TO kiroku_worker;
GRANT SELECT ON user_public_keys TO kiroku_worker;
GRANT SELECT ON projects TO kiroku_worker;
GRANT UPDATE (status, duration_ms) ON projects TO kiroku_worker;
GRANT SELECT, INSERT, DELETE ON artifacts TO kiroku_worker;
