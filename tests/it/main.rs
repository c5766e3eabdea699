//! popgw's integration tests, one binary (one link of the library instead of one per
//! file): the real server on 127.0.0.1:0 over real mutual TLS, the binary as operators run
//! it, PostgreSQL and NATS on loopback. Apart, each in a binary of its own because it
//! needs its process to itself: `tests/hardening.rs` measures the process's memory, and
//! `tests/logs/` installs a global log subscriber that captures everything.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod bad_input;
mod bench_tools;
mod cli;
mod console;
mod crash;
mod docs;
mod enumeration;
mod gateway;
mod index;
mod nats_link;
mod operations;
mod postgres_link;
mod production;
mod registry;
mod registry_cli;
mod tls_refusals;
mod upstream;
mod witness;
