//! The client commands' TLS (`--tls-ca`, or `RINGKV_TLS_CA`): when set,
//! every gRPC endpoint is dialled over TLS and the node's certificate is
//! checked against that authority and the endpoint's host. One setting for
//! the whole process, made once by `main` before any command runs.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

static TRUST: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Trust `ca` for every connection this process makes.
pub fn trust(ca: &Path) -> anyhow::Result<()> {
    let config = crate::tls::client_config(ca)?;
    let _ = TRUST.set(config);
    Ok(())
}

/// The trust set, if any (its ALPN is h2, for gRPC).
pub fn trusted() -> Option<Arc<ClientConfig>> {
    TRUST.get().cloned()
}

/// A connector that dials `endpoint`'s host over TLS with `config`.
fn tls_connector(
    endpoint: &Endpoint,
    config: Arc<ClientConfig>,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<crate::tls::ClientStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let uri = endpoint.uri();
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(443);
    crate::tls::connector(move || config.clone(), host, port)
}

/// Connects `endpoint` (whose URI is `http://host:port`), over TLS when a
/// trust was set.
pub async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    match TRUST.get().cloned() {
        None => endpoint.connect().await,
        Some(config) => {
            let connector = tls_connector(&endpoint, config);
            endpoint.connect_with_connector(connector).await
        }
    }
}

/// A channel that connects `endpoint` on first use, over TLS when a trust
/// was set (the benchmarks' many clients).
pub fn connect_lazy(endpoint: Endpoint) -> Channel {
    match TRUST.get().cloned() {
        None => endpoint.connect_lazy(),
        Some(config) => {
            let connector = tls_connector(&endpoint, config);
            endpoint.connect_with_connector_lazy(connector)
        }
    }
}
