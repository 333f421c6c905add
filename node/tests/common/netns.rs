//! Hosts in network namespaces for the process-level tests: a bridge, one
//! namespace per host with its own address on it, and a hosts file each.
//! Namespaces need root and `ip` (iproute2); [`skip_unless_netns`] says
//! why not where they cannot be made.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// A bridge, and one network namespace per host on it, each with its own
/// address and a hosts file naming every host. Everything is removed on
/// drop (processes in the namespaces must be gone first: [`Pods`] is
/// dropped before it).
pub struct Net {
    tag: String,
    bridge: String,
    subnet: [u8; 3],
    /// Host name -> (namespace, last octet).
    hosts: BTreeMap<String, (String, u8)>,
}

/// Why namespaces cannot be made here, if they cannot.
pub fn netns_unavailable() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Some("not root (network namespaces need CAP_NET_ADMIN)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no `ip` command (iproute2)".into()),
    }
}

pub fn skip_unless_netns(test: &str) -> bool {
    match netns_unavailable() {
        None => false,
        Some(why) => {
            assert!(
                std::env::var("RINGKV_REQUIRE_NETNS").as_deref() != Ok("1"),
                "RINGKV_REQUIRE_NETNS=1 but {why}"
            );
            eprintln!("SKIPPED {test}: {why}");
            true
        }
    }
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    /// `index` tells apart the nets of tests that run at once.
    pub fn new(index: u8) -> Net {
        let pid = std::process::id();
        let tag = format!("rk{}{index}", pid % 100_000);
        let subnet = [
            10,
            100 + (pid % 100) as u8,
            ((pid / 100) % 250) as u8 + index,
        ];
        let bridge = format!("{tag}b");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let me = format!("{}.{}.{}.254/24", subnet[0], subnet[1], subnet[2]);
        ip(&["addr", "add", &me, "dev", &bridge]);
        Net {
            tag,
            bridge,
            subnet,
            hosts: BTreeMap::new(),
        }
    }

    /// Gives this (the root) namespace one more address on the bridge,
    /// `SUBNET.octet`, that every host reaches directly.
    pub fn add_local(&self, octet: u8) {
        let cidr = format!("{}/24", self.addr(octet));
        ip(&["addr", "add", &cidr, "dev", &self.bridge]);
    }

    pub fn addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], octet)
    }

    /// A namespace for host `name` at `.octet`, on the bridge.
    pub fn add_host(&mut self, name: &str, octet: u8) {
        let n = self.hosts.len();
        let ns = format!("{}-{n}", self.tag);
        let (outside, inside) = (format!("{}h{n}", self.tag), format!("{}i{n}", self.tag));
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &ns]);
        ip(&["link", "set", &outside, "master", &self.bridge, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", &inside, "up"]);
        self.address(&ns, &inside, "add", octet);
        self.hosts.insert(name.to_owned(), (ns, octet));
        self.write_hosts_files();
    }

    /// `ip -n NS addr VERB SUBNET.OCTET/24 dev DEV`.
    pub fn address(&self, ns: &str, dev: &str, verb: &str, octet: u8) {
        let cidr = format!("{}/24", self.addr(octet));
        ip(&["-n", ns, "addr", verb, &cidr, "dev", dev]);
    }

    /// Gives host `name` another address (a pod that came back elsewhere),
    /// and every hosts file the new one.
    pub fn readdress(&mut self, name: &str, octet: u8) {
        let (ns, old) = self.hosts[name].clone();
        let n: usize = ns.rsplit('-').next().unwrap().parse().unwrap();
        let dev = format!("{}i{n}", self.tag);
        self.address(&ns, &dev, "del", old);
        self.address(&ns, &dev, "add", octet);
        self.hosts.insert(name.to_owned(), (ns, octet));
        self.write_hosts_files();
    }

    /// `/etc/netns/NS/hosts` of every namespace, rewritten in place (the
    /// running processes see it: it is bind-mounted, the same inode).
    pub fn write_hosts_files(&self) {
        let mut table = String::from("127.0.0.1 localhost\n");
        for (name, (_, octet)) in &self.hosts {
            table.push_str(&format!("{} {name}\n", self.addr(*octet)));
        }
        for (ns, _) in self.hosts.values() {
            let dir = Path::new("/etc/netns").join(ns);
            fs::create_dir_all(&dir).unwrap();
            let path = dir.join("hosts");
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            std::io::Write::write_all(&mut f, table.as_bytes()).unwrap();
        }
    }

    pub fn ns(&self, name: &str) -> &str {
        &self.hosts[name].0
    }

    pub fn ip_of(&self, name: &str) -> Ipv4Addr {
        self.addr(self.hosts[name].1)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (ns, _) in self.hosts.values() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
