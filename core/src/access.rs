//! Who may do what: the cluster's access tokens (each a role and an
//! optional key prefix it is confined to), how a presented token is
//! recognised, and the check of one request against its grant.
//!
//! **Tokens.** A token reads `rkv_<id>_<secret>`: `id` names it (lower-case
//! letters and digits, public: it is listed, logged and used to revoke it),
//! `secret` is 32 random bytes in unpadded base64url, made by the client
//! that creates the token (`ringkv auth add`) and shown once. The cluster
//! keeps only the SHA-256 of the secret, in the metadata document
//! ([`crate::metadata::ClusterMetadata::tokens`]), so every node checks
//! every token, and a copy of the document (or of a node's disk) gives
//! nobody a usable token. A 256-bit random secret needs no slow hash: no
//! dictionary holds it.
//!
//! **Roles.** `read` reads keys (get, scan, watch); `write` reads and
//! writes them; `admin` also changes the cluster (drains, replica moves,
//! tokens). Any valid token may read the cluster's status (its members,
//! partitions and leaders; never a key or value). A token with a scope
//! reaches only keys that start with it: a scan must stay inside it, a
//! request about all keys (a scan without a prefix, `KEYS *`) is refused.
//!
//! **When it applies.** Authentication is on from the moment the document
//! holds a token; the first token must be an admin token (else nobody could
//! add the next one), and the last admin token can go only with the others
//! (removing every token turns authentication off again). Peers do not use
//! tokens: they authenticate each other with mutual TLS (the node's
//! business, not this module's).
//!
//! Not here: where requests come from (REST, gRPC, RESP: the node maps
//! each to an [`Action`]), nor making secrets (the core has no randomness
//! of its own).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The text every token starts with.
pub const TOKEN_PREFIX: &str = "rkv_";

/// Longest token id.
pub const MAX_TOKEN_ID_LEN: usize = 32;

/// Longest secret accepted (a real one is 43 characters).
pub const MAX_SECRET_LEN: usize = 128;

/// Longest token name (a label for people).
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// Longest key prefix a token may be confined to.
pub const MAX_SCOPE_BYTES: usize = 1024;

/// Most tokens a cluster holds (each is checked from every node's copy of
/// the document; a few hundred bytes each).
pub const MAX_TOKENS: usize = 1_000;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read keys.
    Read,
    /// Read and write keys.
    Write,
    /// Read and write keys, and change the cluster (tokens included).
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// A label for people (who or what holds it); may be empty.
    pub name: String,
    pub role: Role,
    /// The prefix every key it reaches starts with; empty: every key.
    pub scope: Bytes,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
}

/// Why a token record cannot be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a token id is 1 to {MAX_TOKEN_ID_LEN} lower-case letters and digits, not {0:?}")]
    Id(String),
    #[error("a token name is at most {MAX_TOKEN_NAME_LEN} bytes")]
    Name,
    #[error("a token's key prefix is at most {MAX_SCOPE_BYTES} bytes")]
    Scope,
}

/// Whether `id` may name a token.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TOKEN_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl TokenRecord {
    /// Checks the record's limits (`id` is its id).
    pub fn validate(&self, id: &str) -> Result<(), RecordError> {
        if !valid_id(id) {
            return Err(RecordError::Id(id.chars().take(40).collect()));
        }
        if self.name.len() > MAX_TOKEN_NAME_LEN {
            return Err(RecordError::Name);
        }
        if self.scope.len() > MAX_SCOPE_BYTES {
            return Err(RecordError::Scope);
        }
        Ok(())
    }
}

/// The SHA-256 of a secret, as records keep it.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A token as a client presented it, split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresentedToken<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Why a presented token is refused. Deliberately two cases only: an
/// unknown id and a wrong secret read the same, so a caller learns
/// nothing by guessing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "not a ringkv token (a token reads rkv_<id>_<secret>, as `ringkv auth add` printed it)"
    )]
    Malformed,
    #[error("invalid token (unknown, revoked, or its secret is wrong)")]
    Invalid,
}

/// Splits `text` into id and secret, or says why it is no token.
pub fn parse_token(text: &str) -> Result<PresentedToken<'_>, AuthError> {
    let rest = text
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(AuthError::Malformed)?;
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    let secret_ok = !secret.is_empty()
        && secret.len() <= MAX_SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_id(id) || !secret_ok {
        return Err(AuthError::Malformed);
    }
    Ok(PresentedToken { id, secret })
}

/// What a token may do, once recognised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The token's id.
    pub token: String,
    pub role: Role,
    pub scope: Bytes,
    /// The hash of the secret presented (see [`Grant::still_valid`]).
    pub secret_hash: [u8; 32],
}

/// The grant of the token `text`, checked against `tokens`.
pub fn authenticate(
    tokens: &BTreeMap<String, TokenRecord>,
    text: &str,
) -> Result<Grant, AuthError> {
    let presented = parse_token(text)?;
    let record = tokens.get(presented.id).ok_or(AuthError::Invalid)?;
    let hash = hash_secret(presented.secret);
    if !bool::from(hash.ct_eq(&record.secret_hash)) {
        return Err(AuthError::Invalid);
    }
    Ok(Grant {
        token: presented.id.to_owned(),
        role: record.role,
        scope: record.scope.clone(),
        secret_hash: hash,
    })
}

/// What a request does, as far as access is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Reads one key (get, a watch of one key).
    Read(&'a [u8]),
    /// Writes one key (put, delete, increment, append, expire).
    Write(&'a [u8]),
    /// Reads the keys from `start` up to `end` (excluded; `None`: to the
    /// end of the key space): a scan, a watch of a prefix.
    ReadRange {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
    /// Reads the cluster's status: members, partitions, leaders, where a
    /// key lives. No key's value.
    Status,
    /// Changes the cluster: drains, replica moves, tokens.
    Admin,
}

/// Why a recognised token may not do something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("token {token} has role read: it may not write")]
    ReadOnly { token: String },
    #[error(
        "token {token} may only reach keys that start with {}",
        show_scope(scope)
    )]
    OutOfScope { token: String, scope: Bytes },
    #[error("token {token} has role {role}: this needs an admin token")]
    NotAdmin { token: String, role: Role },
    #[error(
        "a call with a member's peer hello may only read keys and the cluster's status (members \
         relay watches and gather status; they write through the peer service)"
    )]
    MemberReadsOnly,
}

/// A scope for a message: its text if UTF-8, else its bytes escaped.
pub fn show_scope(scope: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(scope))
}

impl Grant {
    /// Whether `tokens` still hold the token this grant was made from (a
    /// long-lived stream, a watch or a subscription, ends when it is
    /// revoked; an id taken again by another token is another token).
    pub fn still_valid(&self, tokens: &BTreeMap<String, TokenRecord>) -> bool {
        tokens.get(&self.token).is_some_and(|r| {
            r.secret_hash == self.secret_hash && r.role == self.role && r.scope == self.scope
        })
    }

    /// Whether this grant allows `action`.
    pub fn check(&self, action: Action<'_>) -> Result<(), Denied> {
        let out_of_scope = || Denied::OutOfScope {
            token: self.token.clone(),
            scope: self.scope.clone(),
        };
        match action {
            Action::Status => Ok(()),
            Action::Admin if self.role == Role::Admin => Ok(()),
            Action::Admin => Err(Denied::NotAdmin {
                token: self.token.clone(),
                role: self.role,
            }),
            Action::Write(_) if self.role == Role::Read => Err(Denied::ReadOnly {
                token: self.token.clone(),
            }),
            Action::Read(key) | Action::Write(key) => {
                if key.starts_with(&self.scope) {
                    Ok(())
                } else {
                    Err(out_of_scope())
                }
            }
            Action::ReadRange { start, end } => {
                if self.range_in_scope(start, end) {
                    Ok(())
                } else {
                    Err(out_of_scope())
                }
            }
        }
    }

    /// Whether every key in `[start, end)` starts with the scope.
    fn range_in_scope(&self, start: &[u8], end: Option<&[u8]>) -> bool {
        if self.scope.is_empty() {
            return true;
        }
        if !start.starts_with(&self.scope) {
            return false;
        }
        // The keys starting with the scope end just before `scope_end`
        // (none when the scope is all 0xff bytes: they run to the end).
        match (end, prefix_end(&self.scope)) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(end), Some(limit)) => end <= limit.as_slice(),
        }
    }
}

/// The smallest key after every key that starts with `prefix`: the prefix
/// with its last byte below 0xff incremented (and what follows dropped);
/// `None` when there is none (an empty prefix, or only 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// Whether a client must present a token: once any exists.
pub fn required(tokens: &BTreeMap<String, TokenRecord>) -> bool {
    !tokens.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(role: Role, scope: &str, secret: &str) -> TokenRecord {
        TokenRecord {
            name: String::new(),
            role,
            scope: Bytes::copy_from_slice(scope.as_bytes()),
            secret_hash: hash_secret(secret),
        }
    }

    fn grant(role: Role, scope: &str) -> Grant {
        Grant {
            token: "t1".into(),
            role,
            scope: Bytes::copy_from_slice(scope.as_bytes()),
            secret_hash: hash_secret("s"),
        }
    }

    #[test]
    fn a_token_is_recognised_by_its_id_and_secret_only() {
        let tokens = BTreeMap::from([("ab12".to_owned(), record(Role::Write, "app/", "s3cret"))]);
        let g = authenticate(&tokens, "rkv_ab12_s3cret").unwrap();
        assert_eq!(
            g,
            Grant {
                token: "ab12".into(),
                role: Role::Write,
                scope: Bytes::from_static(b"app/"),
                secret_hash: hash_secret("s3cret"),
            }
        );
        // Valid while the token is held; not once it is gone, nor when its
        // id is taken again by another token.
        assert!(g.still_valid(&tokens));
        assert!(!g.still_valid(&BTreeMap::new()));
        let other = BTreeMap::from([("ab12".to_owned(), record(Role::Write, "app/", "new"))]);
        assert!(!g.still_valid(&other));
        // A wrong secret and an unknown id read the same.
        assert_eq!(
            authenticate(&tokens, "rkv_ab12_s3creT"),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            authenticate(&tokens, "rkv_ab13_s3cret"),
            Err(AuthError::Invalid)
        );
        for bad in [
            "",
            "ab12_s3cret",
            "rkv_ab12",
            "rkv_ab12_",
            "rkv__s3cret",
            "rkv_AB12_s3cret",
            "rkv_ab12_s3 cret",
            "Bearer rkv_ab12_s3cret",
        ] {
            assert_eq!(
                authenticate(&tokens, bad),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
        let long = format!("rkv_ab12_{}", "a".repeat(MAX_SECRET_LEN + 1));
        assert_eq!(authenticate(&tokens, &long), Err(AuthError::Malformed));
        // The secret may hold '_' (base64url): the id ends at the first.
        let tokens = BTreeMap::from([("x".to_owned(), record(Role::Read, "", "a_b-c"))]);
        assert_eq!(authenticate(&tokens, "rkv_x_a_b-c").unwrap().token, "x");
    }

    #[test]
    fn roles_allow_what_they_say() {
        let read = grant(Role::Read, "");
        let write = grant(Role::Write, "");
        let admin = grant(Role::Admin, "");
        for g in [&read, &write, &admin] {
            assert_eq!(g.check(Action::Read(b"k")), Ok(()));
            assert_eq!(g.check(Action::Status), Ok(()));
            assert_eq!(
                g.check(Action::ReadRange {
                    start: b"",
                    end: None
                }),
                Ok(())
            );
        }
        assert_eq!(
            read.check(Action::Write(b"k")).unwrap_err().to_string(),
            "token t1 has role read: it may not write"
        );
        assert_eq!(write.check(Action::Write(b"k")), Ok(()));
        assert_eq!(
            write.check(Action::Admin).unwrap_err().to_string(),
            "token t1 has role write: this needs an admin token"
        );
        assert_eq!(admin.check(Action::Admin), Ok(()));
        assert_eq!(admin.check(Action::Write(b"k")), Ok(()));
    }

    #[test]
    fn a_scope_confines_keys_and_ranges() {
        let g = grant(Role::Write, "app/");
        assert_eq!(g.check(Action::Write(b"app/x")), Ok(()));
        assert_eq!(g.check(Action::Read(b"app/")), Ok(()));
        let err = g.check(Action::Read(b"other")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "token t1 may only reach keys that start with \"app/\""
        );
        assert!(g.check(Action::Write(b"app")).is_err());
        let range = |start: &'static [u8], end: Option<&'static [u8]>| {
            g.check(Action::ReadRange { start, end }).is_ok()
        };
        // The scope's own range, and any range inside it.
        assert!(range(b"app/", Some(b"app0")));
        assert!(range(b"app/a", Some(b"app/b")));
        // Past its end, before its start, or unbounded: refused.
        assert!(!range(b"app/", Some(b"app1")));
        assert!(!range(b"ap", Some(b"app0")));
        assert!(!range(b"app/", None));
        assert!(!range(b"", None));
        // A scope of 0xff bytes runs to the end of the key space.
        let top = Grant {
            scope: Bytes::from_static(&[0xff, 0xff]),
            ..g.clone()
        };
        assert_eq!(
            top.check(Action::ReadRange {
                start: &[0xff, 0xff, 1],
                end: None
            }),
            Ok(())
        );
        // Roles still apply inside the scope; status needs no scope.
        let read = grant(Role::Read, "app/");
        assert!(matches!(
            read.check(Action::Write(b"app/x")),
            Err(Denied::ReadOnly { .. })
        ));
        assert_eq!(read.check(Action::Status), Ok(()));
    }

    #[test]
    fn records_are_checked_against_their_limits() {
        let r = record(Role::Read, "", "s");
        assert_eq!(r.validate("abc123"), Ok(()));
        assert!(matches!(r.validate(""), Err(RecordError::Id(_))));
        assert!(matches!(r.validate("Abc"), Err(RecordError::Id(_))));
        assert!(matches!(
            r.validate(&"a".repeat(33)),
            Err(RecordError::Id(_))
        ));
        let named = TokenRecord {
            name: "n".repeat(MAX_TOKEN_NAME_LEN + 1),
            ..r.clone()
        };
        assert_eq!(named.validate("a"), Err(RecordError::Name));
        let scoped = TokenRecord {
            scope: Bytes::from(vec![b'a'; MAX_SCOPE_BYTES + 1]),
            ..r
        };
        assert_eq!(scoped.validate("a"), Err(RecordError::Scope));
        assert_eq!(Role::parse("write"), Some(Role::Write));
        assert_eq!(Role::parse("root"), None);
    }
}
