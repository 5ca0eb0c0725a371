//! A lossy FUSE filesystem (in the spirit of LazyFS): a passthrough to a
//! backing directory that holds every file's data written since its last
//! `fsync`/`fdatasync` in memory, as a page cache would, and writes it to
//! the backing file only at that sync. [`LossyMount::power_loss`] drops
//! every page not synced, unmounts, and mounts again over the same backing
//! directory: what a node finds afterwards is what a machine that lost
//! power would find on its disk.
//!
//! What it models: file data (writes, `truncate`/`ftruncate`, size-changing
//! `fallocate`) is durable only once the file was synced; reads and
//! `stat` see the pending data (page-cache semantics); `close` does not
//! sync. What it does not model: namespace operations (create, mkdir,
//! rename, unlink, rmdir, chmod) reach the backing directory at once and
//! survive a power loss whether or not the directory was fsynced (as in
//! LazyFS); reordering or tearing within one sync is not modelled (a sync
//! writes a file's pages all or nothing from the model's view). Hard
//! links (RocksDB checkpoints link SST files) share their inode's pending
//! data while mounted; after a remount each name is looked up on its own
//! (nothing is pending then).
//!
//! Bounds: a file's unsynced pages past [`Limits::file_dirty_bytes_max`],
//! or a mount's past [`Limits::mount_dirty_bytes_max`], are written back
//! to the backing directory before the write returns, as a kernel under
//! memory pressure writes dirty pages back before any fsync; such pages
//! then survive a power loss (allowed by POSIX, only less adversarial).
//! The number of write-backs is counted in [`LossyStats`].
//!
//! May touch: the backing directory and the mount point it is given (a
//! FUSE mount, unmounted on [`LossyMount::unmount`] and on drop), and
//! `/dev/fuse`. Never panics on a kernel request: every failure is answered
//! with an errno.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

/// The unit in which pending data is held (and written back).
pub const PAGE_BYTES: u64 = 4096;

/// How long the kernel may cache attributes and names. Short: sizes change
/// with every write, and a power loss remounts anyway.
const TTL: Duration = Duration::from_millis(100);

/// Bounds on the data held unsynced.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// One file's unsynced pages past this are written back.
    pub file_dirty_bytes_max: u64,
    /// All files' unsynced pages past this are written back.
    pub mount_dirty_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_dirty_bytes_max: 128 << 20,
            mount_dirty_bytes_max: 256 << 20,
        }
    }
}

/// What a mount did since it was (re)mounted, and what its last power loss
/// dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LossyStats {
    /// Unsynced bytes held now (whole pages).
    pub dirty_bytes: u64,
    /// Syncs that wrote pages to the backing directory.
    pub syncs: u64,
    /// Write-backs forced by the limits (pages then durable without a sync).
    pub forced_writebacks: u64,
}

/// What a power loss dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    /// Files that had unsynced data (or an unsynced size change).
    pub files: usize,
    /// Unsynced pages dropped, in bytes.
    pub dropped_bytes: u64,
    /// Every such file, relative to the mount point, with the bytes
    /// dropped of it, most first.
    pub dropped: Vec<(String, u64)>,
}

/// A file's state since its last sync.
#[derive(Debug)]
struct Dirty {
    /// Page number -> the page's full contents (PAGE_BYTES).
    pages: BTreeMap<u64, Vec<u8>>,
    /// The file's size as its users see it.
    size_bytes: u64,
    /// Backing bytes at or past this offset are not part of the file any
    /// more (an unsynced truncation): they read as zeros.
    floor_bytes: u64,
}

#[derive(Debug)]
struct Handle {
    ino: u64,
    file: File,
    /// Opened for writing (a read-only handle can still fsync, and its
    /// sync writes through another file).
    writable: bool,
}

#[derive(Debug)]
struct State {
    backing: PathBuf,
    limits: Limits,
    /// Inode -> path relative to the backing directory (None: unlinked
    /// while open).
    paths: HashMap<u64, Option<PathBuf>>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    dirty: HashMap<u64, Dirty>,
    dirty_bytes: u64,
    syncs: u64,
    forced_writebacks: u64,
    /// Set by a power loss: every request after it fails with EIO.
    powered_off: bool,
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn pages_of(offset: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / PAGE_BYTES..(offset + len).div_ceil(PAGE_BYTES)
}

/// Reads up to `buf.len()` bytes at `offset`; the rest (past the end of
/// the file) stays as it is.
fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = u32::try_from(nsecs).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn kind_of(md: &std::fs::Metadata) -> FileType {
    FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile)
}

impl State {
    fn path_of(&self, ino: u64) -> Result<PathBuf, Errno> {
        match self.paths.get(&ino) {
            Some(Some(p)) => Ok(self.backing.join(p)),
            _ => Err(Errno::ENOENT),
        }
    }

    fn rel_of(&self, ino: u64) -> Result<PathBuf, Errno> {
        match self.paths.get(&ino) {
            Some(Some(p)) => Ok(p.clone()),
            _ => Err(Errno::ENOENT),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        Ok(self.rel_of(parent)?.join(name))
    }

    fn ino_for(&mut self, rel: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(rel) {
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(rel.to_path_buf(), ino);
        self.paths.insert(ino, Some(rel.to_path_buf()));
        ino
    }

    fn has_handles(&self, ino: u64) -> bool {
        self.handles.values().any(|h| h.ino == ino)
    }

    /// Forgets `rel` (and, for a directory, everything under it): inodes
    /// without a path. Their unsynced data is dropped unless a handle
    /// still reads them.
    fn forget_path(&mut self, rel: &Path) {
        let gone: Vec<PathBuf> = self
            .inos
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in gone {
            if let Some(ino) = self.inos.remove(&p) {
                if self.paths.get(&ino).and_then(|o| o.as_ref()) != Some(&p) {
                    continue;
                }
                // Another name of the same file (a hard link) takes over.
                let other = self
                    .inos
                    .iter()
                    .find(|(_, i)| **i == ino)
                    .map(|(q, _)| q.clone());
                if other.is_some() {
                    self.paths.insert(ino, other);
                    continue;
                }
                self.paths.insert(ino, None);
                if !self.has_handles(ino) {
                    self.drop_dirty(ino);
                    self.paths.remove(&ino);
                }
            }
        }
    }

    fn drop_dirty(&mut self, ino: u64) -> u64 {
        match self.dirty.remove(&ino) {
            Some(d) => {
                let bytes = d.pages.len() as u64 * PAGE_BYTES;
                self.dirty_bytes = self.dirty_bytes.saturating_sub(bytes);
                bytes
            }
            None => 0,
        }
    }

    fn attr(&self, ino: u64, md: &std::fs::Metadata) -> FileAttr {
        let size = self.dirty.get(&ino).map_or(md.len(), |d| d.size_bytes);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: system_time(md.atime(), md.atime_nsec()),
            mtime: system_time(md.mtime(), md.mtime_nsec()),
            ctime: system_time(md.ctime(), md.ctime_nsec()),
            crtime: system_time(md.ctime(), md.ctime_nsec()),
            kind: kind_of(md),
            perm: (md.mode() & 0o7777) as u16,
            nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
            uid: md.uid(),
            gid: md.gid(),
            rdev: u32::try_from(md.rdev()).unwrap_or(0),
            blksize: PAGE_BYTES as u32,
            flags: 0,
        }
    }

    /// Metadata of inode `ino`: through its path, or an open handle when
    /// it was unlinked.
    fn metadata(&self, ino: u64) -> Result<std::fs::Metadata, Errno> {
        if let Ok(p) = self.path_of(ino) {
            return std::fs::symlink_metadata(p).map_err(|e| errno_of(&e));
        }
        let h = self
            .handles
            .values()
            .find(|h| h.ino == ino)
            .ok_or(Errno::ENOENT)?;
        h.file.metadata().map_err(|e| errno_of(&e))
    }

    /// A file to read inode `ino`'s backing data through.
    fn file_for(&self, ino: u64, fh: Option<u64>) -> Result<File, Errno> {
        self.file_with(ino, fh, false)
    }

    /// A file to write inode `ino`'s backing data through.
    fn file_to_write(&self, ino: u64, fh: Option<u64>) -> Result<File, Errno> {
        self.file_with(ino, fh, true)
    }

    fn file_with(&self, ino: u64, fh: Option<u64>, write: bool) -> Result<File, Errno> {
        let usable = |h: &&Handle| h.ino == ino && (h.writable || !write);
        let h = fh
            .and_then(|fh| self.handles.get(&fh))
            .filter(usable)
            .or_else(|| self.handles.values().find(usable));
        if let Some(h) = h {
            return h.file.try_clone().map_err(|e| errno_of(&e));
        }
        let p = self.path_of(ino)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .map_err(|e| errno_of(&e))
    }

    /// The inode's pending state, made from its backing file on first use.
    fn dirty_mut(&mut self, ino: u64, file: &File) -> Result<&mut Dirty, Errno> {
        match self.dirty.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let len = file.metadata().map_err(|e| errno_of(&e))?.len();
                Ok(e.insert(Dirty {
                    pages: BTreeMap::new(),
                    size_bytes: len,
                    floor_bytes: len,
                }))
            }
        }
    }

    fn read(&self, ino: u64, file: &File, offset: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let (size, floor) = match self.dirty.get(&ino) {
            Some(d) => (d.size_bytes, d.floor_bytes),
            None => {
                let len = file.metadata().map_err(|e| errno_of(&e))?.len();
                (len, len)
            }
        };
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let n = usize::try_from(end - offset).map_err(|_| Errno::EINVAL)?;
        let mut buf = vec![0u8; n];
        if offset < floor {
            let from_backing = usize::try_from(floor.min(end) - offset).unwrap_or(n);
            pread_full(file, &mut buf[..from_backing], offset).map_err(|e| errno_of(&e))?;
        }
        if let Some(d) = self.dirty.get(&ino) {
            for (&pno, page) in d.pages.range(pages_of(offset, end - offset)) {
                let page_start = pno * PAGE_BYTES;
                let from = offset.max(page_start);
                let to = end.min(page_start + PAGE_BYTES);
                let dst = usize::try_from(from - offset).unwrap_or(0);
                let src = usize::try_from(from - page_start).unwrap_or(0);
                let cnt = usize::try_from(to - from).unwrap_or(0);
                buf[dst..dst + cnt].copy_from_slice(&page[src..src + cnt]);
            }
        }
        Ok(buf)
    }

    fn write(&mut self, ino: u64, file: &File, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let mut added = 0u64;
        {
            let d = self.dirty_mut(ino, file)?;
            let floor = d.floor_bytes;
            for pno in pages_of(offset, data.len() as u64) {
                let page_start = pno * PAGE_BYTES;
                let page = match d.pages.entry(pno) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let mut page = vec![0u8; PAGE_BYTES as usize];
                        if page_start < floor {
                            let n =
                                usize::try_from((floor - page_start).min(PAGE_BYTES)).unwrap_or(0);
                            pread_full(file, &mut page[..n], page_start)
                                .map_err(|e| errno_of(&e))?;
                        }
                        added += PAGE_BYTES;
                        e.insert(page)
                    }
                };
                let from = offset.max(page_start);
                let to = end.min(page_start + PAGE_BYTES);
                let src = usize::try_from(from - offset).unwrap_or(0);
                let dst = usize::try_from(from - page_start).unwrap_or(0);
                let cnt = usize::try_from(to - from).unwrap_or(0);
                page[dst..dst + cnt].copy_from_slice(&data[src..src + cnt]);
            }
            d.size_bytes = d.size_bytes.max(end);
        }
        self.dirty_bytes += added;
        let file_dirty = self
            .dirty
            .get(&ino)
            .map_or(0, |d| d.pages.len() as u64 * PAGE_BYTES);
        if file_dirty > self.limits.file_dirty_bytes_max {
            self.forced_writebacks += 1;
            self.writeback(ino, file)?;
        }
        if self.dirty_bytes > self.limits.mount_dirty_bytes_max {
            self.forced_writebacks += 1;
            self.writeback(ino, file)?;
            let others: Vec<u64> = self.dirty.keys().copied().collect();
            for other in others {
                match self.file_to_write(other, None) {
                    Ok(f) => self.writeback(other, &f)?,
                    Err(_) => {
                        self.drop_dirty(other);
                    }
                }
            }
        }
        Ok(())
    }

    fn set_size(&mut self, ino: u64, file: &File, size: u64) -> Result<(), Errno> {
        let mut freed = 0u64;
        {
            let d = self.dirty_mut(ino, file)?;
            if size < d.size_bytes {
                d.floor_bytes = d.floor_bytes.min(size);
                let first_gone = size.div_ceil(PAGE_BYTES);
                let gone: Vec<u64> = d.pages.range(first_gone..).map(|(&p, _)| p).collect();
                for p in gone {
                    d.pages.remove(&p);
                    freed += PAGE_BYTES;
                }
                // The page that holds the new end keeps only what lies before it.
                if !size.is_multiple_of(PAGE_BYTES)
                    && let Some(page) = d.pages.get_mut(&(size / PAGE_BYTES))
                {
                    let from = usize::try_from(size % PAGE_BYTES).unwrap_or(0);
                    page[from..].fill(0);
                }
            }
            d.size_bytes = size;
        }
        self.dirty_bytes = self.dirty_bytes.saturating_sub(freed);
        Ok(())
    }

    /// Writes the inode's pending state to its backing file (no fsync of
    /// the backing file: the backing directory is the model's disk, whose
    /// host does not lose power).
    fn writeback(&mut self, ino: u64, file: &File) -> Result<(), Errno> {
        let Some(d) = self.dirty.remove(&ino) else {
            return Ok(());
        };
        let bytes = d.pages.len() as u64 * PAGE_BYTES;
        self.dirty_bytes = self.dirty_bytes.saturating_sub(bytes);
        let result = (|| -> io::Result<()> {
            let len = file.metadata()?.len();
            if d.floor_bytes < len {
                file.set_len(d.floor_bytes)?;
            }
            for (&pno, page) in &d.pages {
                let start = pno * PAGE_BYTES;
                if start >= d.size_bytes {
                    continue;
                }
                let n = usize::try_from((d.size_bytes - start).min(PAGE_BYTES)).unwrap_or(0);
                file.write_all_at(&page[..n], start)?;
            }
            file.set_len(d.size_bytes)?;
            Ok(())
        })();
        result.map_err(|e| errno_of(&e))
    }
}

/// The FUSE side: each request locks the state.
struct LossyFs {
    state: Arc<Mutex<State>>,
}

impl LossyFs {
    fn lock(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let st = self.state.lock().map_err(|_| Errno::EIO)?;
        if st.powered_off {
            return Err(Errno::EIO);
        }
        Ok(st)
    }

    fn entry(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let mut st = self.lock()?;
        let rel = st.child(parent, name)?;
        let md = std::fs::symlink_metadata(st.backing.join(&rel)).map_err(|e| errno_of(&e))?;
        let ino = st.ino_for(&rel);
        Ok(st.attr(ino, &md))
    }

    fn open_backing(
        &self,
        st: &mut State,
        ino: u64,
        path: &Path,
        flags: i32,
        create_mode: Option<u32>,
    ) -> Result<u64, Errno> {
        let mut opts = OpenOptions::new();
        // Pages are read back for partial writes: even a write-only open
        // reads its backing file.
        opts.read(true);
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            opts.write(true);
        }
        if let Some(mode) = create_mode {
            opts.write(true);
            if flags & libc::O_EXCL != 0 {
                opts.create_new(true);
            } else {
                opts.create(true);
            }
            opts.mode(mode);
        }
        let writable = create_mode.is_some() || flags & libc::O_ACCMODE != libc::O_RDONLY;
        let file = opts.open(path).map_err(|e| errno_of(&e))?;
        if flags & libc::O_TRUNC != 0 && writable {
            st.set_size(ino, &file, 0)?;
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles.insert(
            fh,
            Handle {
                ino,
                file,
                writable,
            },
        );
        Ok(fh)
    }
}

impl fuser::Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.entry(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self.lock().and_then(|st| {
            let md = st.metadata(ino.0)?;
            Ok(st.attr(ino.0, &md))
        });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.lock().and_then(|mut st| {
            let ino = ino.0;
            if let Some(size) = size {
                let file = st.file_to_write(ino, fh.map(|f| f.0))?;
                st.set_size(ino, &file, size)?;
            }
            if let Some(mode) = mode {
                let p = st.path_of(ino)?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| errno_of(&e))?;
            }
            if uid.is_some() || gid.is_some() {
                let p = st.path_of(ino)?;
                std::os::unix::fs::chown(p, uid, gid).map_err(|e| errno_of(&e))?;
            }
            let md = st.metadata(ino)?;
            Ok(st.attr(ino, &md))
        });
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.lock().and_then(|mut st| {
            let rel = st.child(parent.0, name)?;
            let p = st.backing.join(&rel);
            std::fs::create_dir(&p).map_err(|e| errno_of(&e))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & !umask & 0o7777))
                .map_err(|e| errno_of(&e))?;
            let md = std::fs::symlink_metadata(&p).map_err(|e| errno_of(&e))?;
            let ino = st.ino_for(&rel);
            Ok(st.attr(ino, &md))
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.lock().and_then(|mut st| {
            let rel = st.child(parent.0, name)?;
            std::fs::remove_file(st.backing.join(&rel)).map_err(|e| errno_of(&e))?;
            st.forget_path(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.lock().and_then(|mut st| {
            let rel = st.child(parent.0, name)?;
            std::fs::remove_dir(st.backing.join(&rel)).map_err(|e| errno_of(&e))?;
            st.forget_path(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.lock().and_then(|mut st| {
            let from = st.child(parent.0, name)?;
            let to = st.child(newparent.0, newname)?;
            if flags.contains(RenameFlags::RENAME_EXCHANGE)
                || flags.contains(RenameFlags::RENAME_WHITEOUT)
            {
                return Err(Errno::EINVAL);
            }
            let to_abs = st.backing.join(&to);
            if flags.contains(RenameFlags::RENAME_NOREPLACE)
                && std::fs::symlink_metadata(&to_abs).is_ok()
            {
                return Err(Errno::EEXIST);
            }
            std::fs::rename(st.backing.join(&from), &to_abs).map_err(|e| errno_of(&e))?;
            if from == to {
                return Ok(());
            }
            // What the target was is gone; what was under `from` moves.
            st.forget_path(&to);
            let moved: Vec<(PathBuf, u64)> = st
                .inos
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, &i)| (p.clone(), i))
                .collect();
            for (old, ino) in moved {
                st.inos.remove(&old);
                let tail = old.strip_prefix(&from).map_err(|_| Errno::EIO)?;
                let new = if tail.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(tail)
                };
                st.inos.insert(new.clone(), ino);
                if st.paths.get(&ino).and_then(|o| o.as_ref()) == Some(&old) {
                    st.paths.insert(ino, Some(new));
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.lock().and_then(|mut st| {
            let to = st.child(newparent.0, newname)?;
            let from = st.path_of(ino.0)?;
            let to_abs = st.backing.join(&to);
            std::fs::hard_link(from, &to_abs).map_err(|e| errno_of(&e))?;
            // Both names are one inode: they share its pending data.
            st.inos.insert(to, ino.0);
            let md = std::fs::symlink_metadata(&to_abs).map_err(|e| errno_of(&e))?;
            Ok(st.attr(ino.0, &md))
        });
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.lock().and_then(|mut st| {
            let p = st.path_of(ino.0)?;
            self.open_backing(&mut st, ino.0, &p, flags.0, None)
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.lock().and_then(|mut st| {
            let rel = st.child(parent.0, name)?;
            let p = st.backing.join(&rel);
            let ino = st.ino_for(&rel);
            let fh = self.open_backing(&mut st, ino, &p, flags, Some(mode & !umask & 0o7777))?;
            let md = st.metadata(ino)?;
            Ok((st.attr(ino, &md), fh))
        });
        match r {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = self.lock().and_then(|st| {
            let file = st.file_for(ino.0, Some(fh.0))?;
            st.read(ino.0, &file, offset, u64::from(size))
        });
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.lock().and_then(|mut st| {
            let file = st.file_to_write(ino.0, Some(fh.0))?;
            st.write(ino.0, &file, offset, data)
        });
        match (r, u32::try_from(data.len())) {
            (Ok(()), Ok(n)) => reply.written(n),
            (Ok(()), Err(_)) => reply.error(Errno::EFBIG),
            (Err(e), _) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() does not make data durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut st) = self.state.lock() {
            st.handles.remove(&fh.0);
            // An unlinked file's last handle: nothing can reach its data.
            if matches!(st.paths.get(&ino.0), Some(None)) && !st.has_handles(ino.0) {
                st.drop_dirty(ino.0);
                st.paths.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.lock().and_then(|mut st| {
            if st.dirty.contains_key(&ino.0) {
                let file = st.file_to_write(ino.0, Some(fh.0))?;
                st.writeback(ino.0, &file)?;
                st.syncs += 1;
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.lock().and_then(|mut st| {
            let rel = st.rel_of(ino.0)?;
            let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            let mut names = Vec::new();
            for e in std::fs::read_dir(st.backing.join(&rel)).map_err(|e| errno_of(&e))? {
                let e = e.map_err(|e| errno_of(&e))?;
                let kind = e
                    .file_type()
                    .ok()
                    .and_then(FileType::from_std)
                    .unwrap_or(FileType::RegularFile);
                names.push((e.file_name(), kind));
            }
            names.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, kind) in names {
                let child = st.ino_for(&rel.join(&name));
                entries.push((child, kind, name));
            }
            Ok(entries)
        });
        match r {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace operations are durable at once (see the module doc).
        match self.lock() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = self.lock().and_then(|st| {
            let c = CString::new(st.backing.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: `c` is a valid NUL-terminated path and `s` a valid
            // statvfs to fill.
            let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
            if rc != 0 {
                return Err(errno_of(&io::Error::last_os_error()));
            }
            Ok(s)
        });
        match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        match self.lock() {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.lock().and_then(|mut st| {
            match mode {
                // Preallocation without a size change holds no data.
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                0 => {
                    let file = st.file_to_write(ino.0, Some(fh.0))?;
                    let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
                    let size = st.read_size(ino.0, &file)?;
                    if end > size {
                        st.set_size(ino.0, &file, end)?;
                    }
                    Ok(())
                }
                _ => Err(Errno::EOPNOTSUPP),
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl State {
    fn read_size(&self, ino: u64, file: &File) -> Result<u64, Errno> {
        match self.dirty.get(&ino) {
            Some(d) => Ok(d.size_bytes),
            None => Ok(file.metadata().map_err(|e| errno_of(&e))?.len()),
        }
    }
}

/// A lossy mount over a backing directory.
pub struct LossyMount {
    backing: PathBuf,
    mountpoint: PathBuf,
    limits: Limits,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    /// Power losses done on this mount.
    pub power_losses: u64,
}

impl std::fmt::Debug for LossyMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyMount")
            .field("backing", &self.backing)
            .field("mountpoint", &self.mountpoint)
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    let (Ok(md), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != md.dev())
}

impl LossyMount {
    /// Mounts a lossy view of `backing` (created when missing) on
    /// `mountpoint` (created when missing; must be empty). Needs `/dev/fuse`
    /// and root (or `fusermount3`, Debian package `fuse3`).
    pub fn mount(backing: &Path, mountpoint: &Path, limits: Limits) -> Result<Self> {
        std::fs::create_dir_all(backing)
            .with_context(|| format!("creating {}", backing.display()))?;
        std::fs::create_dir_all(mountpoint)
            .with_context(|| format!("creating {}", mountpoint.display()))?;
        let backing = backing
            .canonicalize()
            .with_context(|| format!("resolving {}", backing.display()))?;
        let mountpoint = mountpoint
            .canonicalize()
            .with_context(|| format!("resolving {}", mountpoint.display()))?;
        ensure!(
            !mountpoint.starts_with(&backing) && !backing.starts_with(&mountpoint),
            "the mount point {} and the backing directory {} must not contain each other",
            mountpoint.display(),
            backing.display()
        );
        let mut m = LossyMount {
            backing,
            mountpoint,
            limits,
            state: Arc::new(Mutex::new(Self::fresh_state(Path::new("/"), limits))),
            session: None,
            power_losses: 0,
        };
        m.mount_again()?;
        Ok(m)
    }

    fn fresh_state(backing: &Path, limits: Limits) -> State {
        let mut st = State {
            backing: backing.to_path_buf(),
            limits,
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: 2,
            handles: HashMap::new(),
            next_fh: 1,
            dirty: HashMap::new(),
            dirty_bytes: 0,
            syncs: 0,
            forced_writebacks: 0,
            powered_off: false,
        };
        st.paths.insert(INodeNo::ROOT.0, Some(PathBuf::new()));
        st.inos.insert(PathBuf::new(), INodeNo::ROOT.0);
        st
    }

    fn mount_again(&mut self) -> Result<()> {
        if !Path::new("/dev/fuse").exists() {
            bail!(
                "/dev/fuse is missing: the lossy filesystem needs FUSE (the fuse kernel module, \
                 and root or fusermount3 from Debian package fuse3; see deploy/setup.sh)"
            );
        }
        self.state = Arc::new(Mutex::new(Self::fresh_state(&self.backing, self.limits)));
        let fs = LossyFs {
            state: self.state.clone(),
        };
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("billdb-lossyfs".to_string()),
            MountOption::Subtype("lossy".to_string()),
        ];
        let session = fuser::spawn_mount(fs, &self.mountpoint, &cfg).with_context(|| {
            format!(
                "mounting the lossy filesystem on {} (needs /dev/fuse, and root or \
                 fusermount3 from Debian package fuse3; see deploy/setup.sh)",
                self.mountpoint.display()
            )
        })?;
        self.session = Some(session);
        // The mount is there once the mount point's device changed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !is_mount_point(&self.mountpoint) {
            ensure!(
                std::time::Instant::now() < deadline,
                "the lossy filesystem did not appear on {} within 10 s",
                self.mountpoint.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    pub fn stats(&self) -> LossyStats {
        match self.state.lock() {
            Ok(st) => LossyStats {
                dirty_bytes: st.dirty_bytes,
                syncs: st.syncs,
                forced_writebacks: st.forced_writebacks,
            },
            Err(_) => LossyStats::default(),
        }
    }

    /// The machine loses power: every unsynced page is dropped, the mount
    /// answers EIO from now on, is unmounted (and with it the kernel's
    /// caches), and mounted again over the same backing directory. The
    /// processes using the mount should be dead before (SIGKILL): a
    /// process still holding files open keeps the old mount busy.
    pub fn power_loss(&mut self) -> Result<PowerLossReport> {
        let report = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| anyhow::anyhow!("lossy filesystem state poisoned"))?;
            st.powered_off = true;
            let mut rep = PowerLossReport::default();
            let mut dropped: Vec<(String, u64)> = Vec::new();
            let inos: Vec<u64> = st.dirty.keys().copied().collect();
            for ino in inos {
                let name = match st.paths.get(&ino) {
                    Some(Some(p)) => p.display().to_string(),
                    _ => format!("(unlinked inode {ino})"),
                };
                let bytes = st.drop_dirty(ino);
                rep.files += 1;
                rep.dropped_bytes += bytes;
                dropped.push((name, bytes));
            }
            dropped.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            rep.dropped = dropped;
            st.handles.clear();
            rep
        };
        self.unmount()?;
        self.mount_again()?;
        self.power_losses += 1;
        Ok(report)
    }

    /// Unmounts (pending data stays unwritten: call after a power loss or
    /// when the data no longer matters).
    /// A mount still in use (a process holding a file open) is detached
    /// lazily: it disappears from the path now and ends with its last user.
    pub fn unmount(&mut self) -> Result<()> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        if s.umount_and_join().is_ok() {
            return Ok(());
        }
        if is_mount_point(&self.mountpoint) {
            let c = CString::new(self.mountpoint.as_os_str().as_bytes())
                .context("mount point path with a NUL byte")?;
            // SAFETY: `c` is a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                bail!("detaching {}: {e}", self.mountpoint.display());
            }
        }
        Ok(())
    }
}

impl Drop for LossyMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("lossy filesystem: {e:#}");
        }
    }
}
