//! Starts one node: opens storage, recovers the core, and serves gRPC (client
//! API + peer transport) and REST until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _};
use ringkv_core::identity::{Identity, Incarnation};
use ringkv_core::node::Node;
use ringkv_proto::v1::cluster_server::ClusterServer;
use ringkv_proto::v1::kv_server::KvServer;
use ringkv_proto::v1::peer_server::PeerServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::address::PeerAddr;
use crate::api::grpc::{ClusterService, KvService};
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::disk::Disk;
use crate::driver::{Driver, DriverIo};
use crate::handle::NodeHandle;
use crate::members::MemberSync;
use crate::storage::{ClusterFile, FORMAT_VERSION, NodeMeta, Storage, StorageOptions};
use crate::transport::{
    Dialer, Forwarder, Handshake, PeerSenders, PeerService, TransportLimits, TransportStats,
};

/// A running node.
pub struct Server {
    pub node: NodeHandle,
    pub stats: Arc<TransportStats>,
    pub handshake: Arc<Handshake>,
    pub grpc_addr: SocketAddr,
    pub rest_addr: Option<SocketAddr>,
    /// Where the Redis protocol is served, if it is (`--resp-listen`).
    pub resp_addr: Option<SocketAddr>,
    /// The listeners' and peer connections' TLS, if on.
    #[cfg(not(madsim))]
    tls: Option<Arc<crate::tls::Tls>>,
    /// How long a request may take (the core answers by then): what a
    /// planned stop waits for the requests inside.
    request_timeout: Duration,
    shutdown: watch::Sender<bool>,
    driver: JoinHandle<Result<(), String>>,
    /// Holds the data directory's lock until it ends (after the driver).
    storage: JoinHandle<()>,
    grpc: JoinHandle<Result<(), String>>,
    #[cfg(not(madsim))]
    rest: Option<JoinHandle<Result<(), String>>>,
    #[cfg(not(madsim))]
    resp: Option<JoinHandle<Result<(), String>>>,
}

/// A task's end, or never for a task that is not there.
#[cfg(not(madsim))]
async fn ended(
    task: Option<&mut JoinHandle<Result<(), String>>>,
) -> Result<Result<(), String>, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

impl Server {
    /// Recovers the node from `config.data_dir` and starts serving.
    /// `seed` drives the core's election jitter, and draws the incarnation
    /// of a new data directory and the uid of a cluster this node founds.
    /// A node whose directory is in no cluster yet serves `Hello` (and the
    /// status APIs) at once, and starts its core once formation gives it a
    /// cluster (see [`Handshake::form`]).
    pub async fn start(
        config: ServerConfig,
        clock: Arc<dyn Clock>,
        disk: Arc<dyn Disk>,
        seed: u64,
    ) -> anyhow::Result<Server> {
        // TLS first: a certificate that does not load stops the node
        // before it touches its data directory.
        #[cfg(not(madsim))]
        let tls = match &config.tls {
            Some(files) => Some(crate::tls::Tls::load(files.clone()).context("TLS")?),
            None => None,
        };
        #[cfg(not(madsim))]
        let dialer = tls.clone().map_or_else(Dialer::plain, Dialer::tls);
        #[cfg(madsim)]
        let dialer = Dialer::plain();
        let mut ids = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x1dc0_ffee_d00d_f00d);
        let meta = NodeMeta {
            node_id: config.node_id.0,
            cluster_id: config.cluster_id.clone(),
            partition_count: config.partition_count,
            replication_factor: config.replication_factor,
            incarnation_if_new: Incarnation(ids.random()),
        };
        let dir = config.data_dir.clone();
        let formation_disk = disk.clone();
        let (storage, recovered) = crate::disk::run_blocking(move || {
            Storage::open(disk, dir, meta, StorageOptions::default())
        })
        .await
        .map_err(|e| anyhow::anyhow!("storage recovery task failed: {e}"))?
        .with_context(|| {
            format!(
                "cannot open the data directory {}",
                config.data_dir.display()
            )
        })?;
        let identity = Identity {
            node: config.node_id,
            incarnation: storage.incarnation(),
            cluster_name: config.cluster_id.clone(),
            partition_count: config.partition_count,
            replication_factor: config.replication_factor,
            format_version: FORMAT_VERSION,
        };
        let mut cluster_file = storage.cluster_file().cloned();
        if cluster_file.is_none() && !config.join.is_empty() {
            anyhow::ensure!(
                recovered.is_fresh(),
                "{} holds data but no cluster record: --join needs an empty data directory",
                config.data_dir.display()
            );
            let address = config
                .advertise
                .clone()
                .unwrap_or_else(|| config.grpc_listen.to_string());
            PeerAddr::parse(&address).map_err(|why| {
                anyhow::anyhow!("cannot join: --advertise (else --grpc-listen): {why}")
            })?;
            tracing::info!(node = %config.node_id, %address, through = ?config.join, "joining the cluster");
            let joined = crate::transport::join::join_cluster(
                &identity,
                &address,
                &config.join,
                clock.clone(),
                &dialer,
            )
            .await?;
            let file = ClusterFile {
                record: joined.record,
                joined: true,
                addresses: joined.addresses,
                tokens: joined.tokens,
            };
            let (disk, dir, saved) = (
                formation_disk.clone(),
                config.data_dir.clone(),
                file.clone(),
            );
            crate::disk::run_blocking(move || {
                crate::storage::save_cluster_record(disk.as_ref(), &dir, &saved)
            })
            .await
            .map_err(|e| anyhow::anyhow!("cluster record task failed: {e}"))?
            .context("cannot record the cluster joined")?;
            cluster_file = Some(file);
        }
        // The members this node knows beyond its `--peers`: the ones the
        // cluster record names (they joined), at the addresses it keeps.
        let mut peers = config.peers.clone();
        let mut node_config = config.node_config();
        if let Some(file) = &cluster_file {
            for (&id, address) in &file.addresses {
                if id == config.node_id || peers.contains_key(&id) {
                    continue;
                }
                match PeerAddr::parse(address) {
                    Ok(addr) => {
                        peers.insert(id, addr);
                    }
                    Err(why) => tracing::warn!(peer = %id, "member {id}'s address: {why}"),
                }
            }
            let recorded: Vec<_> = file.record.members.keys().copied().collect();
            if file.joined {
                node_config.founding = false;
                node_config.members = recorded;
            } else {
                node_config.known_members = recorded
                    .into_iter()
                    .filter(|m| !config.peers.contains_key(m))
                    .collect();
            }
        }
        let node =
            Node::new(node_config, seed, recovered).context("cannot start the node's core")?;
        // Frame limits follow from the core's batch and value limits; the
        // idle timeout from its heartbeat interval (see `transport`).
        let limits = TransportLimits::for_node(node.config());
        let handshake = Arc::new(Handshake::new(
            identity,
            config.peers.keys().copied().collect(),
            cluster_file.as_ref().map(|f| f.record.clone()),
            clock.clone(),
            dialer.clone(),
        ));
        let members = MemberSync::start(
            handshake.clone(),
            cluster_file.as_ref(),
            formation_disk.clone(),
            config.data_dir.clone(),
        );

        let stats = Arc::new(TransportStats::default());
        #[cfg(not(madsim))]
        let senders = PeerSenders::start(
            handshake.clone(),
            &peers,
            clock.clone(),
            stats.clone(),
            limits,
        );
        #[cfg(madsim)]
        let senders = match &config.peer_faults {
            Some(hook) => PeerSenders::start_with_faults(
                handshake.clone(),
                &peers,
                clock.clone(),
                stats.clone(),
                limits,
                hook.clone(),
            ),
            None => PeerSenders::start(
                handshake.clone(),
                &peers,
                clock.clone(),
                stats.clone(),
                limits,
            ),
        };
        // A forwarded call waits a little longer than the remote node's own
        // request timeout, so the remote's answer (even "outcome unknown") wins.
        let forward_timeout = config.request_timeout + config.request_timeout / 5;
        let forwarder = Forwarder::new(
            handshake.clone(),
            &peers,
            forward_timeout,
            stats.clone(),
            limits,
            clock.clone(),
        );
        let access = crate::auth::Access::new(
            cluster_file
                .as_ref()
                .map(|f| f.tokens.clone())
                .unwrap_or_default(),
            dialer.is_tls(),
        );
        let io = DriverIo {
            peers: senders,
            forwarder,
            members,
            dialer,
            handshake: handshake.clone(),
            access,
            #[cfg(madsim)]
            observer: config.observer.clone(),
        };
        let (driver, handle, storage) = Driver::new(node, storage, clock.clone(), io);
        let input = driver.input();
        let (shutdown, shutdown_rx) = watch::channel(false);

        let addrs = Arc::new(peers.clone());
        let grpc_addr = config.grpc_listen;
        // A client message holds at most one key and one value.
        let client_limit = config.max_key_bytes + config.max_value_bytes + (64 << 10);
        let grpc_router = crate::transport::tune_server(tonic::transport::Server::builder())
            .add_service(
                KvServer::new(KvService::new(handle.clone(), config.partition_count))
                    .max_decoding_message_size(client_limit)
                    .max_encoding_message_size(client_limit),
            )
            .add_service(ClusterServer::new(ClusterService::new(
                handle.clone(),
                handshake.clone(),
                addrs.clone(),
            )))
            .add_service(
                PeerServer::new(PeerService::new(
                    handshake.clone(),
                    input,
                    handle.clone(),
                    stats.clone(),
                    clock,
                    limits.idle_timeout,
                    limits.max_frame_bytes,
                ))
                .max_decoding_message_size(limits.grpc_message_limit())
                .max_encoding_message_size(limits.grpc_message_limit()),
            );
        let mut rx = shutdown_rx.clone();
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        #[cfg(not(madsim))]
        let grpc = match &tls {
            Some(tls) => {
                let listener = tokio::net::TcpListener::bind(grpc_addr)
                    .await
                    .with_context(|| format!("cannot listen for gRPC on {grpc_addr}"))?;
                let accepted = tls.accept(listener, crate::tls::Listener::Grpc);
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::ReceiverStream::new(accepted),
                    Ok::<_, std::io::Error>,
                );
                tokio::spawn(async move {
                    grpc_router
                        .serve_with_incoming_shutdown(incoming, stopped)
                        .await
                        .map_err(|e| format!("gRPC server on {grpc_addr}: {e}"))
                })
            }
            None => tokio::spawn(async move {
                grpc_router
                    .serve_with_shutdown(grpc_addr, stopped)
                    .await
                    .map_err(|e| format!("gRPC server on {grpc_addr}: {e}"))
            }),
        };
        #[cfg(madsim)]
        let grpc = tokio::spawn(async move {
            grpc_router
                .serve_with_shutdown(grpc_addr, stopped)
                .await
                .map_err(|e| format!("gRPC server on {grpc_addr}: {e}"))
        });

        #[cfg(not(madsim))]
        let (rest, rest_addr) = match config.rest_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for REST on {addr}"))?;
                let local = listener.local_addr()?;
                let app = crate::api::rest::router(
                    handle.clone(),
                    stats.clone(),
                    handshake.clone(),
                    addrs,
                    config.max_value_bytes,
                    config.partition_count,
                    config.client_timeout,
                );
                let limits = crate::api::http::HttpLimits {
                    max_connections: config.max_connections,
                    header_timeout: config.client_timeout,
                };
                let stopped = shutdown_rx.clone();
                let task = match &tls {
                    Some(tls) => {
                        let listener = crate::tls::RestListener {
                            accepted: tls.accept(listener, crate::tls::Listener::Rest),
                            local,
                        };
                        tokio::spawn(async move {
                            crate::api::http::serve(listener, app, limits, stopped)
                                .await
                                .map_err(|e| format!("REST server on {local}: {e}"))
                        })
                    }
                    None => tokio::spawn(async move {
                        crate::api::http::serve(listener, app, limits, stopped)
                            .await
                            .map_err(|e| format!("REST server on {local}: {e}"))
                    }),
                };
                (Some(task), Some(local))
            }
            None => (None, None),
        };
        #[cfg(madsim)]
        let rest_addr = None;

        #[cfg(not(madsim))]
        let (resp, resp_addr) = match config.resp_listen {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for RESP on {addr}"))?;
                let local = listener.local_addr()?;
                let settings = crate::api::resp::Settings {
                    limits: crate::api::resp::parser::Limits::for_values(config.max_value_bytes),
                    max_connections: config.max_connections,
                    command_timeout: config.client_timeout,
                    redirects: config.resp_redirects,
                    partition_count: config.partition_count,
                };
                let incoming = match &tls {
                    Some(tls) => crate::api::resp::Incoming::Tls(
                        tls.accept(listener, crate::tls::Listener::Resp),
                    ),
                    None => crate::api::resp::Incoming::Plain(listener),
                };
                let task = tokio::spawn(crate::api::resp::serve(
                    incoming,
                    handle.clone(),
                    settings,
                    shutdown_rx.clone(),
                ));
                (Some(task), Some(local))
            }
            None => (None, None),
        };
        #[cfg(madsim)]
        let resp_addr = None;

        let mut rx = shutdown_rx;
        let formation = {
            let (handshake, peers) = (handshake.clone(), config.peers.clone());
            let dir = config.data_dir.clone();
            async move {
                handshake
                    .form(&peers, formation_disk, dir, ids.random())
                    .await
                    .map_err(|e| crate::error_chain(e.as_ref()))
            }
        };
        let driver = tokio::spawn(async move {
            // `biased` throughout: unbiased select! is not replayable under
            // madsim (see the driver's event loop).
            tokio::select! {
                biased;
                r = async move {
                    formation.await?;
                    driver.run().await
                } => r,
                _ = rx.wait_for(|s| *s) => Ok(()),
            }
        });
        tracing::info!(node = %config.node_id, grpc = %grpc_addr, rest = ?rest_addr, resp = ?resp_addr, "node started");
        Ok(Server {
            node: handle,
            stats,
            handshake,
            grpc_addr,
            rest_addr,
            resp_addr,
            request_timeout: config.request_timeout,
            #[cfg(not(madsim))]
            tls,
            shutdown,
            driver,
            storage,
            grpc,
            #[cfg(not(madsim))]
            rest,
            #[cfg(not(madsim))]
            resp,
        })
    }

    /// Runs until a part of the node fails (returns the error) or
    /// [`Server::stop`] is called from another task.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let joined = |r: Result<Result<(), String>, tokio::task::JoinError>| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!(e)),
            Err(e) => Err(anyhow::anyhow!("task failed: {e}")),
        };
        #[cfg(not(madsim))]
        return tokio::select! {
            biased;
            r = &mut self.driver => joined(r),
            r = &mut self.grpc => joined(r),
            r = ended(self.rest.as_mut()) => joined(r),
            r = ended(self.resp.as_mut()) => joined(r),
        };
        #[cfg(madsim)]
        tokio::select! {
            biased;
            r = &mut self.driver => joined(r),
            r = &mut self.grpc => joined(r),
        }
    }

    /// Before a planned stop (SIGTERM, a rolling restart): hands every
    /// group this node leads to another voter, asking again every 50 ms
    /// until it leads none or `within` passed; returns how many it still
    /// leads. Clients then wait for a transfer (a round trip) instead of an
    /// election timeout, and the controller gives this node no leadership
    /// while it stays.
    pub async fn leave(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let Some(led) = self.node.leave().await else {
                return 0;
            };
            if led == 0 || tokio::time::Instant::now() >= deadline {
                return led;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads the TLS files again (SIGHUP): whether TLS is on. On an error
    /// the certificates in use stay.
    #[cfg(not(madsim))]
    pub fn reload_tls(&self) -> anyhow::Result<bool> {
        match &self.tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Reads the TLS files again if any changed since last read: `None`
    /// when none did (or TLS is off).
    #[cfg(not(madsim))]
    pub fn reload_tls_if_changed(&self) -> Option<anyhow::Result<()>> {
        self.tls.as_ref()?.reload_if_changed()
    }

    /// After [`Self::leave`]: refuses new requests (`node_stopping`, safe
    /// to retry elsewhere) and waits for those inside to be answered, up
    /// to the request timeout and a second for the answer to travel; how
    /// many were still inside then (their writes end "outcome unknown").
    pub async fn close(&self) -> usize {
        self.node
            .close(self.request_timeout + Duration::from_secs(1))
            .await
    }

    /// Stops serving: listeners close, the event loop ends, requests still
    /// inside are answered (writes as "outcome unknown").
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.driver.await;
        // The driver is gone, so the storage task ends; once it has, the
        // data directory is free for the next process (or a restart).
        let _ = self.storage.await;
        let _ = self.grpc.await;
        #[cfg(not(madsim))]
        for task in [self.rest, self.resp].into_iter().flatten() {
            let _ = task.await;
        }
    }
}
