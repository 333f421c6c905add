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

/// Connects `endpoint` (whose URI is `http://host:port`), over TLS when a
/// trust was set.
pub async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    let Some(config) = TRUST.get().cloned() else {
        return endpoint.connect().await;
    };
    let uri = endpoint.uri().clone();
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(443);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (config, host) = (config.clone(), host.clone());
            async move {
                let stream = crate::tls::dial(config, &host, port).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
