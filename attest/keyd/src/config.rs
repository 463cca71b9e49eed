//! keyd's configuration, its own file (default `/etc/warden/keyd.toml`):
//!
//! ```toml
//! schema_version = 1
//! socket = "/run/warden/keyd.sock"     # created mode 0660; the agent's group may connect
//! socket_group = "warden"              # the socket's group (a name or a numeric gid); keyd's
//!                                      # user must be a member of it
//!
//! [keystore]
//! backend = "tpm"                      # or "pkcs11", or "software-development-only"
//! tcti = "device:/dev/tpmrm0"
//!
//! [[principal]]
//! name = "agent"
//! user = "warden"                      # the agent's user (or its numeric `uid`)
//! operations = ["describe", "device_public_key", "sign", "anchors", "unseal", "counter",
//!               "advance_counter", "read_pcr", "extend_pcr"]
//!
//! [[principal]]
//! name = "attestation"
//! uid = 0                              # the operator answering a verifier
//! operations = ["describe", "read_pcr", "quote", "attestation_identity", "activate_credential"]
//! ```
//!
//! Without `socket_group` the socket keeps keyd's primary group.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warden_keystore::config::BackendConfig;
use warden_keystore::keyd::Operation;

/// The only schema this build reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The default config path.
pub const DEFAULT_PATH: &str = "/etc/warden/keyd.toml";

/// Why the config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the file.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// TOML that does not parse or does not fit the schema (the message names the field).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A value that parses but is wrong.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A caller allowed on the socket, identified by its peer UID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// A name for logs.
    pub name: String,
    /// The caller's user id, as the kernel reports it for the socket peer. In the file, give
    /// either `uid` or `user`; a `user` is looked up when the file is read.
    #[serde(default = "no_uid", skip_serializing_if = "is_no_uid")]
    pub uid: u32,
    /// The caller's user name (NSS, so sysusers.d users count), instead of `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What it may call.
    pub operations: Vec<Operation>,
}

/// `uid` absent from the file: the invalid uid (-1), which no peer can have; replaced from
/// `user` when the file is read, refused when neither is given.
fn no_uid() -> u32 {
    u32::MAX
}

fn is_no_uid(uid: &u32) -> bool {
    *uid == u32::MAX
}

/// keyd's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeydConfig {
    /// Must be [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The Unix socket path (absolute).
    pub socket: PathBuf,
    /// The socket's group: a group name, or a numeric gid. Callers in this group may connect
    /// (mode 0660); keyd still authorizes each one by its UID. `None`: keyd's primary group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// The key store backend.
    pub keystore: BackendConfig,
    /// Who may call what. No principal: nobody may call.
    #[serde(rename = "principal", default)]
    pub principals: Vec<Principal>,
}

impl KeydConfig {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks config text (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: KeydConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.resolve_users(path)?;
        config.check(path)?;
        Ok(config)
    }

    /// Each principal names its caller by `uid` or by `user`, not both: a user is looked up
    /// now, so a missing account is an error at start rather than a silent refusal later.
    fn resolve_users(&mut self, path: &Path) -> Result<(), ConfigError> {
        for (i, p) in self.principals.iter_mut().enumerate() {
            let invalid = |field: &str, message: String| ConfigError::Invalid {
                path: path.to_path_buf(),
                field: format!("principal[{i}].{field}"),
                message,
            };
            match (&p.user, is_no_uid(&p.uid)) {
                (Some(_), false) => {
                    return Err(invalid("user", "give uid or user, not both".into()));
                }
                (None, true) => {
                    return Err(invalid(
                        "uid",
                        format!("principal {:?} names no caller: give uid or user", p.name),
                    ));
                }
                (None, false) => {}
                (Some(user), true) => match nix::unistd::User::from_name(user) {
                    Ok(Some(u)) => p.uid = u.uid.as_raw(),
                    Ok(None) => {
                        return Err(invalid(
                            "user",
                            format!(
                                "no user {user:?} (create it, e.g. with sysusers.d, or give uid)"
                            ),
                        ));
                    }
                    Err(e) => {
                        return Err(invalid("user", format!("looking up user {user:?}: {e}")));
                    }
                },
            }
        }
        Ok(())
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_owned(),
            message,
        };
        if self.schema_version != SCHEMA_VERSION {
            return Err(invalid(
                "schema_version",
                format!(
                    "{} is not supported; this build reads {SCHEMA_VERSION}",
                    self.schema_version
                ),
            ));
        }
        if !self.socket.is_absolute() {
            return Err(invalid(
                "socket",
                format!("{} must be an absolute path", self.socket.display()),
            ));
        }
        let mut uids = std::collections::HashSet::new();
        for (i, p) in self.principals.iter().enumerate() {
            if !uids.insert(p.uid) {
                return Err(invalid(
                    &format!("principal[{i}].uid"),
                    format!("uid {} is listed twice; merge its operations", p.uid),
                ));
            }
            if p.operations.is_empty() {
                return Err(invalid(
                    &format!("principal[{i}].operations"),
                    format!(
                        "principal {:?} may call nothing; remove it or list operations",
                        p.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The gid of `socket_group`: a group name is looked up (NSS, so sysusers.d groups
    /// count), a number is taken as a gid.
    pub fn socket_gid(&self, path: &Path) -> Result<Option<u32>, ConfigError> {
        let Some(group) = &self.socket_group else {
            return Ok(None);
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: "socket_group".to_owned(),
            message,
        };
        match nix::unistd::Group::from_name(group) {
            Ok(Some(g)) => Ok(Some(g.gid.as_raw())),
            Ok(None) => group.parse::<u32>().map(Some).map_err(|_| {
                invalid(format!(
                    "no group {group:?} (create it, e.g. with sysusers.d, or give a numeric gid)"
                ))
            }),
            Err(e) => Err(invalid(format!("looking up group {group:?}: {e}"))),
        }
    }

    /// The principal with this peer UID.
    pub fn principal(&self, uid: u32) -> Option<&Principal> {
        self.principals.iter().find(|p| p.uid == uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
schema_version = 1
socket = "/run/warden/keyd.sock"
[keystore]
backend = "tpm"
tcti = "device:/dev/tpmrm0"
[[principal]]
name = "agent"
uid = 991
operations = ["describe", "sign"]
"#;

    #[test]
    fn a_principal_is_named_by_uid_or_by_user() {
        let by_user = GOOD.replace("uid = 991", "user = \"root\"");
        let c = KeydConfig::parse(Path::new("/etc/warden/keyd.toml"), &by_user).unwrap();
        assert!(c.principal(0).is_some(), "root resolves to uid 0");
        for (text, want) in [
            (
                GOOD.replace("uid = 991", "uid = 991\nuser = \"root\""),
                "not both",
            ),
            (GOOD.replace("uid = 991\n", ""), "names no caller"),
            (
                GOOD.replace("uid = 991", "user = \"no-such-user-warden\""),
                "no user \"no-such-user-warden\"",
            ),
        ] {
            let e = KeydConfig::parse(Path::new("/etc/warden/keyd.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn parses_and_checks() {
        let c = KeydConfig::parse(Path::new("k.toml"), GOOD).unwrap();
        assert_eq!(c.principal(991).unwrap().operations.len(), 2);
        assert!(c.principal(0).is_none());
        assert_eq!(c.socket_gid(Path::new("k.toml")).unwrap(), None);
        let c = KeydConfig::parse(
            Path::new("k.toml"),
            &GOOD.replace("[keystore]", "socket_group = \"4242\"\n[keystore]"),
        )
        .unwrap();
        assert_eq!(c.socket_gid(Path::new("k.toml")).unwrap(), Some(4242));
        let c = KeydConfig::parse(
            Path::new("k.toml"),
            &GOOD.replace("[keystore]", "socket_group = \"root\"\n[keystore]"),
        )
        .unwrap();
        assert_eq!(c.socket_gid(Path::new("k.toml")).unwrap(), Some(0));
        let c = KeydConfig::parse(
            Path::new("k.toml"),
            &GOOD.replace(
                "[keystore]",
                "socket_group = \"no-such-group-here\"\n[keystore]",
            ),
        )
        .unwrap();
        let e = c.socket_gid(Path::new("k.toml")).unwrap_err().to_string();
        assert!(e.contains("`socket_group`"), "{e}");
        let all = KeydConfig::parse(
            Path::new("k.toml"),
            &GOOD.replace(
                "[\"describe\", \"sign\"]",
                "[\"extend_pcr\", \"read_pcr\", \"quote\"]",
            ),
        )
        .unwrap();
        assert_eq!(
            all.principal(991).unwrap().operations,
            vec![Operation::ExtendPcr, Operation::ReadPcr, Operation::Quote]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = KeydConfig::parse(
            Path::new("k.toml"),
            &GOOD.replace("uid = 991", "uid = 991\nuuid = 3"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("uuid"), "{e}");
        let e = KeydConfig::parse(Path::new("k.toml"), &GOOD.replace("\"sign\"", "\"export\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("export"), "{e}");
        let e = KeydConfig::parse(Path::new("k.toml"), &GOOD.replace("/run/warden", "run"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`socket`"), "{e}");
        let twice =
            format!("{GOOD}\n[[principal]]\nname = \"b\"\nuid = 991\noperations = [\"sign\"]\n");
        let e = KeydConfig::parse(Path::new("k.toml"), &twice)
            .unwrap_err()
            .to_string();
        assert!(e.contains("principal[1].uid"), "{e}");
        let e = KeydConfig::parse(
            Path::new("k.toml"),
            &GOOD.replace(
                "tcti = \"device:/dev/tpmrm0\"",
                "tcti = \"x\"\npin = \"1234\"",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pin"), "{e}");
    }
}
