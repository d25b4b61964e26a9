-- What the performer should know about a finished script that is not a
-- failure: photos kept as taken (styling quota used up, or the styling
-- engine failed), a script rewrite that was not used. Codes, rendered in
-- the page's language by the app: `unstyled:quota:N`, `unstyled:failed:N`,
-- `rewrite:failed`, `rewrite:refused`.
ALTER TABLE projects ADD COLUMN notices text[] NOT NULL DEFAULT '{}';
GRANT UPDATE (notices) ON projects TO kiroku_worker;
