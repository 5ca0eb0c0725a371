//! Small disks for the `disk-full` nemesis: a node's data directory moved
//! onto a tmpfs of its own (sized to its data plus [`HEADROOM_BYTES`]), so
//! that filling that filesystem with a ballast file makes only this node's
//! writes fail with ENOSPC, as a real full disk would, while the other
//! nodes (and the machine) keep their space.
//!
//! A node is moved the first time the nemesis picks it: stopped (SIGTERM),
//! its data copied onto the new mount, started again. The mount then stays
//! for the rest of the run and is unmounted when the harness is dropped
//! (after its nodes are killed) or before the node's data is wiped.
//!
//! May touch: the mount table (root), the data directories of the nodes it
//! moves, and a ballast file in them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};

/// Free space a moved node's filesystem has beyond its data: room for the
/// rest of a run's writes, and above the node's `storage.recover_free_bytes_min`
/// (256 MiB), so it can recover once the ballast goes.
pub const HEADROOM_BYTES: u64 = 2 << 30;
/// The ballast file, in the node's data directory.
pub const BALLAST_FILE: &str = "chaos-ballast";
/// Bytes the ballast grows by per write.
const BALLAST_CHUNK_BYTES: usize = 1 << 20;

/// Removes the ballast when dropped, so a nemesis step that fails halfway
/// leaves no node with a full disk behind.
pub struct Ballast(pub PathBuf);

impl Drop for Ballast {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The tmpfs mounts made, by node id; unmounted on drop.
#[derive(Default)]
pub struct SmallDisks {
    mounted: Mutex<BTreeMap<u64, PathBuf>>,
}

impl SmallDisks {
    pub fn is_small(&self, n: u64) -> bool {
        self.mounted.lock().is_ok_and(|m| m.contains_key(&n))
    }

    /// Moves the (stopped) node's data directory `data` onto a tmpfs of its
    /// own; the bytes of data moved.
    pub fn move_onto_tmpfs(&self, n: u64, data: &Path) -> Result<u64> {
        ensure!(
            is_root(),
            "the disk-full nemesis mounts a tmpfs per node and must run as root"
        );
        ensure!(!self.is_small(n), "node {n} already has a small disk");
        let bytes = dir_bytes(data)?;
        let aside = data.with_extension("moving");
        if aside.exists() {
            std::fs::remove_dir_all(&aside)
                .with_context(|| format!("removing {}", aside.display()))?;
        }
        std::fs::rename(data, &aside)
            .with_context(|| format!("moving {} aside", data.display()))?;
        std::fs::create_dir(data).with_context(|| format!("creating {}", data.display()))?;
        let size = bytes + HEADROOM_BYTES;
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(data))?;
        if let Ok(mut m) = self.mounted.lock() {
            m.insert(n, data.to_path_buf());
        }
        let mut src = aside.clone().into_os_string();
        src.push("/.");
        run(Command::new("cp").arg("-a").arg(&src).arg(data))?;
        std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
        Ok(bytes)
    }

    /// Unmounts node `n`'s tmpfs (its data goes with it); the node must be
    /// down.
    pub fn release(&self, n: u64) -> Result<()> {
        let dir = self.mounted.lock().ok().and_then(|mut m| m.remove(&n));
        if let Some(dir) = dir {
            run(Command::new("umount").arg(&dir))?;
        }
        Ok(())
    }
}

impl Drop for SmallDisks {
    fn drop(&mut self) {
        if let Ok(m) = self.mounted.lock() {
            for dir in m.values() {
                // Lazy: a node process that outlived the harness may still
                // hold files open.
                let _ = Command::new("umount").arg("-l").arg(dir).status();
            }
        }
    }
}

/// Grows the ballast in `data` until the filesystem is full; the ballast's
/// path.
pub fn fill(data: &Path) -> Result<PathBuf> {
    let path = data.join(BALLAST_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let chunk = vec![0xA5u8; BALLAST_CHUNK_BYTES];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
        }
    }
    // Fill the last partial pages too.
    let mut small = vec![0xA5u8; 4096];
    while !small.is_empty() {
        match f.write(&small) {
            Ok(0) | Err(_) => {
                small.truncate(small.len() / 2);
            }
            Ok(_) => {}
        }
    }
    Ok(path)
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output()
        .context("running du")?;
    ensure!(
        out.status.success(),
        "du {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du {}: no number", dir.display()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
