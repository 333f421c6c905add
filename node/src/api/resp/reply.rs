//! Replies, and their bytes in RESP2 or RESP3 (what the connection chose
//! with `HELLO`). Pure.
//!
//! RESP3 types a RESP2 client cannot read are sent as their RESP2 forms, as
//! Redis does: a null as a null bulk string (`$-1`), a map as a flat array
//! of keys and values.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a short status, never containing CR or LF.
    Simple(&'static str),
    /// `-CODE message`: the first word is the error code clients match on.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    /// Out-of-band data (a pub/sub message or confirmation): a RESP3 push
    /// (`>`), a plain array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK")
    }

    /// `-ERR message`.
    pub fn err(message: impl std::fmt::Display) -> Self {
        Reply::Error(format!("ERR {message}"))
    }

    pub fn bulk(text: impl Into<Bytes>) -> Self {
        Reply::Bulk(text.into())
    }

    /// Appends this reply's bytes to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(e) => {
                // An error is one line: a message that came with a newline
                // (from a peer, say) must not end the reply early.
                let clean: Vec<u8> = e
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean);
            }
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::Null => match proto {
                Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Reply::Array(items) | Reply::Push(items) => {
                let prefix = match (self, proto) {
                    (Reply::Push(_), Protocol::Resp3) => b'>',
                    _ => b'*',
                };
                line(out, prefix, items.len().to_string().as_bytes());
                for item in items {
                    item.encode(proto, out);
                }
            }
            Reply::Map(pairs) => {
                match proto {
                    Protocol::Resp2 => line(out, b'*', (pairs.len() * 2).to_string().as_bytes()),
                    Protocol::Resp3 => line(out, b'%', pairs.len().to_string().as_bytes()),
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.put_u8(prefix);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(r: &Reply, proto: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        r.encode(proto, &mut out);
        out.to_vec()
    }

    #[test]
    fn resp2_and_resp3_forms() {
        use Protocol::*;
        assert_eq!(bytes(&Reply::ok(), Resp2), b"+OK\r\n");
        assert_eq!(bytes(&Reply::Integer(-3), Resp3), b":-3\r\n");
        assert_eq!(bytes(&Reply::bulk("hi"), Resp2), b"$2\r\nhi\r\n");
        assert_eq!(bytes(&Reply::Null, Resp2), b"$-1\r\n");
        assert_eq!(bytes(&Reply::Null, Resp3), b"_\r\n");
        let map = Reply::Map(vec![(Reply::bulk("proto"), Reply::Integer(3))]);
        assert_eq!(bytes(&map, Resp2), b"*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(bytes(&map, Resp3), b"%1\r\n$5\r\nproto\r\n:3\r\n");
        let array = Reply::Array(vec![Reply::bulk("a"), Reply::Null]);
        assert_eq!(bytes(&array, Resp2), b"*2\r\n$1\r\na\r\n$-1\r\n");
        let push = Reply::Push(vec![Reply::bulk("message"), Reply::Integer(1)]);
        assert_eq!(bytes(&push, Resp2), b"*2\r\n$7\r\nmessage\r\n:1\r\n");
        assert_eq!(bytes(&push, Resp3), b">2\r\n$7\r\nmessage\r\n:1\r\n");
    }

    #[test]
    fn an_error_stays_on_one_line() {
        assert_eq!(
            bytes(&Reply::err("two\r\nlines"), Protocol::Resp2),
            b"-ERR two  lines\r\n"
        );
    }
}
