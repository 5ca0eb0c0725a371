//! Snapshot files: the state machine's domain families written from one
//! consistent RocksDB view, streamed in bounded chunks, verified and
//! installed.
//!
//! File layout (all integers big-endian): `MAGIC` (8 bytes, plain), then
//! one LZ4 frame holding repeated { family index u8 · key len u32 · key ·
//! value len u32 · value } · `0xFF` · entry count u64 · SHA-256 of the magic
//! and every uncompressed byte before it (32 bytes). Files written before
//! compression (`MAGIC_V1`) hold the same bytes uncompressed and are still
//! read. Compression: the state is mostly decimal strings and repeated key
//! prefixes, and the uncompressed file was about twice RocksDB's size on
//! every node (3.1 GB beside 1.7 GB at 7.8 M records).
//!
//! May touch only files under the node's `snapshots/` directory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::io_err;

pub const MAGIC: &[u8; 8] = b"BILLSNP2";
/// Uncompressed files of earlier versions.
pub const MAGIC_V1: &[u8; 8] = b"BILLSNP1";
const END_MARK: u8 = 0xFF;
/// Largest key or value a snapshot may carry (guards against a corrupt length).
const ITEM_SIZE_BYTES_MAX: usize = 64 << 20;
/// Size of one streamed chunk; well under tonic's message limit.
pub const CHUNK_SIZE_BYTES: usize = 1 << 20;

/// A complete snapshot file, held open so a newer snapshot replacing it
/// does not pull it from under a transfer in progress.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub size_bytes: u64,
}

impl SnapshotFile {
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        let file = File::open(path)?;
        let size_bytes = file.metadata()?.len();
        Ok(SnapshotFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            size_bytes,
        })
    }

    /// Read up to `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        self.file.read_at(buf, offset)
    }

    /// Copy the whole file to `dest` (fsync'd).
    pub fn copy_to(&self, dest: &Path) -> Result<(), std::io::Error> {
        let mut out = File::create(dest)?;
        let mut buf = vec![0u8; CHUNK_SIZE_BYTES];
        let mut offset = 0u64;
        loop {
            let n = self.read_at(offset, &mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            offset += n as u64;
        }
        out.sync_all()
    }
}

/// One snapshot item: (family index, key, value).
pub type SnapshotItem = (u8, Vec<u8>, Vec<u8>);

/// Streams `(family index, key, value)` into a snapshot file.
pub struct SnapshotWriter {
    out: lz4_flex::frame::FrameEncoder<BufWriter<File>>,
    hasher: Sha256,
    count: u64,
}

impl SnapshotWriter {
    pub fn create(path: &Path) -> Result<Self, std::io::Error> {
        let mut file = BufWriter::with_capacity(1 << 20, File::create(path)?);
        file.write_all(MAGIC)?;
        let mut hasher = Sha256::new();
        hasher.update(MAGIC);
        Ok(SnapshotWriter {
            out: lz4_flex::frame::FrameEncoder::new(file),
            hasher,
            count: 0,
        })
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), std::io::Error> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn add(&mut self, family: u8, key: &[u8], value: &[u8]) -> Result<(), std::io::Error> {
        if family == END_MARK
            || key.len() > ITEM_SIZE_BYTES_MAX
            || value.len() > ITEM_SIZE_BYTES_MAX
        {
            return Err(io_err("snapshot item out of bounds"));
        }
        self.write_raw(&[family])?;
        self.write_raw(&(key.len() as u32).to_be_bytes())?;
        self.write_raw(key)?;
        self.write_raw(&(value.len() as u32).to_be_bytes())?;
        self.write_raw(value)?;
        self.count += 1;
        Ok(())
    }

    /// Write the trailer and fsync. Returns the number of items.
    pub fn finish(mut self) -> Result<u64, std::io::Error> {
        self.write_raw(&[END_MARK])?;
        let count = self.count;
        self.write_raw(&count.to_be_bytes())?;
        let digest = self.hasher.clone().finalize();
        self.out.write_all(&digest)?;
        let buffered = self.out.finish().map_err(io_err)?;
        let file = buffered.into_inner().map_err(|e| io_err(e.error()))?;
        file.sync_all()?;
        Ok(count)
    }
}

/// Read a snapshot file item by item, checking the trailer.
pub struct SnapshotReader {
    input: Box<dyn Read + Send>,
    hasher: Sha256,
    count: u64,
    done: bool,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        let mut file = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic)?;
        let input: Box<dyn Read + Send> = if &magic == MAGIC {
            Box::new(lz4_flex::frame::FrameDecoder::new(file))
        } else if &magic == MAGIC_V1 {
            Box::new(file)
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a billdb snapshot file",
            ));
        };
        let mut hasher = Sha256::new();
        hasher.update(magic);
        Ok(SnapshotReader {
            input,
            hasher,
            count: 0,
            done: false,
        })
    }

    fn read_hashed(&mut self, buf: &mut [u8]) -> Result<(), std::io::Error> {
        self.input.read_exact(buf)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn read_len(&mut self) -> Result<usize, std::io::Error> {
        let mut b = [0u8; 4];
        self.read_hashed(&mut b)?;
        let n = u32::from_be_bytes(b) as usize;
        if n > ITEM_SIZE_BYTES_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "snapshot item too large",
            ));
        }
        Ok(n)
    }

    /// The next item, or `None` after a verified trailer.
    pub fn next_item(&mut self) -> Result<Option<SnapshotItem>, std::io::Error> {
        if self.done {
            return Ok(None);
        }
        let mut fam = [0u8; 1];
        self.read_hashed(&mut fam)?;
        if fam[0] == END_MARK {
            let mut cnt = [0u8; 8];
            self.read_hashed(&mut cnt)?;
            let expect_digest = self.hasher.clone().finalize();
            let mut digest = [0u8; 32];
            self.input.read_exact(&mut digest)?;
            if u64::from_be_bytes(cnt) != self.count || digest[..] != expect_digest[..] {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "snapshot checksum mismatch",
                ));
            }
            self.done = true;
            return Ok(None);
        }
        let klen = self.read_len()?;
        let mut key = vec![0u8; klen];
        self.read_hashed(&mut key)?;
        let vlen = self.read_len()?;
        let mut value = vec![0u8; vlen];
        self.read_hashed(&mut value)?;
        self.count += 1;
        Ok(Some((fam[0], key, value)))
    }
}

/// Check a whole file's trailer without keeping anything.
pub fn verify(path: &Path) -> Result<u64, std::io::Error> {
    let mut r = SnapshotReader::open(path)?;
    while r.next_item()?.is_some() {}
    Ok(r.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.snap");
        let mut w = SnapshotWriter::create(&p).unwrap();
        w.add(0, b"k1", b"v1").unwrap();
        w.add(2, b"k2", &[7u8; 1000]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        let mut r = SnapshotReader::open(&p).unwrap();
        assert_eq!(
            r.next_item().unwrap(),
            Some((0, b"k1".to_vec(), b"v1".to_vec()))
        );
        assert_eq!(r.next_item().unwrap().unwrap().2.len(), 1000);
        assert_eq!(r.next_item().unwrap(), None);

        // Flip one byte in the middle: the reader must refuse the file.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[20] ^= 0x55;
        std::fs::write(&p, &bytes).unwrap();
        assert!(verify(&p).is_err());
        // Truncated file: refused too.
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        assert!(verify(&p).is_err());
    }

    /// Compressed: a state of decimal strings and shared key prefixes takes
    /// a fraction of its uncompressed size, and reads back item for item.
    #[test]
    fn files_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.snap");
        let mut w = SnapshotWriter::create(&p).unwrap();
        let mut raw_bytes = 0usize;
        for i in 0..20_000u32 {
            let key = format!("\x06A{:05}\x00\x00\x01\x7f{i:08}", i % 997);
            let value = format!(
                "{{\"amount\":\"{}.{:02}\",\"kind\":\"purchase\"}}",
                i % 300,
                i % 100
            );
            raw_bytes += 9 + key.len() + value.len();
            w.add(1, key.as_bytes(), value.as_bytes()).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 20_000);
        let size = std::fs::metadata(&p).unwrap().len() as usize;
        assert!(size * 3 < raw_bytes, "{size} bytes for {raw_bytes} raw");
        assert_eq!(verify(&p).unwrap(), 20_000);
    }

    /// Files written before compression are still read and verified.
    #[test]
    fn uncompressed_v1_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.snap");
        let mut body = MAGIC_V1.to_vec();
        for (fam, k, v) in [(0u8, &b"k1"[..], &b"v1"[..]), (3, b"k2", b"value two")] {
            body.push(fam);
            body.extend((k.len() as u32).to_be_bytes());
            body.extend(k);
            body.extend((v.len() as u32).to_be_bytes());
            body.extend(v);
        }
        body.push(END_MARK);
        body.extend(2u64.to_be_bytes());
        let digest = Sha256::digest(&body);
        body.extend(digest);
        std::fs::write(&p, &body).unwrap();
        let mut r = SnapshotReader::open(&p).unwrap();
        assert_eq!(
            r.next_item().unwrap(),
            Some((0, b"k1".to_vec(), b"v1".to_vec()))
        );
        assert_eq!(
            r.next_item().unwrap(),
            Some((3, b"k2".to_vec(), b"value two".to_vec()))
        );
        assert_eq!(r.next_item().unwrap(), None);
        // A wrong digest in an old file is still caught.
        let n = body.len();
        body[n - 1] ^= 1;
        std::fs::write(&p, &body).unwrap();
        assert!(verify(&p).is_err());
    }
}
