//! A disk that fills up, for real: node 3's data directory is a small
//! tmpfs. Writes go on until node 3's WAL append fails with ENOSPC; node 3
//! must then stop (fail-stop: log why, exit non-zero, never carry on with
//! a WAL it could not write), the other two must go on serving, and once
//! the file system has room again node 3 must start from what it had (no
//! corruption: recovery cuts at most an unacknowledged torn tail) and
//! catch up, every acknowledged write readable through it.
//!
//! Needs root (mount); prints SKIPPED with the reason otherwise, unless
//! `RINGKV_REQUIRE_NETNS=1` (CI, as root), which makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
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

    fn resize(&self, size: &str) {
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

fn skip_or_fail(why: &str) {
    assert!(
        std::env::var("RINGKV_REQUIRE_NETNS").as_deref() != Ok("1"),
        "RINGKV_REQUIRE_NETNS=1 but {why}"
    );
    eprintln!("SKIPPED disk_full: {why}");
}

#[test]
fn a_full_disk_stops_its_node_cleanly_and_it_recovers_once_there_is_room() {
    let mut c = Cluster::start(3);
    c.wait_ready(Duration::from_secs(30));
    // Node 3 moves onto a 16 MiB tmpfs, with what it has.
    c.kill(3);
    let dir = c.node(3).data_dir.clone();
    let moved = dir.with_extension("before-tmpfs");
    std::fs::rename(&dir, &moved).expect("move node 3's directory aside");
    let tmpfs = match Tmpfs::mount(&dir, "16m") {
        Ok(t) => t,
        Err(why) => return skip_or_fail(&why),
    };
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", moved.display()))
        .arg(&dir)
        .status()
        .expect("run cp");
    assert!(copied.success(), "copy node 3's directory onto the tmpfs");
    c.start_again(3);
    c.wait_node_ready(3, Duration::from_secs(30));

    // 128 KiB values through node 1 until node 3 stops (each write is in
    // node 3's WAL: three nodes, three replicas).
    let value = vec![b'v'; 128 << 10];
    let rest = c.node(1).rest();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut status = None;
    for i in 0..400 {
        let key = format!("full-{i:03}");
        let r = retry_write(Duration::from_secs(10), || {
            request(rest, "PUT", &kv_path(&key, None), &[], &value)
        });
        if r.is_success() {
            acknowledged.push(key);
        } else {
            // Outcome unknown while node 3's leaderships move: not counted.
            assert!(matches!(r.status, 503 | 504), "{r:?}");
        }
        if let Some(s) = c.exited(3) {
            status = Some(s);
            break;
        }
    }
    let status = status.unwrap_or_else(|| {
        panic!(
            "node 3 still runs after 400 writes of 128 KiB on a 16 MiB disk\n{}",
            c.log(3)
        )
    });
    assert!(!status.success(), "node 3 exited {status} on a full disk");
    let log = c.log(3);
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("storage failed; stopping this node"), "{log}");
    assert!(
        acknowledged.len() > 20,
        "only {} writes before the disk filled",
        acknowledged.len()
    );

    let reason = log
        .lines()
        .find(|l| l.contains("storage failed"))
        .unwrap_or_default()
        .to_owned();
    eprintln!(
        "disk_full: node 3 stopped ({status}) after {} acknowledged writes of 128 KiB: {reason}",
        acknowledged.len()
    );

    // The other two go on.
    let after = retry_write(Duration::from_secs(20), || {
        request(rest, "PUT", &kv_path("after-full", None), &[], b"x")
    });
    assert!(after.is_success(), "{after:?}");
    acknowledged.push("after-full".to_owned());

    // Room again: node 3 starts from its directory and catches up.
    tmpfs.resize("256m");
    c.start_again(3);
    c.wait_node_ready(3, Duration::from_secs(60));
    let node3 = c.node(3).rest();
    for key in &acknowledged {
        let r = poll(Duration::from_secs(30), "node 3 to catch up", || {
            get(node3, &kv_path(key, Some("stale")))
                .ok()
                .filter(|r| r.status == 200)
        });
        let expected: &[u8] = if key == "after-full" { b"x" } else { &value };
        assert!(r.body == expected, "{key}: {} bytes back", r.body.len());
    }
    c.kill_all();
    drop(tmpfs);
}
