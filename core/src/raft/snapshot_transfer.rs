//! Snapshot transfer in chunks: the leader's side ([`OutgoingSnapshot`]) and
//! the follower's ([`IncomingSnapshot`]).
//!
//! A snapshot is a whole partition's state and may be far larger than any
//! message a transport accepts, so it never travels in one message. The
//! leader cuts the image into chunks of at most `chunk_bytes` and keeps at
//! most `window` chunks unacknowledged; the follower appends chunks in order
//! and acknowledges how many bytes it holds; the last chunk makes it install
//! the snapshot through the ordinary path. Go-back-N, like TCP without
//! selective acks: a follower ignores a chunk that does not start where its
//! bytes end (it answers with what it holds), and the leader, when no
//! acknowledgement moves the transfer forward for a while, resends from the
//! last acknowledged byte (see `Raft::tick_leader`).
//!
//! Restarts are clean by construction: every chunk carries the snapshot's
//! meta, a follower accepts a new transfer only from offset 0, and a
//! follower that holds nothing (it restarted, or it saw another snapshot in
//! the meantime) answers `received = 0`, which sends the leader back to the
//! start. The follower's partial image is memory only; nothing is persisted
//! until the snapshot is complete.
//!
//! Limits: the leader keeps the image it sends (a reference-counted `Bytes`)
//! until the transfer ends, even if it compacts again meanwhile; the
//! follower's buffer grows to the image's size. Neither side reads a clock:
//! the leader's retransmission is driven by its ticks.

use bytes::{Bytes, BytesMut};

use super::message::{Snapshot, SnapshotMeta};
use crate::types::NodeId;

/// The leader's transfer of one snapshot to one follower.
#[derive(Debug, Clone)]
pub struct OutgoingSnapshot {
    snapshot: Snapshot,
    /// Bytes handed out so far (chunks sent, or about to be).
    sent: u64,
    /// Bytes the follower said it holds.
    acked: u64,
}

/// One chunk to send: bytes `[offset, offset + data.len())` of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub offset: u64,
    pub data: Bytes,
}

impl OutgoingSnapshot {
    pub fn new(snapshot: Snapshot) -> Self {
        OutgoingSnapshot {
            snapshot,
            sent: 0,
            acked: 0,
        }
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.snapshot.meta
    }

    pub fn total_len(&self) -> u64 {
        self.snapshot.data.len() as u64
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The next chunk, if the window has room and bytes remain. An empty
    /// image is one empty chunk.
    pub fn next_chunk(&mut self, chunk_bytes: usize, window: usize) -> Option<Chunk> {
        let chunk_bytes = chunk_bytes.max(1) as u64;
        let total = self.total_len();
        let window_bytes = chunk_bytes.saturating_mul(window.max(1) as u64);
        let first_of_empty = total == 0 && self.sent == 0 && self.acked == 0;
        if (self.sent >= total && !first_of_empty) || self.sent - self.acked >= window_bytes {
            return None;
        }
        let offset = self.sent;
        let end = (offset + chunk_bytes).min(total);
        // `sent` of an empty image moves past its length to mark the one
        // chunk as sent.
        self.sent = end.max(offset + u64::from(first_of_empty));
        Some(Chunk {
            offset,
            data: self.snapshot.data.slice(offset as usize..end as usize),
        })
    }

    /// The follower holds the first `received` bytes. Returns whether the
    /// transfer moved forward (a newer acknowledgement).
    pub fn on_ack(&mut self, received: u64) -> bool {
        if received == 0 {
            // The follower holds nothing although it had acknowledged bytes:
            // it lost them (a restart); start over. With nothing
            // acknowledged yet this is an answer to a chunk that overtook a
            // lost first one, which the rewind after a timeout resends; and
            // once restarted, more answers of 0 to chunks sent before are
            // no news either.
            if self.acked == 0 {
                return false;
            }
            self.sent = 0;
            self.acked = 0;
            return true;
        }
        let received = received.min(self.total_len());
        if received <= self.acked {
            return false;
        }
        self.acked = received;
        self.sent = self.sent.max(received);
        true
    }

    /// Nothing moved for a while: resend from the last acknowledged byte.
    pub fn rewind(&mut self) {
        self.sent = self.acked;
    }
}

/// What a follower does with a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Acknowledge this many bytes held (progress, a duplicate, or a gap).
    Ack(u64),
    /// The image is complete: install it.
    Complete(Snapshot),
}

/// A follower's partial image of one snapshot from one leader.
#[derive(Debug)]
pub struct IncomingSnapshot {
    from: NodeId,
    term: u64,
    meta: SnapshotMeta,
    total_len: u64,
    buf: BytesMut,
}

impl IncomingSnapshot {
    /// Takes one chunk from `from` in `term`. `current` is the transfer in
    /// progress, if any; it is replaced when the chunk starts another
    /// snapshot at offset 0, and dropped when the image completes.
    pub fn accept(
        current: &mut Option<IncomingSnapshot>,
        from: NodeId,
        term: u64,
        meta: SnapshotMeta,
        total_len: u64,
        offset: u64,
        data: Bytes,
    ) -> ChunkOutcome {
        let same = current.as_ref().is_some_and(|c| {
            c.from == from && c.term == term && c.meta == meta && c.total_len == total_len
        });
        if !same {
            if offset != 0 {
                // A chunk of a transfer we hold nothing of: ask for the start.
                *current = None;
                return ChunkOutcome::Ack(0);
            }
            *current = Some(IncomingSnapshot {
                from,
                term,
                meta,
                total_len,
                buf: BytesMut::new(),
            });
        }
        let Some(c) = current.as_mut() else {
            unreachable!("set just above")
        };
        let held = c.buf.len() as u64;
        if offset == held && held + data.len() as u64 <= c.total_len {
            c.buf.extend_from_slice(&data);
        }
        let held = c.buf.len() as u64;
        if held < c.total_len {
            return ChunkOutcome::Ack(held);
        }
        let Some(done) = current.take() else {
            unreachable!("checked above")
        };
        ChunkOutcome::Complete(Snapshot {
            meta: done.meta,
            data: done.buf.freeze(),
        })
    }

    pub fn index(&self) -> u64 {
        self.meta.index
    }

    /// Bytes held so far, and the image's size.
    pub fn progress(&self) -> (u64, u64) {
        (self.buf.len() as u64, self.total_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Membership;

    fn snapshot(len: usize) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                index: 10,
                term: 2,
                membership: Membership::new([NodeId(1), NodeId(2)]),
            },
            data: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>()),
        }
    }

    /// A chunk of `snap` from node 1 in term 3, as its follower receives it.
    fn feed(
        inc: &mut Option<IncomingSnapshot>,
        snap: &Snapshot,
        offset: u64,
        data: Bytes,
    ) -> ChunkOutcome {
        let total = snap.data.len() as u64;
        IncomingSnapshot::accept(inc, NodeId(1), 3, snap.meta.clone(), total, offset, data)
    }

    /// Every chunk the window allows, taken from `out`.
    fn window(out: &mut OutgoingSnapshot, chunk: usize, window: usize) -> Vec<Chunk> {
        std::iter::from_fn(|| out.next_chunk(chunk, window)).collect()
    }

    #[test]
    fn a_snapshot_arrives_whole_in_window_sized_rounds() {
        let snap = snapshot(10_000);
        let mut out = OutgoingSnapshot::new(snap.clone());
        let mut inc = None;
        let mut rounds = 0;
        let installed = loop {
            rounds += 1;
            assert!(rounds < 10);
            let chunks = window(&mut out, 1000, 3);
            assert!(chunks.len() <= 3, "the window bounds chunks in flight");
            let mut done = None;
            for c in chunks {
                match feed(&mut inc, &snap, c.offset, c.data) {
                    ChunkOutcome::Ack(n) => assert!(out.on_ack(n)),
                    ChunkOutcome::Complete(s) => done = Some(s),
                }
            }
            if let Some(s) = done {
                break s;
            }
        };
        assert_eq!(installed, snap);
        assert_eq!(rounds, 4, "10 chunks, 3 per round");
        assert!(inc.is_none(), "the buffer is released once installed");
    }

    #[test]
    fn an_empty_image_is_one_empty_chunk() {
        let snap = snapshot(0);
        let mut out = OutgoingSnapshot::new(snap.clone());
        let chunks = window(&mut out, 1000, 4);
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].offset, chunks[0].data.len()), (0, 0));
        let got = feed(&mut None, &snap, 0, chunks[0].data.clone());
        assert_eq!(got, ChunkOutcome::Complete(snap));
    }

    #[test]
    fn a_lost_chunk_is_resent_after_a_rewind() {
        let snap = snapshot(4000);
        let mut out = OutgoingSnapshot::new(snap.clone());
        let mut inc = None;
        let chunks = window(&mut out, 1000, 4);
        assert_eq!(chunks.len(), 4);
        // Chunk 1 is lost: chunks 2 and 3 do not start where the buffer ends.
        for c in [&chunks[0], &chunks[2], &chunks[3]] {
            let a = feed(&mut inc, &snap, c.offset, c.data.clone());
            assert_eq!(a, ChunkOutcome::Ack(1000));
            out.on_ack(1000);
        }
        assert!(window(&mut out, 1000, 4).is_empty(), "everything is sent");
        out.rewind();
        let again = window(&mut out, 1000, 4);
        let offsets: Vec<u64> = again.iter().map(|c| c.offset).collect();
        assert_eq!(offsets, [1000, 2000, 3000]);
        let last = again
            .into_iter()
            .map(|c| feed(&mut inc, &snap, c.offset, c.data))
            .last();
        assert_eq!(last, Some(ChunkOutcome::Complete(snap)));
    }

    #[test]
    fn a_follower_that_lost_its_buffer_restarts_the_transfer() {
        let snap = snapshot(3000);
        let mut out = OutgoingSnapshot::new(snap.clone());
        let mut inc = None;
        for c in window(&mut out, 1000, 2) {
            let ChunkOutcome::Ack(n) = feed(&mut inc, &snap, c.offset, c.data) else {
                panic!("not complete yet")
            };
            out.on_ack(n);
        }
        assert_eq!(out.acked(), 2000);
        // The follower restarts: its buffer is gone, and the next chunk is
        // not a start.
        let mut inc = None;
        let c = window(&mut out, 1000, 2).remove(0);
        assert_eq!(
            feed(&mut inc, &snap, c.offset, c.data),
            ChunkOutcome::Ack(0)
        );
        assert!(out.on_ack(0), "received 0 restarts the transfer");
        assert!(!out.on_ack(0), "and a second answer of 0 is no news");
        assert_eq!(window(&mut out, 1000, 2)[0].offset, 0);
    }

    #[test]
    fn a_chunk_of_another_snapshot_or_leader_is_not_mixed_in() {
        let snap = snapshot(2000);
        let (first, second) = (snap.data.slice(0..1000), snap.data.slice(1000..2000));
        let mut inc = None;
        assert_eq!(
            feed(&mut inc, &snap, 0, first.clone()),
            ChunkOutcome::Ack(1000)
        );
        // A newer leader's chunk of the same snapshot, not from the start.
        let other_leader = IncomingSnapshot::accept(
            &mut inc,
            NodeId(2),
            4,
            snap.meta.clone(),
            2000,
            1000,
            second.clone(),
        );
        assert_eq!(other_leader, ChunkOutcome::Ack(0));
        assert!(inc.is_none());
        // A duplicate of a chunk already held changes nothing.
        assert_eq!(
            feed(&mut inc, &snap, 0, first.clone()),
            ChunkOutcome::Ack(1000)
        );
        assert_eq!(feed(&mut inc, &snap, 0, first), ChunkOutcome::Ack(1000));
        assert_eq!(
            feed(&mut inc, &snap, 1000, second),
            ChunkOutcome::Complete(snap)
        );
    }
}
