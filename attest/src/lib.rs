//! Everything in Warden that decides trust.
//!
//! - [`bundle`]: signed model bundles in the OpenSSF Model Signing (OMS) format, compatible
//!   with the reference tool `model-signing` 1.1.1 (key and certificate methods).
//! - [`keystore`]: key custody behind one trait (TPM 2.0, PKCS#11, development software).
//! - [`boot`]: measured boot (event log replay, quotes, the application PCR).
//! - [`release`]: release statements and attestations (signed in-toto statements).
//! - [`revocation`]: signed revocation lists with a monotonic serial (anti-rollback).
//! - [`tpm`]: the shared TPM connection used by the key store and measured boot.

pub mod boot;
pub mod bundle;
pub mod keystore;
pub mod policyset;
pub mod release;
pub mod revocation;
pub mod tpm;
