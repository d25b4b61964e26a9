//! The jobs the app may ask the workers to run.
//!
//! A job names its kind (from a closed list) and carries identifiers only:
//! never paths, keys or code. Workers read everything else themselves, so
//! an attacker who can enqueue jobs, as the app can, can only ask for work
//! the design already allows.

use fred::interfaces::StreamsInterface;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The Redis stream jobs are appended to.
pub const STREAM: &str = "kiroku:jobs";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Assemble a stopped recording's chunks and start processing it.
    Prepare,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Prepare => "prepare",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "prepare" => Some(JobKind::Prepare),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub kind: JobKind,
    pub project_id: Uuid,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("queue: {0}")]
    Queue(#[from] fred::error::Error),
    #[error("malformed job entry")]
    Malformed,
}

/// Appends `job` to the stream; returns its entry id.
pub async fn enqueue<C: StreamsInterface + Sync>(queue: &C, job: &Job) -> Result<String, JobError> {
    let id: String = queue
        .xadd(
            STREAM,
            false,
            None,
            "*",
            vec![
                ("kind", job.kind.as_str().to_owned()),
                ("project_id", job.project_id.to_string()),
            ],
        )
        .await?;
    Ok(id)
}

/// Reads a job back from a stream entry's fields, refusing anything not on
/// the closed list.
pub fn from_fields(fields: &[(String, String)]) -> Result<Job, JobError> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let kind = get("kind")
        .and_then(JobKind::parse)
        .ok_or(JobError::Malformed)?;
    let project_id = get("project_id")
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or(JobError::Malformed)?;
    if fields.len() != 2 {
        return Err(JobError::Malformed);
    }
    Ok(Job { kind, project_id })
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
}
