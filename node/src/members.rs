//! The node following the member list: when the metadata document it
//! adopts names members it did not know (a node joined), their
//! incarnations go into the cluster record the handshake admits by, their
//! addresses into the transport (the driver adds stream tasks and a
//! forwarding client), and both into `cluster.toml`, so that a restarted
//! node knows every member before any document reaches it.
//!
//! The core decides who is a peer (`Node` follows the document itself);
//! this module only carries that into the node's I/O. `cluster.toml` is
//! written by one task, latest content first: a write never holds up the
//! event loop, and a slow disk only skips intermediate versions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use ringkv_core::NodeId;
use ringkv_core::metadata::{ClusterMetadata, MemberState};
use tokio::sync::watch;

use crate::address::PeerAddr;
use crate::disk::Disk;
use crate::storage::ClusterFile;
use crate::transport::Handshake;

/// Follows the member list (see the module doc).
pub struct MemberSync {
    me: NodeId,
    handshake: Arc<Handshake>,
    /// Whether this node joined (kept in `cluster.toml`).
    joined: bool,
    /// The addresses as last saved.
    addresses: BTreeMap<NodeId, String>,
    /// The access tokens as last saved.
    tokens: crate::auth::Tokens,
    save: watch::Sender<Option<ClusterFile>>,
}

impl MemberSync {
    /// `file`: `cluster.toml` as read at start (or as the join wrote it).
    pub fn start(
        handshake: Arc<Handshake>,
        file: Option<&ClusterFile>,
        disk: Arc<dyn Disk>,
        dir: PathBuf,
    ) -> Self {
        let (save, mut rx) = watch::channel(None::<ClusterFile>);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(file) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let (disk, dir) = (disk.clone(), dir.clone());
                let saved = crate::disk::run_blocking(move || {
                    crate::storage::save_cluster_record(disk.as_ref(), &dir, &file)
                })
                .await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("cannot update cluster.toml: {e}"),
                    Err(e) => tracing::error!("cluster.toml task failed: {e}"),
                }
            }
        });
        MemberSync {
            me: handshake.identity().node,
            handshake,
            joined: file.is_some_and(|f| f.joined),
            addresses: file.map(|f| f.addresses.clone()).unwrap_or_default(),
            tokens: file.map(|f| f.tokens.clone()).unwrap_or_default(),
            save,
        }
    }

    /// Takes in `doc`: returns the members (not removed, not this node)
    /// for which `known` is false, with their addresses, for the transport
    /// to connect to, and the removed members, for it to let go of (their
    /// calls are refused from now on).
    pub fn follow(&mut self, doc: &ClusterMetadata, known: impl Fn(NodeId) -> bool) -> Followed {
        let Some(record) = self.handshake.record() else {
            // Not formed: the driver does not run yet.
            return Followed::default();
        };
        let mut record = (*record).clone();
        let mut changed = false;
        for (&id, m) in &doc.members {
            if let Some(inc) = m.incarnation
                && record.members.insert(id, inc) != Some(inc)
            {
                changed = true;
            }
            if !m.address.is_empty() && self.addresses.get(&id) != Some(&m.address) {
                self.addresses.insert(id, m.address.clone());
                changed = true;
            }
        }
        if changed {
            self.handshake.set_record(record.clone());
        }
        // Saved when they change (not for every version: a newer document
        // with the same tokens adds nothing a restart needs).
        if doc.version >= self.tokens.version && doc.tokens != self.tokens.by_id {
            self.tokens = crate::auth::Tokens {
                version: doc.version,
                by_id: doc.tokens.clone(),
            };
            changed = true;
        }
        if changed {
            self.save.send_replace(Some(ClusterFile {
                record,
                joined: self.joined,
                addresses: self.addresses.clone(),
                tokens: self.tokens.clone(),
            }));
        }
        let removed: BTreeSet<NodeId> = doc.in_state(MemberState::Removed).collect();
        self.handshake.set_removed(removed.clone());
        let added = doc
            .members
            .iter()
            .filter(|&(&id, m)| id != self.me && m.state != MemberState::Removed && !known(id))
            .filter_map(|(&id, m)| match PeerAddr::parse(&m.address) {
                Ok(addr) => Some((id, addr)),
                Err(why) => {
                    tracing::warn!(peer = %id, "member {id}'s address: {why}");
                    None
                }
            })
            .collect();
        Followed { added, removed }
    }
}

/// What [`MemberSync::follow`] found.
#[derive(Default)]
pub struct Followed {
    /// Members to connect to, at these addresses.
    pub added: Vec<(NodeId, PeerAddr)>,
    /// Every removed member.
    pub removed: BTreeSet<NodeId>,
}
