//! Generates the Rust code for ringkv's schemas. Uses the vendored `protoc`
//! unless `PROTOC` is set, so a fresh machine needs no system protobuf
//! compiler.
//!
//! Without the `services` feature only prost messages are generated (what
//! `ringkv-core` needs). With it, madsim-tonic-build generates messages plus
//! the gRPC services twice: the real tonic code and, under `OUT_DIR/sim`, the
//! madsim code; `tonic::include_proto!` picks one by `cfg(madsim)`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "ringkv/v1/kv.proto",
        "ringkv/v1/peer.proto",
        "ringkv/v1/api.proto",
        "ringkv/v1/transport.proto",
        "ringkv/v1/meta.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    config.bytes(["."]);
    if std::env::var_os("CARGO_FEATURE_SERVICES").is_some() {
        tonic_build::configure()
            .emit_rerun_if_changed(false)
            .compile_protos_with_config(config, &protos, &["."])?;
    } else {
        config.compile_protos(&protos, &["."])?;
    }
    Ok(())
}
