//! The chunk ledger: the database side of every audio chunk, in batches.
//!
//! Each chunk costs two statements: one asks whether its project is still
//! recording and whether the chunk is already stored, one records it after
//! the object is durable. Run one by one, those statements (and the commit
//! of each insert) cost PostgreSQL and the app more CPU than anything else
//! on the chunk path. Under load many chunks wait at the same moment, so
//! the ledger takes every question waiting and answers them with one
//! statement, and every row waiting and inserts them with one statement and
//! one commit. When only one chunk waits, a batch is that chunk, at the
//! price of a channel hop. Nothing is acknowledged before its batch
//! commits, so durability is exactly what the one-by-one inserts gave.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::error::AppError;

/// Batches run at once; each holds a database connection while it runs.
const WRITERS: usize = 2;
/// The most requests in one statement.
const MAX_BATCH: usize = 256;
/// Requests that may wait for a writer before senders wait too.
const QUEUE: usize = 4096;

/// What the database knows of a chunk before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkState {
    /// The project's status, `None` if it no longer exists.
    pub project_status: Option<String>,
    /// The chunk is already recorded (a resend).
    pub stored: bool,
}

/// A stored chunk's row.
#[derive(Debug)]
pub struct ChunkRow {
    pub project: Uuid,
    pub seq: i32,
    pub size: i32,
    pub key: String,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Request {
    Check {
        user: Uuid,
        project: Uuid,
        seq: i32,
        reply: Reply<ChunkState>,
    },
    Record {
        row: ChunkRow,
        reply: Reply<()>,
    },
}

/// The app's handle on the ledger; cheap to clone.
#[derive(Clone)]
pub struct ChunkLedger {
    tx: mpsc::Sender<Request>,
}

impl ChunkLedger {
    /// Starts the writers; they stop when the last handle is dropped.
    pub fn start(db: PgPool) -> ChunkLedger {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(db.clone(), rx.clone()));
        }
        ChunkLedger { tx }
    }

    /// Whether chunk `seq` of `user`'s `project` may be stored, and
    /// whether it is. Another user's project is answered as missing.
    pub async fn check(&self, user: Uuid, project: Uuid, seq: i32) -> Result<ChunkState, AppError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Check {
            user,
            project,
            seq,
            reply,
        })
        .await?;
        Self::wait(answer).await
    }

    /// Records a chunk whose object is stored; returns once committed. A
    /// row already there is left as it is.
    pub async fn record(&self, row: ChunkRow) -> Result<(), AppError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Record { row, reply }).await?;
        Self::wait(answer).await
    }

    async fn send(&self, request: Request) -> Result<(), AppError> {
        self.tx
            .send(request)
            .await
            .map_err(|_| AppError::internal("the chunk ledger has stopped"))
    }

    async fn wait<T>(answer: oneshot::Receiver<Result<T, String>>) -> Result<T, AppError> {
        answer
            .await
            .map_err(|_| AppError::internal("the chunk ledger dropped a request"))?
            .map_err(|e| AppError::Internal(format!("chunk ledger: {e}")))
    }
}

/// Takes whatever is waiting (at least one request, at most
/// [`MAX_BATCH`]) and answers it, until every handle is gone.
async fn writer(db: PgPool, rx: Arc<Mutex<mpsc::Receiver<Request>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        let mut checks = Vec::new();
        let mut records = Vec::new();
        for request in batch {
            match request {
                Request::Check {
                    user,
                    project,
                    seq,
                    reply,
                } => checks.push((user, project, seq, reply)),
                Request::Record { row, reply } => records.push((row, reply)),
            }
        }
        tokio::join!(answer_checks(&db, checks), record_rows(&db, records));
    }
}

async fn answer_checks(db: &PgPool, checks: Vec<(Uuid, Uuid, i32, Reply<ChunkState>)>) {
    if checks.is_empty() {
        return;
    }
    let users: Vec<Uuid> = checks.iter().map(|c| c.0).collect();
    let projects: Vec<Uuid> = checks.iter().map(|c| c.1).collect();
    let seqs: Vec<i32> = checks.iter().map(|c| c.2).collect();
    let rows: Result<Vec<(i64, Option<String>, bool)>, sqlx::Error> = sqlx::query_as(
        "SELECT i.n, p.status,
                EXISTS (SELECT 1 FROM chunks c WHERE c.project_id = p.id AND c.seq = i.seq)
           FROM unnest($1::uuid[], $2::uuid[], $3::int[]) WITH ORDINALITY
                AS i(user_id, project_id, seq, n)
           LEFT JOIN projects p ON p.id = i.project_id AND p.user_id = i.user_id",
    )
    .bind(users)
    .bind(projects)
    .bind(seqs)
    .fetch_all(db)
    .await;
    match rows {
        Ok(rows) => {
            let mut answers: Vec<Option<ChunkState>> = vec![None; checks.len()];
            for (n, project_status, stored) in rows {
                if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| answers.get_mut(i)) {
                    *slot = Some(ChunkState {
                        project_status,
                        stored,
                    });
                }
            }
            for ((.., reply), answer) in checks.into_iter().zip(answers) {
                let _ = reply.send(answer.ok_or_else(|| "a check went unanswered".to_owned()));
            }
        }
        Err(e) => {
            let e = e.to_string();
            for (.., reply) in checks {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn record_rows(db: &PgPool, records: Vec<(ChunkRow, Reply<()>)>) {
    if records.is_empty() {
        return;
    }
    let rows: Vec<&ChunkRow> = records.iter().map(|r| &r.0).collect();
    let answers = match insert_rows(db, &rows).await {
        Ok(()) => vec![Ok(()); records.len()],
        // One bad row must not fail the chunks that shared its batch: on
        // an error, each row is tried alone and answered for itself.
        Err(_) if records.len() > 1 => {
            let mut answers = Vec::with_capacity(rows.len());
            for row in &rows {
                answers.push(insert_rows(db, &[row]).await.map_err(|e| e.to_string()));
            }
            answers
        }
        Err(e) => vec![Err(e.to_string())],
    };
    for ((_, reply), answer) in records.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

/// One INSERT (and one commit) for all the rows. A resend in the same
/// batch as its original is one row: DO NOTHING skips the second, and both
/// are answered as stored.
async fn insert_rows(db: &PgPool, rows: &[&ChunkRow]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chunks (project_id, seq, size, object_key)
         SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[])
         ON CONFLICT (project_id, seq) DO NOTHING",
    )
    .bind(rows.iter().map(|r| r.project).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.size).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(())
}
