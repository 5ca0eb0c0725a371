//! Compiles the protobuf definitions. protoc comes from the vendored
//! `protoc-bin-vendored` crate unless `PROTOC` points at one already.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &["proto/billdb.proto", "proto/raft_internal.proto"],
        &["proto"],
    )?;
    Ok(())
}
