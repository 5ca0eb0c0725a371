//! The vote, mirrored outside the database: written and fsynced beside it
//! on every vote save (`LogStore::save_vote`), with its SHA-256, so a repair
//! from peers (`crate::repair`) keeps the vote even when the database that
//! holds it is damaged. May touch: files directly in the data directory.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::types::Vote;

/// The latest vote, mirrored outside the database.
pub const VOTE_FILE: &str = "vote.json";

#[derive(Serialize, Deserialize)]
struct VoteFile {
    vote: Vote,
    /// SHA-256 (hex) of `vote` as JSON.
    sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes `bytes` to `dir/name` so that a crash leaves the old or the new
/// file, never a torn one: a temporary file, fsync, rename, fsync of `dir`.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Mirrors `vote` into [`VOTE_FILE`] (fsynced before it returns).
pub fn write_vote(dir: &Path, vote: &Vote) -> std::io::Result<()> {
    let json = serde_json::to_vec(vote).map_err(std::io::Error::other)?;
    let file = VoteFile {
        vote: *vote,
        sha256: sha256_hex(&json),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    write_atomically(dir, VOTE_FILE, &bytes)
}

/// The mirrored vote; `Ok(None)` when there is none, an error when the
/// file is damaged (its hash does not match).
pub fn read_vote(dir: &Path) -> Result<Option<Vote>, String> {
    let path = dir.join(VOTE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let file: VoteFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let json = serde_json::to_vec(&file.vote).map_err(|e| e.to_string())?;
    if sha256_hex(&json) != file.sha256 {
        return Err(format!(
            "{}: the vote's hash does not match",
            path.display()
        ));
    }
    Ok(Some(file.vote))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64, node: crate::types::NodeId) -> Vote {
        Vote::new(term, node)
    }

    #[test]
    fn the_vote_mirror_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_vote(dir.path()), Ok(None));
        write_vote(dir.path(), &vote(7, 3)).expect("write");
        assert_eq!(read_vote(dir.path()), Ok(Some(vote(7, 3))));
        write_vote(dir.path(), &vote(8, 2)).expect("write");
        assert_eq!(read_vote(dir.path()), Ok(Some(vote(8, 2))));
        // A changed term with the old hash is refused, not believed.
        let path = dir.path().join(VOTE_FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("8", "9")).expect("write");
        assert!(read_vote(dir.path()).is_err());
    }
}
