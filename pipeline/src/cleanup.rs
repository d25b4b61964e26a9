//! Deleting a project for good: every stored object of it, in every area,
//! and the rows only workers may remove. Run for `delete_project` jobs.

use anyhow::Context;
use uuid::Uuid;

use crate::WorkerState;

/// The storage prefixes that can hold a project's objects.
pub fn prefixes(user: Uuid, project: Uuid) -> [String; 3] {
    [
        format!("ingest/{user}/{project}/"),
        format!("work/{project}/"),
        format!("final/v1/{user}/{project}/"),
    ]
}

/// Deletes a project the app has marked `deleting`. Safe to repeat: a
/// retry after a crash finds fewer objects and finishes the job.
pub async fn delete_project(state: &WorkerState, project: Uuid) -> anyhow::Result<()> {
    let row: Option<(Uuid, String)> =
        sqlx::query_as("SELECT user_id, status FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&state.db)
            .await?;
    let Some((user, status)) = row else {
        tracing::info!(project_id = %project, "delete: no such project");
        return Ok(());
    };
    match status.as_str() {
        "deleting" => {}
        "deleted" => return Ok(()),
        other => anyhow::bail!("project is {other}, not marked for deletion"),
    }
    let mut removed = 0usize;
    for prefix in prefixes(user, project) {
        let keys = state
            .store
            .list(&prefix)
            .await
            .with_context(|| format!("list {prefix}"))?;
        removed += crate::process::delete_objects(&state.store, keys)
            .await
            .context("delete object")?;
    }
    let mut tx = state.db.begin().await?;
    // Transcripts too: a project deleted mid-processing still has them.
    for table in [
        "artifacts",
        "chunks",
        "photos",
        "segments",
        "transcript_lines",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE project_id = $1"))
            .bind(project)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE projects SET status = 'deleted' WHERE id = $1")
        .bind(project)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(project_id = %project, objects = removed, "project deleted");
    Ok(())
}
