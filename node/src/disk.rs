//! Files, as the node sees them. Storage touches the file system only
//! through [`Disk`], so the simulation can substitute a disk that loses,
//! keeps or tears unsynced writes when a node loses power.
//!
//! The calls are synchronous; the driver runs them off the event loop
//! ([`run_blocking`]). Two implementations live here: [`FsDisk`] (the real
//! file system) and [`MemDisk`] (in memory, with a power-loss model, for
//! tests). What storage writes, and why, is `crate::storage`'s business.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The file operations storage needs. Paths are absolute or relative to the
/// process's working directory; a `Disk` never interprets them further.
///
/// Durability model (POSIX): `append`, `write_file`, `truncate`, `rename`
/// and `remove_file` may be lost in a crash until `sync_file` (for a file's
/// contents) or `sync_dir` (for the directory entry) has returned.
pub trait Disk: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`, sorted. `NotFound` if it is absent.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole file. `NotFound` if it is absent.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Appends to the file, creating it if absent.
    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Creates or replaces the file with exactly `data`.
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Makes the file's contents durable (fdatasync).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on `path` (a lock file, created if absent)
    /// for this process until the returned [`DiskLock`] drops or the
    /// process dies. `WouldBlock` if another holder has it, with what is
    /// known of the holder in the message.
    fn lock_exclusive(&self, path: &Path) -> io::Result<DiskLock>;

    /// Simulation only: how long a write of `bytes` bytes (and a sync, if
    /// `sync`) is to take. The storage task waits it out *before* it writes
    /// and before it reports the write durable, so that a crash meanwhile
    /// loses the write, and the rest of the node (its peer messages above
    /// all) runs on while it is in flight. A real disk takes its own time;
    /// the method does not exist outside `cfg(madsim)`.
    #[cfg(madsim)]
    fn io_latency(&self, bytes: u64, sync: bool) -> std::time::Duration {
        let _ = (bytes, sync);
        std::time::Duration::ZERO
    }
}

/// An exclusive lock taken by [`Disk::lock_exclusive`], released when this
/// drops (or when the process that holds it dies).
pub struct DiskLock {
    _held: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for DiskLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskLock")
    }
}

// ------------------------------------------------------------------ FsDisk

/// Append handles kept open at most; beyond this the cache forgets one.
/// Storage appends to one WAL segment at a time, so a handful is plenty.
const MAX_CACHED_APPEND_FILES: usize = 8;

/// Runs disk work off the event loop: on a blocking thread in production;
/// inline under madsim, whose disks are in memory and where threads would
/// break determinism.
pub async fn run_blocking<F, R>(f: F) -> Result<R, String>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())
    }
    #[cfg(madsim)]
    {
        Ok(f())
    }
}

/// The real file system, through `std::fs`. Append handles are cached (behind
/// a mutex) so a WAL append does not reopen its file every time.
#[derive(Debug, Default)]
pub struct FsDisk {
    append_files: Mutex<BTreeMap<PathBuf, File>>,
}

impl FsDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn cache(&self) -> MutexGuard<'_, BTreeMap<PathBuf, File>> {
        // A panic while holding the lock leaves only a map of open files:
        // still consistent, so keep using it.
        self.append_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn forget(&self, path: &Path) {
        self.cache().remove(path);
    }
}

/// `map_err` adapter naming the call that failed ("fsync failed: Input/output
/// error"), so that an operator reads which one; the kind stays.
fn failed(call: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{call} failed: {e}"))
}

impl Disk for FsDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut cache = self.cache();
        if !cache.contains_key(path) {
            if cache.len() >= MAX_CACHED_APPEND_FILES {
                cache.pop_first();
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            cache.insert(path.to_path_buf(), file);
        }
        match cache.get_mut(path) {
            Some(file) => file.write_all(data).map_err(failed("write")),
            None => Err(io::Error::other("append handle vanished from the cache")),
        }
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.forget(path);
        fs::write(path, data).map_err(failed("write"))
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        if let Some(file) = self.cache().get(path) {
            return file.sync_data().map_err(failed("fsync"));
        }
        File::open(path)?.sync_data().map_err(failed("fsync"))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all().map_err(failed("fsync"))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.forget(path);
        OpenOptions::new().write(true).open(path)?.set_len(len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.forget(from);
        self.forget(to);
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.forget(path);
        fs::remove_file(path)
    }

    /// `flock(LOCK_EX | LOCK_NB)` through `File::try_lock`: advisory, held
    /// by the open file, released by the kernel when the process dies
    /// however it dies. The holder writes its pid into the file, for the
    /// next one's error message.
    fn lock_exclusive(&self, path: &Path) -> io::Result<DiskLock> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(path).unwrap_or_default();
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("process {holder}")
                };
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("locked by {by}"),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(DiskLock {
            _held: Box::new(file),
        })
    }
}

// ----------------------------------------------------------------- MemDisk

/// One file of a [`MemDisk`]: what a reader sees now, and what survives a crash.
#[derive(Debug, Clone, Default)]
struct MemFile {
    current: Vec<u8>,
    durable: Durable,
}

/// What of a [`MemFile`] survives a crash. While only appends happened since
/// the last sync it is a prefix of the current bytes, kept as a length: a
/// sync of a large WAL segment must not copy the whole file (the simulation
/// writes megabytes of entries and syncs after every batch).
#[derive(Debug, Clone)]
enum Durable {
    /// `current[..n]`.
    Prefix(usize),
    /// Bytes of their own: the current ones were cut or rewritten since.
    Copy(Vec<u8>),
}

impl Default for Durable {
    fn default() -> Self {
        Durable::Prefix(0)
    }
}

impl MemFile {
    /// Keeps what is durable before `current` loses bytes of it.
    fn detach_durable(&mut self) {
        if let Durable::Prefix(n) = self.durable {
            self.durable = Durable::Copy(self.current[..n].to_vec());
        }
    }

    fn durable_bytes(&self) -> &[u8] {
        match &self.durable {
            Durable::Prefix(n) => &self.current[..*n],
            Durable::Copy(bytes) => bytes,
        }
    }
}

#[derive(Debug, Default)]
struct MemState {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, MemFile>,
    file_syncs: u64,
    dir_syncs: u64,
    /// Held locks: lock file -> the holder's token (see [`MemLock`]).
    locks: BTreeMap<PathBuf, u64>,
    next_lock: u64,
}

/// A [`MemDisk`] lock: released on drop, unless the process that held it
/// died meanwhile ([`MemDisk::release_locks`]) and another took it since.
struct MemLock {
    state: Arc<Mutex<MemState>>,
    path: PathBuf,
    token: u64,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.locks.get(&self.path) == Some(&self.token) {
            state.locks.remove(&self.path);
        }
    }
}

/// An in-memory [`Disk`] for tests that models what a power loss keeps.
///
/// Per file it holds the current bytes and the bytes as of the last
/// `sync_file`; [`MemDisk::crash`] throws away everything not synced, and
/// [`MemDisk::crash_keeping`] keeps a chosen part of each unsynced append (a
/// torn write). Simplification: directory operations (creating, renaming,
/// removing a file, creating a directory) are durable at once, so `sync_dir`
/// only counts. Deterministic: ordered maps, no clock, no randomness.
#[derive(Debug, Default)]
pub struct MemDisk {
    state: Arc<Mutex<MemState>>,
}

impl MemDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The process using this disk died: the kernel releases its locks
    /// (a power loss does too, see [`MemDisk::crash_keeping`]).
    pub fn release_locks(&self) {
        self.state().locks.clear();
    }

    /// Power loss: every file goes back to its contents at its last sync.
    pub fn crash(&self) {
        self.crash_keeping(|_, _| 0);
    }

    /// Power loss that tears writes: for a file whose unsynced change is an
    /// append of `n` bytes past its durable contents, `keep(path, n)` says
    /// how many of them survive (clamped to `n`). Any other unsynced change
    /// (a truncate, a rewrite) is lost entirely.
    pub fn crash_keeping(&self, mut keep: impl FnMut(&Path, usize) -> usize) {
        let mut state = self.state();
        state.locks.clear();
        for (path, file) in state.files.iter_mut() {
            let durable = file.durable_bytes();
            let (synced, appended_only) = (
                durable.len(),
                file.current.len() > durable.len() && file.current.starts_with(durable),
            );
            if appended_only {
                let unsynced = file.current.len() - synced;
                let kept = keep(path, unsynced).min(unsynced);
                file.current.truncate(synced + kept);
            } else {
                file.current = file.durable_bytes().to_vec();
            }
            file.durable = Durable::Prefix(file.current.len());
        }
    }

    /// `sync_file` calls so far, on any file.
    pub fn file_syncs(&self) -> u64 {
        self.state().file_syncs
    }

    /// `sync_dir` calls so far.
    pub fn dir_syncs(&self) -> u64 {
        self.state().dir_syncs
    }

    /// Every file's durable bytes: what a copy of the disk would hold after
    /// a power loss (tests that move a disk to another node).
    pub fn durable_image(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.state()
            .files
            .iter()
            .map(|(path, file)| (path.clone(), file.durable_bytes().to_vec()))
            .collect()
    }

    /// Makes the disk hold exactly `image` (durably), as if it were swapped
    /// for another one: every other file and directory is gone.
    pub fn replace_with_image(&self, image: BTreeMap<PathBuf, Vec<u8>>) {
        let mut state = self.state();
        state.files.clear();
        state.dirs.clear();
        for (path, data) in image {
            let mut dir = path.parent();
            while let Some(d) = dir {
                state.dirs.insert(d.to_path_buf());
                dir = d.parent();
            }
            let file = state.files.entry(path).or_default();
            file.durable = Durable::Prefix(data.len());
            file.current = data;
        }
    }

    /// Replaces a file's bytes, durably, as if the medium changed under us
    /// (tests: corruption, truncation). Creates the file if absent.
    pub fn set_durable(&self, path: &Path, data: Vec<u8>) {
        let mut state = self.state();
        let file = state.files.entry(path.to_path_buf()).or_default();
        file.durable = Durable::Prefix(data.len());
        file.current = data;
    }
}

fn not_found(what: &str, path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{what} {} not found", path.display()),
    )
}

impl MemState {
    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() && !self.dirs.contains(p) => {
                Err(not_found("directory", p))
            }
            _ => Ok(()),
        }
    }

    fn file_mut(&mut self, path: &Path) -> io::Result<&mut MemFile> {
        self.files
            .get_mut(path)
            .ok_or_else(|| not_found("file", path))
    }
}

impl Disk for MemDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        if state.files.contains_key(dir) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a file", dir.display()),
            ));
        }
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_path_buf());
            }
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state();
        if !state.dirs.contains(dir) {
            return Err(not_found("directory", dir));
        }
        let children = state.dirs.iter().chain(state.files.keys());
        let mut names: Vec<String> = children
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state();
        let file = state
            .files
            .get(path)
            .ok_or_else(|| not_found("file", path))?;
        Ok(file.current.clone())
    }

    fn append(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        state.parent_exists(path)?;
        let file = state.files.entry(path.to_path_buf()).or_default();
        file.current.extend_from_slice(data);
        Ok(())
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.state();
        state.parent_exists(path)?;
        let file = state.files.entry(path.to_path_buf()).or_default();
        file.detach_durable();
        file.current = data.to_vec();
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        let file = state.file_mut(path)?;
        file.durable = Durable::Prefix(file.current.len());
        state.file_syncs += 1;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        if !state.dirs.contains(dir) {
            return Err(not_found("directory", dir));
        }
        state.dir_syncs += 1;
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut state = self.state();
        let file = state.file_mut(path)?;
        // Like ftruncate: cuts, or extends with zeros.
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length exceeds memory"))?;
        if matches!(file.durable, Durable::Prefix(n) if len < n) {
            file.detach_durable();
        }
        file.current.resize(len, 0);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.parent_exists(to)?;
        let file = state
            .files
            .remove(from)
            .ok_or_else(|| not_found("file", from))?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found("file", path))
    }

    /// Held until the [`DiskLock`] drops, [`MemDisk::release_locks`] or a
    /// crash; the lock file itself is created like `FsDisk`'s.
    fn lock_exclusive(&self, path: &Path) -> io::Result<DiskLock> {
        let mut state = self.state();
        if state.locks.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "locked by another process",
            ));
        }
        if !state.files.contains_key(path) {
            drop(state);
            self.append(path, &[])?;
            state = self.state();
        }
        state.next_lock += 1;
        let token = state.next_lock;
        state.locks.insert(path.to_path_buf(), token);
        Ok(DiskLock {
            _held: Box::new(MemLock {
                state: self.state.clone(),
                path: path.to_path_buf(),
                token,
            }),
        })
    }
}
