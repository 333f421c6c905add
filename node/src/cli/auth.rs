//! The client commands' access token (`--token`, or `RINGKV_TOKEN`): when
//! set, every gRPC call carries `authorization: Bearer <token>`. One
//! setting for the whole process, made once by `main` before any command
//! runs (as [`super::tls`]'s trust). The `ringkv auth` commands that
//! manage tokens are [`super::tokens`].

use std::sync::OnceLock;

use ringkv_proto::v1::cluster_client::ClusterClient;
use ringkv_proto::v1::kv_client::KvClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

static TOKEN: OnceLock<MetadataValue<Ascii>> = OnceLock::new();

/// Present `token` on every call this process makes.
pub fn use_token(token: &str) -> anyhow::Result<()> {
    let token = token.trim();
    ringkv_core::access::parse_token(token).map_err(|e| anyhow::anyhow!("{e}"))?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot"))?;
    let _ = TOKEN.set(value);
    Ok(())
}

/// Whether a token was set.
pub fn has_token() -> bool {
    TOKEN.get().is_some()
}

/// Puts the token, if any, on a call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bearer;

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = TOKEN.get() {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A `Kv` client whose calls carry the token.
pub fn kv(channel: Channel) -> KvClient<Authed> {
    KvClient::with_interceptor(channel, Bearer)
}

/// A `Cluster` client whose calls carry the token.
pub fn cluster(channel: Channel) -> ClusterClient<Authed> {
    ClusterClient::with_interceptor(channel, Bearer)
}

/// An HTTP request (the REST bench's) with the token, if any.
pub fn with_token(builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
    match TOKEN.get().and_then(|v| v.to_str().ok()) {
        Some(value) => builder.header(hyper::header::AUTHORIZATION, value),
        None => builder,
    }
}
