//! The key service (`warden-keyd`) as its callers see it. The service is the only process
//! that opens the TPM or the PKCS#11 module; everything else asks it over a Unix socket
//! through a narrow API (as aziot's keyd). Its server, config and hardware backends are the
//! `warden-keyd` crate's; this is what a caller links.
//!
//! - [`protocol`]: the wire format, length-prefixed JSON frames with bounded sizes.
//! - [`operation`]: the operations of the API, which keyd's config grants per caller.
//! - [`client`]: [`KeydClient`], a [`crate::KeyStore`] that forwards to keyd, so the agent
//!   uses keyd or the in-process development store behind the same trait.
//!
//! The API: describe (backend and capabilities), the device public key, sign with the device
//! key, read the anchors of a role, unseal a data key, read and advance a counter; on a TPM,
//! extend an application PCR (16 to 23, never a boot PCR), read a PCR, and quote PCRs over a
//! verifier's nonce with the attestation key. Installing anchors, creating keys (the
//! attestation key included) and sealing are provisioning steps (`warden-keyd provision`),
//! run by an operator as the key service's user while keyd is stopped; they are not on the
//! socket.

pub mod client;
pub mod operation;
pub mod protocol;

pub use client::KeydClient;
pub use operation::Operation;
