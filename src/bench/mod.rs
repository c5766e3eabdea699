//! The instruments of the performance work (issue 17): a load generator and a baseline
//! server, both in the `popgw` binary so that one release build runs either on its own
//! core (`popgw loadgen`, `popgw bench-baseline`; `benches/compare.sh` drives both).
//!
//! - [`loadgen`]: mutual TLS, a pool of raw HTTP/2 connections (no tonic client stack:
//!   the generator must cost less per call than the servers it measures), closed loop,
//!   open loop (latency from the intended send time), new connections per second, a mix
//!   of RPCs, uniform or Zipf ids, hdrhistogram percentiles, errors by gRPC code, CPU of
//!   the generator and of the server, a JSON report. Loopback only.
//! - [`baseline`]: a bare tonic server with popgw's TLS configuration answering fixed
//!   `IdentityGateway` replies — the limit of the stack on this machine, against which
//!   every gateway figure is quoted.

pub mod baseline;
pub mod loadgen;
