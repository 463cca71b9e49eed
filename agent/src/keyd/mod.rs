//! `warden keyd`: the key service. It is the only process that opens the TPM or the PKCS#11
//! module; everything else asks it over a Unix socket through a narrow API (as aziot's keyd).
//!
//! - [`config`]: its own typed TOML file (`/etc/warden/keyd.toml`): the socket, the key store
//!   backend, and the principals (peer UIDs) allowed to call which operations.
//! - [`protocol`]: the wire format, length-prefixed JSON frames with bounded sizes.
//! - [`server`]: the listener: one task per connection, each caller authorized by its peer
//!   UID (`SO_PEERCRED`) before any request is read, each operation checked against the
//!   caller's allow-list, key store calls on the blocking pool.
//! - [`client`]: [`client::KeydClient`], a [`warden_attest::keystore::KeyStore`] that forwards
//!   to keyd, so the agent uses keyd or an in-process store behind the same trait.
//!
//! The API: describe (backend and capabilities), the device public key, sign with the device
//! key, read the anchors of a role, unseal a data key, read and advance a counter; on a TPM,
//! extend an application PCR (16 to 23, never a boot PCR), read a PCR, and quote PCRs over a
//! verifier's nonce with the attestation key. Installing
//! anchors, creating keys (the attestation key included) and sealing are provisioning steps
//! (`warden provision`), run by an operator as the key service's user while keyd is stopped;
//! they are not on the socket.

pub mod client;
pub mod config;
pub mod protocol;
pub mod server;

pub use client::KeydClient;
pub use config::{KeydConfig, Operation, Principal};
pub use server::{bind, bind_with_group, serve};
