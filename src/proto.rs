//! Generated protobuf and gRPC code (see build.rs), with proto3-JSON serde impls.
#![allow(clippy::all, missing_docs)]

/// Generated code, laid out as the proto packages are (`popgw.v1`, `popgw.registry.v1`).
pub mod popgw {
    pub mod registry {
        pub mod v1 {
            tonic::include_proto!("popgw.registry.v1");
            include!(concat!(env!("OUT_DIR"), "/popgw.registry.v1.serde.rs"));
        }
    }
    pub mod v1 {
        tonic::include_proto!("popgw.v1");
        include!(concat!(env!("OUT_DIR"), "/popgw.v1.serde.rs"));
    }
}

/// The upstream registry's contract (`popgw.registry.v1`).
pub use popgw::registry::v1 as registry;
/// The gateway's public API (`popgw.v1`).
pub use popgw::v1 as gateway;

/// Encoded descriptor set of every popgw proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/popgw_descriptor.bin"));
