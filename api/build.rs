//! Compiles the protobuf definitions. protoc comes from the vendored
//! `protoc-bin-vendored` crate unless `PROTOC` points at one already.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=proto");
    // The client API's descriptors (v1 and v2) are kept for gRPC server
    // reflection and for filling the typed v2 replies from JSON
    // (`billdb_api::FILE_DESCRIPTOR_SET`); the node-to-node transport is
    // compiled apart so that reflection on the client port lists only the
    // client API. Type names (`prost::Name`) let a message find its own
    // descriptor.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("billdb_client_descriptor.bin"))
        .compile_with_config(
            config,
            &["proto/billdb.proto", "proto/billdb_v2.proto"],
            &["proto"],
        )?;
    tonic_prost_build::configure().compile_protos(&["proto/raft_internal.proto"], &["proto"])?;
    Ok(())
}
