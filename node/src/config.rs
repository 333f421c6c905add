//! A server's static configuration, independent of how it was given (CLI
//! flags, environment, the demo launcher, the simulation harness).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringkv_core::NodeId;
use ringkv_core::metadata::ClientAddresses;
use ringkv_core::node::NodeConfig;
use ringkv_core::ring::RingConfig;

use crate::address::{AddrError, PeerAddr};

/// Everything one `ringkv server` needs to start.
/// Which RESP connections get `-MOVED slot host:port` for a key whose
/// partition another node leads (the others are served: the node forwards
/// the command to the leader, one hop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RespRedirects {
    /// A connection that asked for the cluster's topology (`CLUSTER SLOTS`,
    /// `SHARDS` or `NODES`), as every cluster-aware client library does
    /// first; plain clients are served.
    #[default]
    Auto,
    /// Every connection, for clients that follow `MOVED` without asking
    /// for the topology first (`redis-cli -c`). Plain clients then fail.
    Always,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub node_id: NodeId,
    /// Every founding member (this node included) and its gRPC address,
    /// which peers and clients dial (an IP or a DNS name, resolved at each
    /// connect). A node that joins (`join`) lists only itself: it learns
    /// the members when it joins.
    pub peers: BTreeMap<NodeId, PeerAddr>,
    /// Where this node's gRPC server listens (client API and peer transport).
    pub grpc_listen: SocketAddr,
    /// Where the REST API listens; `None` to run without it.
    pub rest_listen: Option<SocketAddr>,
    /// Where the Redis protocol (RESP) is served; `None` to run without it.
    pub resp_listen: Option<SocketAddr>,
    /// Which RESP connections are redirected (`-MOVED`) to a key's leader.
    pub resp_redirects: RespRedirects,
    pub data_dir: PathBuf,
    /// A name shared by the cluster's nodes, kept in `node.toml` so a data
    /// directory is never opened by a node of another cluster.
    pub cluster_id: String,
    pub partition_count: u32,
    pub replication_factor: u32,
    pub tokens_per_node: u32,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Client connections each of the REST and RESP listeners serves at
    /// once; one more is refused with a clear error and closed.
    pub max_connections: usize,
    /// How long a client may take to send a request once it has begun
    /// (REST: its headers, then its body; RESP: the rest of a command):
    /// past it, the request is refused (REST 408) or the connection
    /// closed. A REST connection idle that long is closed too (RESP
    /// connections may idle).
    pub client_timeout: Duration,
    pub request_timeout: Duration,
    pub tick_interval: Duration,
    /// Applied entries after which a partition's log is compacted.
    pub snapshot_entries: u64,
    /// How long a node must be unreachable before it is marked dead.
    pub dead_after: Duration,
    /// Members (`host:port` of their gRPC) to join through, for a node
    /// whose data directory is in no cluster yet (`--join`). Empty: form
    /// the cluster with `peers` instead.
    pub join: Vec<String>,
    /// The gRPC address other members dial, as this node registers it when
    /// it joins (`--advertise`); by default `grpc_listen`.
    pub advertise: Option<String>,
    /// Whether the placement controller, where this node runs it, moves
    /// healthy groups toward the ring over the `up` members (a joined node
    /// gets its share; an operator's `move-replica` is undone). Dead and
    /// draining members' replicas move either way.
    pub rebalance: bool,
    /// TLS on every listener and between nodes (`--tls-cert`, `--tls-key`,
    /// `--peer-ca`); `None`: plain TCP. Not under madsim.
    pub tls: Option<TlsFiles>,
    /// Simulation only: the harness's hook that drops, duplicates or delays
    /// outgoing peer batches (see [`crate::transport::faults`]). The field
    /// does not exist outside `cfg(madsim)`.
    #[cfg(madsim)]
    pub peer_faults: Option<std::sync::Arc<dyn crate::transport::faults::PeerFaults>>,
    /// Simulation only: the harness's invariant checker, handed every
    /// [`Observation`](ringkv_core::node::Observation) of the core as it
    /// happens (and the core told to make them). Madsim-only, like
    /// `peer_faults`.
    #[cfg(madsim)]
    pub observer: Option<crate::handle::Observer>,
    /// Simulation only: Raft tunables in place of the defaults (the
    /// simulation's swarm shrinks messages and election timeouts per seed).
    #[cfg(madsim)]
    pub raft: Option<ringkv_core::raft::RaftConfig>,
}

/// The files a node's TLS is made of (see `crate::tls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM), leaf first: served on every
    /// listener and presented to peers.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The authority that signs the members' certificates (PEM).
    pub peer_ca: PathBuf,
}

/// Defaults shared by the CLI, the demo and the tests.
pub mod defaults {
    pub const PARTITION_COUNT: u32 = 64;
    pub const REPLICATION_FACTOR: u32 = 3;
    pub const TOKENS_PER_NODE: u32 = 64;
    pub const MAX_KEY_BYTES: usize = 4 << 10;
    pub const MAX_VALUE_BYTES: usize = 1 << 20;
    /// Redis's `maxclients` default.
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const CLIENT_TIMEOUT_SECS: u64 = 10;
    pub const SNAPSHOT_ENTRIES: u64 = 10_000;
    pub const DEAD_AFTER_SECS: u64 = 30;
    pub const CLUSTER_ID: &str = "ringkv";
}

impl ServerConfig {
    /// A configuration with every tunable at its default.
    pub fn new<A: Into<PeerAddr>>(
        node_id: NodeId,
        peers: BTreeMap<NodeId, A>,
        grpc_listen: SocketAddr,
        data_dir: PathBuf,
    ) -> Self {
        let peers: BTreeMap<NodeId, PeerAddr> =
            peers.into_iter().map(|(id, a)| (id, a.into())).collect();
        let core = NodeConfig::new(node_id, peers.keys().copied().collect());
        ServerConfig {
            node_id,
            peers,
            grpc_listen,
            rest_listen: None,
            resp_listen: None,
            resp_redirects: RespRedirects::default(),
            data_dir,
            cluster_id: defaults::CLUSTER_ID.to_owned(),
            partition_count: defaults::PARTITION_COUNT,
            replication_factor: defaults::REPLICATION_FACTOR,
            tokens_per_node: defaults::TOKENS_PER_NODE,
            max_key_bytes: defaults::MAX_KEY_BYTES,
            max_value_bytes: defaults::MAX_VALUE_BYTES,
            max_connections: defaults::MAX_CONNECTIONS,
            client_timeout: Duration::from_secs(defaults::CLIENT_TIMEOUT_SECS),
            request_timeout: core.request_timeout,
            tick_interval: core.tick_interval,
            snapshot_entries: defaults::SNAPSHOT_ENTRIES,
            dead_after: core.placement.dead_after,
            join: Vec::new(),
            advertise: None,
            rebalance: true,
            tls: None,
            #[cfg(madsim)]
            peer_faults: None,
            #[cfg(madsim)]
            observer: None,
            #[cfg(madsim)]
            raft: None,
        }
    }

    /// Where clients reach this node's REST and RESP listeners, as the
    /// member list records them: the listen address, except that a listener
    /// on every interface (0.0.0.0, ::) is given the host other members
    /// dial for gRPC (`--advertise`, else this node's `--peers` entry, else
    /// the gRPC listen address).
    pub fn client_addresses(&self) -> ClientAddresses {
        let dial_host = if let Some(advertised) = &self.advertise {
            advertised
                .rsplit_once(':')
                .map_or(advertised.as_str(), |(h, _)| h)
                .to_owned()
        } else {
            match self.peers.get(&self.node_id) {
                Some(own) if own.socket_addr().is_none_or(|a| !a.ip().is_unspecified()) => {
                    own.host().to_owned()
                }
                _ => match self.grpc_listen.ip() {
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                },
            }
        };
        let dialable = |listen: Option<SocketAddr>| match listen {
            None => String::new(),
            Some(a) if a.ip().is_unspecified() => format!("{dial_host}:{}", a.port()),
            Some(a) => a.to_string(),
        };
        ClientAddresses {
            rest: dialable(self.rest_listen),
            resp: dialable(self.resp_listen),
        }
    }

    /// The core's configuration for this server.
    pub fn node_config(&self) -> NodeConfig {
        let mut c = NodeConfig::new(self.node_id, self.peers.keys().copied().collect());
        c.addresses = self
            .peers
            .iter()
            .map(|(&id, addr)| (id, addr.to_string()))
            .collect();
        c.client_addresses = self.client_addresses();
        c.ring = RingConfig {
            partition_count: self.partition_count,
            replication_factor: self.replication_factor as usize,
            tokens_per_node: self.tokens_per_node,
        };
        c.max_key_bytes = self.max_key_bytes;
        c.max_value_bytes = self.max_value_bytes;
        c.request_timeout = self.request_timeout;
        c.tick_interval = self.tick_interval;
        c.snapshot_threshold = self.snapshot_entries;
        c.placement.dead_after = self.dead_after;
        c.placement.rebalance = self.rebalance;
        // The driver drains the changes into its watch hub.
        c.watch = true;
        #[cfg(madsim)]
        {
            c.observe = self.observer.is_some();
            if let Some(raft) = &self.raft {
                c.raft = raft.clone();
            }
        }
        c
    }
}

/// Why a `--peers` list did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeersError {
    #[error("peer entry {0:?} is not ID=HOST:PORT (for example 1=127.0.0.1:9091)")]
    Syntax(String),
    #[error("peer id in {0:?} must be a positive integer")]
    BadId(String),
    #[error("peer address in {0:?}: {1}")]
    BadAddr(String, AddrError),
    #[error("peer id {0} appears twice")]
    Duplicate(u64),
    #[error("the peer list is empty")]
    Empty,
}

/// Parses `1=127.0.0.1:9091,2=ringkv-1.ringkv:9091,...` (IPs or host names).
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, PeerAddr>, PeersError> {
    let mut out = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| PeersError::Syntax(entry.to_owned()))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| PeersError::BadId(entry.to_owned()))?;
        let addr = PeerAddr::parse(addr).map_err(|e| PeersError::BadAddr(entry.to_owned(), e))?;
        if out.insert(NodeId(id), addr).is_some() {
            return Err(PeersError::Duplicate(id));
        }
    }
    if out.is_empty() {
        return Err(PeersError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_dialable() {
        let grpc: SocketAddr = "10.0.0.4:9091".parse().unwrap();
        let mut c = ServerConfig::new(
            NodeId(4),
            BTreeMap::from([(NodeId(4), grpc)]),
            grpc,
            PathBuf::from("d"),
        );
        assert_eq!(c.client_addresses(), ClientAddresses::default());
        c.rest_listen = Some("127.0.0.1:8081".parse().unwrap());
        c.resp_listen = Some("0.0.0.0:6379".parse().unwrap());
        assert_eq!(
            c.client_addresses(),
            ClientAddresses {
                rest: "127.0.0.1:8081".into(),
                resp: "10.0.0.4:6379".into(),
            }
        );
        c.advertise = Some("db4.example:9091".into());
        assert_eq!(c.client_addresses().resp, "db4.example:6379");
        // A node that listens everywhere and is named in --peers by host
        // name gives its clients that name.
        c.advertise = None;
        c.grpc_listen = "0.0.0.0:9091".parse().unwrap();
        c.peers = parse_peers("4=ringkv-3.ringkv:9091").unwrap();
        assert_eq!(c.client_addresses().resp, "ringkv-3.ringkv:6379");
    }

    #[test]
    fn parses_a_peer_list() {
        let peers = parse_peers("1=127.0.0.1:9091, 2=ringkv-1.ringkv:9092,3=[::1]:9093").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&NodeId(2)].host(), "ringkv-1.ringkv");
        assert_eq!(peers[&NodeId(3)].port(), 9093);
    }

    #[test]
    fn rejects_bad_peer_lists_with_a_reason() {
        assert_eq!(
            parse_peers("1:127.0.0.1:9091"),
            Err(PeersError::Syntax("1:127.0.0.1:9091".into()))
        );
        assert_eq!(
            parse_peers("0=127.0.0.1:1"),
            Err(PeersError::BadId("0=127.0.0.1:1".into()))
        );
        assert_eq!(
            parse_peers("1=localhost"),
            Err(PeersError::BadAddr(
                "1=localhost".into(),
                AddrError::NotHostPort("localhost".into())
            ))
        );
        assert!(matches!(
            parse_peers("1=0.0.0.0:9091"),
            Err(PeersError::BadAddr(_, AddrError::Unspecified(_)))
        ));
        assert_eq!(
            parse_peers("1=127.0.0.1:1,1=127.0.0.1:2"),
            Err(PeersError::Duplicate(1))
        );
        assert_eq!(parse_peers(" , "), Err(PeersError::Empty));
    }
}
