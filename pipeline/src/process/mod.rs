//! The processing jobs: prepare → transcribe (one job per segment) →
//! finalize. Each reads what it needs by project id, is safe to run again
//! after a crash, and reports progress in the project row.

pub mod compose;
pub mod docx;
pub mod engine;
pub mod pdf;
pub mod photos;
pub mod rewrite;
pub mod script;
pub mod segment;
pub mod style;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use kiroku_jobs::{Job, JobKind};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::WorkerState;
use compose::{DocLang, Line, Meta, Photo};

/// Text recognised in one segment, times relative to the segment start.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pub language: Option<String>,
    pub lines: Vec<Line>,
}

/// A speech engine as the pipeline uses it (16 kHz mono samples in).
pub trait Transcriber: Send + Sync {
    /// `language` is `auto`, `es` or `en`.
    fn transcribe(&self, samples: &[f32], language: &str) -> anyhow::Result<Transcript>;
}

pub type SharedTranscriber = Arc<dyn Transcriber>;

async fn enqueue(state: &WorkerState, kind: JobKind, project: Uuid) -> anyhow::Result<()> {
    let job = Job {
        kind,
        project_id: project,
    };
    kiroku_jobs::enqueue_to(&state.queue, &state.jobs_stream, &job).await?;
    Ok(())
}

async fn set_step(
    state: &WorkerState,
    project: Uuid,
    step: &str,
    done: i32,
    total: i32,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE projects SET step = $2, step_done = $3, step_total = $4 WHERE id = $1")
        .bind(project)
        .bind(step)
        .bind(done)
        .bind(total)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// Marks a project failed with a reason the performer can read.
pub async fn mark_failed(state: &WorkerState, project: Uuid, reason: &str) -> anyhow::Result<()> {
    let reason: String = reason.chars().take(400).collect();
    sqlx::query(
        "UPDATE projects SET status = 'failed', failure = $2 WHERE id = $1 AND status <> 'ready'",
    )
    .bind(project)
    .bind(reason)
    .execute(&state.db)
    .await?;
    Ok(())
}

/// Deletes at once; object stores answer many small requests in parallel
/// far faster than one after another.
const PARALLEL_DELETES: usize = 16;

/// Deletes the objects named, several at a time.
pub(crate) async fn delete_objects(
    store: &kiroku_storage::WorkerStore,
    keys: impl IntoIterator<Item = String>,
) -> Result<usize, kiroku_storage::StorageError> {
    futures_util::stream::iter(keys)
        .map(|key| async move { store.delete(&key).await })
        .buffer_unordered(PARALLEL_DELETES)
        .try_fold(0usize, |n, ()| async move { Ok(n + 1) })
        .await
}

/// Removes every object under `prefix` (work files of a previous run).
async fn clear_prefix(state: &WorkerState, prefix: &str) -> anyhow::Result<usize> {
    let keys = state.store.list(prefix).await?;
    Ok(delete_objects(&state.store, keys).await?)
}

/// Chunks fetched ahead of the decoder.
const CHUNK_PREFETCH: usize = 4;
/// Segments being stored at once while decoding goes on.
const SEGMENT_UPLOADS: usize = 4;

/// Streams the chunks, in order, through ffmpeg to 16 kHz mono, cuts the
/// audio into segments as it comes out and stores each segment (object and
/// row) as soon as it is cut. Fetching, decoding and storing overlap, and
/// only the segment being filled is held in memory, however long the
/// recording. Returns how many segments were stored.
async fn decode_into_segments(
    state: &WorkerState,
    project: Uuid,
    keys: Vec<String>,
) -> anyhow::Result<Decoded> {
    let mut child = tokio::process::Command::new("ffmpeg")
        .args([
            "-v", "error", "-i", "pipe:0", "-ac", "1", "-ar", "16000", "-f", "s16le", "pipe:1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("ffmpeg could not be started (is it installed?)")?;
    let mut stdin = child.stdin.take().context("ffmpeg stdin")?;
    let mut stdout = child.stdout.take().context("ffmpeg stdout")?;
    let store = state.store.clone();
    let mut feeder = crate::queue::AbortOnDrop(tokio::spawn(async move {
        let mut chunks = futures_util::stream::iter(keys)
            .map(|key| {
                let store = store.clone();
                async move { store.get(&key, None).await?.into_bytes().await }
            })
            .buffered(CHUNK_PREFETCH);
        while let Some(bytes) = chunks.try_next().await? {
            if stdin.write_all(&bytes).await.is_err() {
                break; // ffmpeg gave up; its exit status says why
            }
        }
        drop(stdin);
        Ok::<_, kiroku_storage::StorageError>(())
    }));

    let mut cutter = segment::Segmenter::new(segment::Plan::default());
    let mut uploads = tokio::task::JoinSet::new();
    let mut stored = 0usize;
    let mut end_ms = 0i64;
    let mut pcm = vec![0u8; 64 * 1024];
    let mut filled = 0usize; // bytes in `pcm` not yet turned into samples
    let mut samples = Vec::with_capacity(pcm.len() / 2);
    loop {
        let n = stdout.read(&mut pcm[filled..]).await?;
        let ended = n == 0;
        filled += n;
        let whole = filled & !1;
        samples.clear();
        samples.extend(
            pcm[..whole]
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
        );
        pcm.copy_within(whole..filled, 0);
        filled -= whole;
        let mut done = cutter.push(&samples);
        if ended {
            break_if_failed(&mut child).await?;
            done.extend(cutter.finish());
        }
        for seg in done {
            while uploads.len() >= SEGMENT_UPLOADS {
                uploads.join_next().await.expect("tasks")??;
            }
            let idx = stored;
            stored += 1;
            end_ms = seg.end_ms();
            uploads.spawn(store_segment(state.clone(), project, idx, seg));
        }
        if ended {
            break;
        }
    }
    while let Some(result) = uploads.join_next().await {
        result??;
    }
    (&mut feeder.0).await.context("chunk feeder")??;
    Ok(Decoded {
        segments: stored,
        duration_ms: end_ms,
    })
}

/// What decoding a recording produced.
struct Decoded {
    segments: usize,
    /// The decoded audio's length: the segments tile it exactly.
    duration_ms: i64,
}

/// Waits for ffmpeg after its output ended; an error if it failed.
async fn break_if_failed(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let status = child.wait().await?;
    if !status.success() {
        let mut why = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut why).await;
        }
        // ffmpeg's message names nothing of the performer's; keep it short.
        tracing::warn!(detail = %why.lines().next().unwrap_or(""), "ffmpeg failed");
        bail!("the recording could not be decoded");
    }
    Ok(())
}

/// Stores one segment's WAV under the project's work area and its row, then
/// queues its transcription at once: segments are transcribed while the
/// rest of the recording is still being decoded.
async fn store_segment(
    state: WorkerState,
    project: Uuid,
    idx: usize,
    seg: segment::Segment,
) -> anyhow::Result<()> {
    let key = format!("work/{project}/segments/{idx:04}.wav");
    let (start_ms, end_ms) = (seg.start_ms(), seg.end_ms().max(seg.start_ms() + 1));
    let wav = tokio::task::spawn_blocking(move || segment::wav_bytes(&seg.samples)).await?;
    state.store.put(&key, Bytes::from(wav)).await?;
    sqlx::query(
        "INSERT INTO segments (project_id, idx, start_ms, end_ms, object_key) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(project)
    .bind(idx as i32)
    .bind(start_ms)
    .bind(end_ms)
    .bind(&key)
    .execute(&state.db)
    .await?;
    enqueue(&state, JobKind::Transcribe, project).await
}

/// Assembles the recording and splits it into segments for transcription.
///
/// One run at a time per project: a run still cutting (a stalled worker's,
/// or one overtaken by a retry the performer asked for) would otherwise add
/// segments beside the new run's and could move the project on too early.
/// The lock lives on a connection of its own, so it goes with the run
/// however that ends, a killed worker included.
pub async fn prepare(state: &WorkerState, project: Uuid) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut lock = state.db.acquire().await?.detach();
    let lock_key = format!("kiroku:prepare:{project}");
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&lock_key)
        .fetch_one(&mut lock)
        .await?;
    if !locked {
        bail!("this recording is still being prepared by an earlier attempt; trying again later");
    }
    let result = prepare_alone(state, project).await;
    // Closing the connection releases the lock.
    let _ = lock.close().await;
    result
}

async fn prepare_alone(state: &WorkerState, project: Uuid) -> anyhow::Result<()> {
    let row: Option<(Uuid, String, Option<String>, Option<i32>)> =
        sqlx::query_as("SELECT user_id, status, step, last_seq FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&state.db)
            .await?;
    let Some((user, status, step, last_seq)) = row else {
        return Ok(());
    };
    if !matches!(status.as_str(), "queued" | "processing") {
        tracing::info!(project_id = %project, status, "prepare: nothing to do");
        return Ok(());
    }
    if status == "processing" && matches!(step.as_deref(), Some("transcribe" | "finalize")) {
        // An earlier run finished the cut (the step leaves `prepare` only
        // then, with every segment stored and its job queued) and died
        // before its job was acknowledged: carry on from there instead of
        // cutting again under a running finalize.
        tracing::info!(project_id = %project, "prepare: already cut; resuming");
        return finalize_when_transcribed(state, project, true).await;
    }
    let last_seq = last_seq.context("project has no last chunk number")?;
    let taken = sqlx::query(
        "UPDATE projects SET status = 'processing', failure = NULL,
                step = 'prepare', step_done = 0, step_total = 1
          WHERE id = $1 AND status IN ('queued', 'processing')",
    )
    .bind(project)
    .execute(&state.db)
    .await?;
    if taken.rows_affected() == 0 {
        return Ok(()); // finished or deleted meanwhile
    }

    // A chunk that was in flight when the recording was stopped (from
    // another device, say) may land beyond the last one: it is not part of
    // the recording, and the cleanup removes it with the rest.
    let chunks: Vec<(i32, String)> = sqlx::query_as(
        "SELECT seq, object_key FROM chunks WHERE project_id = $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(project)
    .bind(last_seq)
    .fetch_all(&state.db)
    .await?;
    let contiguous = chunks.len() == (last_seq + 1) as usize
        && chunks
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as i32);
    if !contiguous {
        bail!("the recording is incomplete: chunks are missing");
    }

    // A retry starts from a clean slate.
    clear_prefix(state, &format!("work/{project}/")).await?;
    sqlx::query("DELETE FROM transcript_lines WHERE project_id = $1")
        .bind(project)
        .execute(&state.db)
        .await?;
    sqlx::query("DELETE FROM segments WHERE project_id = $1")
        .bind(project)
        .execute(&state.db)
        .await?;

    let keys = chunks.into_iter().map(|(_, k)| k).collect();
    let decoded = decode_into_segments(state, project, keys).await?;
    let n = decoded.segments as i32;
    // The documents give the length of the audio itself: the browser's own
    // clock is an estimate, and a recording resumed after a reload has none.
    sqlx::query("UPDATE projects SET duration_ms = $2 WHERE id = $1")
        .bind(project)
        .bind(decoded.duration_ms)
        .execute(&state.db)
        .await?;
    tracing::info!(project_id = %project, user_id = %user, segments = n, "recording prepared");
    all_segments_cut(state, project, n).await
}

/// Marks the cutting of a recording into `segments` finished. Each
/// segment's transcription was queued when it was stored and some may be
/// done already: the progress starts from them, and if every one is (or
/// there are none), the project moves on to finalize from here. Safe to
/// call again.
pub async fn all_segments_cut(
    state: &WorkerState,
    project: Uuid,
    segments: i32,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE projects SET step = 'transcribe', step_total = $2,
                step_done = (SELECT count(*) FROM segments WHERE project_id = $1 AND status = 'done')
          WHERE id = $1 AND status = 'processing' AND step IN ('prepare', 'transcribe')",
    )
    .bind(project)
    .bind(segments)
    .execute(&state.db)
    .await?;
    finalize_when_transcribed(state, project, false).await
}

/// Queues the finalize job once every segment is transcribed and the
/// recording is fully cut (the step is `transcribe` only after `prepare`
/// stored the last segment). Both `prepare` and each `transcribe` call it;
/// the conditional update lets exactly one of them move the project on.
///
/// `again`: the caller is a job that did no work of its own (a redelivered
/// or stray one). If the project already moved on to finalize, the job
/// that moved it may have died before queueing finalize, so it is queued
/// again; finalize takes turns with itself, and a second run changes
/// nothing.
async fn finalize_when_transcribed(
    state: &WorkerState,
    project: Uuid,
    again: bool,
) -> anyhow::Result<()> {
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM segments WHERE project_id = $1 AND status <> 'done'",
    )
    .bind(project)
    .fetch_one(&state.db)
    .await?;
    if open > 0 {
        return Ok(());
    }
    let moved = sqlx::query(
        "UPDATE projects SET step = 'finalize'
          WHERE id = $1 AND step = 'transcribe' AND status = 'processing'",
    )
    .bind(project)
    .execute(&state.db)
    .await?;
    let queue = moved.rows_affected() == 1
        || (again
            && sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM projects
                                 WHERE id = $1 AND step = 'finalize' AND status = 'processing')",
            )
            .bind(project)
            .fetch_one(&state.db)
            .await?);
    if queue {
        enqueue(state, JobKind::Finalize, project).await?;
    }
    Ok(())
}

/// Transcribes whichever segment of the project is still pending.
pub async fn transcribe(state: &WorkerState, project: Uuid) -> anyhow::Result<()> {
    let language: Option<String> =
        sqlx::query_scalar("SELECT language FROM projects WHERE id = $1 AND status = 'processing'")
            .bind(project)
            .fetch_optional(&state.db)
            .await?;
    let Some(language) = language else {
        return Ok(());
    };
    // A segment is `working` while a worker's heartbeat keeps its claim
    // fresh. One whose heartbeat stopped longer than the queue's visibility
    // timeout ago belongs to a dead worker (the queue hands that worker's
    // jobs out again after the same timeout) and is taken again. A job that
    // finds only live claims waits for them: if one of them dies, the job
    // that held it may be dead-lettered with it, and this job is then the
    // one that finishes the segment.
    let stale_secs = state.config.queue.visibility.as_secs_f64().max(1.0);
    let claimed = loop {
        let claimed: Option<(i32, i64, String)> = sqlx::query_as(
            "UPDATE segments SET status = 'working', claimed_at = now()
              WHERE (project_id, idx) = (
                    SELECT project_id, idx FROM segments
                     WHERE project_id = $1
                       AND (status = 'pending'
                            OR (status = 'working' AND claimed_at < now() - make_interval(secs => $2)))
                     ORDER BY idx LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING idx, start_ms, object_key",
        )
        .bind(project)
        .bind(stale_secs)
        .fetch_optional(&state.db)
        .await?;
        if claimed.is_some() {
            break claimed;
        }
        let working: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM segments WHERE project_id = $1 AND status = 'working'",
        )
        .bind(project)
        .fetch_one(&state.db)
        .await?;
        if working == 0 {
            break None;
        }
        tokio::time::sleep(Duration::from_secs_f64((stale_secs / 3.0).min(10.0))).await;
    };
    let did_nothing = claimed.is_none();
    if let Some((idx, start_ms, key)) = claimed {
        // Aborted when dropped, so a cancelled or panicking job stops
        // renewing a claim it no longer works on.
        let heartbeat = {
            let (db, every) = (state.db.clone(), Duration::from_secs_f64(stale_secs / 3.0));
            crate::queue::AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = sqlx::query(
                        "UPDATE segments SET claimed_at = now()
                          WHERE project_id = $1 AND idx = $2 AND status = 'working'",
                    )
                    .bind(project)
                    .bind(idx)
                    .execute(&db)
                    .await;
                }
            }))
        };
        let result = transcribe_segment(state, &key, &language).await;
        drop(heartbeat);
        let transcript = match result {
            Ok(t) => t,
            Err(e) => {
                sqlx::query(
                    "UPDATE segments SET status = 'pending'
                      WHERE project_id = $1 AND idx = $2 AND status = 'working'",
                )
                .bind(project)
                .bind(idx)
                .execute(&state.db)
                .await?;
                return Err(e);
            }
        };
        let mut tx = state.db.begin().await?;
        sqlx::query("DELETE FROM transcript_lines WHERE project_id = $1 AND segment_idx = $2")
            .bind(project)
            .bind(idx)
            .execute(&mut *tx)
            .await?;
        // One statement for all the lines of the segment.
        let lines = &transcript.lines;
        sqlx::query(
            "INSERT INTO transcript_lines (project_id, segment_idx, line_idx, start_ms, end_ms, text)
             SELECT $1, $2, l.i, l.s, l.e, l.t
               FROM unnest($3::int[], $4::bigint[], $5::bigint[], $6::text[]) AS l(i, s, e, t)",
        )
        .bind(project)
        .bind(idx)
        .bind((0..lines.len() as i32).collect::<Vec<_>>())
        .bind(lines.iter().map(|l| start_ms + l.start_ms).collect::<Vec<_>>())
        .bind(
            lines
                .iter()
                .map(|l| start_ms + l.end_ms.max(l.start_ms))
                .collect::<Vec<_>>(),
        )
        .bind(lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE segments SET status = 'done' WHERE project_id = $1 AND idx = $2")
            .bind(project)
            .bind(idx)
            .execute(&mut *tx)
            .await?;
        // Only counted once `prepare` has cut them all: before that the
        // step shown is still the preparation.
        sqlx::query(
            "UPDATE projects SET step_done = (SELECT count(*) FROM segments WHERE project_id = $1 AND status = 'done')
              WHERE id = $1 AND step = 'transcribe'",
        )
        .bind(project)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(project_id = %project, segment = idx, lines = transcript.lines.len(), "segment transcribed");
    }
    // The worker that sees the last segment done moves the project on, once.
    finalize_when_transcribed(state, project, did_nothing).await
}

async fn transcribe_segment(
    state: &WorkerState,
    key: &str,
    language: &str,
) -> anyhow::Result<Transcript> {
    let engine = state
        .transcriber
        .clone()
        .context("no speech engine is configured")?;
    let wav = state.store.get(key, None).await?.into_bytes().await?;
    let samples = segment::wav_samples(&wav).context("a stored segment is not readable")?;
    let language = language.to_owned();
    tokio::task::spawn_blocking(move || engine.transcribe(&samples, &language))
        .await
        .context("speech engine task")?
}

/// What is sealed for one file of the script.
struct Output {
    kind: &'static str,
    content_type: &'static str,
    extension: &'static str,
    bytes: Vec<u8>,
}

/// Every format of the script, in the order they are sealed.
fn render_all(doc: &compose::Document, pngs: &[Vec<u8>]) -> anyhow::Result<Vec<Output>> {
    let jpegs: Vec<Vec<u8>> = doc.photos.iter().map(|p| p.jpeg.clone()).collect();
    Ok(vec![
        Output {
            kind: "md",
            content_type: "text/markdown; charset=utf-8",
            extension: "md",
            bytes: compose::markdown(doc).into_bytes(),
        },
        Output {
            kind: "html",
            content_type: "text/html; charset=utf-8",
            extension: "html",
            bytes: compose::html(doc).into_bytes(),
        },
        Output {
            kind: "docx",
            content_type: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            extension: "docx",
            bytes: docx::render(doc, pngs)
                .map_err(|e| anyhow::anyhow!("DOCX rendering failed: {e}"))?,
        },
        Output {
            kind: "pdf",
            content_type: "application/pdf",
            extension: "pdf",
            bytes: pdf::render(doc, &jpegs)
                .map_err(|e| anyhow::anyhow!("PDF rendering failed: {e}"))?,
        },
    ])
}

/// A file name from the title: letters, digits and dashes only.
pub fn file_stem(title: &str) -> String {
    let mut stem = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            stem.push(c);
        } else if !stem.ends_with('-') && !stem.is_empty() {
            stem.push('-');
        }
        if stem.chars().count() >= 60 {
            break;
        }
    }
    let stem = stem.trim_end_matches('-').to_owned();
    if stem.is_empty() {
        "guion".into()
    } else {
        stem
    }
}

#[derive(sqlx::FromRow)]
struct ProjectRow {
    user_id: Uuid,
    title: String,
    participant: String,
    language: String,
    status: String,
    created_at: time::OffsetDateTime,
    duration_ms: Option<i64>,
    stylize: bool,
}

/// Photos drawn from the original because styling was not possible, and
/// why: the project page tells the performer.
#[derive(Debug, Default)]
struct Unstyled {
    quota: u32,
    failed: u32,
}

impl Unstyled {
    /// As stored in `projects.notices`: `unstyled:<reason>:<count>`.
    fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.quota > 0 {
            out.push(format!("unstyled:quota:{}", self.quota));
        }
        if self.failed > 0 {
            out.push(format!("unstyled:failed:{}", self.failed));
        }
        out
    }
}

/// Draws one photo with the configured engine within the owner's daily
/// quota; on any failure the photo stays as taken and `unstyled` counts it.
async fn stylize(
    state: &WorkerState,
    user: Uuid,
    project: Uuid,
    photo: Uuid,
    upright: image::RgbImage,
    unstyled: &mut Unstyled,
) -> anyhow::Result<image::RgbImage> {
    let quota = state.config.style.daily_quota;
    if !crate::styling::take_quota(&state.queue, &state.config.redis_prefix, user, photo, quota)
        .await?
    {
        unstyled.quota += 1;
        return Ok(upright);
    }
    match state.styler.draw(upright.clone()).await {
        Ok(drawn) => Ok(drawn),
        Err(e) => {
            tracing::warn!(project_id = %project, photo_id = %photo, error = %e, "photo kept as taken");
            unstyled.failed += 1;
            Ok(upright)
        }
    }
}

/// Photos prepared at once while finalizing.
const PARALLEL_PHOTOS: usize = 2;

/// A photo ready for the documents (with its PNG for the DOCX), or `None`
/// when it had to be left out, and what styling could not do for it.
struct PhotoOutcome {
    ready: Option<(Photo, Vec<u8>)>,
    unstyled: Unstyled,
}

/// One photo made ready for the documents: upright, drawn if the project
/// asked for it, encoded for the PDF (JPEG) and the DOCX (PNG). A photo
/// that cannot be decoded or encoded is left out (`None`) with a warning;
/// what styling could not do is counted.
async fn prepare_photo(
    state: &WorkerState,
    p: &ProjectRow,
    project: Uuid,
    id: Uuid,
    offset_ms: i64,
    key: String,
) -> anyhow::Result<PhotoOutcome> {
    let mut unstyled = Unstyled::default();
    let bytes = state.store.get(&key, None).await?.into_bytes().await?;
    let upright = match tokio::task::spawn_blocking(move || photos::upright(&bytes)).await? {
        Ok(upright) => upright,
        Err(e) => {
            tracing::warn!(project_id = %project, photo_id = %id, error = %e, "photo left out");
            return Ok(PhotoOutcome {
                ready: None,
                unstyled,
            });
        }
    };
    let drawn = if p.stylize {
        stylize(state, p.user_id, project, id, upright, &mut unstyled).await?
    } else {
        upright
    };
    match tokio::task::spawn_blocking(move || photos::encode(&drawn)).await? {
        Ok(prepared) => {
            let photo = Photo {
                offset_ms,
                jpeg: prepared.jpeg,
                width: prepared.width,
                height: prepared.height,
            };
            Ok(PhotoOutcome {
                ready: Some((photo, prepared.png)),
                unstyled,
            })
        }
        Err(e) => {
            tracing::warn!(project_id = %project, photo_id = %id, error = %e, "photo left out");
            Ok(PhotoOutcome {
                ready: None,
                unstyled,
            })
        }
    }
}

/// Writes, seals and stores the script, then deletes everything else of
/// the project. Nothing is deleted before the new artifacts are recorded.
pub async fn finalize(state: &WorkerState, project: Uuid) -> anyhow::Result<()> {
    let row: Option<ProjectRow> = sqlx::query_as(
        "SELECT user_id, title, participant, language, status, created_at, duration_ms, stylize
           FROM projects WHERE id = $1",
    )
    .bind(project)
    .fetch_optional(&state.db)
    .await?;
    let Some(p) = row else { return Ok(()) };
    if p.status == "ready" {
        // A worker that died after recording the artifacts may not have
        // cleaned up: do it again (it is idempotent).
        return forget_all_but_the_script(state, p.user_id, project).await;
    }
    if p.status != "processing" {
        return Ok(());
    }
    set_step(state, project, "finalize", 0, 1).await?;
    let public: Vec<u8> =
        sqlx::query_scalar("SELECT public_key FROM user_public_keys WHERE user_id = $1")
            .bind(p.user_id)
            .fetch_one(&state.db)
            .await
            .context("the owner has no public key")?;
    let public = kiroku_crypto::userkey::parse_public_key(&public)
        .context("the owner's public key is invalid")?;

    let lines: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT start_ms, end_ms, text FROM transcript_lines WHERE project_id = $1 ORDER BY start_ms, segment_idx, line_idx",
    )
    .bind(project)
    .fetch_all(&state.db)
    .await?;
    let photo_rows: Vec<(Uuid, i64, String)> = sqlx::query_as(
        "SELECT id, offset_ms, object_key FROM photos WHERE project_id = $1 ORDER BY offset_ms",
    )
    .bind(project)
    .fetch_all(&state.db)
    .await?;
    // Photos are independent of each other: prepare them side by side
    // (decoding and encoding keep a core busy each; styling waits on the
    // network), keeping their order.
    let prepared: Vec<PhotoOutcome> = futures_util::stream::iter(photo_rows)
        .map(|(id, offset_ms, key)| prepare_photo(state, &p, project, id, offset_ms, key))
        .buffered(PARALLEL_PHOTOS)
        .try_collect()
        .await?;
    let mut photos = Vec::new();
    let mut pngs = Vec::new();
    let mut unstyled = Unstyled::default();
    for outcome in prepared {
        unstyled.quota += outcome.unstyled.quota;
        unstyled.failed += outcome.unstyled.failed;
        if let Some((photo, png)) = outcome.ready {
            photos.push(photo);
            pngs.push(png);
        }
    }
    let meta = Meta {
        title: p.title.clone(),
        participant: p.participant.clone(),
        date: p.created_at.date().to_string(),
        duration_ms: p.duration_ms.unwrap_or(0),
        lang: if p.language == "en" {
            DocLang::En
        } else {
            DocLang::Es
        },
    };
    let lines = lines
        .into_iter()
        .map(|(start_ms, end_ms, text)| Line {
            start_ms,
            end_ms,
            text,
        })
        .collect();
    let photo_count = photos.len() as i32;
    let mut doc = compose::compose(meta, lines, photos);
    let mut notices = unstyled.notices();
    if let Some(rewriter) = &state.rewriter {
        match rewriter.rewrite(&doc).await {
            Ok(paragraphs) => doc.paragraphs = paragraphs,
            Err(e) => {
                tracing::warn!(project_id = %project, error = %e, "script rewrite not used");
                notices.push(match e {
                    rewrite::RewriteError::Remote(_) => "rewrite:failed".to_owned(),
                    rewrite::RewriteError::Refused(_) => "rewrite:refused".to_owned(),
                });
            }
        }
    }
    // Rendering is CPU-bound: keep it off the async threads.
    let outputs = tokio::task::spawn_blocking(move || render_all(&doc, &pngs))
        .await
        .context("rendering task")??;

    let stem = file_stem(&p.title);
    // Each artifact under a fresh id; sealing is quick, storing waits on
    // the network, so the four go side by side.
    let rows: Vec<_> = futures_util::stream::iter(outputs)
        .map(|out| {
            let (public, store, stem) = (&public, &state.store, &stem);
            async move {
                let artifact = Uuid::new_v4();
                let sealed = kiroku_crypto::envelope::seal(
                    public,
                    &artifact.to_string(),
                    out.kind,
                    &out.bytes,
                )
                .map_err(|e| anyhow::anyhow!("sealing failed: {e}"))?;
                drop(out.bytes);
                let key = format!("final/v1/{}/{project}/{artifact}", p.user_id);
                let sha = sha2::Sha256::digest(&sealed.object).to_vec();
                let size = sealed.object.len() as i64;
                store.put(&key, Bytes::from(sealed.object)).await?;
                anyhow::Ok((
                    artifact,
                    out.kind,
                    out.content_type,
                    format!("{stem}.{}", out.extension),
                    key,
                    size,
                    sha,
                    sealed.dek_enc,
                ))
            }
        })
        .buffered(4)
        .try_collect()
        .await?;

    let mut tx = state.db.begin().await?;
    // Two runs of this job can overlap (a stalled worker's job is handed out
    // again after the visibility timeout). The row lock makes them take
    // turns here: the first to commit wins, and the other, finding the
    // project no longer processing, removes only what it uploaded itself.
    let status: String = sqlx::query_scalar("SELECT status FROM projects WHERE id = $1 FOR UPDATE")
        .bind(project)
        .fetch_one(&mut *tx)
        .await?;
    if status != "processing" {
        tx.rollback().await?;
        let ours: Vec<String> = rows.iter().map(|r| r.4.clone()).collect();
        delete_objects(&state.store, ours).await?;
        tracing::info!(project_id = %project, status = %status, "another run finished first");
        return Ok(());
    }
    sqlx::query("DELETE FROM artifacts WHERE project_id = $1")
        .bind(project)
        .execute(&mut *tx)
        .await?;
    for (id, kind, content_type, file_name, key, size, sha, dek_enc) in &rows {
        sqlx::query(
            "INSERT INTO artifacts (id, project_id, kind, content_type, file_name, object_key, size, sha256, dek_enc, algorithm)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id)
        .bind(project)
        .bind(kind)
        .bind(content_type)
        .bind(file_name)
        .bind(key)
        .bind(size)
        .bind(sha)
        .bind(dek_enc)
        .bind(kiroku_crypto::envelope::ALGORITHM)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE projects SET status = 'ready', step = NULL, step_done = 0, step_total = 0,
                failure = NULL, photo_count = $2, notices = $3
          WHERE id = $1",
    )
    .bind(project)
    .bind(photo_count)
    .bind(&notices)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    tracing::info!(project_id = %project, artifacts = rows.len(), "script sealed and stored");
    // The script is safe; now forget everything else.
    forget_all_but_the_script(state, p.user_id, project).await
}

/// Deletes every object and intermediate row of a project except the
/// objects its artifact rows name: the chunks, photos and work files, and
/// any sealed file of an earlier or interrupted attempt. Idempotent.
async fn forget_all_but_the_script(
    state: &WorkerState,
    user: Uuid,
    project: Uuid,
) -> anyhow::Result<()> {
    let keep: std::collections::HashSet<String> =
        sqlx::query_scalar("SELECT object_key FROM artifacts WHERE project_id = $1")
            .bind(project)
            .fetch_all(&state.db)
            .await?
            .into_iter()
            .collect();
    let stale = state
        .store
        .list(&format!("final/v1/{user}/{project}/"))
        .await?
        .into_iter()
        .filter(|key| !keep.contains(key))
        .collect::<Vec<_>>();
    delete_objects(&state.store, stale).await?;
    clear_prefix(state, &format!("ingest/{user}/{project}/")).await?;
    clear_prefix(state, &format!("work/{project}/")).await?;
    for table in ["transcript_lines", "segments", "chunks", "photos"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE project_id = $1"))
            .bind(project)
            .execute(&state.db)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::file_stem;

    #[test]
    fn file_names_come_from_titles_safely() {
        assert_eq!(file_stem("La Carta Elegida!"), "la-carta-elegida");
        assert_eq!(file_stem("../../etc/passwd"), "etc-passwd");
        assert_eq!(file_stem("¿?"), "guion");
        assert_eq!(file_stem("Rutina del espejo"), "rutina-del-espejo");
    }
}
