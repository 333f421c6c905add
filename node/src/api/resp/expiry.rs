//! Redis's expiry commands on ringkv: `SET ... EX|PX|EXAT|PXAT|KEEPTTL`,
//! `SETEX PSETEX`, `EXPIRE PEXPIRE EXPIREAT PEXPIREAT`, `TTL PTTL
//! EXPIRETIME PEXPIRETIME` and `PERSIST`, with Redis's arguments, answers
//! and error words.
//!
//! A key's deadline is an absolute time the partition's leader stamps (a
//! relative TTL is turned into one with the leader's clock), so the
//! remaining time `TTL` answers is by this node's clock: nodes whose
//! clocks disagree answer slightly different TTLs for one key. Not built:
//! `EXPIRE`'s `NX XX GT LT` options (refused with an error that says so),
//! `GETEX`.

use bytes::Bytes;
use ringkv_core::kv::parse_integer;
use ringkv_core::node::{ClientError, ClientRequest, ClientResponse, Expiry};

use super::commands::{Session, error_reply, get_kv};
use super::reply::Reply;
use crate::handle::NodeHandle;

fn invalid_expire_time(command: &str) -> Reply {
    Reply::err(format!("invalid expire time in '{command}' command"))
}

/// A count of seconds or milliseconds as milliseconds; `None` if it is not
/// an integer or overflows.
fn to_ms(arg: &[u8], seconds: bool) -> Option<i64> {
    let n = parse_integer(arg)?;
    if seconds {
        n.checked_mul(1000)
    } else {
        Some(n)
    }
}

/// One expiry option of `SET` and its argument (`EX 10`, `PXAT 1700000000000`),
/// as an [`Expiry`]. `arg` is the option's argument, if any followed it.
pub fn set_option(option: &str, arg: Option<&Bytes>) -> Result<Expiry, Reply> {
    if option == "KEEPTTL" {
        return Ok(Expiry::Keep);
    }
    let Some(arg) = arg else {
        return Err(Reply::err("syntax error"));
    };
    let Some(ms) = to_ms(arg, matches!(option, "EX" | "EXAT")) else {
        return Err(Reply::err("value is not an integer or out of range"));
    };
    let Ok(ms @ 1..) = u64::try_from(ms) else {
        return Err(invalid_expire_time("set"));
    };
    Ok(match option {
        "EX" | "PX" => Expiry::AfterMs(ms),
        _ => Expiry::AtUnixMs(ms),
    })
}

/// `SETEX key seconds value` and `PSETEX key milliseconds value`.
pub async fn setex(node: &NodeHandle, name: &str, args: &[Bytes]) -> Reply {
    let Some(ms) = to_ms(&args[2], name == "setex") else {
        return Reply::err("value is not an integer or out of range");
    };
    let Ok(ms @ 1..) = u64::try_from(ms) else {
        return invalid_expire_time(name);
    };
    let req = ClientRequest::Put {
        key: args[1].clone(),
        value: args[3].clone(),
        precondition: ringkv_core::kv::Precondition::None,
        return_previous: false,
        expiry: Expiry::AfterMs(ms),
    };
    match node.request(req).await {
        Ok(_) => Reply::ok(),
        Err(e) => error_reply(&e),
    }
}

/// `EXPIRE key seconds`, `PEXPIRE key ms`, `EXPIREAT key unix-seconds`,
/// `PEXPIREAT key unix-ms`: 1 if the key exists (its expiry is set; a time
/// already passed deletes it, as in Redis), 0 if it does not.
pub async fn expire(node: &NodeHandle, name: &str, args: &[Bytes]) -> Reply {
    if args.len() > 3 {
        let option = String::from_utf8_lossy(&args[3]).to_ascii_uppercase();
        return match option.as_str() {
            "NX" | "XX" | "GT" | "LT" => Reply::err(format!(
                "{} with {option} is not supported yet: ringkv sets expiries unconditionally",
                name.to_ascii_uppercase()
            )),
            _ => Reply::err(format!(
                "Unsupported option {}",
                option.chars().take(64).collect::<String>()
            )),
        };
    }
    let seconds = matches!(name, "expire" | "expireat");
    let Some(n) = to_ms(&args[2], seconds) else {
        return Reply::err("value is not an integer or out of range");
    };
    let expiry = match (name, u64::try_from(n)) {
        ("expire" | "pexpire", Ok(ms @ 1..)) => Expiry::AfterMs(ms),
        ("expireat" | "pexpireat", Ok(at @ 1..)) => Expiry::AtUnixMs(at),
        // Zero, negative, or a time before 1970: already passed, so the
        // key goes (the earliest deadline there is).
        _ => Expiry::AtUnixMs(1),
    };
    let req = ClientRequest::Expire {
        key: args[1].clone(),
        expiry,
    };
    match node.request(req).await {
        Ok(ClientResponse::ExpirySet { .. }) => Reply::Integer(1),
        Ok(other) => Reply::err(format!("unexpected response {other:?}")),
        Err(ClientError::NotFound) => Reply::Integer(0),
        Err(e) => error_reply(&e),
    }
}

/// `PERSIST key`: 1 if the key had an expiry and lost it, else 0.
pub async fn persist(node: &NodeHandle, key: Bytes) -> Reply {
    let req = ClientRequest::Expire {
        key,
        expiry: Expiry::Clear,
    };
    match node.request(req).await {
        Ok(ClientResponse::ExpirySet { changed, .. }) => Reply::Integer(i64::from(changed)),
        Ok(other) => Reply::err(format!("unexpected response {other:?}")),
        Err(ClientError::NotFound) => Reply::Integer(0),
        Err(e) => error_reply(&e),
    }
}

/// `TTL` and `PTTL` (time left, by this node's clock) and `EXPIRETIME` and
/// `PEXPIRETIME` (the deadline): -2 if the key does not exist, -1 if it
/// has no expiry.
pub async fn ttl(node: &NodeHandle, session: &Session, name: &str, key: Bytes) -> Reply {
    let kv = match get_kv(node, session, key).await {
        Ok(Some(kv)) => kv,
        Ok(None) => return Reply::Integer(-2),
        Err(e) => return error_reply(&e),
    };
    let Some(at) = kv.expires_at else {
        return Reply::Integer(-1);
    };
    let left = at.saturating_sub(crate::clock::wall_clock_ms());
    let n = match name {
        // Redis rounds the seconds left to the nearest.
        "ttl" => left.saturating_add(500) / 1000,
        "pttl" => left,
        "expiretime" => at / 1000,
        _ => at,
    };
    Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_options_read_as_redis_reads_them() {
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(
            set_option("EX", Some(&b("10"))),
            Ok(Expiry::AfterMs(10_000))
        );
        assert_eq!(
            set_option("PX", Some(&b("1500"))),
            Ok(Expiry::AfterMs(1_500))
        );
        assert_eq!(
            set_option("EXAT", Some(&b("1800000000"))),
            Ok(Expiry::AtUnixMs(1_800_000_000_000))
        );
        assert_eq!(
            set_option("PXAT", Some(&b("1800000000123"))),
            Ok(Expiry::AtUnixMs(1_800_000_000_123))
        );
        assert_eq!(set_option("KEEPTTL", None), Ok(Expiry::Keep));
        let error = |r: Result<Expiry, Reply>| match r {
            Err(Reply::Error(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            error(set_option("EX", Some(&b("0")))),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            error(set_option("PX", Some(&b("-5")))),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            error(set_option("EX", Some(&b("ten")))),
            "ERR value is not an integer or out of range"
        );
        // Seconds that overflow as milliseconds.
        assert_eq!(
            error(set_option("EX", Some(&b("9223372036854775807")))),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(error(set_option("EX", None)), "ERR syntax error");
    }
}
