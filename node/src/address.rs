//! A member's gRPC address as operators and the member list give it:
//! `HOST:PORT`, where HOST is an IP literal (`10.0.0.4`, `[::1]`) or a DNS
//! name (`ringkv-2.ringkv.default.svc`).
//!
//! It stays text. Every connect resolves it again (tonic hands the URI to
//! hyper's connector, which asks the system resolver), never once at start:
//! a member whose name now points elsewhere, as a Kubernetes pod that came
//! back with a new IP, is reached at its new address by the next reconnect.
//! What this type checks is only that the text can be dialled at all; it
//! does not ask a resolver (a name that does not resolve yet is a member
//! that is not up yet, as an unreachable IP is).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// A dialable `HOST:PORT` (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr {
    text: String,
    /// Where the port starts in `text` (after the last `:`).
    port_at: usize,
    port: u16,
}

/// Why a text is not a [`PeerAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{0:?} is not HOST:PORT (for example 10.0.0.4:9091 or ringkv-0.ringkv:9091)")]
    NotHostPort(String),
    #[error("{0:?} has no valid port (1-65535)")]
    BadPort(String),
    #[error("{0:?} has a host that is neither an IP address nor a DNS name")]
    BadHost(String),
    #[error("{0:?} is not an address another node can dial (it means every interface)")]
    Unspecified(String),
}

/// Longest DNS name (RFC 1035 §2.3.4).
const MAX_HOST_BYTES: usize = 253;

impl PeerAddr {
    pub fn parse(text: &str) -> Result<PeerAddr, AddrError> {
        let text = text.trim();
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| AddrError::NotHostPort(text.to_owned()))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| AddrError::BadPort(text.to_owned()))?;
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| AddrError::BadHost(text.to_owned()))?;
            if ip.is_unspecified() {
                return Err(AddrError::Unspecified(text.to_owned()));
            }
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            // (A bare IPv6 literal, `::1:9091`, is ambiguous and refused
            // as a host: IPv6 goes in brackets.)
            if ip.is_unspecified() {
                return Err(AddrError::Unspecified(text.to_owned()));
            }
        } else if !is_dns_name(host) {
            return Err(AddrError::BadHost(text.to_owned()));
        }
        Ok(PeerAddr {
            port_at: host.len() + 1,
            port,
            text: text.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host part: an IP literal (IPv6 in brackets) or a name.
    pub fn host(&self) -> &str {
        &self.text[..self.port_at - 1]
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address itself when the host is an IP literal; `None` for a
    /// name (resolve it by connecting).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.text.parse().ok()
    }

    /// `http://HOST:PORT`, for a tonic `Endpoint`.
    pub fn uri(&self) -> String {
        format!("http://{}", self.text)
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1-63 bytes, none
/// starting or ending with `-` (RFC 1123; `_` as service names use it).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for PeerAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerAddr::parse(s)
    }
}

impl From<SocketAddr> for PeerAddr {
    /// A socket address as text. (An unspecified IP passes here, as the
    /// listen address a test or the simulation gives; it is refused where
    /// an address is registered for others to dial.)
    fn from(addr: SocketAddr) -> Self {
        let text = addr.to_string();
        PeerAddr {
            port_at: text.len() - addr.port().to_string().len(),
            port: addr.port(),
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_and_names_parse() {
        let a = PeerAddr::parse("10.0.0.4:9091").unwrap();
        assert_eq!((a.host(), a.port()), ("10.0.0.4", 9091));
        assert_eq!(a.socket_addr(), Some("10.0.0.4:9091".parse().unwrap()));
        let b = PeerAddr::parse(" [::1]:9093 ").unwrap();
        assert_eq!(
            (b.host(), b.port(), b.as_str()),
            ("[::1]", 9093, "[::1]:9093")
        );
        assert!(b.socket_addr().is_some());
        let c = PeerAddr::parse("ringkv-2.ringkv.default.svc.cluster.local:9091").unwrap();
        assert_eq!(c.host(), "ringkv-2.ringkv.default.svc.cluster.local");
        assert_eq!(c.socket_addr(), None);
        assert_eq!(
            c.uri(),
            "http://ringkv-2.ringkv.default.svc.cluster.local:9091"
        );
        assert_eq!(
            PeerAddr::parse("localhost:1").unwrap().to_string(),
            "localhost:1"
        );
    }

    #[test]
    fn from_a_socket_address_matches_parsing_its_text() {
        for text in ["127.0.0.1:9091", "[::1]:80", "[fe80::1]:65535"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(PeerAddr::from(addr), PeerAddr::parse(text).unwrap());
        }
    }

    #[test]
    fn what_cannot_be_dialled_is_refused_with_a_reason() {
        let cases = [
            ("ringkv-0", AddrError::NotHostPort("ringkv-0".into())),
            ("host:x", AddrError::BadPort("host:x".into())),
            ("host:0", AddrError::BadPort("host:0".into())),
            ("host:70000", AddrError::BadPort("host:70000".into())),
            (":9091", AddrError::BadHost(":9091".into())),
            ("a b:1", AddrError::BadHost("a b:1".into())),
            ("http://x:1", AddrError::BadHost("http://x:1".into())),
            ("x/y:1", AddrError::BadHost("x/y:1".into())),
            ("-x:1", AddrError::BadHost("-x:1".into())),
            ("::1:9091", AddrError::BadHost("::1:9091".into())),
            ("[::1:9091", AddrError::BadHost("[::1:9091".into())),
            (
                "0.0.0.0:9091",
                AddrError::Unspecified("0.0.0.0:9091".into()),
            ),
            ("[::]:9091", AddrError::Unspecified("[::]:9091".into())),
        ];
        for (text, want) in cases {
            assert_eq!(PeerAddr::parse(text), Err(want), "{text}");
        }
        let long = format!("{}:1", "a".repeat(64));
        assert!(PeerAddr::parse(&long).is_err());
    }
}
