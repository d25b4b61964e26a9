-- Recording: numbered audio chunks and timestamped photos, stored in the
-- ingest area by the app and consumed (then deleted) by the workers.

ALTER TABLE projects ADD COLUMN audio_type text NOT NULL DEFAULT 'audio/webm'
    CHECK (audio_type IN ('audio/webm', 'audio/mp4', 'audio/ogg'));
ALTER TABLE projects ADD COLUMN last_seq integer CHECK (last_seq IS NULL OR last_seq >= 0);
ALTER TABLE projects ADD CONSTRAINT projects_status_known
    CHECK (status IN ('recording', 'queued', 'processing', 'ready', 'failed', 'discarded'));

CREATE TABLE chunks (
    project_id  uuid NOT NULL REFERENCES projects (id),
    seq         integer NOT NULL CHECK (seq >= 0),
    size        integer NOT NULL CHECK (size > 0),
    object_key  text NOT NULL CHECK (object_key LIKE 'ingest/%'),
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, seq)
);

CREATE TABLE photos (
    id           uuid PRIMARY KEY,
    project_id   uuid NOT NULL REFERENCES projects (id),
    offset_ms    bigint NOT NULL CHECK (offset_ms >= 0),
    content_type text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png', 'image/webp')),
    size         integer NOT NULL CHECK (size > 0),
    object_key   text NOT NULL CHECK (object_key LIKE 'ingest/%'),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX photos_by_project ON photos (project_id, offset_ms);

GRANT UPDATE (last_seq) ON projects TO kiroku_app;
GRANT SELECT, INSERT ON chunks, photos TO kiroku_app;
GRANT SELECT, DELETE ON chunks, photos TO kiroku_worker;
