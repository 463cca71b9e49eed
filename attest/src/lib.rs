//! Everything in Warden that decides trust by verifying: pure code that reads what others
//! signed or measured, with no hardware. Keys live behind `warden-keystore`'s trait (held by
//! the key service, `warden-keyd`); this crate only uses that trait's counters for
//! anti-rollback.
//!
//! - [`anchors`]: each role's trust anchors, read from the key store, as verifiers.
//! - [`bundle`]: signed model bundles in the OpenSSF Model Signing (OMS) format, compatible
//!   with the reference tool `model-signing` 1.1.1 (key and certificate methods).
//! - [`release`]: release statements and attestations (signed in-toto statements).
//! - [`revocation`]: signed revocation lists with a monotonic serial (anti-rollback).
//! - [`policyset`]: a policy set's files and canonical digest, and the fleet authority's
//!   statement over it.
//! - [`boot`]: measured boot as a verifier sees it (event log replay, quote verification,
//!   attestation key enrolment, the application event log).

pub mod anchors;
pub mod boot;
pub mod bundle;
pub mod policyset;
pub mod release;
pub mod revocation;
