//! How this node dials other members' gRPC (peer streams, forwards,
//! joins, watch relays, the dashboard's gathering): plain, or over TLS
//! with this node's certificate, checking the member's against the peers'
//! authority ([`crate::tls`]). Every connect resolves the address again
//! ([`crate::address`]).

#[cfg(not(madsim))]
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

use crate::address::PeerAddr;

/// Plain or TLS dialling of members (cheap to clone).
#[derive(Clone, Default)]
pub struct Dialer {
    #[cfg(not(madsim))]
    tls: Option<Arc<crate::tls::Tls>>,
}

impl Dialer {
    /// Plain TCP.
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    /// TLS with this node's certificate.
    #[cfg(not(madsim))]
    pub fn tls(tls: Arc<crate::tls::Tls>) -> Dialer {
        Dialer { tls: Some(tls) }
    }

    /// Whether peers are dialled over TLS (and must present certificates).
    pub fn is_tls(&self) -> bool {
        #[cfg(not(madsim))]
        return self.tls.is_some();
        #[cfg(madsim)]
        false
    }

    /// Connects now.
    pub async fn connect(
        &self,
        endpoint: Endpoint,
        addr: &PeerAddr,
    ) -> Result<Channel, tonic::transport::Error> {
        #[cfg(not(madsim))]
        if let Some(tls) = &self.tls {
            return endpoint.connect_with_connector(connector(tls, addr)).await;
        }
        let _ = addr;
        endpoint.connect().await
    }

    /// Connects at the first call, and again after a failure.
    pub fn connect_lazy(&self, endpoint: Endpoint, addr: &PeerAddr) -> Channel {
        #[cfg(not(madsim))]
        if let Some(tls) = &self.tls {
            return endpoint.connect_with_connector_lazy(connector(tls, addr));
        }
        let _ = addr;
        endpoint.connect_lazy()
    }
}

/// The TLS connector to `addr`, with the node's peer configuration as it
/// is at each connect (a reload applies to the next one).
#[cfg(not(madsim))]
fn connector(
    tls: &Arc<crate::tls::Tls>,
    addr: &PeerAddr,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<crate::tls::ClientStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let tls = tls.clone();
    crate::tls::connector(
        move || tls.peer_client(),
        addr.host().to_owned(),
        addr.port(),
    )
}
