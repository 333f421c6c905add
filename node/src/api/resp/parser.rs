//! Reads one command from the bytes a RESP client sent: pure, no IO, no
//! allocation beyond the argument list the limits allow.
//!
//! A command is either a multibulk (`*<n>\r\n` then `n` times
//! `$<len>\r\n<bytes>\r\n`, what every client library sends) or an inline
//! line (`PING\r\n`, what a person types over telnet: split at spaces and
//! tabs; quotes are not interpreted). As in Redis, a multibulk of zero or
//! fewer arguments and an empty inline line are no command: they are
//! consumed and skipped.
//!
//! [`parse_command`] is called with everything buffered so far; it answers
//! [`Parsed::Incomplete`] until a whole command is there (it never consumes
//! part of one), then the argument ranges and how many bytes the command
//! took. A [`ProtocolError`] means the stream cannot be resynchronised: the
//! server replies with it and closes the connection, as Redis does. The
//! limits bound everything a client can make the server hold before a
//! command is complete.

use std::ops::Range;

/// Bounds on what one command may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one argument.
    pub max_bulk_bytes: usize,
    /// Arguments of one command.
    pub max_args: usize,
    /// Bytes of one inline command, and of a `*`/`$` header line.
    pub max_inline_bytes: usize,
    /// Bytes of one whole command (all its arguments and framing).
    pub max_command_bytes: usize,
}

impl Limits {
    /// Limits for values of at most `max_value_bytes`: an argument may be
    /// up to four times that (so that the store, not the protocol, refuses
    /// a value a little too large, naming its real size), a command 64
    /// such values; at most 1,048,576 arguments and 64 KiB inline, as in
    /// Redis.
    pub fn for_values(max_value_bytes: usize) -> Self {
        let max_bulk_bytes = max_value_bytes.saturating_mul(4).max(64 << 10);
        Limits {
            max_bulk_bytes,
            max_args: 1 << 20,
            max_inline_bytes: 64 << 10,
            max_command_bytes: max_bulk_bytes.saturating_mul(16),
        }
    }
}

/// What the buffered bytes hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole command yet: read more.
    Incomplete,
    /// A command: its arguments as ranges of the buffer, and the bytes it
    /// took (including framing). `args` is empty for the no-command forms
    /// (`*0`, `*-1`, an empty line), which are skipped.
    Command {
        args: Vec<Range<usize>>,
        consumed: usize,
    },
}

/// A framing error: the connection cannot go on. Its text follows Redis's
/// (`Protocol error: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: {count} arguments, more than the limit of {max}")]
    TooManyArguments { count: u64, max: usize },
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: an argument of {len} bytes, more than the limit of {max}")]
    BulkTooLarge { len: u64, max: usize },
    #[error("Protocol error: a command of more than {max} bytes")]
    CommandTooLarge { max: usize },
    #[error("Protocol error: too big inline request (more than {max} bytes without a newline)")]
    InlineTooLarge { max: usize },
    #[error("Protocol error: too big count line (more than {max} bytes without a newline)")]
    HeaderTooLarge { max: usize },
    #[error("Protocol error: a bulk string not followed by CRLF")]
    MissingCrlf,
}

/// Reads the first command of `buf` (see the module doc).
pub fn parse_command(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > limits.max_inline_bytes {
            return Err(ProtocolError::InlineTooLarge {
                max: limits.max_inline_bytes,
            });
        }
        return Ok(Parsed::Incomplete);
    };
    if newline > limits.max_inline_bytes {
        return Err(ProtocolError::InlineTooLarge {
            max: limits.max_inline_bytes,
        });
    }
    let mut args = Vec::new();
    let mut start = None;
    for (i, &b) in buf[..newline].iter().enumerate() {
        let blank = matches!(b, b' ' | b'\t' | b'\r');
        match (start, blank) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                args.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        args.push(s..newline);
    }
    if args.len() > limits.max_args {
        return Err(ProtocolError::TooManyArguments {
            count: args.len() as u64,
            max: limits.max_args,
        });
    }
    Ok(Parsed::Command {
        args,
        consumed: newline + 1,
    })
}

/// A `<prefix><integer>\r\n` line at `at`: the integer and where the next
/// line starts, or `None` while incomplete.
fn header_line(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    invalid: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at + 1..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        if rest.len() > limits.max_inline_bytes {
            return Err(ProtocolError::HeaderTooLarge {
                max: limits.max_inline_bytes,
            });
        }
        return Ok(None);
    };
    if cr > limits.max_inline_bytes {
        return Err(ProtocolError::HeaderTooLarge {
            max: limits.max_inline_bytes,
        });
    }
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(invalid),
    }
    let digits = std::str::from_utf8(&rest[..cr]).map_err(|_| invalid.clone())?;
    let n: i64 = digits.parse().map_err(|_| invalid)?;
    Ok(Some((n, at + 1 + cr + 2)))
}

fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    let Some((count, mut at)) = header_line(buf, 0, limits, ProtocolError::InvalidMultibulkLength)?
    else {
        return Ok(Parsed::Incomplete);
    };
    if count <= 0 {
        return Ok(Parsed::Command {
            args: Vec::new(),
            consumed: at,
        });
    }
    let count = count as u64;
    if count > limits.max_args as u64 {
        return Err(ProtocolError::TooManyArguments {
            count,
            max: limits.max_args,
        });
    }
    // Grown as arguments arrive, not reserved from the declared count: a
    // client that announces a million arguments and sends none holds
    // nothing.
    let mut args = Vec::new();
    for _ in 0..count {
        let Some(&marker) = buf.get(at) else {
            return Ok(Parsed::Incomplete);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk(marker));
        }
        let Some((len, data)) = header_line(buf, at, limits, ProtocolError::InvalidBulkLength)?
        else {
            return Ok(Parsed::Incomplete);
        };
        let len = u64::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
        if len > limits.max_bulk_bytes as u64 {
            return Err(ProtocolError::BulkTooLarge {
                len,
                max: limits.max_bulk_bytes,
            });
        }
        let end = data + len as usize;
        if end + 2 > limits.max_command_bytes {
            return Err(ProtocolError::CommandTooLarge {
                max: limits.max_command_bytes,
            });
        }
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        args.push(data..end);
        at = end + 2;
    }
    Ok(Parsed::Command { args, consumed: at })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bulk_bytes: 16,
            max_args: 4,
            max_inline_bytes: 32,
            max_command_bytes: 64,
        }
    }

    /// A command's arguments, and the bytes it took.
    type Read<'a> = (Vec<&'a [u8]>, usize);

    /// The first command, if whole.
    fn parse(buf: &[u8]) -> Result<Option<Read<'_>>, ProtocolError> {
        Ok(match parse_command(buf, &limits())? {
            Parsed::Incomplete => None,
            Parsed::Command { args, consumed } => {
                Some((args.into_iter().map(|r| &buf[r]).collect(), consumed))
            }
        })
    }

    #[test]
    fn a_multibulk_command() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(parse(buf), Ok(Some((vec![&b"GET"[..], b"k"], 20))));
        // The next command of a pipeline starts where this one ended.
        assert_eq!(parse(&buf[20..]), Ok(Some((vec![&b"PING"[..]], 14))));
    }

    #[test]
    fn binary_arguments_and_empty_ones() {
        let buf = b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$4\r\n\r\n\0\xff\r\n";
        assert_eq!(
            parse(buf),
            Ok(Some((vec![&b"SET"[..], b"", b"\r\n\0\xff"], buf.len())))
        );
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        for end in 0..buf.len() {
            assert_eq!(parse(&buf[..end]), Ok(None), "{end} bytes");
        }
        let inline = b"PING hello\r\n";
        for end in 0..inline.len() {
            assert_eq!(parse(&inline[..end]), Ok(None), "{end} bytes");
        }
    }

    #[test]
    fn inline_commands() {
        assert_eq!(
            parse(b"SET  k\tv\r\nGET k\r\n"),
            Ok(Some((vec![&b"SET"[..], b"k", b"v"], 10)))
        );
        assert_eq!(parse(b"PING\n"), Ok(Some((vec![&b"PING"[..]], 5))));
        // An empty line is no command.
        assert_eq!(parse(b"\r\n"), Ok(Some((vec![], 2))));
        assert_eq!(
            parse(&[b'x'; 33]),
            Err(ProtocolError::InlineTooLarge { max: 32 })
        );
    }

    #[test]
    fn empty_multibulks_are_skipped() {
        assert_eq!(parse(b"*0\r\n"), Ok(Some((vec![], 4))));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some((vec![], 5))));
    }

    #[test]
    fn malformed_framing_is_an_error() {
        assert_eq!(parse(b"*x\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(
            parse(b"*1\r\n+OK\r\n"),
            Err(ProtocolError::ExpectedBulk(b'+'))
        );
        assert_eq!(
            parse(b"*1\r\n$-1\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            parse(b"*1\r\n$2\r\nabc\r\n"),
            Err(ProtocolError::MissingCrlf)
        );
        assert_eq!(
            parse(b"*1\r\n$1x\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn limits_are_enforced_before_the_bytes_arrive() {
        assert_eq!(
            parse(b"*5\r\n"),
            Err(ProtocolError::TooManyArguments { count: 5, max: 4 })
        );
        assert_eq!(
            parse(b"*1\r\n$17\r\n"),
            Err(ProtocolError::BulkTooLarge { len: 17, max: 16 })
        );
        assert_eq!(
            parse(b"*4\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n"),
            Err(ProtocolError::CommandTooLarge { max: 64 })
        );
        assert_eq!(
            parse(&[b"*".as_slice(), &[b'1'; 40]].concat()),
            Err(ProtocolError::HeaderTooLarge { max: 32 })
        );
    }

    #[test]
    fn error_texts_read_like_redis() {
        assert_eq!(
            ProtocolError::ExpectedBulk(b'+').to_string(),
            "Protocol error: expected '$', got '+'"
        );
        assert_eq!(
            ProtocolError::InvalidBulkLength.to_string(),
            "Protocol error: invalid bulk length"
        );
    }

    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    proptest! {
        /// Any well-formed multibulk within the limits reads back as its
        /// arguments, whole.
        #[test]
        fn multibulks_round_trip(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 1..4),
        ) {
            let buf = encode(&args);
            prop_assume!(buf.len() <= 64);
            let got = parse(&buf).unwrap().unwrap();
            prop_assert_eq!(got.1, buf.len());
            prop_assert_eq!(got.0, args.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }

        /// Arbitrary bytes never panic, and a command never claims more
        /// bytes than there are, or arguments outside them.
        #[test]
        fn arbitrary_bytes_are_safe(buf in prop::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(Parsed::Command { args, consumed }) = parse_command(&buf, &limits()) {
                prop_assert!(consumed > 0 && consumed <= buf.len());
                prop_assert!(args.len() <= 4);
                for r in args {
                    prop_assert!(r.end <= consumed);
                }
            }
        }
    }
}
