//! The operations of the key service's API: what a principal in keyd's config may be allowed,
//! and what each request on the socket asks for.

use serde::{Deserialize, Serialize};

/// An operation of the key service's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// The backend and its capabilities.
    Describe,
    /// The device key's public key.
    DevicePublicKey,
    /// Sign with the device key.
    Sign,
    /// Read the anchors of a role.
    Anchors,
    /// Unseal a data key.
    Unseal,
    /// Read a counter.
    Counter,
    /// Advance a counter.
    AdvanceCounter,
    /// Extend an application PCR (16 to 23 only, see
    /// [`super::protocol::EXTENDABLE_PCRS`]).
    ExtendPcr,
    /// Read a PCR.
    ReadPcr,
    /// Quote PCRs over a verifier's nonce with the attestation key.
    Quote,
    /// The device's identity for enrolling its attestation key.
    AttestationIdentity,
    /// Answer an enrolment challenge with the TPM.
    ActivateCredential,
}

impl Operation {
    /// Its name in config and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Describe => "describe",
            Operation::DevicePublicKey => "device_public_key",
            Operation::Sign => "sign",
            Operation::Anchors => "anchors",
            Operation::Unseal => "unseal",
            Operation::Counter => "counter",
            Operation::AdvanceCounter => "advance_counter",
            Operation::ExtendPcr => "extend_pcr",
            Operation::ReadPcr => "read_pcr",
            Operation::Quote => "quote",
            Operation::AttestationIdentity => "attestation_identity",
            Operation::ActivateCredential => "activate_credential",
        }
    }
}
