//! The command line: `ringkv server`, `ringkv demo`, the client commands and
//! `ringkv bench`. Every flag of `server` can also be set as a `RINGKV_*`
//! environment variable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ringkv_core::NodeId;
use ringkv_node::address::PeerAddr;
use ringkv_node::cli::{admin, bench, client, health, tokens, watch, watch_bench};
use ringkv_node::clock::MonotonicClock;
use ringkv_node::config::{ServerConfig, defaults, parse_peers};
use ringkv_node::disk::FsDisk;
use ringkv_node::server::Server;

#[derive(Parser, Debug)]
#[command(
    name = "ringkv",
    version,
    about = "ringkv: a sharded, replicated, strongly consistent key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Client commands: dial the nodes over TLS and trust the authority in
    /// this PEM file (the cluster's `--peer-ca`, or what signed its certificates).
    #[arg(long, global = true, env = "RINGKV_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Client commands: present this access token (rkv_<id>_<secret>, as `ringkv auth add`
    /// printed it); needed once the cluster has one.
    #[arg(
        long,
        global = true,
        env = "RINGKV_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node of a cluster.
    Server(Box<ServerArgs>),
    /// Run a local cluster in this process, with a console to stop, start and add nodes
    /// (Ctrl-C stops it; data is kept).
    Demo(DemoArgs),
    /// Write a key.
    Put(client::PutArgs),
    /// Read a key.
    #[command(mut_arg("output", |a| a.help("Output: table (the bare value, as stored) or json (one JSON object: key, value, revisions)")))]
    Get(client::GetArgs),
    /// Delete a key.
    Del(client::DelArgs),
    /// List keys in order, all of them or those under a prefix.
    #[command(mut_arg("output", |a| a.help("Output: table (one key per line) or json (one JSON object per key, one per line)")))]
    Ls(client::LsArgs),
    /// Print each change of a key, or of the keys under a prefix, as it happens.
    #[command(mut_arg("output", |a| a.help("Output: table (one line per change) or json (one JSON object per change, one per line)")))]
    Watch(watch::WatchArgs),
    /// Show the cluster as one node sees it.
    Status(client::StatusArgs),
    /// Show which partition, leader and replicas a key has.
    Locate(client::LocateArgs),
    /// Closed-loop load against a running cluster.
    Bench(bench::BenchArgs),
    /// Watch fan-out: many watchers of one prefix while writers write under it.
    BenchWatch(watch_bench::BenchWatchArgs),
    /// Operator commands (move a replica of a partition between nodes).
    Admin(admin::AdminArgs),
    /// A node's life in the cluster (drain and remove a node).
    Node(admin::NodeArgs),
    /// Client access tokens: add (the first, an admin token, turns authentication on), ls, rm.
    Auth(tokens::AuthArgs),
    /// Exit 0 if a node is ready (or, with --live, alive), else 1: for container health checks.
    Health(health::HealthArgs),
    /// Make a development certificate authority and a node certificate signed by it.
    Certs(CertsArgs),
}

#[derive(Args, Debug)]
struct CertsArgs {
    /// Where to write ca.pem/ca.key (made if absent, else reused) and NAME.pem/NAME.key.
    #[arg(long, default_value = "ringkv-certs")]
    dir: PathBuf,
    /// The certificate's file name (and common name).
    #[arg(long, default_value = "node")]
    name: String,
    /// Host names and IPs the certificate is good for (clients and peers check the one
    /// they dial), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    hosts: Vec<String>,
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// This node's id (a positive integer: one of --peers, or, with --join, an id no member has had).
    #[arg(
        long,
        env = "RINGKV_NODE_ID",
        required_unless_present = "id_from_hostname",
        conflicts_with = "id_from_hostname"
    )]
    id: Option<u64>,
    /// Take the id from this host's name: the number after its last '-', plus one
    /// (StatefulSet pod ringkv-0 is node 1). Reads $HOSTNAME, else the kernel's host name.
    #[arg(long, env = "RINGKV_ID_FROM_HOSTNAME")]
    id_from_hostname: bool,
    /// The founding members with their gRPC addresses (IPs or host names):
    /// 1=10.0.0.1:9091,2=ringkv-1.ringkv:9091,... A node whose id is not listed
    /// joins through --join instead.
    #[arg(long, env = "RINGKV_PEERS", required_unless_present = "join")]
    peers: Option<String>,
    /// Join a running cluster through any of its members (gRPC HOST:PORT, comma-separated).
    /// Used when the data directory is in no cluster yet; later starts ignore it. With
    /// --peers, only a node whose id is not among them joins.
    #[arg(long, env = "RINGKV_JOIN", value_delimiter = ',', value_parser = parse_member)]
    join: Vec<String>,
    /// The gRPC HOST:PORT other members dial to reach this node, registered when it joins.
    /// Defaults to --grpc-listen.
    #[arg(long, env = "RINGKV_ADVERTISE")]
    advertise: Option<String>,
    /// Where gRPC (client API and peer traffic) listens. Defaults to this node's address in
    /// --peers (0.0.0.0 and its port when that is a host name); required with --join.
    #[arg(long, env = "RINGKV_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Where the REST API listens.
    #[arg(long, env = "RINGKV_REST_LISTEN", default_value = "127.0.0.1:8081")]
    rest_listen: SocketAddr,
    /// Run without the REST API.
    #[arg(long, env = "RINGKV_NO_REST")]
    no_rest: bool,
    /// Where the Redis protocol (RESP2/RESP3) is served, e.g. 127.0.0.1:6379. Off unless given.
    #[arg(long, env = "RINGKV_RESP_LISTEN")]
    resp_listen: Option<SocketAddr>,
    /// Which RESP connections are answered `-MOVED slot host:port` for a key
    /// another node leads: `auto`, those that asked for the cluster topology
    /// (cluster-aware libraries, `redis-benchmark --cluster`); `always`,
    /// every one (`redis-cli -c`). Others are served by forwarding.
    #[arg(long, env = "RINGKV_RESP_REDIRECTS", value_enum, default_value_t)]
    resp_redirects: ringkv_node::config::RespRedirects,
    /// Data directory (WAL, snapshots, node.toml). Default: ./ringkv-data/node-<id>.
    #[arg(long, env = "RINGKV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Serve TLS on every listener with this certificate (PEM chain), and present it to
    /// peers. Needs --tls-key and --peer-ca. SIGHUP, or a change of any of the three files (looked for every 5 s), reads them again.
    #[arg(long, env = "RINGKV_TLS_CERT", value_name = "PEM", requires_all = ["tls_key", "peer_ca"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "RINGKV_TLS_KEY", value_name = "PEM", requires_all = ["tls_cert", "peer_ca"])]
    tls_key: Option<PathBuf>,
    /// The authority that signs the members' certificates (PEM): peers must present one
    /// (mutual TLS), and this node checks theirs against it.
    #[arg(long, env = "RINGKV_PEER_CA", value_name = "PEM", requires_all = ["tls_cert", "tls_key"])]
    peer_ca: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or ringkv_node=debug.
    #[arg(long, env = "RINGKV_LOG", default_value = "info")]
    log: String,
}

/// Settings every node of one cluster must agree on.
#[derive(Args, Debug, Clone)]
struct ClusterArgs {
    /// Cluster name, recorded in each node's data directory.
    #[arg(long, env = "RINGKV_CLUSTER_ID", default_value = defaults::CLUSTER_ID)]
    cluster_id: String,
    /// Number of partitions (fixed for the life of the cluster): a power of
    /// two up to 16384, each owning an equal range of the Redis hash slots.
    #[arg(long, env = "RINGKV_PARTITIONS", default_value_t = defaults::PARTITION_COUNT)]
    partitions: u32,
    /// Replicas per partition.
    #[arg(long, env = "RINGKV_REPLICATION_FACTOR", default_value_t = defaults::REPLICATION_FACTOR)]
    replication_factor: u32,
    /// Largest key accepted, in bytes.
    #[arg(long, env = "RINGKV_MAX_KEY_BYTES", default_value_t = defaults::MAX_KEY_BYTES)]
    max_key_bytes: usize,
    /// Largest value accepted, in bytes.
    #[arg(long, env = "RINGKV_MAX_VALUE_BYTES", default_value_t = defaults::MAX_VALUE_BYTES)]
    max_value_bytes: usize,
    /// Client connections each of the REST and RESP listeners serves at once (one more is
    /// refused: REST 503 too_many_connections, RESP "-ERR max number of clients reached").
    /// Keep it below the open-file limit (ulimit -n).
    #[arg(long, env = "RINGKV_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Seconds a client may take to send a request it has begun (REST headers, then body;
    /// a RESP command): past it, REST answers 408 or closes, RESP closes. An idle RESP
    /// connection stays; an idle REST connection is closed after this long.
    #[arg(long, env = "RINGKV_CLIENT_TIMEOUT", default_value_t = defaults::CLIENT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    client_timeout: u64,
    /// After this many milliseconds a request is answered: a write "outcome unknown", a read "timeout".
    #[arg(long, env = "RINGKV_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Snapshot a partition (and drop its log) once this many applied entries follow its last snapshot.
    #[arg(long, env = "RINGKV_SNAPSHOT_ENTRIES", default_value_t = defaults::SNAPSHOT_ENTRIES, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_entries: u64,
    /// Seconds a node must be unreachable (to the metadata group's leader)
    /// before it is marked dead and its replicas are re-created elsewhere.
    #[arg(long, env = "RINGKV_DEAD_AFTER", default_value_t = defaults::DEAD_AFTER_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    dead_after: u64,
    /// Move healthy partitions toward the ring over the up members (a joined node gets its
    /// share; a manual move-replica is undone). false: only dead and draining members'
    /// replicas move.
    #[arg(long, env = "RINGKV_REBALANCE", default_value_t = true, action = clap::ArgAction::Set)]
    rebalance: bool,
}

impl ClusterArgs {
    fn apply(&self, c: &mut ServerConfig) {
        c.cluster_id = self.cluster_id.clone();
        c.partition_count = self.partitions;
        c.replication_factor = self.replication_factor;
        c.max_key_bytes = self.max_key_bytes;
        c.max_value_bytes = self.max_value_bytes;
        c.max_connections = usize::try_from(self.max_connections).unwrap_or(usize::MAX);
        c.client_timeout = Duration::from_secs(self.client_timeout);
        c.request_timeout = Duration::from_millis(self.request_timeout_ms);
        c.snapshot_entries = self.snapshot_entries;
        c.dead_after = Duration::from_secs(self.dead_after);
        c.rebalance = self.rebalance;
    }
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Where the demo keeps its nodes' data; running the demo again reuses it.
    #[arg(long, env = "RINGKV_DEMO_DIR", default_value = "ringkv-data/demo")]
    data_dir: PathBuf,
    /// Nodes to run.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// REST port of node 1; node n listens on this + n - 1.
    #[arg(long, default_value_t = 8081)]
    rest_port: u16,
    /// gRPC port of node 1; node n listens on this + n - 1.
    #[arg(long, default_value_t = 9091)]
    grpc_port: u16,
    /// Redis protocol (RESP) port of node 1; node n listens on this + n - 1.
    #[arg(long, default_value_t = 6381)]
    resp_port: u16,
    /// Which RESP connections are answered `-MOVED` (see `ringkv server --help`);
    /// `always` lets `redis-cli -c` be redirected, `auto` serves plain clients too.
    #[arg(long, value_enum, default_value_t)]
    resp_redirects: ringkv_node::config::RespRedirects,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RINGKV_LOG", default_value = "warn")]
    log: String,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ca) = &cli.tls_ca
        && let Err(e) = ringkv_node::cli::tls::trust(ca)
    {
        eprintln!("error: --tls-ca: {}", ringkv_node::error_chain(e.as_ref()));
        return ExitCode::from(ringkv_node::cli::exit::USAGE);
    }
    if let Some(token) = &cli.token
        && let Err(e) = ringkv_node::cli::auth::use_token(token)
    {
        eprintln!("error: --token: {}", ringkv_node::error_chain(e.as_ref()));
        return ExitCode::from(ringkv_node::cli::exit::USAGE);
    }
    match cli.command {
        Command::Server(args) => run_async(server(*args)),
        Command::Demo(args) => run_async(demo(args)),
        Command::Put(a) => run_client(client::put(a)),
        Command::Get(a) => run_client(client::get(a)),
        Command::Del(a) => run_client(client::del(a)),
        Command::Ls(a) => run_client(client::ls(a)),
        Command::Watch(a) => run_client(watch::watch(a)),
        Command::BenchWatch(a) => run_client(watch_bench::run(a)),
        Command::Status(a) => run_client(client::status(a)),
        Command::Locate(a) => run_client(client::locate(a)),
        Command::Admin(a) => run_client(admin::run(a)),
        Command::Node(a) => run_client(admin::run_node(a)),
        Command::Auth(a) => run_client(tokens::run(a)),
        Command::Health(a) => run_client(health::run(a)),
        Command::Certs(a) => certs(a),
        Command::Bench(a) => run_client(async move {
            bench::run(a).await.unwrap_or_else(|e| {
                eprintln!("error: {}", ringkv_node::error_chain(e.as_ref()));
                ExitCode::from(ringkv_node::cli::exit::OTHER)
            })
        }),
    }
}

/// Client commands report their own errors and pick their exit code.
fn run_client(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(ringkv_node::cli::exit::OTHER)
        }
    }
}

fn run_async(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", ringkv_node::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: not in files, pipes or
    // journald (NO_COLOR is honoured too).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Election jitter differs per process start; the simulation passes its own.
fn process_seed(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ id.rotate_left(32) ^ u64::from(std::process::id())
}

/// One `--join` entry: a member's gRPC HOST:PORT.
fn parse_member(text: &str) -> Result<String, String> {
    PeerAddr::parse(text)
        .map(|a| a.to_string())
        .map_err(|e| e.to_string())
}

/// The id a StatefulSet pod's name gives (`ringkv-0` is node 1): the
/// number after the last `-`, plus one.
fn id_from_hostname(host: &str) -> anyhow::Result<u64> {
    let host = host.trim();
    let ordinal = host
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .with_context(|| {
            format!("--id-from-hostname: host name {host:?} does not end in -N (a StatefulSet pod's ordinal)")
        })?;
    ordinal
        .checked_add(1)
        .with_context(|| format!("--id-from-hostname: ordinal in {host:?} is too large"))
}

fn this_host_name() -> anyhow::Result<String> {
    if let Ok(name) = std::env::var("HOSTNAME")
        && !name.trim().is_empty()
    {
        return Ok(name);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("--id-from-hostname: $HOSTNAME is unset and the kernel's host name is unreadable")
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(&args.log);
    let id = match args.id {
        Some(id) => id,
        None => id_from_hostname(&this_host_name()?)?,
    };
    anyhow::ensure!(id > 0, "--id must be a positive integer");
    let id = NodeId(id);
    let founders = args
        .peers
        .as_deref()
        .map(|list| parse_peers(list).context("--peers"))
        .transpose()?;
    // A founder forms the cluster with --peers; any other node joins.
    let founding = founders.as_ref().is_some_and(|f| f.contains_key(&id));
    let (peers, grpc_listen) = if founding {
        let peers = founders.unwrap_or_default();
        let own = &peers[&id];
        let listen = match (args.grpc_listen, own.socket_addr()) {
            (Some(listen), _) | (None, Some(listen)) => listen,
            (None, None) => SocketAddr::from(([0, 0, 0, 0], own.port())),
        };
        (peers, listen)
    } else {
        if args.join.is_empty() {
            anyhow::bail!(
                "--id {id} is not in --peers ({}); to add a node to a running cluster, give --join",
                args.peers.as_deref().unwrap_or_default()
            );
        }
        let Some(listen) = args.grpc_listen else {
            anyhow::bail!("--join needs --grpc-listen (where this node's gRPC listens)");
        };
        (BTreeMap::from([(id, PeerAddr::from(listen))]), listen)
    };
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(format!("ringkv-data/node-{}", id.0)));
    let mut config = ServerConfig::new(id, peers, grpc_listen, data_dir);
    args.cluster.apply(&mut config);
    // A founder never joins (its --join is for the others' command line).
    config.join = if founding { Vec::new() } else { args.join };
    config.advertise = args.advertise;
    config.rest_listen = (!args.no_rest).then_some(args.rest_listen);
    config.resp_listen = args.resp_listen;
    config.resp_redirects = args.resp_redirects;
    if let (Some(cert), Some(key), Some(peer_ca)) = (args.tls_cert, args.tls_key, args.peer_ca) {
        config.tls = Some(ringkv_node::config::TlsFiles { cert, key, peer_ca });
    }
    let mut server = Server::start(
        config,
        Arc::new(MonotonicClock::new()),
        Arc::new(FsDisk::new()),
        process_seed(id.0),
    )
    .await?;
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut reload = ReloadSignal::new();
    let mut file_check = tokio::time::interval(ringkv_node::tls::FILE_CHECK_INTERVAL);
    file_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = server.wait() => return r,
            () = reload.recv() => {
                match server.reload_tls() {
                    Ok(true) => tracing::info!("SIGHUP: certificates read again"),
                    Ok(false) => tracing::info!("SIGHUP: no TLS to reload"),
                    Err(e) => tracing::error!("SIGHUP: certificates not reloaded, the old ones stay: {}", ringkv_node::error_chain(e.as_ref())),
                }
            }
            _ = file_check.tick() => match server.reload_tls_if_changed() {
                None => {}
                Some(Ok(())) => tracing::info!("TLS files changed: certificates read again"),
                Some(Err(e)) => tracing::error!(
                    "TLS files changed but do not load, the old certificates stay: {}",
                    ringkv_node::error_chain(e.as_ref())
                ),
            },
            signal = &mut stop => break handle_stop(server, signal).await,
        }
    }
}

/// SIGHUP (Unix; never elsewhere), listened for from the server's start
/// on, so one that comes is never the default action (exit).
struct ReloadSignal {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl ReloadSignal {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let hup = signal(SignalKind::hangup())
                .map_err(|e| tracing::warn!("cannot listen for SIGHUP: {e}"))
                .ok();
            ReloadSignal { hup }
        }
        #[cfg(not(unix))]
        ReloadSignal {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(hup) = &mut self.hup {
            hup.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    }
}

fn certs(args: CertsArgs) -> ExitCode {
    match ringkv_node::tls::certs::issue(&args.dir, &args.name, &args.hosts) {
        Ok(issued) => {
            if issued.ca_created {
                println!(
                    "created authority   {} (and its key)",
                    issued.ca_cert.display()
                );
            } else {
                println!("reused authority    {}", issued.ca_cert.display());
            }
            println!("node certificate    {}", issued.cert.display());
            println!("node key            {}", issued.key.display());
            println!("good for            {}", args.hosts.join(", "));
            println!(
                "run a node with     --tls-cert {} --tls-key {} --peer-ca {}",
                issued.cert.display(),
                issued.key.display(),
                issued.ca_cert.display()
            );
            println!("clients             --tls-ca {}", issued.ca_cert.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", ringkv_node::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A planned stop: leaderships handed over, requests inside answered.
async fn handle_stop(server: Server, signal: &'static str) -> anyhow::Result<()> {
    tracing::info!("{signal}: handing leaderships over, then stopping");
    let left = server.leave(LEAVE_WITHIN).await;
    if left == 0 {
        tracing::info!("leads no partition; stopping");
    } else {
        tracing::warn!(
            "still leads {left} group(s) after {LEAVE_WITHIN:?} (no other voter up to take them); stopping"
        );
    }
    let inside = server.close().await;
    if inside > 0 {
        tracing::warn!(
            "{inside} request(s) still unanswered; stopping (their writes' outcomes are unknown)"
        );
    }
    server.stop().await;
    Ok(())
}

/// How long a stopping server hands its leaderships over before it stops
/// anyway (a handover takes a round trip; a group whose other voters are
/// down cannot be handed over at all).
const LEAVE_WITHIN: Duration = Duration::from_secs(5);

/// SIGTERM (how `docker stop`, Kubernetes and systemd stop a process) or
/// SIGINT (Ctrl-C): its name.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "interrupted",
            },
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                "interrupted"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "interrupted"
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    init_logging(&args.log);
    let cluster = args.cluster;
    let resp_redirects = args.resp_redirects;
    ringkv_node::cli::demo::run(ringkv_node::cli::demo::DemoOptions {
        data_dir: args.data_dir,
        nodes: args.nodes,
        rest_port: args.rest_port,
        grpc_port: args.grpc_port,
        resp_port: args.resp_port,
        dead_after: Duration::from_secs(cluster.dead_after),
        configure: Box::new(move |c| {
            cluster.apply(c);
            c.resp_redirects = resp_redirects;
        }),
        seed: process_seed,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statefulset_pod_name_gives_its_ordinal_plus_one() {
        assert_eq!(id_from_hostname("ringkv-0").unwrap(), 1);
        assert_eq!(id_from_hostname("my-db-ringkv-12\n").unwrap(), 13);
        for bad in [
            "ringkv",
            "ringkv-",
            "ringkv-x",
            "ringkv-18446744073709551615",
        ] {
            let e = id_from_hostname(bad).unwrap_err().to_string();
            assert!(e.contains("--id-from-hostname"), "{bad}: {e}");
        }
    }

    #[test]
    fn join_entries_are_checked_when_parsed() {
        assert_eq!(
            parse_member(" ringkv-0.ringkv:9091").unwrap(),
            "ringkv-0.ringkv:9091"
        );
        assert!(
            parse_member("ringkv-0.ringkv")
                .unwrap_err()
                .contains("HOST:PORT")
        );
    }
}
