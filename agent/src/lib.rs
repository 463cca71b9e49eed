//! The Warden agent: the HTTPS gateway and Open Inference Protocol API, model loading (verify,
//! then hand to a sandboxed worker), the audit trail, and the demo.
//!
//! The binary `warden` (src/main.rs) is a thin CLI over these modules.

pub mod admin;
pub mod admission;
pub mod api;
pub mod audit;
pub mod config;
pub mod demo;
pub mod fleet;
pub mod gateway;
pub mod models;
pub mod oci;
pub mod pki;
pub mod policy_push;
pub mod serve;
pub mod server;
pub mod state_files;
pub mod status;
pub mod tls;
pub mod tls_keystore;
pub mod validate;
