//! The reliable job queue the workers consume: a Redis stream read through
//! a consumer group, with at-least-once delivery.
//!
//! # Keys
//!
//! For a stream `S` (in production [`kiroku_jobs::STREAM`], `kiroku:jobs`,
//! which the app appends to) and a group `G` ([`GROUP`]):
//!
//! - `S`, the stream. Entries are jobs as [`kiroku_jobs::parse_entry`]
//!   reads them: `kind`, `project_id` and, on retries, `attempt`. An entry
//!   is deleted (`XACK` + `XDEL`) once it is finished, whether it succeeded,
//!   was dead-lettered or was handed over to a retry, so the stream holds
//!   only work that is still to do.
//! - `S:retry`, a sorted set of failed jobs waiting out their backoff: the
//!   score is the time (Redis's clock, milliseconds) the retry is due, the
//!   member a small JSON object with the job and its next attempt number.
//! - `S:dead`, a stream of dead letters: `kind`, `project_id`, `attempts`,
//!   `reason`, the id of the `entry` that died and, for malformed entries,
//!   a fixed `detail`. Trimmed to about [`DEAD_LETTERS_KEPT`] entries.
//!
//! # Delivery, attempts and backoff
//!
//! Each worker process is one consumer of the group with a fresh name. A
//! dedicated connection does the blocking `XREADGROUP ... BLOCK`, because a
//! blocked connection cannot carry anything else; everything else goes
//! through the worker's ordinary queue client.
//!
//! The attempt a delivery is on is the entry's `attempt` field (1 when
//! absent) plus the number of earlier deliveries of that same entry, which
//! Redis counts in the pending-entries list. An entry is delivered more than
//! once only when a worker died or stalled holding it: after the visibility
//! timeout another worker claims it (`XAUTOCLAIM` with that min-idle-time),
//! the claim counts as a new delivery, and the abandoned attempt counts as
//! a failed one. While a job runs, its worker re-claims the entry for
//! itself every third of the visibility timeout (`XCLAIM ... JUSTID`, which
//! does not count as a delivery), so a long job on a live worker is never
//! taken away.
//!
//! When a handler fails on attempt `n` below the maximum, the entry is
//! acknowledged and deleted and the job goes into `S:retry`, due after
//! `backoff × 2^(n-1)` (at most [`MAX_BACKOFF`]); a maintenance tick moves
//! due retries back into `S` as new entries carrying `attempt = n + 1`. So
//! a retry is never delivered before its backoff, and the attempt count
//! travels with the job rather than in a side table that could drift. All
//! these moves are single Lua scripts, so a crash between two steps cannot
//! lose or duplicate a job; each checks that the entry is still this
//! consumer's before touching it, so a worker that lost a job to a reclaim
//! cannot record an outcome for it.
//!
//! When attempt `n` reaches the maximum, or a reclaimed entry would start
//! an attempt beyond it, the job is dead-lettered with the reason.
//! Entries that do not parse are dead-lettered at once with reason
//! `malformed` and never reach a handler.
//!
//! # Concurrency
//!
//! Each job kind has its own limit ([`Concurrency`]). A worker reads a new
//! entry only while it has room for one more job overall (the sum of the
//! limits), and an entry waiting for its kind's slot is kept alive like a
//! running one.
//!
//! Handlers must be idempotent: at-least-once means a job can run twice
//! (a worker that stalled past the visibility timeout and then finished).
//! They must also keep CPU-heavy work off the async threads
//! (`spawn_blocking`), or the visibility heartbeat cannot run and the job is
//! taken over by another worker.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface, StreamsInterface};
use fred::types::Value;
use kiroku_jobs::{Job, JobKind};
use kiroku_runtime::{ConfigError, Env};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The consumer group every worker joins.
pub const GROUP: &str = "kiroku-workers";

/// The longest wait between two attempts, whatever the base backoff and
/// the attempt number: a job should not sit for days because of a long
/// run of failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// About how many dead letters `S:dead` keeps; older ones are trimmed so a
/// flood of malformed entries cannot fill the queue Redis.
pub const DEAD_LETTERS_KEPT: u64 = 10_000;

/// The largest per-kind concurrency `KIROKU_WORKER_CONCURRENCY` accepts.
pub const MAX_CONCURRENCY: usize = 64;

/// Failure reasons are cut to this many characters before they are stored.
const REASON_MAX_CHARS: usize = 1000;

/// Raw values of malformed entries are cut to this many characters in the
/// dead letter: enough to recognise them, too little to store a payload.
const RAW_MAX_CHARS: usize = 64;

/// Due retries moved back into the stream per maintenance tick.
const PROMOTE_BATCH: u32 = 100;

/// Pending entries looked at per maintenance tick when reclaiming.
const RECLAIM_STEPS: usize = 100;

/// How many jobs of each kind one worker runs at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    default: usize,
    per_kind: BTreeMap<JobKind, usize>,
}

impl Concurrency {
    /// The same limit for every kind (clamped to 1..=[`MAX_CONCURRENCY`]).
    pub fn uniform(limit: usize) -> Concurrency {
        Concurrency {
            default: limit.clamp(1, MAX_CONCURRENCY),
            per_kind: BTreeMap::new(),
        }
    }

    /// Overrides the limit of one kind (clamped like [`Self::uniform`]).
    pub fn with(mut self, kind: JobKind, limit: usize) -> Concurrency {
        self.per_kind.insert(kind, limit.clamp(1, MAX_CONCURRENCY));
        self
    }

    pub fn limit(&self, kind: JobKind) -> usize {
        self.per_kind.get(&kind).copied().unwrap_or(self.default)
    }
}

/// `N` (every kind), `kind=N`, or a comma-separated mix such as
/// `2,prepare=1`; kinds must be on the closed list.
impl FromStr for Concurrency {
    type Err = String;

    fn from_str(s: &str) -> Result<Concurrency, String> {
        let mut result = Concurrency::uniform(1);
        let mut default_given = false;
        for item in s.split(',').map(str::trim) {
            let (kind, number) = match item.split_once('=') {
                Some((k, n)) => (Some(k.trim()), n.trim()),
                None => (None, item),
            };
            let limit = number
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
                .ok_or_else(|| format!("{number:?} is not a number from 1 to {MAX_CONCURRENCY}"))?;
            match kind {
                None if default_given => return Err("the default limit is given twice".into()),
                None => {
                    result.default = limit;
                    default_given = true;
                }
                Some(name) => {
                    let kind = JobKind::parse(name).ok_or_else(|| {
                        let known: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
                        format!("unknown job kind {name:?} (known: {})", known.join(", "))
                    })?;
                    if result.per_kind.insert(kind, limit).is_some() {
                        return Err(format!("{name} is given twice"));
                    }
                }
            }
        }
        Ok(result)
    }
}

/// How a [`Queue`] reads, retries and gives up.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The stream jobs are read from; the retry set and the dead-letter
    /// stream are named after it.
    pub stream: String,
    pub group: String,
    /// How long a delivered job may go without its worker's heartbeat
    /// before another worker takes it over.
    pub visibility: Duration,
    /// Attempts before a job is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub backoff: Duration,
    pub concurrency: Concurrency,
    /// How long one `XREADGROUP` blocks. Shutdown waits for the read in
    /// progress, so that nothing delivered to this worker is left behind.
    pub block: Duration,
}

impl QueueConfig {
    /// Defaults for `stream` and [`GROUP`].
    pub fn new(stream: impl Into<String>) -> QueueConfig {
        QueueConfig {
            stream: stream.into(),
            group: GROUP.to_owned(),
            visibility: Duration::from_secs(300),
            max_attempts: 5,
            backoff: Duration::from_secs(30),
            concurrency: Concurrency::uniform(1),
            block: Duration::from_secs(2),
        }
    }

    /// The production queue on [`kiroku_jobs::STREAM`], tuned by
    /// `KIROKU_QUEUE_VISIBILITY_SECS`, `KIROKU_QUEUE_MAX_ATTEMPTS`,
    /// `KIROKU_QUEUE_BACKOFF_SECS` and `KIROKU_WORKER_CONCURRENCY`.
    pub fn from_env(env: &Env) -> Result<QueueConfig, ConfigError> {
        let defaults = QueueConfig::new(kiroku_jobs::stream_for(
            &env.or("KIROKU_REDIS_PREFIX", "kiroku"),
        ));
        let secs = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
            match env.parse_or(name, default.as_secs())? {
                0 => Err(ConfigError::invalid(name, "must be at least 1")),
                n => Ok(Duration::from_secs(n)),
            }
        };
        let visibility = secs("KIROKU_QUEUE_VISIBILITY_SECS", defaults.visibility)?;
        let backoff = secs("KIROKU_QUEUE_BACKOFF_SECS", defaults.backoff)?;
        let max_attempts = env.parse_or("KIROKU_QUEUE_MAX_ATTEMPTS", defaults.max_attempts)?;
        if !(1..=kiroku_jobs::MAX_ATTEMPT).contains(&max_attempts) {
            return Err(ConfigError::invalid(
                "KIROKU_QUEUE_MAX_ATTEMPTS",
                format!("must be from 1 to {}", kiroku_jobs::MAX_ATTEMPT),
            ));
        }
        let concurrency =
            env.parse_or("KIROKU_WORKER_CONCURRENCY", defaults.concurrency.clone())?;
        Ok(QueueConfig {
            visibility,
            backoff,
            max_attempts,
            concurrency,
            ..defaults
        })
    }

    /// The sorted set of jobs waiting out their backoff.
    pub fn retry_key(&self) -> String {
        format!("{}:retry", self.stream)
    }

    /// The dead-letter stream.
    pub fn dead_key(&self) -> String {
        format!("{}:dead", self.stream)
    }

    /// The wait after attempt `failed` (1-based) fails.
    pub fn backoff_after(&self, failed: u32) -> Duration {
        let cap = MAX_BACKOFF.max(self.backoff);
        2u32.checked_pow(failed.saturating_sub(1))
            .and_then(|factor| self.backoff.checked_mul(factor))
            .map_or(cap, |d| d.min(cap))
    }

    /// How often due retries are moved and stalled jobs reclaimed: often
    /// enough that neither waits much beyond its time.
    fn tick(&self) -> Duration {
        (self.visibility.min(self.backoff) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// One delivery of a job to a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub job: Job,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The stream entry, for logs.
    pub entry_id: String,
}

/// What a handler returns. The error's text (with its causes) is logged
/// and stored as the failure reason, so it must never carry secrets.
pub type HandlerResult = anyhow::Result<()>;

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'static>>;

/// Runs jobs of one kind. Implemented for closures
/// `Fn(Delivery) -> impl Future<Output = HandlerResult>`, and by job types
/// that hold what they need (database, storage).
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, delivery: Delivery) -> HandlerFuture;
}

impl<F, Fut> JobHandler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, delivery: Delivery) -> HandlerFuture {
        Box::pin(self(delivery))
    }
}

/// The handler of each job kind a worker runs. A delivered job whose kind
/// has no handler fails (and is retried, perhaps by a worker that has one).
#[derive(Clone, Default)]
pub struct Handlers {
    map: BTreeMap<JobKind, Arc<dyn JobHandler>>,
}

impl Handlers {
    pub fn new() -> Handlers {
        Handlers::default()
    }

    /// Registers `handler` for `kind`, replacing any earlier one.
    pub fn on(mut self, kind: JobKind, handler: impl JobHandler) -> Handlers {
        self.map.insert(kind, Arc::new(handler));
        self
    }

    pub fn kinds(&self) -> impl Iterator<Item = JobKind> + '_ {
        self.map.keys().copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("unexpected reply from the queue redis to {0}")]
    Reply(&'static str),
}

/// A dead letter as stored in `S:dead`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The job's kind and project, as received (cut short if malformed).
    pub kind: String,
    pub project_id: String,
    /// Attempts that ran (0 for malformed entries).
    pub attempts: u32,
    pub reason: String,
    /// For malformed entries, which rule they broke.
    pub detail: Option<String>,
    /// The id the job's entry had in the job stream.
    pub entry: String,
}

/// The oldest `count` dead letters of the queue `config` describes.
pub async fn dead_letters(
    redis: &Client,
    config: &QueueConfig,
    count: u64,
) -> Result<Vec<DeadLetter>, QueueError> {
    let reply: Value = redis
        .xrange(config.dead_key(), "-", "+", Some(count))
        .await?;
    let entries = parse_entries(reply).ok_or(QueueError::Reply("XRANGE"))?;
    Ok(entries
        .into_iter()
        .map(|(id, fields)| {
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
            DeadLetter {
                id,
                kind: get("kind").unwrap_or_default(),
                project_id: get("project_id").unwrap_or_default(),
                attempts: get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
                reason: get("reason").unwrap_or_default(),
                detail: get("detail"),
                entry: get("entry").unwrap_or_default(),
            }
        })
        .collect())
}

// The Lua scripts. Each runs atomically, so every move of a job between
// the stream, the retry set and the dead letters happens entirely or not
// at all. Times come from Redis's clock, so workers' clocks do not matter.

/// Defines `owned(stream, group, consumer, id)`: the entry is pending and
/// delivered to `consumer`.
macro_rules! lua_owned {
    () => {
        "local function owned(stream, group, consumer, id)
           local p = redis.call('XPENDING', stream, group, id, id, 1)
           return #p == 1 and p[1][2] == consumer
         end
         local function now_ms()
           local t = redis.call('TIME')
           return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
         end
        "
    };
}

/// KEYS: stream. ARGV: group, id.
const LUA_ACK: &str = "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])";

/// KEYS: stream, retry set. ARGV: group, consumer, id, delay ms, member.
const LUA_RETRY: &str = concat!(
    lua_owned!(),
    "if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
     redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[4]), ARGV[5])
     redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
     redis.call('XDEL', KEYS[1], ARGV[3])
     return 1"
);

/// KEYS: stream, dead stream. ARGV: group, consumer, id, max length,
/// then the dead letter's field/value pairs.
const LUA_DEAD: &str = concat!(
    lua_owned!(),
    "if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
     redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 5))
     redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
     redis.call('XDEL', KEYS[1], ARGV[3])
     return 1"
);

/// KEYS: stream. ARGV: group, consumer, id. Resets the entry's idle time
/// without counting a delivery.
const LUA_TOUCH: &str = concat!(
    lua_owned!(),
    "if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3]) then return 0 end
     redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
     return 1"
);

/// KEYS: retry set, stream. ARGV: batch size. A member that does not
/// decode is re-added as an entry that is dead-lettered as malformed,
/// so nothing vanishes silently.
const LUA_PROMOTE: &str = concat!(
    lua_owned!(),
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
     for _, m in ipairs(due) do
       local ok, j = pcall(cjson.decode, m)
       if ok and type(j) == 'table' and type(j.kind) == 'string'
          and type(j.project_id) == 'string' and type(j.attempt) == 'string' then
         redis.call('XADD', KEYS[2], '*', 'kind', j.kind, 'project_id', j.project_id, 'attempt', j.attempt)
       else
         redis.call('XADD', KEYS[2], '*', 'unreadable_retry', m)
       end
       redis.call('ZREM', KEYS[1], m)
     end
     return #due"
);

/// KEYS: stream. ARGV: group, consumer, min idle ms, start, count.
/// Returns the next cursor and the claimed entries with their delivery
/// counts (after this claim).
const LUA_RECLAIM: &str = "local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    if #p == 1 then out[#out + 1] = {e[1], e[2], p[1][4]} end
  end
end
return {r[1], out}";

/// KEYS: stream. ARGV: group, consumer. Removes the consumer if nothing is
/// pending for it (deleting a consumer drops its pending entries).
const LUA_RELEASE: &str = "local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])";

/// A stream entry as read: its id and its fields in order.
type RawEntry = (String, Vec<(String, String)>);

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        // Not UTF-8: keep it recognisable; it can never parse as a job.
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

fn parse_fields(v: &Value) -> Option<Vec<(String, String)>> {
    match v {
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|kv| Some((text(&kv[0])?, text(&kv[1])?)))
            .collect(),
        _ => None,
    }
}

/// `[[id, [field, value, ...]], ...]`; entries whose fields are gone
/// (deleted while pending) are skipped.
fn parse_entries(v: Value) -> Option<Vec<RawEntry>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|e| match e {
                    Value::Array(pair) if pair.len() == 2 => {
                        Some((text(&pair[0])?, parse_fields(&pair[1])?))
                    }
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// The reply of `XREADGROUP` on one stream: `[[stream, entries]]` (or a
/// map in RESP3), `nil` on timeout.
fn parse_read(v: Value) -> Option<Vec<RawEntry>> {
    match v {
        Value::Null => Some(Vec::new()),
        Value::Array(mut streams) => match streams.pop() {
            None => Some(Vec::new()),
            Some(Value::Array(mut pair)) if pair.len() == 2 => parse_entries(pair.pop()?),
            _ => None,
        },
        Value::Map(map) => {
            let (_, entries) = map.inner().into_iter().next()?;
            parse_entries(entries)
        }
        _ => None,
    }
}

/// `[cursor, [[id, fields, deliveries], ...]]` from [`LUA_RECLAIM`].
fn parse_reclaim(v: Value) -> Option<(String, Vec<(RawEntry, u32)>)> {
    let Value::Array(mut parts) = v else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let Value::Array(claimed) = parts.pop()? else {
        return Some((text(&parts[0])?, Vec::new()));
    };
    let cursor = text(&parts[0])?;
    let mut out = Vec::new();
    for c in claimed {
        let Value::Array(c) = c else { continue };
        if c.len() != 3 {
            continue;
        }
        let deliveries = text(&c[2])?.parse().ok()?;
        out.push(((text(&c[0])?, parse_fields(&c[1])?), deliveries));
    }
    Some((cursor, out))
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn is_nogroup(e: &QueueError) -> bool {
    matches!(e, QueueError::Redis(e) if e.details().contains("NOGROUP"))
}

/// Creates the group, reading the stream from its start so that jobs
/// enqueued before the first worker ever ran are not skipped.
async fn ensure_group(redis: &Client, config: &QueueConfig) -> Result<(), QueueError> {
    let created: Result<Value, _> = redis
        .xgroup_create(config.stream.as_str(), config.group.as_str(), "0", true)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Aborts the task when dropped, so that a stopped consumer leaves no job
/// running (nor heartbeating) behind.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An entry this worker holds, with its room in the overall limit.
struct Received {
    entry: RawEntry,
    /// Deliveries of this entry so far, this one included.
    deliveries: u32,
    _room: OwnedSemaphorePermit,
}

struct Inner {
    config: QueueConfig,
    redis: Client,
    consumer: String,
    handlers: Handlers,
    per_kind: BTreeMap<JobKind, Arc<Semaphore>>,
    /// Room for jobs overall: the sum of the per-kind limits.
    room: Arc<Semaphore>,
}

/// One worker's consumer of the job stream.
pub struct Queue {
    inner: Arc<Inner>,
    blocking: Client,
}

impl Queue {
    /// Joins the group (creating it if needed) as a new consumer. `redis`
    /// carries the short commands; a second connection with the same
    /// configuration is opened for the blocking reads.
    pub async fn new(
        redis: &Client,
        config: QueueConfig,
        handlers: Handlers,
    ) -> Result<Queue, QueueError> {
        ensure_group(redis, &config).await?;
        let blocking = redis.clone_new();
        blocking.init().await?;
        let per_kind: BTreeMap<JobKind, Arc<Semaphore>> = JobKind::ALL
            .iter()
            .map(|k| (*k, Arc::new(Semaphore::new(config.concurrency.limit(*k)))))
            .collect();
        let room: usize = JobKind::ALL
            .iter()
            .map(|k| config.concurrency.limit(*k))
            .sum();
        let consumer = format!(
            "worker-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Queue {
            inner: Arc::new(Inner {
                config,
                redis: redis.clone(),
                consumer,
                handlers,
                per_kind,
                room: Arc::new(Semaphore::new(room)),
            }),
            blocking,
        })
    }

    /// This worker's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// Consumes jobs until `shutdown` resolves, then stops reading and
    /// waits for the jobs in progress to finish. Dropping the future
    /// instead abandons them at once; other workers take them over after
    /// the visibility timeout.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Queue { inner, blocking } = self;
        let c = &inner.config;
        tracing::info!(
            stream = %c.stream,
            group = %c.group,
            consumer = %inner.consumer,
            visibility_secs = c.visibility.as_secs_f64(),
            max_attempts = c.max_attempts,
            kinds = ?inner.handlers.kinds().map(JobKind::as_str).collect::<Vec<_>>(),
            "job queue consumer started"
        );
        let stop = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel::<Received>(1);
        let loops = {
            let read = read_loop(inner.clone(), blocking.clone(), tx.clone(), stop.clone());
            let maintain = maintain_loop(inner.clone(), tx, stop.clone());
            async move {
                tokio::join!(read, maintain);
            }
        };
        tokio::pin!(loops, shutdown);
        let mut jobs = JoinSet::new();
        let (mut stopping, mut loops_done, mut channel_open) = (false, false, true);
        loop {
            tokio::select! {
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    stop.cancel();
                    tracing::info!(in_flight = jobs.len(), "job queue stopping; finishing jobs in progress");
                }
                received = rx.recv(), if channel_open => match received {
                    Some(r) => {
                        jobs.spawn(process(inner.clone(), r));
                    }
                    None => channel_open = false,
                },
                Some(done) = jobs.join_next() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "a job task failed");
                    }
                }
                () = &mut loops, if !loops_done => loops_done = true,
                else => break,
            }
        }
        match inner
            .eval(
                LUA_RELEASE,
                vec![c.stream.clone()],
                vec![c.group.clone(), inner.consumer.clone()],
            )
            .await
        {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove this consumer from the group"),
        }
        let _ = blocking.quit().await;
        tracing::info!("job queue consumer stopped");
    }
}

/// Pause after the `n`th consecutive Redis error: short at first, at most
/// ten seconds, so a Redis restart is picked up quickly without spinning.
fn error_pause(n: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << n.min(7))).min(Duration::from_secs(10))
}

async fn read_loop(
    inner: Arc<Inner>,
    blocking: Client,
    tx: mpsc::Sender<Received>,
    stop: CancellationToken,
) {
    let c = &inner.config;
    let block_ms = c.block.as_millis().max(1) as u64;
    let mut errors = 0u32;
    loop {
        let room = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            room = inner.room.clone().acquire_owned() => room.expect("the semaphore is never closed"),
        };
        // Not raced against `stop`: an entry Redis hands over while we
        // stop must still be processed, not left pending.
        let read: Result<Value, QueueError> = blocking
            .xreadgroup(
                c.group.as_str(),
                inner.consumer.as_str(),
                Some(1),
                Some(block_ms),
                false,
                c.stream.as_str(),
                ">",
            )
            .await
            .map_err(QueueError::from);
        let read = read.and_then(|v| parse_read(v).ok_or(QueueError::Reply("XREADGROUP")));
        match read {
            Ok(entries) => {
                errors = 0;
                if let Some(entry) = entries.into_iter().next() {
                    let r = Received {
                        entry,
                        deliveries: 1,
                        _room: room,
                    };
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                drop(room);
                errors += 1;
                tracing::warn!(error = %e, "reading the job stream failed");
                if is_nogroup(&e) {
                    // The stream or group was deleted under us.
                    if let Err(e) = ensure_group(&inner.redis, c).await {
                        tracing::warn!(error = %e, "could not recreate the consumer group");
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(error_pause(errors)) => {}
                }
            }
        }
    }
}

async fn maintain_loop(inner: Arc<Inner>, tx: mpsc::Sender<Received>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(inner.config.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match inner.promote().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(count = n, "due retries put back on the job stream"),
            Err(e) => tracing::warn!(error = %e, "moving due retries failed"),
        }
        match inner.reclaim(&tx).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "reclaiming stalled jobs failed"),
        }
    }
}

impl Inner {
    async fn eval(
        &self,
        script: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, QueueError> {
        Ok(self.redis.eval(script, keys, args).await?)
    }

    /// The script's `1`/`0` answer: whether the entry was still ours.
    async fn eval_owned(
        &self,
        script: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<bool, QueueError> {
        match self.eval(script, keys, args).await? {
            Value::Integer(n) => Ok(n == 1),
            _ => Err(QueueError::Reply("a queue script")),
        }
    }

    async fn promote(&self) -> Result<i64, QueueError> {
        let c = &self.config;
        match self
            .eval(
                LUA_PROMOTE,
                vec![c.retry_key(), c.stream.clone()],
                vec![PROMOTE_BATCH.to_string()],
            )
            .await?
        {
            Value::Integer(n) => Ok(n),
            _ => Err(QueueError::Reply("the retry script")),
        }
    }

    /// Claims entries idle longer than the visibility timeout, as long as
    /// this worker has room for them. `Ok(false)` once the consumer is
    /// gone.
    async fn reclaim(&self, tx: &mpsc::Sender<Received>) -> Result<bool, QueueError> {
        let c = &self.config;
        let mut cursor = "0-0".to_owned();
        for _ in 0..RECLAIM_STEPS {
            let Ok(room) = self.room.clone().try_acquire_owned() else {
                return Ok(true);
            };
            let reply = self
                .eval(
                    LUA_RECLAIM,
                    vec![c.stream.clone()],
                    vec![
                        c.group.clone(),
                        self.consumer.clone(),
                        c.visibility.as_millis().to_string(),
                        cursor.clone(),
                        "1".to_owned(),
                    ],
                )
                .await?;
            let (next, claimed) = parse_reclaim(reply).ok_or(QueueError::Reply("XAUTOCLAIM"))?;
            let mut room = Some(room);
            for (entry, deliveries) in claimed {
                let room = match room.take() {
                    Some(r) => r,
                    None => self
                        .room
                        .clone()
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                };
                tracing::info!(
                    entry_id = %entry.0,
                    deliveries,
                    "job taken over from a stopped or stalled worker"
                );
                let r = Received {
                    entry,
                    deliveries,
                    _room: room,
                };
                if tx.send(r).await.is_err() {
                    return Ok(false);
                }
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(true)
    }

    async fn touch(&self, id: &str) -> Result<bool, QueueError> {
        let c = &self.config;
        self.eval_owned(
            LUA_TOUCH,
            vec![c.stream.clone()],
            vec![c.group.clone(), self.consumer.clone(), id.to_owned()],
        )
        .await
    }

    async fn ack(&self, id: &str) -> Result<(), QueueError> {
        let c = &self.config;
        self.eval(
            LUA_ACK,
            vec![c.stream.clone()],
            vec![c.group.clone(), id.to_owned()],
        )
        .await
        .map(drop)
    }

    async fn retry(
        &self,
        id: &str,
        job: &Job,
        next: u32,
        after: Duration,
    ) -> Result<bool, QueueError> {
        let c = &self.config;
        let member = serde_json::json!({
            "kind": job.kind.as_str(),
            "project_id": job.project_id.to_string(),
            "attempt": next.to_string(),
            // Keeps two retries of one job distinct members.
            "from": id,
        })
        .to_string();
        self.eval_owned(
            LUA_RETRY,
            vec![c.stream.clone(), c.retry_key()],
            vec![
                c.group.clone(),
                self.consumer.clone(),
                id.to_owned(),
                after.as_millis().to_string(),
                member,
            ],
        )
        .await
    }

    async fn dead_letter(
        &self,
        id: &str,
        fields: Vec<(&'static str, String)>,
    ) -> Result<bool, QueueError> {
        let c = &self.config;
        let mut args = vec![
            c.group.clone(),
            self.consumer.clone(),
            id.to_owned(),
            DEAD_LETTERS_KEPT.to_string(),
        ];
        for (k, v) in fields {
            args.push(k.to_owned());
            args.push(v);
        }
        args.push("entry".to_owned());
        args.push(id.to_owned());
        self.eval_owned(LUA_DEAD, vec![c.stream.clone(), c.dead_key()], args)
            .await
    }
}

/// Extends the visibility of entry `id` until aborted, or until the entry
/// turns out to be someone else's.
async fn heartbeat(inner: Arc<Inner>, id: String) {
    let every = inner.config.visibility / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match inner.touch(&id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("job was taken over by another worker while running here");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "could not extend the job's visibility"),
        }
    }
}

/// The text stored and logged for a handler's error: with its causes, cut
/// short.
fn reason_of(e: &anyhow::Error) -> String {
    truncate(&format!("{e:#}"), REASON_MAX_CHARS)
}

async fn process(inner: Arc<Inner>, received: Received) {
    let Received {
        entry: (id, fields),
        deliveries,
        _room,
    } = received;
    let entry = match kiroku_jobs::parse_entry(&fields) {
        Ok(e) => e,
        Err(e) => return dead_letter_malformed(&inner, &id, &fields, &e).await,
    };
    let job = entry.job;
    // Each earlier delivery of this very entry was an attempt that a
    // worker abandoned.
    let attempt = entry.attempt.saturating_add(deliveries.saturating_sub(1));
    let span = tracing::info_span!(
        "job",
        kind = job.kind.as_str(),
        project_id = %job.project_id,
        attempt,
        entry_id = %id,
    );
    run_job(inner, id, job, attempt).instrument(span).await
}

async fn dead_letter_malformed(
    inner: &Inner,
    id: &str,
    fields: &[(String, String)],
    error: &kiroku_jobs::JobError,
) {
    let detail = match error {
        kiroku_jobs::JobError::Malformed(d) => *d,
        kiroku_jobs::JobError::Queue(_) => "unreadable",
    };
    // Field values are untrusted: logged never, stored only cut short.
    tracing::warn!(entry_id = %id, fields = fields.len(), detail, "malformed job entry dead-lettered, not run");
    let raw = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| truncate(v, RAW_MAX_CHARS))
            .unwrap_or_default()
    };
    let letter = vec![
        ("kind", raw("kind")),
        ("project_id", raw("project_id")),
        ("attempts", "0".to_owned()),
        ("reason", "malformed".to_owned()),
        ("detail", detail.to_owned()),
    ];
    if let Err(e) = inner.dead_letter(id, letter).await {
        tracing::error!(entry_id = %id, error = %e, "could not dead-letter a malformed entry; it will be taken up again");
    }
}

async fn run_job(inner: Arc<Inner>, id: String, job: Job, attempt: u32) {
    let c = &inner.config;
    if attempt > c.max_attempts {
        let reason = format!(
            "abandoned: no worker finished attempt {} within the visibility timeout ({} s)",
            attempt - 1,
            c.visibility.as_secs_f64()
        );
        tracing::error!(reason = %reason, "job dead-lettered");
        finish_dead(&inner, &id, &job, attempt - 1, reason).await;
        return;
    }
    // Keep the entry ours from now on, including while it waits for a slot.
    let _heartbeat = AbortOnDrop(tokio::spawn(
        heartbeat(inner.clone(), id.clone()).in_current_span(),
    ));
    let _slot = inner
        .per_kind
        .get(&job.kind)
        .expect("a semaphore for every kind")
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let started = Instant::now();
    tracing::info!("job started");
    let result = match inner.handlers.map.get(&job.kind) {
        None => Err("no handler for this job kind in this worker".to_owned()),
        Some(handler) => {
            let delivery = Delivery {
                job: job.clone(),
                attempt,
                entry_id: id.clone(),
            };
            let mut task = AbortOnDrop(tokio::spawn(handler.handle(delivery).in_current_span()));
            match (&mut task.0).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(reason_of(&e)),
                Err(e) if e.is_panic() => Err("the handler panicked".to_owned()),
                Err(_) => Err("the handler was cancelled".to_owned()),
            }
        }
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(()) => match inner.ack(&id).await {
            Ok(()) => tracing::info!(elapsed_ms, "job done"),
            Err(e) => tracing::error!(
                elapsed_ms,
                error = %e,
                "job done but not acknowledged; it will run again"
            ),
        },
        Err(reason) if attempt >= c.max_attempts => {
            tracing::error!(elapsed_ms, reason = %reason, "job failed on its last attempt; dead-lettered");
            finish_dead(&inner, &id, &job, attempt, reason).await;
        }
        Err(reason) => {
            let after = c.backoff_after(attempt);
            tracing::warn!(
                elapsed_ms,
                reason = %reason,
                retry_in_ms = after.as_millis() as u64,
                "job failed; will retry"
            );
            match inner.retry(&id, &job, attempt + 1, after).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("job was taken over by another worker; its retry is theirs")
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not schedule the retry; the job will be taken up again")
                }
            }
        }
    }
}

async fn finish_dead(inner: &Inner, id: &str, job: &Job, attempts: u32, reason: String) {
    let letter = vec![
        ("kind", job.kind.as_str().to_owned()),
        ("project_id", job.project_id.to_string()),
        ("attempts", attempts.to_string()),
        ("reason", reason),
    ];
    match inner.dead_letter(id, letter).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("job was taken over by another worker; its outcome is theirs"),
        Err(e) => {
            tracing::error!(error = %e, "could not dead-letter the job; it will be taken up again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_takes_a_default_and_per_kind_limits() {
        let c: Concurrency = "3".parse().unwrap();
        assert_eq!(c.limit(JobKind::Prepare), 3);
        let c: Concurrency = "2, prepare=1".parse().unwrap();
        assert_eq!(c.limit(JobKind::Prepare), 1);
        let c: Concurrency = "prepare=4".parse().unwrap();
        assert_eq!(c, Concurrency::uniform(1).with(JobKind::Prepare, 4));
    }

    #[test]
    fn concurrency_refuses_unknown_kinds_zero_and_repeats() {
        for bad in [
            "",
            "0",
            "65",
            "-1",
            "two",
            "shell=1",
            "prepare=0",
            "prepare=1,prepare=2",
            "1,2",
            "1,,prepare=2",
        ] {
            assert!(bad.parse::<Concurrency>().is_err(), "{bad:?} was accepted");
        }
        let err = "transcode=2".parse::<Concurrency>().unwrap_err();
        assert!(err.contains("known: prepare"), "{err}");
    }

    #[test]
    fn config_reads_the_environment_and_names_bad_variables() {
        let env = Env::from_pairs([
            ("KIROKU_QUEUE_VISIBILITY_SECS", "60"),
            ("KIROKU_QUEUE_MAX_ATTEMPTS", "3"),
            ("KIROKU_QUEUE_BACKOFF_SECS", "5"),
            ("KIROKU_WORKER_CONCURRENCY", "prepare=2"),
        ]);
        let c = QueueConfig::from_env(&env).unwrap();
        assert_eq!(c.stream, kiroku_jobs::STREAM);
        assert_eq!(c.group, GROUP);
        assert_eq!(c.visibility, Duration::from_secs(60));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.backoff, Duration::from_secs(5));
        assert_eq!(c.concurrency.limit(JobKind::Prepare), 2);
        assert_eq!(c.dead_key(), "kiroku:jobs:dead");

        for (name, value) in [
            ("KIROKU_QUEUE_VISIBILITY_SECS", "0"),
            ("KIROKU_QUEUE_MAX_ATTEMPTS", "0"),
            ("KIROKU_QUEUE_MAX_ATTEMPTS", "5000"),
            ("KIROKU_QUEUE_BACKOFF_SECS", "soon"),
            ("KIROKU_WORKER_CONCURRENCY", "shell=1"),
        ] {
            let err = QueueConfig::from_env(&Env::from_pairs([(name, value)])).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }

    #[test]
    fn backoff_doubles_per_failed_attempt_up_to_the_cap() {
        let mut c = QueueConfig::new("s");
        c.backoff = Duration::from_secs(30);
        assert_eq!(c.backoff_after(1), Duration::from_secs(30));
        assert_eq!(c.backoff_after(2), Duration::from_secs(60));
        assert_eq!(c.backoff_after(4), Duration::from_secs(240));
        assert_eq!(c.backoff_after(12), MAX_BACKOFF);
        assert_eq!(c.backoff_after(1000), MAX_BACKOFF);
        c.backoff = Duration::from_secs(7200);
        assert_eq!(c.backoff_after(1), Duration::from_secs(7200));
    }

    #[test]
    fn replies_are_read_from_both_protocol_shapes() {
        let s = |x: &str| Value::String(x.into());
        let entry = Value::Array(vec![
            s("1-0"),
            Value::Array(vec![s("kind"), s("prepare"), s("project_id"), s("x")]),
        ]);
        let read = Value::Array(vec![Value::Array(vec![
            s("stream"),
            Value::Array(vec![entry]),
        ])]);
        let got = parse_read(read).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(got[0].1[0], ("kind".to_owned(), "prepare".to_owned()));
        assert!(parse_read(Value::Null).unwrap().is_empty());
        // A deleted entry (fields nil) is skipped, not an error.
        let gone = Value::Array(vec![s("2-0"), Value::Null]);
        assert!(parse_entries(Value::Array(vec![gone])).unwrap().is_empty());
        // Odd field lists are not entries.
        assert!(parse_fields(&Value::Array(vec![s("kind")])).is_none());
    }
}
