//! Everything in Warden that decides trust.
//!
//! - [`bundle`]: signed model bundles in the OpenSSF Model Signing (OMS) format, compatible
//!   with the reference tool `model-signing` 1.1.1 (key and certificate methods).

pub mod bundle;
