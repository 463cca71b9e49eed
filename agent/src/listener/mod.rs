//! The agent's HTTPS listeners and their TLS.
//!
//! - [`accept`]: the accept loop every listener shares (connection cap, handshake deadline,
//!   HTTP/1.1 and HTTP/2, graceful drain), and the audit of a refused handshake.
//! - [`inference`]: the inference listener ([`Server`]).
//! - [`tls`]: rustls configuration from certificate and key files; the client certificate's
//!   names, read once per connection.
//! - [`keystore_tls`]: the same with the key store's device key signing the handshakes, and
//!   [`keystore_tls::listener_config`], which picks between the two.

pub mod accept;
pub mod client_verifier;
pub mod inference;
pub mod keystore_tls;
pub mod tls;

pub use inference::Server;
