//! The instruments of popgw's performance work (issue 17), apart from the serving library
//! that every deployment links: a load generator and a baseline server, each run as a
//! process of its own on its own core (`popgw-bench loadgen`, `popgw-bench baseline`;
//! `benches/compare.sh` drives both).
//!
//! - [`loadgen`]: mutual TLS, a pool of raw HTTP/2 connections (no tonic client stack:
//!   the generator must cost less per call than the servers it measures), closed loop,
//!   open loop (latency from the intended send time), new connections per second, a mix
//!   of RPCs, uniform or Zipf ids, hdrhistogram percentiles, errors by gRPC code, CPU of
//!   the generator and of the server, a JSON report. Loopback only.
//! - [`hold`]: idle connections and calls without their body held open, for
//!   `benches/memory.sh` to read what each costs the server.
//! - [`baseline`]: a bare tonic server with popgw's TLS configuration answering fixed
//!   `IdentityGateway` replies — the limit of the stack on this machine, against which
//!   every gateway figure is quoted.

#![forbid(unsafe_code)]

pub mod baseline;
pub mod hold;
pub mod loadgen;
