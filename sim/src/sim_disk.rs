//! A node's disk in the simulation: in memory, outliving restarts, and
//! losing power on command.
//!
//! [`SimDisk`] is [`MemDisk`] plus a record of every unsynced append. On
//! [`SimDisk::crash`] each file's pending appends are settled in order, each
//! one **kept**, **lost** or **torn** (a prefix ending on a 512-byte sector
//! boundary of the file survives), drawn from the caller's seeded RNG. The
//! disk writes in order: once an append is lost or torn, later appends to
//! the same file are lost too, so a crash leaves a clean prefix (no holes,
//! no garbage). Any other unsynced change to a file (rewrite, truncate) is
//! lost whole; directory operations are durable at once (`MemDisk`'s model).
//!
//! Under madsim a disk call runs inline (see `ringkv_node::disk::run_blocking`),
//! so storage's append-then-sync can never be split by a kill: unsynced
//! appends exist at a crash only where storage leaves them unsynced.
//!
//! Disk time: with a [`DiskLatency`] set ([`SimDisk::set_latency`]), each
//! write the storage task makes first takes a seeded time (bandwidth, a
//! sync, now and then a long tail), during which it is in flight: not on
//! the disk, lost if the node dies, and not yet reported to the core, while
//! the node's peer messages go on. A follower's acknowledgement can then
//! beat its leader's own write, as on real machines.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringkv_node::disk::{Disk, DiskLock, MemDisk};

/// Sector size: a torn write keeps whole sectors only.
pub const SECTOR_BYTES: u64 = 512;

/// What the disk has not synced, per file.
#[derive(Debug, Default, Clone)]
struct Unsynced {
    /// Lengths of the appends since the last sync, in order.
    appends: Vec<usize>,
    /// A rewrite or truncate happened since the last sync: a crash reverts
    /// the file to its durable contents whatever the appends.
    rewritten: bool,
}

/// What one crash did, for the trace and for assertions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CrashReport {
    pub appends_kept: usize,
    pub appends_torn: usize,
    pub appends_lost: usize,
    /// Files whose unsynced rewrite or truncate was undone.
    pub rewrites_lost: usize,
    pub bytes_kept: u64,
    pub bytes_lost: u64,
}

/// How long a simulated disk takes to write and sync (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLatency {
    /// Per KiB written (its bandwidth).
    pub per_kib: Duration,
    /// A sync takes a time drawn uniformly from `sync_min..=sync_max` ...
    pub sync_min: Duration,
    pub sync_max: Duration,
    /// ... except `tail_percent` of writes, which take a long tail drawn
    /// from `sync_max..=tail_max` (a queue in the device, a flush of its
    /// cache, a neighbour's burst).
    pub tail_percent: u32,
    pub tail_max: Duration,
}

impl DiskLatency {
    /// The time one write of `bytes` bytes (and a sync) takes.
    pub fn draw(&self, rng: &mut impl Rng, bytes: u64, sync: bool) -> Duration {
        let transfer = self.per_kib * u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        if !sync {
            return transfer;
        }
        let (lo, hi) = if rng.random_range(0..100) < self.tail_percent {
            (self.sync_max, self.tail_max.max(self.sync_max))
        } else {
            (self.sync_min, self.sync_max.max(self.sync_min))
        };
        let nanos = rng.random_range(lo.as_nanos() as u64..=hi.as_nanos() as u64);
        transfer + Duration::from_nanos(nanos)
    }
}

impl std::fmt::Display for DiskLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sync={:?}..{:?} tail={}%..{:?} per-KiB={:?}",
            self.sync_min, self.sync_max, self.tail_percent, self.tail_max, self.per_kib
        )
    }
}

/// The durable contents of a [`SimDisk`], path by path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiskImage(BTreeMap<PathBuf, Vec<u8>>);

/// The in-memory disk of one simulated node. Share it with `Arc`; the
/// harness keeps one per node across restarts.
#[derive(Debug, Default)]
pub struct SimDisk {
    mem: MemDisk,
    unsynced: Mutex<BTreeMap<PathBuf, Unsynced>>,
    /// Disk time, if any, and the RNG that draws it.
    latency: Mutex<Option<(DiskLatency, ChaCha8Rng)>>,
    faults: Mutex<DiskFaults>,
}

/// Faults a test injects into a [`SimDisk`] (see [`SimDisk::fail_next_sync`]
/// and [`SimDisk::set_space_left`]).
#[derive(Debug, Default, Clone, Copy)]
struct DiskFaults {
    fail_next_sync: bool,
    /// A sync has failed; later sync calls are counted.
    sync_failed: bool,
    syncs_after_failure: u64,
    /// Bytes the disk can still take (appends and rewrites), if limited.
    space_left: Option<u64>,
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn unsynced(&self) -> MutexGuard<'_, BTreeMap<PathBuf, Unsynced>> {
        // A map of pending lengths stays consistent after any panic.
        self.unsynced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on every write takes time as `latency` says, drawn from a
    /// ChaCha8 RNG seeded with `seed` (`None`: instant again).
    pub fn set_latency(&self, latency: Option<DiskLatency>, seed: u64) {
        *self.latency.lock().unwrap_or_else(PoisonError::into_inner) =
            latency.map(|l| (l, ChaCha8Rng::seed_from_u64(seed)));
    }

    /// The time a write of `bytes` (and a sync) takes now.
    pub fn latency_of(&self, bytes: u64, sync: bool) -> Duration {
        match &mut *self.latency.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((latency, rng)) => latency.draw(rng, bytes, sync),
            None => Duration::ZERO,
        }
    }

    fn faults(&self) -> MutexGuard<'_, DiskFaults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next file sync fails with EIO, and what it should have made
    /// durable stays unsynced (a power loss may drop it): as a real disk's
    /// fsync error, after which nobody knows what reached the medium.
    /// Later syncs succeed again (as Linux's do after an fsync error,
    /// the data lost without a trace), and are counted
    /// ([`SimDisk::syncs_after_failed_sync`]).
    pub fn fail_next_sync(&self) {
        self.faults().fail_next_sync = true;
    }

    /// File syncs asked for after an injected sync failure: a node that
    /// retried its fsync and carried on would make this non-zero.
    pub fn syncs_after_failed_sync(&self) -> u64 {
        self.faults().syncs_after_failure
    }

    /// The disk can take `bytes` more (appends and rewrites; `None`: no
    /// limit). A write past them fails whole with `StorageFull` (ENOSPC).
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.faults().space_left = bytes;
    }

    /// Bytes the disk can still take, if limited.
    pub fn space_left(&self) -> Option<u64> {
        self.faults().space_left
    }

    /// Forgets every injected fault and its counts.
    pub fn clear_faults(&self) {
        *self.faults() = DiskFaults::default();
    }

    /// Takes `len` bytes of the space left, or fails as a full disk does.
    fn take_space(&self, path: &Path, len: usize) -> io::Result<()> {
        let mut faults = self.faults();
        if let Some(left) = faults.space_left.as_mut() {
            if len as u64 > *left {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "No space left on device (simulated; {} bytes for {})",
                        len,
                        path.display()
                    ),
                ));
            }
            *left -= len as u64;
        }
        Ok(())
    }

    /// Bytes appended and not yet synced, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        self.unsynced()
            .values()
            .flat_map(|u| &u.appends)
            .map(|&n| n as u64)
            .sum()
    }

    /// The node using this disk died: its locks are released, as a
    /// kernel releases a dead process's.
    pub fn release_locks(&self) {
        self.mem.release_locks();
    }

    /// Power loss: settles every unsynced change as described in the module
    /// docs, choosing each append's fate with `rng`. Call it before killing
    /// the node (or while it is down); the node then recovers from what is left.
    pub fn crash(&self, rng: &mut impl Rng) -> CrashReport {
        let mut report = CrashReport::default();
        let unsynced = std::mem::take(&mut *self.unsynced());
        // Bytes that survive past each file's durable end; absent means none.
        let mut keep: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for (path, file) in unsynced {
            let total: usize = file.appends.iter().sum();
            let len = self.mem.read(&path).map(|b| b.len()).unwrap_or(0);
            if file.rewritten || total > len {
                report.rewrites_lost += usize::from(file.rewritten);
                report.appends_lost += file.appends.len();
                report.bytes_lost += total as u64;
                continue;
            }
            let durable_end = (len - total) as u64;
            let kept = settle_appends(durable_end, &file.appends, rng, &mut report);
            keep.insert(path, kept);
        }
        self.mem
            .crash_keeping(|path, _unsynced| keep.get(path).copied().unwrap_or(0));
        report
    }

    /// A copy of what the disk holds durably (see [`SimDisk::swap_in`]).
    pub fn image(&self) -> DiskImage {
        DiskImage(self.mem.durable_image())
    }

    /// Swaps the disk for one holding exactly `image` (nothing pending), as
    /// an operator moving a disk between machines would. Call it while the
    /// node is down.
    pub fn swap_in(&self, image: &DiskImage) {
        self.unsynced().clear();
        self.mem.replace_with_image(image.0.clone());
    }

    /// Swaps the disk for an empty one (a replaced or wiped disk).
    pub fn wipe(&self) {
        self.swap_in(&DiskImage::default());
    }

    /// Replaces a file's bytes durably, as if the medium changed (corruption
    /// tests). See [`MemDisk::set_durable`].
    pub fn set_durable(&self, path: &Path, data: Vec<u8>) {
        self.unsynced().remove(path);
        self.mem.set_durable(path, data);
    }
}

/// Decides the fate of each append of one file, in order; returns how many
/// bytes past `durable_end` survive.
fn settle_appends(
    durable_end: u64,
    appends: &[usize],
    rng: &mut impl Rng,
    report: &mut CrashReport,
) -> usize {
    let mut kept = 0usize;
    let mut settled = false;
    for &len in appends {
        if settled {
            report.appends_lost += 1;
            report.bytes_lost += len as u64;
            continue;
        }
        let start = durable_end + kept as u64;
        match rng.random_range(0..3u8) {
            0 => {
                kept += len;
                report.appends_kept += 1;
                report.bytes_kept += len as u64;
            }
            1 => {
                // Sector boundaries strictly inside the write; a write within
                // one sector cannot tear (sector writes are atomic), so it is
                // lost and counted so.
                let first = (start / SECTOR_BYTES + 1) * SECTOR_BYTES;
                let end = start + len as u64;
                let part = if first < end {
                    let boundaries = (end - 1 - first) / SECTOR_BYTES + 1;
                    let cut = first + rng.random_range(0..boundaries) * SECTOR_BYTES;
                    (cut - start) as usize
                } else {
                    0
                };
                kept += part;
                if part > 0 {
                    report.appends_torn += 1;
                } else {
                    report.appends_lost += 1;
                }
                report.bytes_kept += part as u64;
                report.bytes_lost += (len - part) as u64;
                settled = true;
            }
            _ => {
                report.appends_lost += 1;
                report.bytes_lost += len as u64;
                settled = true;
            }
        }
    }
    kept
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.mem.create_dir_all(dir)
    }

    /// Released when the node is killed ([`SimDisk::release_locks`]): madsim
    /// never drops a killed node's tasks, so its storage, which holds the
    /// lock, never drops either; a kernel releases a dead process's locks.
    fn lock_exclusive(&self, path: &Path) -> io::Result<DiskLock> {
        self.mem.lock_exclusive(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.mem.list_dir(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.mem.read(path)
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.take_space(path, data.len())?;
        self.mem.append(path, data)?;
        let mut unsynced = self.unsynced();
        let file = unsynced.entry(path.to_path_buf()).or_default();
        if !file.rewritten {
            file.appends.push(data.len());
        }
        Ok(())
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.take_space(path, data.len())?;
        self.mem.write_file(path, data)?;
        self.mark_rewritten(path);
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        {
            let mut faults = self.faults();
            if faults.sync_failed {
                faults.syncs_after_failure += 1;
            }
            if faults.fail_next_sync {
                faults.fail_next_sync = false;
                faults.sync_failed = true;
                return Err(io::Error::other(format!(
                    "Input/output error (simulated fsync failure of {})",
                    path.display()
                )));
            }
        }
        self.mem.sync_file(path)?;
        self.unsynced().remove(path);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.mem.sync_dir(dir)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.mem.truncate(path, len)?;
        self.mark_rewritten(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.mem.rename(from, to)?;
        let mut unsynced = self.unsynced();
        unsynced.remove(to);
        if let Some(file) = unsynced.remove(from) {
            unsynced.insert(to.to_path_buf(), file);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.mem.remove_file(path)?;
        self.unsynced().remove(path);
        Ok(())
    }

    #[cfg(madsim)]
    fn io_latency(&self, bytes: u64, sync: bool) -> Duration {
        self.latency_of(bytes, sync)
    }
}

impl SimDisk {
    fn mark_rewritten(&self, path: &Path) {
        let mut unsynced = self.unsynced();
        let file = unsynced.entry(path.to_path_buf()).or_default();
        file.appends.clear();
        file.rewritten = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn disk_with_dir() -> (SimDisk, PathBuf) {
        let disk = SimDisk::new();
        let dir = PathBuf::from("/data");
        disk.create_dir_all(&dir).expect("mkdir");
        (disk, dir)
    }

    #[test]
    fn latency_is_seeded_bounded_and_has_tails() {
        let model = DiskLatency {
            per_kib: Duration::from_micros(5),
            sync_min: Duration::from_millis(1),
            sync_max: Duration::from_millis(4),
            tail_percent: 10,
            tail_max: Duration::from_millis(100),
        };
        let disk = SimDisk::new();
        assert_eq!(
            disk.latency_of(4096, true),
            Duration::ZERO,
            "instant by default"
        );
        disk.set_latency(Some(model), 7);
        let draws: Vec<Duration> = (0..1000).map(|_| disk.latency_of(4096, true)).collect();
        let transfer = Duration::from_micros(20);
        assert!(draws.iter().all(|&d| d >= model.sync_min + transfer));
        assert!(draws.iter().all(|&d| d <= model.tail_max + transfer));
        let tails = draws
            .iter()
            .filter(|&&d| d > model.sync_max + transfer)
            .count();
        assert!((50..=150).contains(&tails), "{tails} tails in 1000");
        assert_eq!(
            disk.latency_of(4096, false),
            transfer,
            "no sync, no sync time"
        );
        disk.set_latency(Some(model), 7);
        let again: Vec<Duration> = (0..1000).map(|_| disk.latency_of(4096, true)).collect();
        assert_eq!(draws, again, "same seed, same draws");
    }

    #[test]
    fn synced_bytes_always_survive() {
        for seed in 0..50 {
            let (disk, dir) = disk_with_dir();
            let f = dir.join("wal");
            disk.append(&f, &[1; 700]).expect("append");
            disk.sync_file(&f).expect("sync");
            disk.append(&f, &[2; 1500]).expect("append");
            disk.append(&f, &[3; 10]).expect("append");
            assert_eq!(disk.unsynced_bytes(), 1510);
            let report = disk.crash(&mut ChaCha8Rng::seed_from_u64(seed));
            let bytes = disk.read(&f).expect("read");
            assert!(bytes.starts_with(&[1; 700]), "seed {seed}");
            assert_eq!(report.bytes_kept + report.bytes_lost, 1510, "seed {seed}");
            assert_eq!(bytes.len() as u64, 700 + report.bytes_kept, "seed {seed}");
            assert_eq!(disk.unsynced_bytes(), 0);
        }
    }

    #[test]
    fn torn_writes_end_on_a_sector_boundary_and_stop_later_writes() {
        let mut report = CrashReport::default();
        let mut seen_torn = false;
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let before = report;
            let kept = settle_appends(700, &[1500, 10], &mut rng, &mut report);
            let torn = report.appends_torn > before.appends_torn;
            // Whole appends survive, or a prefix ending on a sector boundary.
            let on_boundary = (700 + kept as u64).is_multiple_of(SECTOR_BYTES);
            assert!(
                [0, 1500, 1510].contains(&kept) || (torn && on_boundary),
                "seed {seed}: kept {kept}"
            );
            seen_torn |= torn && kept > 0 && kept < 1500;
        }
        assert!(seen_torn, "no seed tore the 1500-byte write");
        assert!(report.appends_kept > 0 && report.appends_lost > 0);
    }

    #[test]
    fn unsynced_rewrites_are_undone_and_renames_carry_pending_appends() {
        let (disk, dir) = disk_with_dir();
        let a = dir.join("a");
        disk.write_file(&a, b"old").expect("write");
        disk.sync_file(&a).expect("sync");
        disk.write_file(&a, b"new contents").expect("rewrite");
        let tmp = dir.join("b.tmp");
        disk.append(&tmp, b"x").expect("append");
        disk.rename(&tmp, &dir.join("b")).expect("rename");
        let report = disk.crash(&mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(disk.read(&a).expect("read"), b"old");
        assert_eq!(report.rewrites_lost, 1);
        assert_eq!(disk.list_dir(&dir).expect("ls"), vec!["a", "b"]);
        assert_eq!(
            report.appends_kept + report.appends_torn + report.appends_lost,
            1
        );
    }
}
