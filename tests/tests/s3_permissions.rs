//! The permission matrix on the real SeaweedFS: three credentials × five
//! operations × four places. Every cell is checked, allowed or denied.

use bytes::Bytes;
use kiroku_storage::{Role, StorageError, Store};
use kiroku_tests::{env, s3_store, unique};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
    List,
    Delete,
    Copy,
}

const PLACES: [&str; 4] = ["ingest/", "work/", "final/v1/", "elsewhere/"];

/// The design: the app only puts into ingest/, the export service only
/// gets from final/v1/, the workers do everything inside the three areas.
fn allowed(role: Role, op: Op, place: &str) -> bool {
    let in_area = place != "elsewhere/";
    match role {
        Role::App => op == Op::Put && place == "ingest/",
        Role::Export => op == Op::Get && place == "final/v1/",
        Role::Worker => in_area,
    }
}

async fn attempt(
    store: &Store,
    op: Op,
    place: &str,
    seed: &str,
    run: &str,
) -> Result<(), StorageError> {
    let fresh = format!("{place}perm-{run}/new-{}", unique());
    match op {
        Op::Put => store.put(&fresh, Bytes::from_static(b"x")).await,
        Op::Get => store.get(seed, None).await.map(drop),
        Op::List => store.list(&format!("{place}perm-{run}/")).await.map(drop),
        Op::Delete => store.delete(seed).await,
        Op::Copy => store.copy(seed, &fresh).await,
    }
}

#[tokio::test]
async fn every_credential_can_do_exactly_what_its_role_needs() {
    let env = env();
    let worker = s3_store(&env, Role::Worker);
    let run = unique();
    let mut failures = Vec::new();
    for role in Role::ALL {
        let store = s3_store(&env, role);
        for op in [Op::Put, Op::Get, Op::List, Op::Delete, Op::Copy] {
            for place in PLACES {
                // A fresh seed object per cell (made with the worker key where
                // it may write), so deletes do not disturb later cells.
                let seed = format!("{place}perm-{run}/seed-{}", unique());
                if place != "elsewhere/" {
                    worker
                        .put(&seed, Bytes::from_static(b"seed"))
                        .await
                        .unwrap();
                }
                let got = attempt(&store, op, place, &seed, &run).await;
                let want = allowed(role, op, place);
                let ok = matches!(
                    (&got, want),
                    (Ok(()), true) | (Err(StorageError::AccessDenied), false)
                );
                if !ok {
                    failures.push(format!(
                        "{role} {op:?} {place}: got {got:?}, allowed={want}"
                    ));
                }
            }
        }
    }
    for place in &PLACES[..3] {
        for key in worker.list(&format!("{place}perm-{run}/")).await.unwrap() {
            worker.delete(&key).await.unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "permission matrix broken:\n{}",
        failures.join("\n")
    );
}
