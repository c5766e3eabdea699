//! Compiles the protos of the top-level `proto/` folder in pure Rust (protox; no system
//! protoc), generates the tonic/prost code, proto3-JSON serde impls (pbjson) and the
//! descriptor set served by gRPC reflection.
use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = [
        "popgw/registry/v1/registry.proto",
        "popgw/v1/gateway.proto",
        "popgw/v1/audit.proto",
        "popgw/v1/access.proto",
        "popgw/v1/limits.proto",
    ]
    .map(|f| root.join(f));
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let bytes = fds.encode_to_vec();
    fs::write(out.join("popgw_descriptor.bin"), &bytes)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .build(&[".popgw"])?;
    Ok(())
}
