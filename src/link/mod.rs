//! The links between popgw's parts: how the gateway, the indexer and the tools reach
//! PostgreSQL (the registry's store, the central audit index) and NATS (the audit
//! witness), authenticated and encrypted.
//!
//! - [`postgres`]: libpq-style URLs (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, a
//!   password file) turned into a `tokio_postgres::Config` and a rustls connector with
//!   popgw's one crypto provider (ring).
//! - [`nats`]: `[audit.witness]`'s connection: TLS (a CA, a client certificate), a user
//!   with a password read from a file or an nkey seed file; plain `nats://` only on
//!   loopback unless `allow_plaintext`.
//!
//! **Invariants:** a secret (password, nkey seed, private key) is read from a file and
//! never appears in a log line, an error message, `Debug` output or `check-config`; a
//! non-loopback peer is never spoken to in clear unless the configuration says so.

pub mod nats;
pub mod postgres;
