//! Generates the prost types for ringkv's schemas. Uses the vendored `protoc`
//! unless `PROTOC` is set, so a fresh machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["ringkv/v1/kv.proto", "ringkv/v1/peer.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    config.bytes(["."]).compile_protos(&protos, &["."])?;
    Ok(())
}
