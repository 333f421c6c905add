//! Routing policy for client requests a node cannot answer itself: how far a
//! request may travel between nodes, and what its client is told when a
//! forward fails on the way.
//!
//! The node ([`crate::node::Node`]) decides *where* a request goes (the
//! partition's leader, or a replica when it does not host the partition) and
//! answers [`Reply::Forward`](crate::node::Reply::Forward) naming the target
//! and the hop count the forwarded request carries. The driver only carries
//! it; when the carrying fails, it classifies what it saw as a
//! [`ForwardFailure`] and asks [`ForwardFailure::outcome`] what to tell the
//! client. Transport details (gRPC status codes, socket errors) stay in the
//! driver; the consequences for the client's data are decided here.
//!
//! The rule the outcomes follow: a client is told "failed" (`dropped`,
//! `no_leader`) only when the request provably never reached a core that
//! could have proposed it; otherwise a write's fate is unknown, and says so.

use crate::PartitionId;
use crate::node::{ClientError, UnknownCause};

/// Forwards a request may take before a node answers `no_leader` instead of
/// forwarding again. Three covers the longest correct route (a non-replica
/// forwards to a replica, which forwards to the leader) plus one hop for a
/// leader change on the way; more than that means the nodes' ideas of the
/// leader disagree, and the client should retry rather than bounce around.
pub const MAX_FORWARD_HOPS: u32 = 3;

/// How many times a request has been forwarded between nodes: 0 for a
/// request a client sent to this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hops(pub u32);

impl Hops {
    /// The hop count a request carries when this node forwards it, or `None`
    /// when it has travelled [`MAX_FORWARD_HOPS`] already.
    pub fn next(self) -> Option<Hops> {
        (self.0 < MAX_FORWARD_HOPS).then_some(Hops(self.0 + 1))
    }
}

/// Why a forwarded request came back without the target's answer, as the
/// driver observed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardFailure {
    /// The target is not a node this one can reach (not among its peers).
    UnknownTarget,
    /// The target refused the call before reading it (its handshake did not
    /// admit this node): the request never reached its core.
    Refused,
    /// The connection to the target was refused: the request never left
    /// this node.
    NotSent,
    /// The call failed after the request may have reached the target.
    Lost,
    /// No answer within the forward timeout; the target may still act on it.
    TimedOut,
    /// The target ended the stream in order, having answered every call
    /// it took in (it is stopping): this one it never took in.
    Unread,
}

impl ForwardFailure {
    /// What the client is told. Reads change nothing, so a read that may
    /// have been lost is simply retryable; a write that may have reached the
    /// target's core is `outcome unknown`, never `failed`.
    pub fn outcome(self, is_write: bool, partition: PartitionId) -> ClientError {
        match self {
            ForwardFailure::UnknownTarget => ClientError::Internal(
                "asked to forward to a node that is not a known member".to_owned(),
            ),
            // A refused node leads nothing: this node's idea of the leader
            // is stale, and a retry finds the real one.
            ForwardFailure::Refused => ClientError::NoLeader { partition },
            ForwardFailure::NotSent if is_write => ClientError::Dropped,
            ForwardFailure::NotSent => ClientError::NoLeader { partition },
            ForwardFailure::Lost if is_write => ClientError::OutcomeUnknown {
                cause: UnknownCause::ConnectionLost,
            },
            ForwardFailure::TimedOut if is_write => ClientError::OutcomeUnknown {
                cause: UnknownCause::TimedOut,
            },
            ForwardFailure::Lost => ClientError::NoLeader { partition },
            ForwardFailure::TimedOut => ClientError::Timeout,
            ForwardFailure::Unread => ClientError::Stopping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PartitionId = PartitionId(7);

    #[test]
    fn a_request_is_forwarded_at_most_max_hops_times() {
        let mut hops = Hops::default();
        let mut forwards = 0;
        while let Some(next) = hops.next() {
            hops = next;
            forwards += 1;
        }
        assert_eq!(forwards, MAX_FORWARD_HOPS);
        assert_eq!(hops, Hops(MAX_FORWARD_HOPS));
    }

    #[test]
    fn a_write_that_may_have_arrived_is_outcome_unknown_saying_why() {
        for (failure, cause) in [
            (ForwardFailure::Lost, UnknownCause::ConnectionLost),
            (ForwardFailure::TimedOut, UnknownCause::TimedOut),
        ] {
            assert_eq!(
                failure.outcome(true, P),
                ClientError::OutcomeUnknown { cause },
                "{failure:?}"
            );
        }
        let lost = ForwardFailure::Lost.outcome(true, P).to_string();
        assert!(
            lost.starts_with("the connection to the partition's leader broke"),
            "{lost}"
        );
    }

    #[test]
    fn a_write_that_provably_never_arrived_is_retryable() {
        assert_eq!(
            ForwardFailure::NotSent.outcome(true, P),
            ClientError::Dropped
        );
        assert_eq!(
            ForwardFailure::Refused.outcome(true, P),
            ClientError::NoLeader { partition: P }
        );
        // The target answered everything it took in and ended the stream:
        // the rest never ran there.
        for is_write in [true, false] {
            assert_eq!(
                ForwardFailure::Unread.outcome(is_write, P),
                ClientError::Stopping
            );
        }
    }

    #[test]
    fn a_lost_read_is_retryable_and_a_late_one_a_timeout() {
        for failure in [
            ForwardFailure::Refused,
            ForwardFailure::NotSent,
            ForwardFailure::Lost,
        ] {
            assert_eq!(
                failure.outcome(false, P),
                ClientError::NoLeader { partition: P }
            );
        }
        assert_eq!(
            ForwardFailure::TimedOut.outcome(false, P),
            ClientError::Timeout
        );
    }

    #[test]
    fn an_unknown_target_is_an_internal_error_whatever_the_request() {
        for is_write in [false, true] {
            assert!(matches!(
                ForwardFailure::UnknownTarget.outcome(is_write, P),
                ClientError::Internal(_)
            ));
        }
    }
}
