//! Client authentication on this node: the access tokens as this node
//! knows them ([`Access`]), who a request is ([`Principal`]) and the
//! refusal of one that presents no valid token ([`Unauthenticated`]).
//! The rules (token format, roles, scopes) are the core's
//! [`ringkv_core::access`]; the APIs (REST, gRPC, RESP) read a request's
//! credentials, ask [`Access::principal`], and check each action with
//! [`Principal::check`].
//!
//! **Where the tokens come from.** The committed metadata document, as it
//! reaches this node: the driver hands every adopted document to
//! [`Access::update`]. The tokens are also saved in `cluster.toml`, so a
//! restarted node checks tokens from its first request, before any
//! document reaches it; a joiner gets them in the join reply. Until the
//! current document reaches a restarted node (within a heartbeat of
//! hearing from a member), a token revoked while it was down is still
//! honoured there, and a node that was down when the first token was
//! added treats authentication as off: honest limits, in docs/deploy.md.
//! Long-lived streams ask [`Access::still_allows`] before each batch, so
//! a revocation ends them.
//!
//! **Peers.** A node's calls to another node's client services (watch
//! relays, the dashboard's status gathering) carry its peer hello, checked
//! as on the peer service (and, with TLS, its peer-authority certificate):
//! such a call is a [`Principal::Peer`] and may only read. Without TLS
//! nothing on the wire is secret, tokens included, and a member's hello
//! can be forged by anyone (its contents are public): authentication
//! without TLS keeps honest clients in their lanes, not an attacker out.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use ringkv_core::NodeId;
use ringkv_core::access::{self, Action, AuthError, Denied, Grant, TokenRecord};
use ringkv_core::metadata::ClusterMetadata;
use ringkv_core::node::ClientRequest;

use crate::api::errors::{CODE_METADATA, ErrorKind};

/// The tokens of one document version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// The document's version (0: none seen; tokens from `cluster.toml`
    /// carry the version they were saved from).
    pub version: u64,
    pub by_id: BTreeMap<String, TokenRecord>,
}

/// The access tokens as this node knows them (see the module doc).
#[derive(Debug, Default)]
pub struct Access {
    tokens: RwLock<Arc<Tokens>>,
    /// Whether this node's listeners and peers use TLS (without it,
    /// authentication is no boundary: it says so when tokens appear).
    tls: bool,
}

impl Access {
    /// Starts from the tokens saved in `cluster.toml` (none: empty).
    pub fn new(saved: Tokens, tls: bool) -> Arc<Access> {
        if !saved.by_id.is_empty() && !tls {
            warn_without_tls();
        }
        Arc::new(Access {
            tokens: RwLock::new(Arc::new(saved)),
            tls,
        })
    }

    /// Takes the tokens of `doc` if it is newer than those held.
    pub fn update(&self, doc: &ClusterMetadata) {
        let mut held = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        if doc.version < held.version {
            return;
        }
        if held.by_id != doc.tokens {
            tracing::info!(
                version = doc.version,
                tokens = doc.tokens.len(),
                "access tokens changed"
            );
            if held.by_id.is_empty() && !self.tls {
                warn_without_tls();
            }
        }
        *held = Arc::new(Tokens {
            version: doc.version,
            by_id: doc.tokens.clone(),
        });
    }

    /// The tokens held now.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether clients must present a token.
    pub fn required(&self) -> bool {
        access::required(&self.tokens().by_id)
    }

    /// Whether a principal recognised earlier may still act: its token is
    /// still held (not revoked), and for [`Principal::Anyone`],
    /// authentication is still off. Long-lived streams ask before each
    /// batch they send.
    pub fn still_allows(&self, principal: &Principal) -> bool {
        let tokens = self.tokens();
        match principal {
            Principal::Anyone => !access::required(&tokens.by_id),
            Principal::Token(grant) => grant.still_valid(&tokens.by_id),
            Principal::Peer(_) => true,
        }
    }

    /// Who presents `token` (`None`: no token presented).
    pub fn principal(&self, token: Option<&str>) -> Result<Principal, Unauthenticated> {
        let tokens = self.tokens();
        if !access::required(&tokens.by_id) {
            return Ok(Principal::Anyone);
        }
        let token = token.ok_or(Unauthenticated::Missing)?;
        access::authenticate(&tokens.by_id, token)
            .map(Principal::Token)
            .map_err(Unauthenticated::Token)
    }
}

fn warn_without_tls() {
    tracing::warn!(
        "authentication is on but TLS is off: tokens cross the network in the clear, and \
         anyone who reaches the gRPC port can act as a member (whose hello is public) and \
         bypass them; turn on TLS (--tls-cert, --tls-key, --peer-ca)"
    );
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off (the cluster has no token): anyone may do
    /// anything.
    Anyone,
    /// A client with a valid token.
    Token(Grant),
    /// Another member of the cluster.
    Peer(NodeId),
}

impl Principal {
    /// Whether this principal may do `action`. A member's call on a client
    /// service may only read (watch relays, status gathering): least
    /// privilege, whatever its hello is worth.
    pub fn check(&self, action: Action<'_>) -> Result<(), Denied> {
        match self {
            Principal::Anyone => Ok(()),
            Principal::Peer(_) => match action {
                Action::Read(_) | Action::ReadRange { .. } | Action::Status => Ok(()),
                Action::Write(_) | Action::Admin => Err(Denied::MemberReadsOnly),
            },
            Principal::Token(grant) => grant.check(action),
        }
    }

    /// Whether this principal may follow the changes of `target`'s keys.
    pub fn check_target(&self, target: &crate::watch::Target) -> Result<(), Denied> {
        match target {
            crate::watch::Target::Key(key) => self.check(Action::Read(key)),
            crate::watch::Target::Prefix(prefix) => {
                let end = access::prefix_end(prefix);
                self.check(Action::ReadRange {
                    start: prefix,
                    end: end.as_deref(),
                })
            }
        }
    }

    /// The key prefix this principal is confined to (empty: none).
    pub fn scope(&self) -> &[u8] {
        match self {
            Principal::Token(grant) => &grant.scope,
            Principal::Anyone | Principal::Peer(_) => &[],
        }
    }
}

/// Why a request is not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(
        "this cluster requires an access token (authentication is on): send it as \
         `Authorization: Bearer rkv_...` (the CLI: --token or RINGKV_TOKEN; Redis clients: AUTH)"
    )]
    Missing,
    #[error("{0}")]
    Token(AuthError),
    #[error(
        "the access token this stream was opened with is not valid any more (revoked, or \
         authentication was turned on): open it again with a valid token"
    )]
    Revoked,
}

/// Why a request is refused for who sent it: no valid token (401), or a
/// token that may not do this (403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    Unauthenticated(#[from] Unauthenticated),
    #[error("permission denied: {0}")]
    Denied(#[from] Denied),
}

impl AccessError {
    /// Its stable code, HTTP status, gRPC code and RESP error code (the
    /// ones Redis clients know: `NOAUTH`, `WRONGPASS`, `NOPERM`).
    pub fn kind(&self) -> ErrorKind {
        let (code, http_status, grpc_code, resp_code) = match self {
            AccessError::Unauthenticated(Unauthenticated::Missing) => (
                "unauthenticated",
                401,
                tonic::Code::Unauthenticated,
                "NOAUTH",
            ),
            AccessError::Unauthenticated(Unauthenticated::Token(_) | Unauthenticated::Revoked) => (
                "invalid_token",
                401,
                tonic::Code::Unauthenticated,
                "WRONGPASS",
            ),
            AccessError::Denied(_) => (
                "permission_denied",
                403,
                tonic::Code::PermissionDenied,
                "NOPERM",
            ),
        };
        ErrorKind {
            code,
            http_status,
            grpc_code,
            resp_code,
        }
    }

    /// The gRPC status, with the stable code in its metadata.
    pub fn to_status(&self) -> tonic::Status {
        let k = self.kind();
        let mut status = tonic::Status::new(k.grpc_code, self.to_string());
        status.metadata_mut().insert(
            CODE_METADATA,
            tonic::metadata::MetadataValue::from_static(k.code),
        );
        status
    }
}

/// Whether `principal` may make the request `req` (every key it names).
pub fn check_request(principal: &Principal, req: &ClientRequest) -> Result<(), Denied> {
    match req {
        ClientRequest::Get { key, .. } => principal.check(Action::Read(key)),
        ClientRequest::Put { key, .. }
        | ClientRequest::Expire { key, .. }
        | ClientRequest::Delete { key, .. }
        | ClientRequest::Increment { key, .. }
        | ClientRequest::Append { key, .. } => principal.check(Action::Write(key)),
        ClientRequest::PutAll { pairs } => pairs
            .iter()
            .try_for_each(|(key, _)| principal.check(Action::Write(key))),
        // A partition's key count reads the whole partition (DBSIZE): a
        // keyspace-wide request, as a scan without a prefix is.
        ClientRequest::CountKeys { .. } => principal.check(Action::ReadRange {
            start: b"",
            end: None,
        }),
        ClientRequest::Scan { start, end, .. } => principal.check(Action::ReadRange {
            start,
            end: end.as_deref(),
        }),
    }
}

/// The token in an HTTP `Authorization` header's value: `Bearer <token>`
/// (the scheme's case does not matter, RFC 9110 §11.1). `Err` names what is
/// wrong with a header that is there.
pub fn bearer(header: &str) -> Result<&str, Unauthenticated> {
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or(Unauthenticated::Token(AuthError::Malformed))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Unauthenticated::Token(AuthError::Malformed));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ringkv_core::access::{Role, hash_secret};
    use ringkv_core::ring::RingConfig;

    fn doc(version: u64, tokens: &[(&str, Role)]) -> ClusterMetadata {
        let mut d = ClusterMetadata::genesis(RingConfig::default(), [(NodeId(1), "a:1".into())]);
        d.version = version;
        d.tokens = tokens
            .iter()
            .map(|&(id, role)| {
                let record = TokenRecord {
                    name: String::new(),
                    role,
                    scope: Bytes::new(),
                    secret_hash: hash_secret("s"),
                };
                (id.to_owned(), record)
            })
            .collect();
        d
    }

    #[test]
    fn tokens_follow_newer_documents_only() {
        let access = Access::new(Tokens::default(), true);
        assert_eq!(access.principal(None), Ok(Principal::Anyone));
        access.update(&doc(5, &[("a", Role::Admin)]));
        assert_eq!(access.principal(None), Err(Unauthenticated::Missing));
        assert!(matches!(
            access.principal(Some("rkv_a_s")),
            Ok(Principal::Token(g)) if g.role == Role::Admin
        ));
        assert_eq!(
            access.principal(Some("rkv_a_x")),
            Err(Unauthenticated::Token(AuthError::Invalid))
        );
        // An older document (a stale copy) changes nothing.
        access.update(&doc(4, &[]));
        assert!(access.required());
        access.update(&doc(6, &[]));
        assert!(!access.required());
    }

    #[test]
    fn a_members_call_may_only_read() {
        let member = Principal::Peer(NodeId(2));
        assert_eq!(member.check(Action::Read(b"k")), Ok(()));
        assert_eq!(member.check(Action::Status), Ok(()));
        assert_eq!(
            member.check(Action::ReadRange {
                start: b"",
                end: None
            }),
            Ok(())
        );
        assert_eq!(
            member.check(Action::Write(b"k")),
            Err(Denied::MemberReadsOnly)
        );
        assert_eq!(member.check(Action::Admin), Err(Denied::MemberReadsOnly));
        // A stream's principal: a revoked token, or authentication turned
        // on under an anonymous one, ends it; a member's goes on.
        let access = Access::new(Tokens::default(), true);
        assert!(access.still_allows(&Principal::Anyone));
        access.update(&doc(3, &[("a", Role::Read)]));
        assert!(!access.still_allows(&Principal::Anyone));
        assert!(access.still_allows(&member));
        let Ok(reader) = access.principal(Some("rkv_a_s")) else {
            panic!("a valid token")
        };
        assert!(access.still_allows(&reader));
        access.update(&doc(4, &[("b", Role::Admin)]));
        assert!(!access.still_allows(&reader));
    }

    #[test]
    fn bearer_headers_are_read_with_any_scheme_case() {
        assert_eq!(bearer("Bearer rkv_a_s"), Ok("rkv_a_s"));
        assert_eq!(bearer("bearer  rkv_a_s "), Ok("rkv_a_s"));
        assert!(bearer("Basic dXNlcjpwYXNz").is_err());
        assert!(bearer("rkv_a_s").is_err());
    }
}
