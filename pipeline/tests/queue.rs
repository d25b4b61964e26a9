//! The job queue against the real queue Redis (`KIROKU_QUEUE_REDIS_URL`,
//! loaded by `scripts/with-env.sh`). Every test works on a stream and group
//! of its own, so tests do not see each other's jobs nor the app's.
//!
//! Nothing here waits a fixed time for something to happen: each test polls
//! for the state it expects, with a generous deadline.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use kiroku_jobs::{Job, JobKind};
use kiroku_pipeline::queue::{
    Concurrency, DeadLetter, Delivery, Handlers, Queue, QueueConfig, dead_letters,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

mod common;
use common::redis;

/// Deadline for anything the tests wait for: far above what any step
/// needs, so only a real failure hits it.
const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `check` until it holds; fails the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn prepare(project_id: Uuid) -> Job {
    Job {
        kind: JobKind::Prepare,
        project_id,
    }
}

/// A queue on a fresh stream, with short timings; its keys are deleted by
/// [`Fixture::cleanup`].
struct Fixture {
    redis: Client,
    config: QueueConfig,
}

impl Fixture {
    async fn new() -> Fixture {
        let stream = format!("kiroku-test:{}:jobs", Uuid::new_v4().simple());
        let mut config = QueueConfig::new(stream);
        config.group = "kiroku-test-workers".into();
        config.visibility = Duration::from_secs(1);
        config.max_attempts = 3;
        config.backoff = Duration::from_millis(100);
        config.block = Duration::from_millis(100);
        config.concurrency = Concurrency::uniform(4);
        Fixture {
            redis: redis().await,
            config,
        }
    }

    async fn enqueue(&self, job: &Job) -> String {
        kiroku_jobs::enqueue_to(&self.redis, &self.config.stream, job)
            .await
            .unwrap()
    }

    async fn add_raw(&self, fields: Vec<(&str, String)>) -> String {
        self.redis
            .xadd(self.config.stream.as_str(), false, None, "*", fields)
            .await
            .unwrap()
    }

    async fn start(&self, config: &QueueConfig, handlers: Handlers) -> Worker {
        let queue = Queue::new(&self.redis, config.clone(), handlers)
            .await
            .expect("queue starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(queue.run(async move {
            let _ = stopped.await;
        }));
        Worker { stop, task }
    }

    async fn create_group(&self) {
        let _: Value = self
            .redis
            .xgroup_create(
                self.config.stream.as_str(),
                self.config.group.as_str(),
                "0",
                true,
            )
            .await
            .unwrap();
    }

    /// A consumer that is not a worker reads one entry and never
    /// acknowledges it; returns the entry's id.
    async fn ghost_takes_one(&self) -> String {
        let read: Value = self
            .redis
            .xreadgroup(
                self.config.group.as_str(),
                "ghost",
                Some(1),
                None,
                false,
                self.config.stream.as_str(),
                ">",
            )
            .await
            .unwrap();
        // [[stream, [[id, fields]]]]
        let first_id = |v: &Value| -> Option<String> {
            let Value::Array(streams) = v else {
                return None;
            };
            let Value::Array(pair) = streams.first()? else {
                return None;
            };
            let Value::Array(entries) = pair.get(1)? else {
                return None;
            };
            let Value::Array(entry) = entries.first()? else {
                return None;
            };
            entry.first()?.as_string()
        };
        first_id(&read).unwrap_or_else(|| panic!("the ghost read nothing: {read:?}"))
    }

    async fn stream_len(&self) -> u64 {
        self.redis.xlen(self.config.stream.as_str()).await.unwrap()
    }

    async fn pending(&self) -> i64 {
        let summary: Value = self
            .redis
            .xpending(self.config.stream.as_str(), self.config.group.as_str(), ())
            .await
            .unwrap();
        match summary {
            Value::Array(parts) => parts[0].as_i64().unwrap(),
            other => panic!("XPENDING answered {other:?}"),
        }
    }

    async fn waiting_retries(&self) -> u64 {
        self.redis.zcard(self.config.retry_key()).await.unwrap()
    }

    async fn dead(&self) -> Vec<DeadLetter> {
        dead_letters(&self.redis, &self.config, 100).await.unwrap()
    }

    /// Waits until the stream holds nothing, delivered or not.
    async fn drained(&self) {
        eventually("the stream to be empty and nothing pending", || async {
            self.stream_len().await == 0 && self.pending().await == 0
        })
        .await;
    }

    async fn cleanup(self) {
        let keys = vec![
            self.config.stream.clone(),
            self.config.retry_key(),
            self.config.dead_key(),
        ];
        let _: () = self.redis.del(keys).await.unwrap();
        let _ = self.redis.quit().await;
    }
}

/// A running consumer.
struct Worker {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Graceful stop: no new jobs, those in progress finish.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the worker stops")
            .unwrap();
    }

    /// The process dies: nothing is acknowledged, no heartbeat is sent.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Every delivery a handler saw, with when it started.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Delivery, Instant)>>>);

impl Seen {
    fn push(&self, d: Delivery) {
        self.0.lock().unwrap().push((d, Instant::now()));
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(d, _)| d.clone())
            .collect()
    }

    fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().iter().map(|(_, t)| *t).collect()
    }

    /// Handlers that record each delivery and succeed.
    fn handlers(&self) -> Handlers {
        let seen = self.clone();
        Handlers::new().on(JobKind::Prepare, move |d: Delivery| {
            let seen = seen.clone();
            async move {
                seen.push(d);
                Ok(())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_jobs_are_delivered_once_and_removed_when_done() {
    let fx = Fixture::new().await;
    // Jobs enqueued before any worker joined are not skipped.
    let mut expected = Vec::new();
    for _ in 0..3 {
        let p = Uuid::new_v4();
        expected.push((fx.enqueue(&prepare(p)).await, p));
    }
    let seen = Seen::default();
    let worker = fx.start(&fx.config, seen.handlers()).await;
    for _ in 0..2 {
        let p = Uuid::new_v4();
        expected.push((fx.enqueue(&prepare(p)).await, p));
    }
    eventually("five deliveries", || async { seen.len() >= 5 }).await;
    fx.drained().await;

    let mut got: Vec<(String, Uuid)> = seen
        .deliveries()
        .into_iter()
        .map(|d| {
            assert_eq!(d.attempt, 1);
            assert_eq!(d.job.kind, JobKind::Prepare);
            (d.entry_id, d.job.project_id)
        })
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "each job exactly once");
    assert!(fx.dead().await.is_empty());
    worker.stop().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_dead_consumer_are_taken_over_after_the_visibility_timeout() {
    let fx = Fixture::new().await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    // A bare consumer takes one job and is never heard of again. (It reads
    // before any worker runs: a worker may read ahead of its free slots.)
    fx.create_group().await;
    let second_entry = fx.enqueue(&prepare(second)).await;
    assert_eq!(fx.ghost_takes_one().await, second_entry);
    let first_entry = fx.enqueue(&prepare(first)).await;

    // Worker A takes the other job (one at a time) and hangs in it.
    let mut one_at_a_time = fx.config.clone();
    one_at_a_time.concurrency = Concurrency::uniform(1);
    let (taken_tx, mut taken) = mpsc::unbounded_channel::<Delivery>();
    let hang = Handlers::new().on(JobKind::Prepare, move |d: Delivery| {
        let taken_tx = taken_tx.clone();
        async move {
            taken_tx.send(d).unwrap();
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let a = fx.start(&one_at_a_time, hang).await;
    let held = tokio::time::timeout(PATIENCE, taken.recv())
        .await
        .expect("worker A receives the first job")
        .unwrap();
    assert_eq!(held.job.project_id, first);

    // A dies holding its job; B finds both jobs once they have gone a
    // visibility timeout without a heartbeat.
    a.kill().await;
    let seen = Seen::default();
    let b = fx.start(&fx.config, seen.handlers()).await;
    eventually("worker B to take over both jobs", || async {
        seen.len() >= 2
    })
    .await;
    fx.drained().await;

    let mut got: Vec<(String, Uuid, u32)> = seen
        .deliveries()
        .into_iter()
        .map(|d| (d.entry_id, d.job.project_id, d.attempt))
        .collect();
    got.sort();
    let mut expected = vec![(first_entry, first, 2), (second_entry, second, 2)];
    expected.sort();
    assert_eq!(got, expected, "same entries, counted as second attempts");
    assert!(fx.dead().await.is_empty());
    b.stop().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_abandoned_on_its_last_attempt_is_dead_lettered_not_run_again() {
    let fx = Fixture::new().await;
    let project = Uuid::new_v4();
    fx.create_group().await;
    let entry = fx.enqueue(&prepare(project)).await;
    assert_eq!(fx.ghost_takes_one().await, entry);

    let mut last_chance = fx.config.clone();
    last_chance.max_attempts = 1;
    let seen = Seen::default();
    let worker = fx.start(&last_chance, seen.handlers()).await;
    eventually("a dead letter", || async { !fx.dead().await.is_empty() }).await;
    fx.drained().await;
    let dead = fx.dead().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].project_id, project.to_string());
    assert_eq!(dead[0].entry, entry);
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].reason.starts_with("abandoned"),
        "{}",
        dead[0].reason
    );
    assert_eq!(seen.len(), 0, "the job ran again");
    worker.stop().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_with_growing_backoff_then_dead_lettered_with_its_reason() {
    let fx = Fixture::new().await;
    let mut config = fx.config.clone();
    config.max_attempts = 4;
    config.backoff = Duration::from_millis(200);
    let seen = Seen::default();
    let failing = {
        let seen = seen.clone();
        Handlers::new().on(JobKind::Prepare, move |d: Delivery| {
            let seen = seen.clone();
            async move {
                seen.push(d);
                Err(anyhow::anyhow!("engine exploded").context("decoding chunk 3"))
            }
        })
    };
    let project = Uuid::new_v4();
    fx.enqueue(&prepare(project)).await;
    let worker = fx.start(&config, failing).await;
    eventually("a dead letter", || async { !fx.dead().await.is_empty() }).await;
    fx.drained().await;
    assert_eq!(fx.waiting_retries().await, 0);

    let attempts: Vec<u32> = seen.deliveries().iter().map(|d| d.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert!(
        seen.deliveries()
            .iter()
            .all(|d| d.job.project_id == project)
    );
    // Each retry waited at least its backoff: 200, 400, 800 ms. (Redis
    // measures the wait in whole milliseconds, hence the small slack.)
    let times = seen.times();
    for (i, pair) in times.windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        let backoff = config.backoff_after(i as u32 + 1);
        assert!(
            waited + Duration::from_millis(10) >= backoff,
            "retry {} came after {waited:?}, before its backoff {backoff:?}",
            i + 2
        );
    }

    let dead = fx.dead().await;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.kind, "prepare");
    assert_eq!(letter.project_id, project.to_string());
    assert_eq!(letter.attempts, 4);
    assert_eq!(letter.reason, "decoding chunk 3: engine exploded");
    assert_eq!(letter.detail, None);
    assert_eq!(seen.len(), 4, "no attempt after the dead letter");
    worker.stop().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_dead_lettered_and_never_handed_to_a_handler() {
    let fx = Fixture::new().await;
    let id = || Uuid::new_v4().to_string();
    let bad: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("kind", "shell".into()), ("project_id", id())],
            "unknown kind",
        ),
        (
            vec![
                ("kind", "prepare".into()),
                ("project_id", id()),
                ("path", "/etc/passwd".into()),
            ],
            "unknown field",
        ),
        (
            vec![
                ("kind", "prepare".into()),
                ("project_id", "../../etc".into()),
            ],
            "project_id is not a canonical UUID",
        ),
        (
            vec![
                ("kind", "prepare".into()),
                ("project_id", id()),
                ("attempt", "0".into()),
            ],
            "attempt is not a number from 1 to 1000",
        ),
        (
            vec![("kind", "x".repeat(500)), ("project_id", id())],
            "unknown kind",
        ),
    ];
    let mut bad_entries = Vec::new();
    for (fields, detail) in bad {
        bad_entries.push((fx.add_raw(fields).await, detail));
    }
    let good = Uuid::new_v4();
    fx.enqueue(&prepare(good)).await;

    let seen = Seen::default();
    let worker = fx.start(&fx.config, seen.handlers()).await;
    eventually("five dead letters and the good job", || async {
        fx.dead().await.len() >= 5 && seen.len() >= 1
    })
    .await;
    fx.drained().await;

    let handled: Vec<Uuid> = seen.deliveries().iter().map(|d| d.job.project_id).collect();
    assert_eq!(
        handled,
        [good],
        "only the well-formed job reached the handler"
    );
    let dead = fx.dead().await;
    assert_eq!(dead.len(), 5);
    for (entry, detail) in &bad_entries {
        let letter = dead
            .iter()
            .find(|l| &l.entry == entry)
            .expect("a dead letter for every malformed entry");
        assert_eq!(letter.reason, "malformed");
        assert_eq!(letter.detail.as_deref(), Some(*detail));
        assert_eq!(letter.attempts, 0);
    }
    // What is kept of a malformed entry is cut short.
    assert!(dead.iter().all(|l| l.kind.chars().count() <= 64));
    assert!(dead.iter().any(|l| l.kind == "shell"));
    worker.stop().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_jobs_of_a_kind_run_at_once_than_its_limit() {
    let fx = Fixture::new().await;
    let mut config = fx.config.clone();
    config.concurrency = Concurrency::uniform(4).with(JobKind::Prepare, 2);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let handlers = {
        let (running, most, done) = (running.clone(), most.clone(), done.clone());
        Handlers::new().on(JobKind::Prepare, move |_d: Delivery| {
            let (running, most, done) = (running.clone(), most.clone(), done.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Stay until a second job runs alongside (or a while has
                // passed), then a little longer, so a third one would have
                // every chance to start if the limit did not hold.
                let deadline = Instant::now() + Duration::from_secs(3);
                while running.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    for _ in 0..8 {
        fx.enqueue(&prepare(Uuid::new_v4())).await;
    }
    let worker = fx.start(&config, handlers).await;
    eventually("eight jobs done", || async {
        done.load(Ordering::SeqCst) >= 8
    })
    .await;
    fx.drained().await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "at most two at once, and two did run together"
    );
    worker.stop().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_longer_than_the_visibility_timeout_is_not_taken_over() {
    let fx = Fixture::new().await;
    let seen = Seen::default();
    // Work for three visibility timeouts; the heartbeat must keep the job.
    let slow = {
        let seen = seen.clone();
        Handlers::new().on(JobKind::Prepare, move |d: Delivery| {
            let seen = seen.clone();
            async move {
                seen.push(d);
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            }
        })
    };
    let a = fx.start(&fx.config, slow.clone()).await;
    let b = fx.start(&fx.config, slow).await;
    let project = Uuid::new_v4();
    fx.enqueue(&prepare(project)).await;
    eventually("the job to start", || async { seen.len() >= 1 }).await;
    fx.drained().await;
    let got: Vec<(Uuid, u32)> = seen
        .deliveries()
        .iter()
        .map(|d| (d.job.project_id, d.attempt))
        .collect();
    assert_eq!(
        got,
        [(project, 1)],
        "the job ran once, on its first attempt"
    );
    a.stop().await;
    b.stop().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_worker_lets_the_job_in_progress_finish_and_acknowledges_it() {
    let fx = Fixture::new().await;
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(tokio::sync::Notify::new());
    let handlers = {
        let release = release.clone();
        Handlers::new().on(JobKind::Prepare, move |_d: Delivery| {
            let (started_tx, release) = (started_tx.clone(), release.clone());
            async move {
                started_tx.send(()).unwrap();
                release.notified().await;
                Ok(())
            }
        })
    };
    let worker = fx.start(&fx.config, handlers).await;
    fx.enqueue(&prepare(Uuid::new_v4())).await;
    tokio::time::timeout(PATIENCE, started.recv())
        .await
        .expect("the job starts")
        .unwrap();
    let stopping = tokio::spawn(worker.stop());
    // A stop that did not wait would return within this window; a correct
    // one never does while the job runs, so the window cannot cause a
    // false failure.
    let window = Instant::now() + Duration::from_millis(500);
    while Instant::now() < window {
        assert!(!stopping.is_finished(), "stop returned with a job running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.notify_one();
    stopping.await.unwrap();
    // Stopped means finished: nothing left in the stream or pending.
    assert_eq!(fx.stream_len().await, 0);
    assert_eq!(fx.pending().await, 0);
    fx.cleanup().await;
}
