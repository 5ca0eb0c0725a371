//! The lossy filesystem on its own (a real FUSE mount in a temporary
//! directory): what was not fsynced is gone after a power loss, what was
//! fsynced stays exactly as synced, reads see pending data before it, and
//! the bounds on pending data hold. Fails (never skips) where FUSE is
//! missing: see deploy/setup.sh.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use billdb_chaos::lossy_fs::{Limits, LossyMount, PAGE_BYTES};

fn read(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p)
        .unwrap_or_else(|e| panic!("opening {}: {e}", p.display()))
        .read_to_end(&mut v)
        .expect("read");
    v
}

fn mount(tmp: &Path, limits: Limits) -> LossyMount {
    LossyMount::mount(&tmp.join("backing"), &tmp.join("mnt"), limits)
        .unwrap_or_else(|e| panic!("lossy filesystem must mount (FUSE needed): {e:#}"))
}

#[test]
fn power_loss_drops_exactly_what_was_not_synced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut m = mount(tmp.path(), Limits::default());
    let mnt = m.mountpoint().to_path_buf();

    // a: written, never synced.
    let mut a = File::create(mnt.join("a")).expect("create a");
    a.write_all(b"never synced").expect("write a");
    drop(a);

    // b: 10,000 bytes synced; then overwritten at the start and appended
    // to without a sync.
    let synced_b: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut b = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(mnt.join("b"))
        .expect("create b");
    b.write_all(&synced_b).expect("write b");
    b.sync_data().expect("fdatasync b");
    b.write_all_at(&[0xEE; 100], 0).expect("overwrite b");
    b.write_all_at(&[0xAA; 5_000], 10_000).expect("append b");
    drop(b);

    // c: synced, then truncated without a sync.
    let mut c = File::create(mnt.join("c")).expect("create c");
    c.write_all(&[7u8; 9_000]).expect("write c");
    c.sync_all().expect("fsync c");
    c.set_len(10).expect("truncate c");
    drop(c);

    // d: made in a directory, renamed, then synced under its new name.
    fs::create_dir(mnt.join("dir")).expect("mkdir");
    let mut d = File::create(mnt.join("dir/d.tmp")).expect("create d");
    d.write_all(b"renamed then synced").expect("write d");
    fs::rename(mnt.join("dir/d.tmp"), mnt.join("dir/d")).expect("rename d");
    d.sync_all().expect("fsync d");
    drop(d);

    // Before the power loss, every reader sees the pending data (page cache
    // semantics) ...
    assert_eq!(read(&mnt.join("a")), b"never synced");
    assert_eq!(fs::metadata(mnt.join("b")).expect("stat b").len(), 15_000);
    let b_now = read(&mnt.join("b"));
    assert_eq!(&b_now[..100], &[0xEE; 100][..]);
    assert_eq!(&b_now[100..10_000], &synced_b[100..]);
    assert_eq!(&b_now[10_000..], &[0xAA; 5_000][..]);
    assert_eq!(read(&mnt.join("c")), vec![7u8; 10]);
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c", "dir"]);
    // ... while the backing directory (the disk) has only what was synced.
    assert_eq!(read(&m.backing().join("a")), b"");
    assert_eq!(read(&m.backing().join("b")), synced_b);
    assert!(m.stats().dirty_bytes > 0);

    let rep = m.power_loss().expect("power loss");
    assert_eq!(rep.files, 3, "a, b and c had unsynced data: {rep:?}");
    assert!(rep.dropped_bytes >= 5_000 + 12, "{rep:?}");

    // After it: the unsynced data is gone, the synced data is exactly there.
    assert_eq!(read(&mnt.join("a")), b"", "unsynced data survived");
    assert_eq!(read(&mnt.join("b")), synced_b, "b is not what was synced");
    assert_eq!(read(&mnt.join("c")), vec![7u8; 9_000]);
    assert_eq!(read(&mnt.join("dir/d")), b"renamed then synced");
    assert!(!mnt.join("dir/d.tmp").exists());
    assert_eq!(m.stats().dirty_bytes, 0);

    // The remounted filesystem works as before.
    let mut e = File::create(mnt.join("e")).expect("create e");
    e.write_all(b"after").expect("write e");
    e.sync_all().expect("fsync e");
    drop(e);
    fs::remove_file(mnt.join("a")).expect("unlink a");
    m.power_loss().expect("second power loss");
    assert_eq!(read(&mnt.join("e")), b"after");
    assert!(!mnt.join("a").exists());
    m.unmount().expect("unmount");
}

#[test]
fn truncation_then_growth_reads_zeros_and_survives_only_when_synced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut m = mount(tmp.path(), Limits::default());
    let p = m.mountpoint().join("f");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .expect("create");
    f.write_all(&[1u8; 3 * PAGE_BYTES as usize]).expect("write");
    f.sync_all().expect("fsync");
    // Shrink into the middle of a page, grow again: the old bytes past the
    // cut must read as zeros, not as what the disk still holds.
    f.set_len(PAGE_BYTES + 10).expect("shrink");
    f.write_all_at(b"z", 2 * PAGE_BYTES + 5)
        .expect("write past the hole");
    let mut want = vec![1u8; PAGE_BYTES as usize + 10];
    want.resize(2 * PAGE_BYTES as usize + 5, 0);
    want.push(b'z');
    assert_eq!(read(&p), want);
    f.sync_data().expect("fdatasync");
    drop(f);
    m.power_loss().expect("power loss");
    assert_eq!(read(&p), want, "synced truncation and growth not kept");
}

#[test]
fn pending_data_is_bounded_by_writing_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        file_dirty_bytes_max: 64 << 10,
        mount_dirty_bytes_max: 128 << 10,
    };
    let mut m = mount(tmp.path(), limits);
    let mnt = m.mountpoint().to_path_buf();
    let chunk = vec![9u8; 16 << 10];
    let mut files = Vec::new();
    for i in 0..4 {
        let mut f = File::create(mnt.join(format!("big{i}"))).expect("create");
        for _ in 0..32 {
            f.write_all(&chunk).expect("write");
            let s = m.stats();
            assert!(
                s.dirty_bytes <= limits.mount_dirty_bytes_max + (chunk.len() as u64) + PAGE_BYTES,
                "pending data over its bound: {s:?}"
            );
        }
        files.push(f);
    }
    let s = m.stats();
    assert!(s.forced_writebacks > 0, "{s:?}");
    drop(files);
    // Each file lost at most its last unwritten-back part.
    m.power_loss().expect("power loss");
    for i in 0..4 {
        let len = fs::metadata(mnt.join(format!("big{i}")))
            .expect("stat")
            .len();
        assert!(
            len >= (512 << 10) - limits.file_dirty_bytes_max - (16 << 10),
            "big{i}: {len}"
        );
        assert!(len <= 512 << 10, "big{i}: {len}");
        assert!(read(&mnt.join(format!("big{i}"))).iter().all(|&b| b == 9));
    }
}

#[test]
fn hard_links_share_the_synced_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut m = mount(tmp.path(), Limits::default());
    let mnt = m.mountpoint().to_path_buf();
    let mut f = File::create(mnt.join("000013.sst")).expect("create");
    f.write_all(b"table").expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    fs::create_dir(mnt.join("checkpoint")).expect("mkdir");
    fs::hard_link(mnt.join("000013.sst"), mnt.join("checkpoint/000013.sst")).expect("link");
    assert_eq!(read(&mnt.join("checkpoint/000013.sst")), b"table");
    // Pending data is shared by both names, and lost by both.
    let mut f = OpenOptions::new()
        .append(true)
        .open(mnt.join("000013.sst"))
        .expect("open");
    f.write_all(b" unsynced").expect("append");
    drop(f);
    assert_eq!(read(&mnt.join("checkpoint/000013.sst")), b"table unsynced");
    fs::remove_file(mnt.join("000013.sst")).expect("unlink the first name");
    assert_eq!(read(&mnt.join("checkpoint/000013.sst")), b"table unsynced");
    fs::hard_link(mnt.join("checkpoint/000013.sst"), mnt.join("000013.sst")).expect("relink");
    m.power_loss().expect("power loss");
    assert_eq!(read(&mnt.join("checkpoint/000013.sst")), b"table");
    assert_eq!(read(&mnt.join("000013.sst")), b"table");
}

#[test]
fn fsync_through_a_read_only_handle_makes_the_file_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut m = mount(tmp.path(), Limits::default());
    let p = m.mountpoint().join("snapshot.meta");
    let mut w = File::create(&p).expect("create");
    w.write_all(b"written by one handle").expect("write");
    drop(w);
    // fsync(2) of a descriptor opened read-only syncs the file all the same.
    File::open(&p)
        .expect("open read-only")
        .sync_all()
        .expect("fsync");
    m.power_loss().expect("power loss");
    assert_eq!(read(&p), b"written by one handle");
}
