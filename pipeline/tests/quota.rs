//! The daily styling quota against the real queue Redis
//! (`KIROKU_QUEUE_REDIS_URL`, loaded by `scripts/with-env.sh`). Each test
//! uses a key prefix of its own and deletes what it wrote.

use fred::prelude::*;
use kiroku_pipeline::styling::take_quota;
use uuid::Uuid;

mod common;
use common::redis;

/// The keys written under `prefix`.
async fn keys_under(redis: &Client, prefix: &str) -> Vec<String> {
    redis
        .custom(fred::cmd!("KEYS"), vec![format!("{prefix}:*")])
        .await
        .unwrap()
}

async fn forget(redis: &Client, prefix: &str) {
    for key in keys_under(redis, prefix).await {
        let _: i64 = redis.del(key).await.unwrap();
    }
}

#[tokio::test]
async fn photos_drawn_side_by_side_share_the_quota_exactly() {
    let redis = redis().await;
    let prefix = format!("kiroku-test-quota-{}", Uuid::new_v4());
    let user = Uuid::new_v4();
    let photos: Vec<Uuid> = (0..24).map(|_| Uuid::new_v4()).collect();

    // Many photos ask at once: exactly the quota's worth get a place, never
    // fewer (two askers refusing each other) nor more.
    let answers = futures_util::future::join_all(
        photos
            .iter()
            .map(|photo| take_quota(&redis, &prefix, user, *photo, 5)),
    )
    .await;
    let granted: Vec<Uuid> = photos
        .iter()
        .zip(&answers)
        .filter(|(_, a)| *a.as_ref().unwrap())
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(granted.len(), 5, "{answers:?}");

    // A retried job asks again for a photo that has its place: granted, and
    // the quota is not charged again.
    for photo in &granted {
        assert!(take_quota(&redis, &prefix, user, *photo, 5).await.unwrap());
    }
    let refused = photos.iter().find(|p| !granted.contains(p)).unwrap();
    assert!(
        !take_quota(&redis, &prefix, user, *refused, 5)
            .await
            .unwrap()
    );

    // Another user's quota is their own; a quota of zero refuses at once.
    let other = Uuid::new_v4();
    assert!(
        take_quota(&redis, &prefix, other, *refused, 5)
            .await
            .unwrap()
    );
    assert!(
        !take_quota(&redis, &prefix, Uuid::new_v4(), *refused, 0)
            .await
            .unwrap()
    );

    // The day's set expires on its own.
    let keys = keys_under(&redis, &prefix).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let ttl: i64 = redis.ttl(key).await.unwrap();
        assert!(ttl > 24 * 3600 && ttl <= 2 * 24 * 3600, "{key}: {ttl}");
    }
    forget(&redis, &prefix).await;
}
