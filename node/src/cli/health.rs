//! `ringkv health`: asks one node's REST API whether it is ready
//! (`/readyz`) or alive (`/livez`), and exits 0 or 1 — for a container's
//! `HEALTHCHECK` and probes where there is no curl. It prints the node's
//! answer when the node is not healthy, so `docker inspect` shows why.
//! With `--tls-ca` (`RINGKV_TLS_CA`) it asks over HTTPS, checking the
//! node's certificate against that authority.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::exit;

#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// The node's REST HOST:PORT.
    #[arg(long, env = "RINGKV_HEALTH_REST", default_value = "127.0.0.1:8081")]
    pub rest: String,
    /// Ask only whether the process runs its event loop (`/livez`), not
    /// whether it serves every partition it replicates (`/readyz`).
    #[arg(long)]
    pub live: bool,
    /// Give up after this long (e.g. 2s).
    #[arg(long, default_value = "3s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(args: HealthArgs) -> ExitCode {
    let path = if args.live { "/livez" } else { "/readyz" };
    let url = format!("http://{}{path}", args.rest.trim());
    match tokio::time::timeout(args.timeout, ask(&url)).await {
        Ok(Ok((200, _))) => ExitCode::from(exit::SUCCESS),
        Ok(Ok((status, body))) => {
            eprintln!("{url}: {status} {}", body.trim());
            ExitCode::from(exit::UNAVAILABLE)
        }
        Ok(Err(e)) => {
            eprintln!("{url}: {e}");
            ExitCode::from(exit::UNAVAILABLE)
        }
        Err(_) => {
            eprintln!("{url}: no answer within {:?}", args.timeout);
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

async fn ask(url: &str) -> anyhow::Result<(u16, String)> {
    if let Some(config) = super::tls::trusted() {
        return ask_tls(config, url).await;
    }
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| anyhow::anyhow!(crate::error_chain(&e)))?;
    status_and_body(response).await
}

async fn status_and_body(
    response: hyper::Response<hyper::body::Incoming>,
) -> anyhow::Result<(u16, String)> {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One HTTP/1.1 GET over TLS (the URL's scheme is ignored: `--tls-ca` says).
async fn ask_tls(
    config: std::sync::Arc<rustls::ClientConfig>,
    url: &str,
) -> anyhow::Result<(u16, String)> {
    let uri: hyper::Uri = url.parse()?;
    let host = uri.host().unwrap_or("127.0.0.1").to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = crate::tls::dial(config.into(), &host, port).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Full::new(Bytes::new()))?;
    status_and_body(sender.send_request(request).await?).await
}
