//! Small real file systems for the process-level tests: a tmpfs, and ext4
//! on a loop device over a file (whose backing store can be made to fail
//! writes). Mounting needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::Cluster;

/// A tmpfs mounted at a directory, unmounted on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs a command, or says why it failed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// An ext4 file system in a 256 MiB image on `backing` (a tmpfs), sparse
/// but for its metadata,
/// on a loop device, mounted at a directory; unmounted and detached on
/// drop.
pub struct LoopExt4 {
    image: PathBuf,
    pub at: PathBuf,
    device: Option<String>,
}

impl LoopExt4 {
    pub fn create(backing: &Path, at: &Path) -> Result<LoopExt4, String> {
        let image = backing.join("ext4.img");
        let file = std::fs::File::create(&image).map_err(|e| format!("create image: {e}"))?;
        file.set_len(256 << 20)
            .map_err(|e| format!("size image: {e}"))?;
        let image_s = image.to_str().expect("utf-8 path");
        // Every piece of metadata written by mkfs (inode tables, journal,
        // and, without uninit_bg and metadata_csum, every group's bitmaps:
        // about 24 MiB), so that when the backing store is full, writing
        // metadata there still succeeds; what fails is new data. With them
        // left as holes, ext4 lost inode-table and bitmap updates to the
        // write errors, and e2fsck then had files to throw away (a chaos
        // run found that: a node refused to start, a snapshot its WAL
        // named gone; ringkv refused loudly, as it must). A file system
        // that loses what it said was durable is a fault no store
        // survives; this one is about failed fsyncs.
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-O",
                "^metadata_csum,^uninit_bg",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                image_s,
            ],
        )?;
        std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
        let mut fs = LoopExt4 {
            image,
            at: at.to_path_buf(),
            device: None,
        };
        fs.attach()?;
        Ok(fs)
    }

    pub fn attach(&mut self) -> Result<(), String> {
        let device = run("losetup", &["-f", "--show", self.image.to_str().unwrap()])?;
        self.device = Some(device.clone());
        // discard: blocks ext4 frees are punched out of the image, so
        // writing them again needs the backing store's space again.
        run(
            "mount",
            &["-o", "discard", &device, self.at.to_str().unwrap()],
        )?;
        Ok(())
    }

    pub fn detach(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
        if let Some(device) = self.device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
    }

    /// Unmounts, checks and repairs the file system (`e2fsck -fy`: what a
    /// machine does at boot after a crash), mounts it again.
    pub fn check_and_remount(&mut self) -> String {
        self.detach();
        let out = Command::new("e2fsck")
            .args(["-fy", self.image.to_str().unwrap()])
            .output()
            .expect("run e2fsck");
        // 0: clean; 1: errors corrected. Anything else: it could not.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.attach().expect("mount the checked file system");
        // What e2fsck did, less its pass headers and the summary line.
        let did: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("Pass ") && !l.contains(" files, ") && !l.is_empty())
            .map(str::to_owned)
            .collect();
        format!(
            "e2fsck exit {}{}",
            out.status.code().unwrap_or(-1),
            if did.is_empty() {
                String::new()
            } else {
                format!(": {}", did.join("; "))
            }
        )
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Node `id`'s data directory moved onto whatever `mount` puts at its
/// place (the node killed first, started again after, ready).
pub fn move_node(
    c: &mut Cluster,
    id: u64,
    mount: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    c.kill(id);
    let dir = c.node(id).data_dir.clone();
    let moved = dir.with_extension("before");
    std::fs::rename(&dir, &moved).expect("move the node's directory aside");
    mount(&dir)?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", moved.display()))
        .arg(&dir)
        .status()
        .expect("run cp");
    assert!(
        copied.success(),
        "copy node {id}'s directory to its new place"
    );
    // cp does not fsync: make the copy durable, as the node's own files are.
    let synced = Command::new("sync").status().expect("run sync");
    assert!(synced.success(), "sync");
    c.start_again(id);
    c.wait_node_ready(id, Duration::from_secs(30));
    Ok(())
}

/// Free bytes of the file system at `dir`, root's reserve included.
pub fn free_bytes(dir: &Path) -> u64 {
    let out = run("stat", &["-f", "-c", "%f %S", dir.to_str().unwrap()]).expect("stat -f");
    let mut it = out
        .split_whitespace()
        .map(|v| v.parse::<u64>().expect("a number"));
    it.next().unwrap() * it.next().unwrap()
}

/// A file that takes all but `leave` bytes of `dir`'s file system
/// (allocated, not sparse), or all of them if others write meanwhile;
/// removed by [`remove_ballast`].
pub fn fill(dir: &Path, leave: u64) {
    let ballast = dir.join("ballast");
    let size = free_bytes(dir).saturating_sub(leave);
    if size > 0 {
        let done = run(
            "fallocate",
            &["-l", &size.to_string(), ballast.to_str().unwrap()],
        );
        // A node writing meanwhile can take the last bytes first: the
        // ballast then holds what it got, and the disk is full anyway.
        if let Err(e) = done {
            assert!(e.contains("No space left on device"), "{e}");
        }
    }
}

pub fn remove_ballast(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("ballast"));
}
