-- Processing: segments of the assembled audio and their transcripts live
-- here only while a project is processed; finalize deletes them. They are
-- plaintext (transcript text), so only the workers may touch them.

ALTER TABLE projects ADD COLUMN step text CHECK (step IS NULL OR step ~ '^[a-z_]{1,32}$');
ALTER TABLE projects ADD COLUMN step_done integer NOT NULL DEFAULT 0 CHECK (step_done >= 0);
ALTER TABLE projects ADD COLUMN step_total integer NOT NULL DEFAULT 0 CHECK (step_total >= 0);
ALTER TABLE projects ADD COLUMN failure text CHECK (length(failure) <= 500);

CREATE TABLE segments (
    project_id  uuid NOT NULL REFERENCES projects (id),
    idx         integer NOT NULL CHECK (idx >= 0),
    start_ms    bigint NOT NULL CHECK (start_ms >= 0),
    end_ms      bigint NOT NULL CHECK (end_ms > start_ms),
    object_key  text NOT NULL CHECK (object_key LIKE 'work/%'),
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'working', 'done')),
    claimed_at  timestamptz,
    PRIMARY KEY (project_id, idx)
);

CREATE TABLE transcript_lines (
    project_id  uuid NOT NULL REFERENCES projects (id),
    segment_idx integer NOT NULL,
    line_idx    integer NOT NULL,
    start_ms    bigint NOT NULL,
    end_ms      bigint NOT NULL,
    text        text NOT NULL,
    PRIMARY KEY (project_id, segment_idx, line_idx)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON segments, transcript_lines TO kiroku_worker;
GRANT UPDATE (step, step_done, step_total, failure) ON projects TO kiroku_worker;
-- The app shows progress and may reset a failed project for a retry.
GRANT UPDATE (failure, step, step_done, step_total) ON projects TO kiroku_app;
