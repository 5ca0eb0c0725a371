//! `billdb-node`: start one billdb server node.

use clap::Parser;

/// mimalloc instead of glibc malloc: apply allocates and frees many small
/// buffers per command, and glibc's free-list upkeep (`malloc_consolidate`,
/// `unlink_chunk`) took about a third of a follower's samples during bulk
/// imports.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let args = billdb_node::config::Args::parse();
    let config = match billdb_node::config::Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("billdb-node: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("billdb-node: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(billdb_node::server::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("billdb-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
