//! Writes the seed corpora, `fuzz/seeds/<target>/`, from real traffic and
//! real files: the peer batches three core nodes send one another while
//! they elect leaders and replicate writes, their metadata document, a
//! single node's data directory after writes, deletes and snapshots, and
//! hand-written REST and RESP requests. The core's part is deterministic
//! (fixed seeds, simulated time); the data directory's bytes carry the
//! wall clock of the run (command stamps), so they differ run to run.
//!
//! `cargo run --release --manifest-path fuzz/Cargo.toml --example seeds`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::access::{Role, TokenRecord};
use ringkv_core::identity::wire::encode_hello;
use ringkv_core::identity::{ClusterUid, Hello, Identity, Incarnation};
use ringkv_core::kv::{Command, Precondition, Ttl};
use ringkv_core::metadata::{ClusterMetadata, MetaChange};
use ringkv_core::node::{ClientRequest, Node, NodeConfig, Recovered, RequestId};
use ringkv_core::routing::Hops;
use ringkv_core::wire::encode_peer_batch;
use ringkv_core::{NodeId, Time};
use ringkv_fuzz::{DATA_DIR, encode_image, node_meta};
use ringkv_node::clock::MonotonicClock;
use ringkv_node::config::ServerConfig;
use ringkv_node::disk::MemDisk;
use ringkv_node::server::Server;
use ringkv_node::storage::{Storage, StorageOptions};

/// One target's seeds.
type Seeds = Vec<Vec<u8>>;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut seeds: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    let (batches, docs, kv_images) = core_cluster();
    seeds.insert("peer_batch", batches);
    seeds.insert("metadata", docs);
    let (dirs, snapshot_files) = data_dirs();
    seeds.insert("snapshot", [kv_images, snapshot_files].concat());
    seeds.insert("peer_hello", hellos());
    seeds.insert("kv_apply", kv_entries());
    seeds.insert("recovery", dirs);
    seeds.insert("rest_request", text(REST_REQUESTS));
    seeds.insert("resp_parser", text(RESP_COMMANDS));
    for (target, inputs) in seeds {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove old seeds");
        }
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), input).expect("write a seed");
        }
        println!("{target}: {} seeds", inputs.len());
    }
}

/// Three core nodes, run for six simulated seconds with every message
/// delivered at once and every write durable at once, and ten puts at
/// second four: a sample of the batches they sent (one in five, at most
/// 40), their metadata document (and two edits of it), and the snapshot
/// images of a partition's key-value store.
fn core_cluster() -> (Seeds, Seeds, Seeds) {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|&id| {
            let cfg = NodeConfig::new(id, ids.clone());
            Node::new(cfg, id.0, Recovered::default()).expect("a node starts")
        })
        .collect();
    let mut batches = Vec::new();
    let mut sent = 0u32;
    for step in 0..600u64 {
        let now = Time::from_millis(step * 10);
        if step == 400 {
            for i in 0..10u64 {
                let request = ClientRequest::put(format!("key-{i}"), format!("value-{i}"));
                nodes[(i % 3) as usize].handle_request(now, RequestId(i), request, Hops(0));
            }
        }
        for n in 0..nodes.len() {
            nodes[n].handle_timeout(now);
            let mut outbox = Vec::new();
            loop {
                let mut progressed = false;
                while let Some(io) = nodes[n].poll_io() {
                    nodes[n].handle_persisted(now, io.id);
                    progressed = true;
                }
                while let Some(t) = nodes[n].poll_transmit() {
                    outbox.push(t);
                    progressed = true;
                }
                while nodes[n].poll_reply().is_some() {}
                while nodes[n].poll_event().is_some() {}
                while nodes[n].poll_feed().is_some() {}
                if !progressed {
                    break;
                }
            }
            for t in outbox {
                sent += 1;
                if sent.is_multiple_of(5) && batches.len() < 40 {
                    batches.push(encode_peer_batch(&t.batch).to_vec());
                }
                let to = (t.to.0 - 1) as usize;
                nodes[to].handle_message(now, t.batch);
            }
        }
    }
    let mut docs = Vec::new();
    if let Some(doc) = nodes[0].metadata() {
        docs.push(doc_seed(doc));
        let token = TokenRecord {
            name: "ci".into(),
            role: Role::Admin,
            scope: Bytes::new(),
            secret_hash: [7; 32],
        };
        let with_token = doc
            .apply(&MetaChange::AddToken {
                id: "a1".into(),
                record: token,
            })
            .expect("the first token is an admin");
        docs.push(doc_seed(&with_token));
        let joining = doc
            .apply(&MetaChange::Register {
                node: NodeId(4),
                address: "127.0.0.1:9094".into(),
                incarnation: Incarnation(4),
            })
            .expect("a new node registers");
        docs.push(doc_seed(&joining));
    }
    let mut images = Vec::new();
    for p in nodes[0].partitions().collect::<Vec<_>>() {
        if let Some(kv) = nodes[0].kv(p)
            && !kv.is_empty()
            && images.len() < 4
        {
            images.push(kv.snapshot().to_vec());
        }
    }
    (batches, docs, images)
}

/// A metadata target input: the version byte, then the document.
fn doc_seed(doc: &ClusterMetadata) -> Vec<u8> {
    let mut seed = vec![doc.version as u8];
    seed.extend_from_slice(&doc.encode());
    seed
}

/// Sequences of log entries (two bytes of length, then the entry): every
/// kind of command, with and without preconditions and expiry.
fn kv_entries() -> Vec<Vec<u8>> {
    let key = |k: &str| Bytes::from(k.to_owned());
    let put = |k: &str, v: &str, precondition, ttl| Command::Put {
        key: key(k),
        value: key(v),
        precondition,
        ttl,
    };
    let sequences = [
        vec![
            put("a", "1", Precondition::None, Ttl::Clear),
            put(
                "b",
                "2",
                Precondition::MustNotExist,
                Ttl::At(1_700_000_060_000),
            ),
            put("a", "3", Precondition::ModRevision(1), Ttl::Keep),
            Command::Delete {
                key: key("b"),
                precondition: Precondition::MustExist,
            },
        ],
        vec![
            Command::Increment {
                key: key("n"),
                delta: 5,
            },
            Command::Increment {
                key: key("n"),
                delta: -7,
            },
            Command::Append {
                key: key("s"),
                suffix: key("ab"),
                max_value_bytes: 8,
            },
            Command::Expire {
                key: key("s"),
                at: Some(1_700_000_001_000),
            },
            Command::Sweep { max_keys: 10 },
        ],
        vec![
            Command::PutAll {
                pairs: vec![(key("x"), key("1")), (key("y"), key("2"))],
            },
            Command::Expire {
                key: key("x"),
                at: None,
            },
            Command::Delete {
                key: key("y"),
                precondition: Precondition::ModRevision(1),
            },
        ],
    ];
    sequences
        .iter()
        .map(|commands| {
            let mut input = Vec::new();
            for (i, command) in commands.iter().enumerate() {
                let entry = command.encode(1_700_000_000_000 + i as u64 * 1_000);
                input.extend_from_slice(&u16::try_from(entry.len()).expect("short").to_le_bytes());
                input.extend_from_slice(&entry);
            }
            input
        })
        .collect()
}

fn hellos() -> Vec<Vec<u8>> {
    let from = Identity {
        node: NodeId(2),
        incarnation: Incarnation(2),
        cluster_name: "ringkv".into(),
        partition_count: 64,
        replication_factor: 3,
        format_version: 1,
    };
    [None, Some(ClusterUid(7))]
        .into_iter()
        .map(|cluster| {
            encode_hello(&Hello {
                from: from.clone(),
                cluster,
                to: NodeId(1),
                to_incarnation: cluster.map(|_| Incarnation(1)),
            })
        })
        .collect()
}

/// Data directories of the recovery target: a new one (only `node.toml`),
/// one a node wrote 300 keys and 50 deletes to (several snapshots, the
/// WAL after them, `cluster.toml`), the same with its last segment's final
/// record torn, and the same without its snapshots. Also, for the snapshot
/// target, up to four of its snapshot files.
fn data_dirs() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let fresh = Arc::new(MemDisk::new());
    drop(
        Storage::open(
            fresh.clone(),
            DATA_DIR.into(),
            node_meta(),
            StorageOptions::default(),
        )
        .expect("a new directory opens"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let used = runtime.block_on(written_directory());
    let mut torn = used.clone();
    if let Some((_, last)) = torn.iter_mut().rev().find(|(p, _)| is_segment(p)) {
        let cut = last.len().saturating_sub(5);
        last.truncate(cut);
    }
    let without_snapshots: BTreeMap<PathBuf, Vec<u8>> = used
        .iter()
        .filter(|(p, _)| !p.starts_with(Path::new(DATA_DIR).join("snap")))
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    let snapshot_files = used
        .iter()
        .filter(|(p, _)| p.starts_with(Path::new(DATA_DIR).join("snap")))
        .take(4)
        .map(|(_, d)| d.clone())
        .collect();
    let dirs = [fresh.durable_image(), used, torn, without_snapshots]
        .iter()
        .map(encode_image)
        .collect();
    (dirs, snapshot_files)
}

fn is_segment(path: &Path) -> bool {
    path.starts_with(Path::new(DATA_DIR).join("wal"))
}

async fn written_directory() -> BTreeMap<PathBuf, Vec<u8>> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let meta = node_meta();
    let mut config = ServerConfig::new(
        NodeId(meta.node_id),
        BTreeMap::from([(NodeId(meta.node_id), addr)]),
        addr,
        DATA_DIR.into(),
    );
    config.cluster_id = meta.cluster_id;
    config.partition_count = meta.partition_count;
    config.replication_factor = meta.replication_factor;
    config.snapshot_entries = 40;
    let disk = Arc::new(MemDisk::new());
    let server = Server::start(config, Arc::new(MonotonicClock::new()), disk.clone(), 7)
        .await
        .expect("the node starts");
    while !server.node.view().ready {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..350u32 {
        let request = if i < 300 {
            ClientRequest::put(format!("k{i:03}"), vec![b'v'; (i % 40) as usize])
        } else {
            ClientRequest::delete(format!("k{:03}", i - 300))
        };
        server
            .node
            .request(request)
            .await
            .expect("the write succeeds");
    }
    server.stop().await;
    disk.durable_image()
}

fn text(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// REST target inputs: method, path and query, headers, empty line, body.
const REST_REQUESTS: &[&str] = &[
    "PUT\n/v1/kv/greeting\ncontent-type: application/octet-stream\n\nhello",
    "GET\n/v1/kv/greeting\n\n",
    "GET\n/v1/kv/greeting?consistency=lease\n\n",
    "PUT\n/v1/kv/greeting\nif-match: \"1\"\n\nagain",
    "PUT\n/v1/kv/greeting\nif-match: W/\"2\"\n\nweak",
    "PUT\n/v1/kv/greeting\nif-none-match: *\n\nonce",
    "PUT\n/v1/kv/session?ttl=30\n\nabc",
    "DELETE\n/v1/kv/greeting\nif-match: \"3\"\n\n",
    "GET\n/v1/kv?prefix=gr&limit=10\n\n",
    "GET\n/v1/kv?start=a&end=z&limit=2&keys_only=true\n\n",
    "GET\n/v1/kv/%FF%FE\n\n",
    "GET\n/v1/cluster/locate/greeting\n\n",
    "GET\n/v1/cluster/status\n\n",
    "GET\n/v1/cluster/members\n\n",
    "GET\n/v1/cluster/moves\n\n",
    "GET\n/v1/watch?prefix=gr&start_revision=1\n\n",
    "GET\n/v1/dashboard/cluster\n\n",
    "GET\n/metrics\n\n",
    "GET\n/readyz\n\n",
    "GET\n/ui/app.js\n\n",
    "POST\n/v1/kv/greeting\n\n",
    "GET\n/v1/kv/greeting?unknown=1\n\n",
    "GET\n/v1/kv/greeting\nauthorization: Bearer rkv_a1_00\n\n",
];

/// RESP target inputs: commands in both framings, and pipelines.
const RESP_COMMANDS: &[&str] = &[
    "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
    "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n",
    "PING\r\n",
    "SET key value EX 10\r\nGET key\r\n",
    "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n",
    "*5\r\n$4\r\nSCAN\r\n$1\r\n0\r\n$5\r\nMATCH\r\n$2\r\nk*\r\n$5\r\nCOUNT\r\n",
];
