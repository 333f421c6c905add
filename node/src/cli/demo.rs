//! `ringkv demo`: a local cluster in one process, and a small console to
//! stop, start and add its nodes while it runs, so that a newcomer can
//! watch failover, re-replication and a join on one machine.
//!
//! Node `n` keeps its data in `<data-dir>/node-n` and listens on REST
//! `rest_port + n - 1`, gRPC `grpc_port + n - 1` and the Redis protocol
//! `resp_port + n - 1`, all on loopback. The
//! founders are nodes `1..=nodes`; a node added at the console joins
//! through the running ones (`--join`) under the next unused id, and a
//! later `ringkv demo` on the same directory starts it again with the
//! founders (every `node-n` directory that holds a cluster record).
//!
//! The console reads commands from standard input, one per line: `stop N`
//! (the node's tasks end at once, as in a crash; its data stays), `start
//! N`, `add`, `status`, `help`. Without a terminal (standard input closed)
//! the demo just runs until Ctrl-C. Not here: the nodes themselves
//! ([`Server`]); the CLI flags (`commands.rs`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ringkv_core::metadata::MemberState;
use ringkv_core::{NodeId, PartitionId};

use crate::clock::MonotonicClock;
use crate::config::ServerConfig;
use crate::disk::FsDisk;
use crate::server::Server;
use crate::view::{Health, leader_view_of};

/// How long `add` waits for the cluster to take the new node.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// Where the demo's nodes live and listen, and how they are configured.
pub struct DemoOptions {
    pub data_dir: PathBuf,
    /// Founding nodes (ids `1..=nodes`).
    pub nodes: u16,
    pub rest_port: u16,
    pub grpc_port: u16,
    pub resp_port: u16,
    /// Applies the cluster-wide flags (partitions, `--dead-after`, ...).
    pub configure: Box<dyn Fn(&mut ServerConfig) + Send>,
    /// `--dead-after`, as `configure` sets it (the console quotes it).
    pub dead_after: Duration,
    /// Election jitter per node start.
    pub seed: fn(u64) -> u64,
}

struct Demo {
    options: DemoOptions,
    founders: BTreeMap<NodeId, SocketAddr>,
    /// Every node the demo knows of; `None` while stopped.
    nodes: BTreeMap<NodeId, Option<Server>>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Runs the demo until Ctrl-C: starts the nodes, prints where they listen,
/// then serves the console.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.nodes >= 1, "--nodes must be at least 1");
    let founders: BTreeMap<NodeId, SocketAddr> = (1..=options.nodes)
        .map(|n| (NodeId(u64::from(n)), loopback(options.grpc_port + n - 1)))
        .collect();
    let mut demo = Demo {
        founders,
        nodes: BTreeMap::new(),
        options,
    };
    let ids: Vec<NodeId> = demo.founders.keys().copied().collect();
    for id in ids {
        demo.start(id, Vec::new()).await?;
    }
    // Nodes added in an earlier run: their directories hold a cluster record.
    for id in demo.joined_before()? {
        demo.start(id, Vec::new()).await?;
    }
    demo.print_intro();
    let result = demo.console().await;
    println!("stopping...");
    // All at once: a node's graceful stop waits for its peers' streams to
    // end, and they end sooner when the peers stop too.
    let running: Vec<Server> = demo.nodes.into_values().flatten().collect();
    futures::future::join_all(running.into_iter().map(Server::stop)).await;
    result?;
    println!("stopped; data kept in {}", demo.options.data_dir.display());
    Ok(())
}

impl Demo {
    fn dir(&self, id: NodeId) -> PathBuf {
        self.options.data_dir.join(format!("node-{}", id.0))
    }

    fn port_offset(&self, id: NodeId) -> anyhow::Result<u16> {
        u16::try_from(id.0 - 1)
            .ok()
            .filter(|o| {
                self.options.rest_port.checked_add(*o).is_some()
                    && self.options.grpc_port.checked_add(*o).is_some()
                    && self.options.resp_port.checked_add(*o).is_some()
            })
            .with_context(|| format!("node {id} would listen past port 65535"))
    }

    /// Ids above the founders' whose directory holds a cluster record.
    fn joined_before(&self) -> anyhow::Result<Vec<NodeId>> {
        let mut ids = Vec::new();
        let entries = match std::fs::read_dir(&self.options.data_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e).context("reading the demo's data directory"),
        };
        for entry in entries {
            let name = entry?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node-"))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n > u64::from(self.options.nodes))
            else {
                continue;
            };
            let id = NodeId(id);
            if has_cluster_record(&self.dir(id)) {
                ids.push(id);
            } else {
                println!(
                    "ignoring {}: it never finished joining (remove it to reuse the id)",
                    self.dir(id).display()
                );
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Starts node `id` from its directory; `join` (member addresses) only
    /// for a new node.
    async fn start(&mut self, id: NodeId, join: Vec<String>) -> anyhow::Result<()> {
        let offset = self.port_offset(id)?;
        let grpc = loopback(self.options.grpc_port + offset);
        let peers = if self.founders.contains_key(&id) {
            self.founders.clone()
        } else {
            BTreeMap::from([(id, grpc)])
        };
        let mut config = ServerConfig::new(id, peers, grpc, self.dir(id));
        (self.options.configure)(&mut config);
        config.rest_listen = Some(loopback(self.options.rest_port + offset));
        config.resp_listen = Some(loopback(self.options.resp_port + offset));
        config.join = join;
        let server = Server::start(
            config,
            Arc::new(MonotonicClock::new()),
            Arc::new(FsDisk::new()),
            (self.options.seed)(id.0),
        )
        .await
        .with_context(|| format!("starting node {id}"))?;
        self.nodes.insert(id, Some(server));
        Ok(())
    }

    fn print_intro(&self) {
        println!(
            "ringkv demo: {} nodes, data in {}",
            self.nodes.len(),
            self.options.data_dir.display()
        );
        for s in self.nodes.values().flatten() {
            println!(
                "  node {}  REST http://{}  gRPC {}  RESP {}",
                s.node.view().node_id.0,
                s.rest_addr.map(|a| a.to_string()).unwrap_or_default(),
                s.grpc_addr,
                s.resp_addr.map(|a| a.to_string()).unwrap_or_default(),
            );
        }
        println!(
            "  plain TCP, no TLS; no access tokens until you add one (ringkv auth add --role \
             admin); both as in production: docs/deploy.md"
        );
        let rest = |i: usize| {
            self.nodes
                .values()
                .flatten()
                .nth(i)
                .or_else(|| self.nodes.values().flatten().next())
                .and_then(|s| s.rest_addr)
                .map(|a| a.to_string())
                .unwrap_or_default()
        };
        let (rest1, rest2) = (rest(0), rest(1));
        println!();
        println!("dashboard: http://{rest1}/ui   (every node serves it)");
        println!();
        println!("try:");
        println!("  curl -X PUT {rest1}/v1/kv/hello -d world");
        println!("  curl {rest2}/v1/kv/hello");
        println!("  curl {rest1}/v1/cluster/status");
        println!("  ringkv put greeting hi && ringkv get greeting");
        if let Some(resp) = self.nodes.values().flatten().find_map(|s| s.resp_addr) {
            println!(
                "  redis-cli -p {} set a 1   # the Redis protocol",
                resp.port()
            );
            println!(
                "  redis-benchmark --cluster -p {} -t set,get   # routed to leaders",
                resp.port()
            );
        }
        println!("  ringkv bench --clients 50 --duration 10s");
        println!();
        print_help();
        println!(
            "Ctrl-C stops the cluster; running `ringkv demo` again brings it back with its data."
        );
    }

    /// Serves console commands until Ctrl-C. A node that stops by itself
    /// is reported and left stopped.
    async fn console(&mut self) -> anyhow::Result<()> {
        let mut lines = console_lines();
        let mut stdin_open = true;
        loop {
            let event = {
                let waits: Vec<_> = self
                    .nodes
                    .iter_mut()
                    .filter_map(|(&id, s)| s.as_mut().map(|s| (id, s)))
                    .map(|(id, s)| Box::pin(async move { (id, s.wait().await) }))
                    .collect();
                let exited = async move {
                    if waits.is_empty() {
                        std::future::pending().await
                    } else {
                        futures::future::select_all(waits).await.0
                    }
                };
                tokio::select! {
                    biased;
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    (id, result) = exited => Event::Exited(id, result),
                    line = lines.recv(), if stdin_open => Event::Line(line),
                }
            };
            match event {
                Event::Exited(id, result) => {
                    match result {
                        Ok(()) => println!("node {id} stopped by itself"),
                        Err(e) => println!("node {id} failed: {}", crate::error_chain(e.as_ref())),
                    }
                    if let Some(server) = self.nodes.insert(id, None).flatten() {
                        server.stop().await;
                    }
                }
                Event::Line(Some(line)) => {
                    if let Err(e) = self.command(line.trim()).await {
                        println!("error: {}", crate::error_chain(e.as_ref()));
                    }
                }
                // No console (stdin closed or unreadable): run until Ctrl-C.
                Event::Line(None) => stdin_open = false,
            }
        }
    }

    async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = |arg: Option<&&str>| -> anyhow::Result<NodeId> {
            let arg = arg.context("which node? (e.g. `stop 2`)")?;
            let id = arg
                .trim_start_matches('n')
                .parse::<u64>()
                .with_context(|| format!("{arg:?} is not a node id"))?;
            Ok(NodeId(id))
        };
        match words.first().copied() {
            None => Ok(()),
            Some("stop" | "kill") => {
                let id = node(words.get(1))?;
                let server = self
                    .nodes
                    .get_mut(&id)
                    .with_context(|| format!("there is no node {id}"))?
                    .take()
                    .with_context(|| format!("node {id} is already stopped"))?;
                server.stop().await;
                let dead_after = self.options.dead_after.as_secs();
                println!(
                    "node {id} stopped (its data stays). Its peers see it down within a second; \
                     if it stays down {dead_after} s (--dead-after), it is marked dead and its \
                     replicas are re-created on the others. `start {}` brings it back.",
                    id.0
                );
                Ok(())
            }
            Some("start") => {
                let id = node(words.get(1))?;
                match self.nodes.get(&id) {
                    None => anyhow::bail!("there is no node {id} (`add` starts a new one)"),
                    Some(Some(_)) => anyhow::bail!("node {id} is running"),
                    Some(None) => {}
                }
                // What the others think of it, before it talks to them.
                let state = self
                    .nodes
                    .values()
                    .flatten()
                    .find_map(|s| s.node.view().members.iter().find(|m| m.id == id)?.state);
                self.start(id, Vec::new()).await?;
                match state {
                    Some(s @ (MemberState::Dead | MemberState::Removed)) => println!(
                        "node {id} started from its data, but the cluster has it as {s}: its                          replicas were (or are being) re-created on the others, and its peers                          will refuse it. `stop {}` it; `add` starts a new node in its place.",
                        id.0
                    ),
                    _ => println!("node {id} started from its data"),
                }
                Ok(())
            }
            Some("add" | "join") => self.add().await,
            Some("status") => {
                self.print_status();
                Ok(())
            }
            Some("help" | "?") => {
                print_help();
                Ok(())
            }
            Some(other) => anyhow::bail!("unknown command {other:?}; `help` lists them"),
        }
    }

    /// Starts a new empty node under the next unused id, joining through
    /// every running node.
    async fn add(&mut self) -> anyhow::Result<()> {
        let last = self.nodes.keys().last().map_or(0, |id| id.0);
        let mut id = NodeId(last + 1);
        // A directory left by an add that never finished: skip its id.
        while self.dir(id).exists() {
            id = NodeId(id.0 + 1);
        }
        let through: Vec<String> = self
            .nodes
            .values()
            .flatten()
            .map(|s| s.grpc_addr.to_string())
            .collect();
        anyhow::ensure!(!through.is_empty(), "no node is running to join through");
        println!("node {id} joining through {}...", through.join(","));
        match tokio::time::timeout(JOIN_PATIENCE, self.start(id, through)).await {
            Ok(started) => started?,
            Err(_) => anyhow::bail!(
                "node {id} was not taken in within {} s (is a majority of the metadata group up?)",
                JOIN_PATIENCE.as_secs()
            ),
        }
        let offset = self.port_offset(id)?;
        println!(
            "node {id} joined: REST http://{}  gRPC {}  RESP {}; the controller now moves its share of \
             replicas to it (`ringkv status` shows the moves)",
            loopback(self.options.rest_port + offset),
            loopback(self.options.grpc_port + offset),
            loopback(self.options.resp_port + offset)
        );
        Ok(())
    }

    /// Members as a running node sees them, and replicas and leaders per
    /// node as the partitions' leaders report them.
    fn print_status(&self) {
        let views: Vec<_> = self
            .nodes
            .values()
            .flatten()
            .map(|s| s.node.view())
            .collect();
        let Some(first) = views.first() else {
            println!("no node is running");
            return;
        };
        let mut voters: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut leaderless = 0;
        for p in 0..first.partitions.len() {
            let led = leader_view_of(views.iter().map(|v| v.as_ref()), PartitionId(p as u32));
            match led {
                Some(pv) => {
                    for r in &pv.replicas {
                        *voters.entry(*r).or_default() += 1;
                    }
                    if let Some(l) = pv.leader {
                        *leaders.entry(l).or_default() += 1;
                    }
                }
                None => leaderless += 1,
            }
        }
        println!(
            "node  running  state      seen by n{}  replicas  leads",
            first.node_id.0
        );
        for m in &first.members {
            let running = self.nodes.get(&m.id).is_some_and(Option::is_some);
            let state = m.state.map_or("-".to_owned(), |s| s.to_string());
            let seen = match (m.health, m.last_heard) {
                (Health::Local, _) => "self".to_owned(),
                (Health::Up, _) => "up".to_owned(),
                (Health::Down, Some(t)) => format!("down {} s", t.as_secs()),
                (Health::Down, None) => "down".to_owned(),
            };
            println!(
                "n{:<4} {:<8} {:<10} {:<11} {:<9} {}",
                m.id.0,
                if running { "yes" } else { "no" },
                state,
                seen,
                voters.get(&m.id).copied().unwrap_or(0),
                leaders.get(&m.id).copied().unwrap_or(0)
            );
        }
        let moves = views
            .iter()
            .find_map(|v| v.plan.as_ref())
            .map_or(0, |p| p.moves.len());
        println!(
            "{} partitions, {} without a leader; {} moves under way{}",
            first.partitions.len(),
            leaderless,
            moves,
            if first
                .members
                .iter()
                .any(|m| m.state == Some(MemberState::Dead))
            {
                " (re-replicating a dead member's replicas)"
            } else {
                ""
            }
        );
    }
}

enum Event {
    Exited(NodeId, anyhow::Result<()>),
    /// `None`: standard input is closed or unreadable.
    Line(Option<String>),
}

/// Standard input's lines, read on a thread of their own: a read blocks
/// until a line comes, and tokio's `stdin` would hold the runtime's
/// shutdown (and so the process) until then. The thread ends with the
/// process.
fn console_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("demo-console".to_owned())
        .spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        // The channel's sender is gone with the closure: no console.
        println!("no console: cannot start its thread: {e}");
    }
    rx
}

fn has_cluster_record(dir: &Path) -> bool {
    crate::storage::cluster_record_path(dir).exists()
}

fn print_help() {
    println!("console (type a command and Enter):");
    println!("  stop N    stop node N as a crash would (its data stays): watch failover, then,");
    println!("            after --dead-after (default 30 s), its replicas re-created elsewhere");
    println!("  start N   start node N again from its data");
    println!("  add       start a new empty node that joins (--join) and takes its share");
    println!("  status    members, their replicas and leaders (`ringkv status` shows more)");
}
