//! Helpers shared by the cross-crate tests. They run against the real
//! services that `scripts/services.sh up` starts; `just test` loads the
//! generated `.data/kiroku.env` before running them.

use kiroku_runtime::Env;
use kiroku_storage::{Role, StorageConfig, Store};

/// The configuration the services script generated. Panics with a hint
/// when the tests are run without it.
pub fn env() -> Env {
    let env = Env::from_process();
    assert!(
        env.get("KIROKU_MIGRATE_DATABASE_URL").is_some(),
        "KIROKU_* variables are missing: run the tests through `just test`"
    );
    env
}

/// Storage configuration pointing at the test SeaweedFS, whatever
/// `KIROKU_STORAGE` says for development.
pub fn s3_config(env: &Env) -> StorageConfig {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for name in kiroku_runtime::KNOWN {
        if let Some(v) = env.get(name) {
            pairs.push(((*name).to_owned(), v.to_owned()));
        }
    }
    pairs.retain(|(k, _)| k != "KIROKU_STORAGE");
    pairs.push(("KIROKU_STORAGE".into(), "s3".into()));
    let env = Env::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    StorageConfig::from_env(&env).expect("S3 configuration")
}

pub fn s3_store(env: &Env, role: Role) -> Store {
    Store::open(&s3_config(env), role).expect("S3 store")
}

/// A short unique suffix for keys, database names and usernames.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
