//! `warden-keyd`: the key service. It is the only process that opens the TPM (`tss-esapi`) or
//! the PKCS#11 module (`cryptoki`); everything else asks it over a Unix socket through the
//! narrow API of `warden_keystore::keyd` (as aziot's keyd). The agent does not link this
//! crate.
//!
//! - [`config`]: its own typed TOML file (`/etc/warden/keyd.toml`): the socket, the key store
//!   backend, and the principals (peer UIDs) allowed to call which operations.
//! - [`server`]: the listener: one task per connection, each caller authorized by its peer
//!   UID (`SO_PEERCRED`) before any request is read, each operation checked against the
//!   caller's allow-list, key store calls on the blocking pool.
//! - [`backend`]: opens the configured backend.
//! - [`tpm`]: the TPM 2.0: the key store backend, the attestation key and quotes, the
//!   endorsement key and credential activation.
//! - [`pkcs11`]: the PKCS#11 key store backend.
//! - [`cli`]: the `warden-keyd` commands: `serve`, `provision`, `attest` (on the TPM itself,
//!   while the service is stopped) and `status`.

pub mod backend;
pub mod cli;
pub mod config;
pub mod pkcs11;
pub mod server;
pub mod tpm;
