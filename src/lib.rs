//! popgw: the gRPC gateway between Vietnam's National Population Database and the
//! public-service portals (Project 06).
//!
//! The path of one request, module by module:
//!
//! - [`tls`]: TLS identity. Mutual TLS on every connection; the client is named by
//!   the URI SAN of its certificate.
//! - [`policy`]: deny by default; which client may call which RPC for which procedure,
//!   and whether it sees per-field details.
//! - [`limits`]: against enumeration — a rate per client, a lock on a citizen after
//!   too many failed verifications, counted per node or nationally (NATS key-value).
//! - [`catalogue`]: the 25 procedures, each with its matching rule and field profile.
//! - [`validation`]: every request field checked before any lookup (ids, names,
//!   dates, case ids).
//! - [`registry`]: the `Registry` trait and what is behind it: the on-disk store (redb,
//!   the default), PostgreSQL, a remote `popgw registry serve` (deadlines, retries, a
//!   circuit breaker), in memory (tests); imports, the versioned change feed (the
//!   synthetic population is a crate of its own, `crates/popgw-population`).
//! - [`cache`]: records in memory (moka) in front of any registry, following its
//!   change feed so that nothing changed is served; a bound on staleness.
//! - [`matching`]: Vietnamese name normalisation and the verdict.
//! - [`disclosure`]: minimisation of a record to the fields granted.
//! - [`audit`]: the tamper-evident, durable audit log (group commit, hash chain,
//!   sealed batches, signed checkpoints, verification), its NATS JetStream witness and
//!   the central audit index in PostgreSQL fed from it.
//! - [`link`]: the links to PostgreSQL and NATS (TLS, credentials, no plaintext off
//!   loopback).
//! - [`service`]: the gRPC services `IdentityGateway`, `AuditLog`, `CitizenAccess` and
//!   `Limits`, and `PopulationRegistry` for `popgw registry serve`.
//! - [`error`]: the library's errors and their single mapping to gRPC codes.
//! - [`server`]: assembly; `serve(listener, config, shutdown)` and `serve_registry`.
//! - [`reload`]: certificates, CRLs and policy read again on SIGHUP or when a file
//!   changes, without restart; a broken file is refused and the running one stays.
//! - [`admin`]: the admin HTTP listener (Prometheus `/metrics`, `/healthz`, `/readyz`).
//! - [`console`]: the operators' web console (`popgw console`), a client of the gateway
//!   with an operator's certificate that serves pages on loopback; it binds nothing itself.
//! - [`config`], [`telemetry`], [`pki`] (development certificates), [`demo`] (first
//!   start), [`client`] (the command-line client's connection), [`display`] (its output at a terminal),
//!   [`proto`] (the contracts compiled, a crate of its own: `crates/popgw-proto`). The
//!   benchmarks' load generator and baseline server are a crate of their own,
//!   `crates/popgw-bench`: no deployment links them.
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub)]

pub mod admin;
pub mod audit;
pub mod cache;
pub mod catalogue;
pub mod client;
pub mod config;
pub mod console;
pub mod demo;
pub mod disclosure;
pub mod display;
pub mod error;
pub mod limits;
pub mod link;
pub mod matching;
pub mod pki;
pub mod policy;
/// The contracts (`proto/`) compiled: the crate `popgw-proto` (`crates/popgw-proto`).
pub use popgw_proto as proto;
pub mod registry;
pub mod reload;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod validation;

pub use config::Config;
pub use server::{serve, Server};
