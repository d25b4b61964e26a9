//! The jobs the app may ask the workers to run.
//!
//! A job names its kind (from a closed list) and carries identifiers only:
//! never paths, keys or code. Workers read everything else themselves, so
//! an attacker who can enqueue jobs, as the app can, can only ask for work
//! the design already allows.
//!
//! On the wire a job is one Redis stream entry with exactly the fields
//! `kind` and `project_id`, plus `attempt` on the entries the workers
//! re-add when they retry a failed job (see `kiroku_pipeline::queue`).
//! Anything else is malformed and is never executed.

use fred::interfaces::StreamsInterface;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The Redis stream jobs are appended to.
pub const STREAM: &str = "kiroku:jobs";

/// The highest `attempt` an entry may carry. Far above any sensible
/// `KIROKU_QUEUE_MAX_ATTEMPTS`; it only bounds what a parser accepts.
pub const MAX_ATTEMPT: u32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Assemble a stopped recording's chunks and start processing it.
    Prepare,
    /// Transcribe the next pending segment of a project (one job per
    /// segment; each claims whichever segment is still pending).
    Transcribe,
    /// Write, seal and store the script once every segment is transcribed,
    /// then delete everything else of the project.
    Finalize,
    /// Delete a project the performer deleted: its stored objects in every
    /// area and the rows only workers may remove.
    DeleteProject,
}

impl JobKind {
    /// Every kind, so that per-kind settings can be checked against the
    /// closed list.
    pub const ALL: &'static [JobKind] = &[
        JobKind::Prepare,
        JobKind::Transcribe,
        JobKind::Finalize,
        JobKind::DeleteProject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Prepare => "prepare",
            JobKind::Transcribe => "transcribe",
            JobKind::Finalize => "finalize",
            JobKind::DeleteProject => "delete_project",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "prepare" => Some(JobKind::Prepare),
            "transcribe" => Some(JobKind::Transcribe),
            "finalize" => Some(JobKind::Finalize),
            "delete_project" => Some(JobKind::DeleteProject),
            _ => None,
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub kind: JobKind,
    pub project_id: Uuid,
}

/// A job as read from the stream, with the attempt its entry starts at
/// (1 for what the app enqueues, higher for entries re-added by a retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub job: Job,
    pub attempt: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("queue: {0}")]
    Queue(#[from] fred::error::Error),
    /// The entry is not on the closed list. The detail is a fixed text,
    /// never the offending value, so it is safe to log.
    #[error("malformed job entry: {0}")]
    Malformed(&'static str),
}

/// The stream fields of `job` at `attempt` (the field is left out for the
/// first attempt, which is what the app writes).
pub fn to_fields(job: &Job, attempt: u32) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("kind", job.kind.as_str().to_owned()),
        ("project_id", job.project_id.to_string()),
    ];
    if attempt > 1 {
        fields.push(("attempt", attempt.to_string()));
    }
    fields
}

/// The job stream of a deployment whose Redis keys start with `prefix`
/// (`KIROKU_REDIS_PREFIX`, default `kiroku`, which gives [`STREAM`]).
pub fn stream_for(prefix: &str) -> String {
    format!("{prefix}:jobs")
}

/// Appends `job` to `stream` (tests use their own streams); returns its
/// entry id.
pub async fn enqueue_to<C: StreamsInterface + Sync>(
    queue: &C,
    stream: &str,
    job: &Job,
) -> Result<String, JobError> {
    let id: String = queue
        .xadd(stream, false, None, "*", to_fields(job, 1))
        .await?;
    Ok(id)
}

/// Reads a job back from a stream entry's fields, refusing anything not on
/// the closed list (see [`parse_entry`]).
pub fn from_fields(fields: &[(String, String)]) -> Result<Job, JobError> {
    parse_entry(fields).map(|e| e.job)
}

/// Reads an entry strictly: `kind` from the closed list, `project_id` a
/// UUID in its canonical lowercase hyphenated form, optionally `attempt`
/// (a plain decimal from 1 to [`MAX_ATTEMPT`]), each at most once, and
/// nothing else. Canonical forms only, so that one job has one spelling in
/// logs and dead letters.
pub fn parse_entry(fields: &[(String, String)]) -> Result<Entry, JobError> {
    let (mut kind, mut project_id, mut attempt) = (None, None, None);
    for (name, value) in fields {
        let slot = match name.as_str() {
            "kind" => &mut kind,
            "project_id" => &mut project_id,
            "attempt" => &mut attempt,
            _ => return Err(JobError::Malformed("unknown field")),
        };
        if slot.replace(value.as_str()).is_some() {
            return Err(JobError::Malformed("repeated field"));
        }
    }
    let kind = kind
        .ok_or(JobError::Malformed("no kind"))
        .map(JobKind::parse)?
        .ok_or(JobError::Malformed("unknown kind"))?;
    let raw_id = project_id.ok_or(JobError::Malformed("no project_id"))?;
    let project_id = Uuid::try_parse(raw_id)
        .ok()
        .filter(|u| u.to_string() == raw_id)
        .ok_or(JobError::Malformed("project_id is not a canonical UUID"))?;
    let attempt = match attempt {
        None => 1,
        Some(a) => a
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_ATTEMPT).contains(n) && n.to_string() == a)
            .ok_or(JobError::Malformed(
                "attempt is not a number from 1 to 1000",
            ))?,
    };
    Ok(Entry {
        job: Job { kind, project_id },
        attempt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).into(), (*b).into()))
            .collect()
    }

    #[test]
    fn only_known_kinds_with_identifiers_are_jobs() {
        let id = Uuid::new_v4().to_string();
        assert!(from_fields(&f(&[("kind", "prepare"), ("project_id", &id)])).is_ok());
        assert!(from_fields(&f(&[("kind", "shell"), ("project_id", &id)])).is_err());
        assert!(from_fields(&f(&[("kind", "prepare"), ("project_id", "../../etc")])).is_err());
        let extra = f(&[("kind", "prepare"), ("project_id", &id), ("path", "/tmp/x")]);
        assert!(from_fields(&extra).is_err());
    }

    #[test]
    fn missing_repeated_or_non_canonical_fields_are_malformed() {
        let u = Uuid::new_v4();
        let id = u.to_string();
        let bad: Vec<Vec<(String, String)>> = vec![
            f(&[]),
            f(&[("kind", "prepare")]),
            f(&[("project_id", &id)]),
            f(&[
                ("kind", "prepare"),
                ("project_id", &id),
                ("kind", "prepare"),
            ]),
            f(&[("kind", "Prepare"), ("project_id", &id)]),
            f(&[("kind", "prepare "), ("project_id", &id)]),
            f(&[("kind", "prepare"), ("project_id", &id.to_uppercase())]),
            f(&[("kind", "prepare"), ("project_id", &u.simple().to_string())]),
            f(&[("kind", "prepare"), ("project_id", &u.urn().to_string())]),
            f(&[("kind", "prepare"), ("project_id", &format!("{{{id}}}"))]),
            f(&[("kind", "prepare"), ("project_id", "")]),
        ];
        for fields in &bad {
            assert!(
                matches!(parse_entry(fields), Err(JobError::Malformed(_))),
                "{fields:?} was accepted"
            );
        }
    }

    #[test]
    fn attempt_is_optional_and_a_plain_number_in_range() {
        let id = Uuid::new_v4().to_string();
        let with = |a: &str| {
            parse_entry(&f(&[
                ("kind", "prepare"),
                ("project_id", &id),
                ("attempt", a),
            ]))
        };
        assert_eq!(
            parse_entry(&f(&[("project_id", &id), ("kind", "prepare")]))
                .unwrap()
                .attempt,
            1
        );
        assert_eq!(with("3").unwrap().attempt, 3);
        assert_eq!(with("1000").unwrap().attempt, MAX_ATTEMPT);
        for bad in ["0", "1001", "-1", "+2", "02", " 2", "2.0", "two", ""] {
            assert!(with(bad).is_err(), "attempt {bad:?} was accepted");
        }
    }

    #[test]
    fn fields_written_are_read_back() {
        let job = Job {
            kind: JobKind::Prepare,
            project_id: Uuid::new_v4(),
        };
        for attempt in [1, 2, 7] {
            let fields: Vec<(String, String)> = to_fields(&job, attempt)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            let entry = parse_entry(&fields).unwrap();
            assert_eq!(
                entry,
                Entry {
                    job: job.clone(),
                    attempt
                }
            );
        }
        // What the app writes stays exactly two fields.
        assert_eq!(to_fields(&job, 1).len(), 2);
    }

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(*kind));
        }
    }

    #[test]
    fn malformed_errors_never_echo_the_value() {
        let err = parse_entry(&f(&[("kind", "rm -rf /"), ("project_id", "x")])).unwrap_err();
        assert!(!err.to_string().contains("rm -rf"), "{err}");
    }
}
