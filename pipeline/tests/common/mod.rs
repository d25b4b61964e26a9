//! What the pipeline's integration tests share.

use fred::prelude::*;

/// A client of the real queue Redis (`KIROKU_QUEUE_REDIS_URL`, loaded by
/// `scripts/with-env.sh`).
pub async fn redis() -> Client {
    let url = std::env::var("KIROKU_QUEUE_REDIS_URL").expect(
        "KIROKU_QUEUE_REDIS_URL is not set: run the tests through scripts/with-env.sh or `just test`",
    );
    let client = Builder::from_config(Config::from_url(&url).expect("queue Redis URL"))
        .build()
        .unwrap();
    client.init().await.expect("queue Redis answers");
    client
}
