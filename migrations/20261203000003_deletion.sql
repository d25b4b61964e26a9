-- Deleting a project: the app marks it and queues a job; the workers, who
-- alone may delete stored objects and artifact rows, finish the work.

ALTER TABLE projects DROP CONSTRAINT projects_status_known;
ALTER TABLE projects ADD CONSTRAINT projects_status_known
    CHECK (status IN ('recording', 'queued', 'processing', 'ready', 'failed', 'discarded',
                      'deleting', 'deleted'));
