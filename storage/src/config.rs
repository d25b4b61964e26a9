//! Storage configuration from `KIROKU_*` variables.

use std::fmt;
use std::path::PathBuf;

use kiroku_runtime::{ConfigError, Env};

/// Which binary is using the store, and so which credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    App,
    Worker,
    Export,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::App, Role::Worker, Role::Export];

    fn var_prefix(self) -> &'static str {
        match self {
            Role::App => "KIROKU_APP",
            Role::Worker => "KIROKU_WORKER",
            Role::Export => "KIROKU_EXPORT",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::App => "app",
            Role::Worker => "worker",
            Role::Export => "export",
        })
    }
}

/// An access key pair. Never printed.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
}

#[derive(Debug, Clone)]
pub enum Backend {
    Local { dir: PathBuf },
    S3(S3Config),
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub backend: Backend,
    credentials: Vec<(Role, Credentials)>,
}

impl StorageConfig {
    /// Reads the back end and whichever role credentials are set. A binary
    /// then opens its own role; a missing credential is an error there.
    pub fn from_env(env: &Env) -> Result<StorageConfig, ConfigError> {
        let backend = match env.or("KIROKU_STORAGE", "local").as_str() {
            "local" => Backend::Local {
                dir: env.or("KIROKU_STORAGE_DIR", ".data/objects").into(),
            },
            "s3" => {
                let endpoint = env.or("KIROKU_S3_ENDPOINT", "http://127.0.0.1:8333");
                if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                    return Err(ConfigError::invalid(
                        "KIROKU_S3_ENDPOINT",
                        "must be an http(s) URL",
                    ));
                }
                Backend::S3(S3Config {
                    endpoint,
                    region: env.or("KIROKU_S3_REGION", "us-east-1"),
                    bucket: env.or("KIROKU_S3_BUCKET", "kiroku"),
                })
            }
            other => {
                return Err(ConfigError::invalid(
                    "KIROKU_STORAGE",
                    format!("{other:?} is not one of local, s3"),
                ));
            }
        };
        let mut credentials = Vec::new();
        for role in Role::ALL {
            let id_var = format!("{}_S3_ACCESS_KEY_ID", role.var_prefix());
            let secret_var = format!("{}_S3_SECRET_ACCESS_KEY", role.var_prefix());
            match (env.get(&id_var), env.get(&secret_var)) {
                (Some(id), Some(secret)) => credentials.push((
                    role,
                    Credentials {
                        access_key_id: id.into(),
                        secret_access_key: secret.into(),
                    },
                )),
                (None, None) => {}
                (Some(_), None) => return Err(ConfigError::Missing(secret_var)),
                (None, Some(_)) => return Err(ConfigError::Missing(id_var)),
            }
        }
        Ok(StorageConfig {
            backend,
            credentials,
        })
    }

    /// The credential configured for `role`, if any.
    pub fn credentials(&self, role: Role) -> Option<&Credentials> {
        self.credentials
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, c)| c)
    }

    /// Checks that `role`'s credential is present when S3 is used, naming
    /// the variable otherwise.
    pub fn require(&self, role: Role) -> Result<(), ConfigError> {
        if matches!(self.backend, Backend::S3(_)) && self.credentials(role).is_none() {
            return Err(ConfigError::Missing(format!(
                "{}_S3_ACCESS_KEY_ID",
                role.var_prefix()
            )));
        }
        Ok(())
    }

    /// Roles with a configured credential.
    pub fn roles(&self) -> Vec<Role> {
        self.credentials.iter().map(|(r, _)| *r).collect()
    }

    /// A configuration for tests and tools.
    pub fn new_s3(endpoint: &str, bucket: &str, creds: Vec<(Role, Credentials)>) -> StorageConfig {
        StorageConfig {
            backend: Backend::S3(S3Config {
                endpoint: endpoint.into(),
                region: "us-east-1".into(),
                bucket: bucket.into(),
            }),
            credentials: creds,
        }
    }

    pub fn new_local(dir: PathBuf) -> StorageConfig {
        StorageConfig {
            backend: Backend::Local { dir },
            credentials: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_credential_names_the_missing_variable() {
        let env = Env::from_pairs([
            ("KIROKU_STORAGE", "s3"),
            ("KIROKU_APP_S3_ACCESS_KEY_ID", "id"),
        ]);
        let err = StorageConfig::from_env(&env).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing("KIROKU_APP_S3_SECRET_ACCESS_KEY".into())
        );
    }

    #[test]
    fn unknown_backend_is_refused_by_name() {
        let env = Env::from_pairs([("KIROKU_STORAGE", "ftp")]);
        let err = StorageConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.starts_with("KIROKU_STORAGE is invalid"), "{err}");
    }

    #[test]
    fn s3_without_a_role_credential_is_an_error_for_that_role() {
        let env = Env::from_pairs([("KIROKU_STORAGE", "s3")]);
        let cfg = StorageConfig::from_env(&env).unwrap();
        let err = cfg.require(Role::Export).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Missing("KIROKU_EXPORT_S3_ACCESS_KEY_ID".into())
        );
    }
}
