//! Who a RESP connection is, and what each command may do for it: `AUTH
//! [username] token` and `HELLO ... AUTH username token` (`redis-cli -a
//! TOKEN`, a client library's password) present an access token; every
//! other command is checked against it, as [`crate::auth`] says, with the
//! errors Redis clients know: `-NOAUTH` (none presented while the cluster
//! requires one), `-WRONGPASS` (not a valid token), `-NOPERM` (its role or
//! key prefix does not allow the command).
//!
//! The token is checked once, at `AUTH`; every command then asks whether
//! it is still held, so a token revoked (or authentication turned on)
//! while a client is connected applies to the connection's next command. The username is not used: a ringkv token
//! names its holder itself (`rkv_<id>_...`), so any username, `default`
//! included, is accepted.

use bytes::Bytes;
use ringkv_core::access::Action;

use super::commands::{COMMANDS, Session};
use super::reply::Reply;
use crate::auth::{Principal, Unauthenticated};
use crate::handle::NodeHandle;
use crate::watch::Target;

/// Redis's reply to a command before authentication.
const NOAUTH: &str = "NOAUTH Authentication required.";

/// Redis's reply to a wrong password (clients match on its first word).
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// The connection's principal, or the reply that refuses the command. A
/// token is hashed once, at `AUTH`; each command then only asks whether
/// it is still held ([`crate::auth::Access::still_allows`]).
pub fn principal(node: &NodeHandle, session: &Session) -> Result<Principal, Reply> {
    match &session.principal {
        Some(p) if node.access().still_allows(p) => Ok(p.clone()),
        // Valid once, not now: revoked meanwhile.
        Some(_) => Err(Reply::Error(format!(
            "{NOAUTH} (this connection's token is not valid any more; AUTH again)"
        ))),
        None => node.access().principal(None).map_err(|e| match e {
            Unauthenticated::Missing => Reply::Error(NOAUTH.into()),
            Unauthenticated::Token(_) | Unauthenticated::Revoked => Reply::Error(WRONGPASS.into()),
        }),
    }
}

/// Checks `token` and, if valid, makes it the connection's.
fn authenticate(node: &NodeHandle, session: &mut Session, token: &Bytes) -> Result<(), Reply> {
    let token = std::str::from_utf8(token).map_err(|_| Reply::Error(WRONGPASS.into()))?;
    match node.access().principal(Some(token)) {
        Ok(p) => {
            session.principal = Some(p);
            Ok(())
        }
        Err(_) => Err(Reply::Error(WRONGPASS.into())),
    }
}

/// `AUTH [username] token`.
pub fn auth(node: &NodeHandle, session: &mut Session, args: &[Bytes]) -> Reply {
    let token = match args.len() {
        2 => &args[1],
        3 => &args[2],
        _ => return Reply::err("wrong number of arguments for 'auth' command"),
    };
    if !node.access().required() {
        // Redis's words when no password is set; clients that send one
        // anyway learn the server does not need it.
        return Reply::err(
            "AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct? (this ringkv cluster has no access \
             token: authentication is off)",
        );
    }
    match authenticate(node, session, token) {
        Ok(()) => Reply::ok(),
        Err(reply) => reply,
    }
}

/// `HELLO`'s `AUTH username token` option.
pub fn hello_auth(node: &NodeHandle, session: &mut Session, token: &Bytes) -> Result<(), Reply> {
    if !node.access().required() {
        // Nothing to check: Redis answers HELLO ... AUTH without a
        // password set as a plain HELLO.
        return Ok(());
    }
    authenticate(node, session, token)
}

/// Whether `HELLO` may answer: the connection is authenticated, or
/// authentication is off.
pub fn hello_allowed(node: &NodeHandle, session: &Session) -> Result<(), Reply> {
    principal(node, session).map(|_| ()).map_err(|_| {
        Reply::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time"
                .into(),
        )
    })
}

/// The reply that refuses command `name` (lower case) with `args`, or
/// `None` when the connection may run it.
pub fn refusal(node: &NodeHandle, session: &Session, name: &str, args: &[Bytes]) -> Option<Reply> {
    let principal = match principal(node, session) {
        Ok(p) => p,
        Err(reply) => return Some(reply),
    };
    if matches!(principal, Principal::Anyone | Principal::Peer(_)) {
        return None;
    }
    let denied = |e| Some(Reply::Error(format!("NOPERM {e}")));
    for action in actions(name, args) {
        if let Err(e) = principal.check(action) {
            return denied(e);
        }
    }
    None
}

/// The reply that refuses a keyspace subscription of `target`'s keys, or
/// `None` when the connection may follow them.
pub fn refuse_target(node: &NodeHandle, session: &Session, target: &Target) -> Option<Reply> {
    let principal = match principal(node, session) {
        Ok(p) => p,
        Err(reply) => return Some(reply),
    };
    principal
        .check_target(target)
        .err()
        .map(|e| Reply::Error(format!("NOPERM {e}")))
}

/// What command `name` does to keys, as [`COMMANDS`] says (its flags and
/// key positions); commands that read every key (`DBSIZE`, `SCAN`,
/// `KEYS`) read the whole key space, and commands without keys read the
/// cluster's status. Keyspace subscriptions are checked where their keys
/// are known ([`super::pubsub`]).
fn actions<'a>(name: &str, args: &'a [Bytes]) -> Vec<Action<'a>> {
    if matches!(name, "dbsize" | "scan" | "keys") {
        return vec![Action::ReadRange {
            start: b"",
            end: None,
        }];
    }
    let Some(&(_, _, flags, first, last, step)) = COMMANDS.iter().find(|c| c.0 == name) else {
        return vec![Action::Status];
    };
    if first <= 0 || args.len() <= first as usize {
        return vec![Action::Status];
    }
    let last = if last < 0 {
        args.len() as i64 + last
    } else {
        last.min(args.len() as i64 - 1)
    };
    let write = flags.contains(&"write");
    (first..=last)
        .step_by(step.max(1) as usize)
        .map(|i| {
            let key = &args[i as usize][..];
            if write {
                Action::Write(key)
            } else {
                Action::Read(key)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn each_command_reads_or_writes_the_keys_it_names() {
        let a = args(&["mset", "a", "1", "b", "2"]);
        assert_eq!(
            actions("mset", &a),
            [Action::Write(b"a"), Action::Write(b"b")]
        );
        let a = args(&["mget", "a", "b"]);
        assert_eq!(
            actions("mget", &a),
            [Action::Read(b"a"), Action::Read(b"b")]
        );
        let a = args(&["get", "k"]);
        assert_eq!(actions("get", &a), [Action::Read(b"k")]);
        let a = args(&["expire", "k", "10"]);
        assert_eq!(actions("expire", &a), [Action::Write(b"k")]);
        let a = args(&["keys", "*"]);
        assert_eq!(
            actions("keys", &a),
            [Action::ReadRange {
                start: b"",
                end: None
            }]
        );
        let a = args(&["cluster", "slots"]);
        assert_eq!(actions("cluster", &a), [Action::Status]);
        let a = args(&["ping"]);
        assert_eq!(actions("ping", &a), [Action::Status]);
    }
}
