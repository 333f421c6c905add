//! The REST API (axum). Not built under madsim.
//!
//! - `GET/PUT/DELETE /v1/kv/{key}`: raw bytes by default; a JSON envelope
//!   with `Accept: application/json`. `ETag` is the key's `mod_revision`.
//!   `If-Match: "<rev>"` (or `*`) and `If-None-Match: *` make writes
//!   conditional. `?consistency=linearizable|lease|stale` on reads.
//! - `GET /v1/kv?prefix=P` (or `?start=A&end=B`, or neither: every key),
//!   with `limit` (1-10,000, default 100), `cursor` (from the previous
//!   page), `keys_only=true` and `consistency`: one page of keys in order,
//!   `{"kvs": [...], "more": bool, "cursor": "..."|null}` ([`super::scan`]).
//! - `GET /v1/watch?key=K` (or `?prefix=P`), with `start_revision` (one
//!   partition's watch), `cursor` (or the `Last-Event-ID` header) to
//!   resume, `values=false`: server-sent events, one per change (`put`,
//!   `delete`, `expire`), each revision's last carrying the cursor as its
//!   `id` ([`crate::watch`]).
//! - `GET /v1/cluster/status`, `GET /v1/cluster/locate/{key}`.
//! - `GET /v1/cluster/members`: every member with its state in the cluster
//!   metadata, health and when it was last heard from; `GET
//!   /v1/cluster/moves`: on the placement controller, the replica moves it
//!   wants (elsewhere `moves` is null and `controller` says whom to ask).
//! - `GET /ui`: the web dashboard ([`super::dashboard`]), fed by `GET
//!   /v1/dashboard/cluster` (the whole cluster's view, gathered from every
//!   member) and `GET /v1/dashboard/stream` (server-sent events: one
//!   `snapshot` a second while followed).
//! - `GET /healthz` (the node runs), `GET /readyz` (every partition it
//!   replicates has a leader), `GET /metrics` (Prometheus text).
//!
//! Errors are `application/problem+json` with the stable `code` of
//! [`super::errors`]. A query parameter a route does not take, or one given
//! twice, is refused (400 `unknown_parameter` / `invalid_parameter`) before
//! the handler runs ([`known_parameters`]): `?ttl=30` on a write must not be
//! served as if the key would never expire.
//!
//! Once the cluster has access tokens ([`crate::auth`]), every route but
//! the probes, the metrics and the dashboard's files needs one
//! (`Authorization: Bearer ...`, or the dashboard's cookie): `authenticate`
//! answers 401 without a valid one, and each handler checks what its
//! request does against the token's role and key prefix (403).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use ringkv_core::NodeId;
use ringkv_core::kv::{KeyValue, Precondition};
use ringkv_core::node::{
    ClientError, ClientRequest, ClientResponse, Consistency, Expiry, MAX_SCAN_LIMIT,
};
use ringkv_core::watch::ChangeKind;
use serde::Deserialize;
use serde_json::json;

use super::dashboard::{self, Dashboard};
use super::errors::{RETRY_AFTER_SECS, kind};
use super::grpc::{locate_response, status_response};
use super::scan;
use crate::address::PeerAddr;
use crate::auth::{AccessError, Principal, Unauthenticated};
use crate::handle::NodeHandle;
use crate::transport::{Handshake, TransportStats};
use crate::watch::{Cursor, Start, Target, WatchError, Watcher};
use ringkv_core::access::{Action, AuthError};

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    dashboard: Arc<Dashboard>,
    transport: Arc<TransportStats>,
    handshake: Arc<Handshake>,
    addrs: Arc<BTreeMap<NodeId, PeerAddr>>,
    max_value_bytes: usize,
    partition_count: u32,
    /// How long a request body may take to arrive (`--client-timeout`).
    body_timeout: Duration,
}

/// The router for one node.
pub fn router(
    node: NodeHandle,
    transport: Arc<TransportStats>,
    handshake: Arc<Handshake>,
    addrs: Arc<BTreeMap<NodeId, PeerAddr>>,
    max_value_bytes: usize,
    partition_count: u32,
    body_timeout: Duration,
) -> Router {
    let state = AppState {
        dashboard: Dashboard::new(node.clone(), handshake.clone(), addrs.clone()),
        node,
        transport,
        handshake,
        addrs,
        max_value_bytes,
        partition_count,
        body_timeout,
    };
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/kv/", get(empty_key).put(empty_key).delete(empty_key))
        .route("/v1/kv", get(scan_keys))
        .route("/v1/watch", get(watch_keys))
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/locate/{*key}", get(locate))
        .route("/v1/cluster/members", get(cluster_members))
        .route("/v1/cluster/moves", get(cluster_moves))
        .route("/ui", get(ui_index))
        .route("/ui/", get(ui_index))
        .route("/ui/{file}", get(ui_file))
        .route("/v1/dashboard/cluster", get(dashboard_cluster))
        .route("/v1/dashboard/stream", get(dashboard_stream))
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_a_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(refuse_unknown_parameters))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn(limit_headers))
        .with_state(state)
}

/// Routes anyone may call, authentication on or off: the probes, the
/// metrics (Prometheus scrapes without credentials, as it does etcd's) and
/// the dashboard's files (its data needs a token).
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/metrics" | "/ui")
        || path.starts_with("/ui/")
}

/// The cookie the dashboard keeps a token in (a browser's `EventSource`
/// cannot send an `Authorization` header). Taken only on the dashboard's
/// own reads (`GET /v1/dashboard/...`): `SameSite` tells sites apart, not
/// ports, so a page on another port of the same host could make a browser
/// send it; the page's key tools send the header instead.
const TOKEN_COOKIE: &str = "ringkv_token";

/// The token a request presents: `Authorization: Bearer ...`, else, on
/// the dashboard's reads, its cookie.
fn presented_token<'a>(
    method: &Method,
    path: &str,
    headers: &'a HeaderMap,
) -> Result<Option<&'a str>, Unauthenticated> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let text = v
            .to_str()
            .map_err(|_| Unauthenticated::Token(AuthError::Malformed))?;
        return crate::auth::bearer(text).map(Some);
    }
    if method != Method::GET || !path.starts_with("/v1/dashboard/") {
        return Ok(None);
    }
    let from_cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='));
    Ok(from_cookie)
}

/// Who sends each request (see [`crate::auth`]): refused with 401 unless
/// it presents a valid token (once the cluster has one) or the route is
/// open; else the [`Principal`] goes into the request's extensions for the
/// handler's check of what it does.
async fn authenticate(State(s): State<AppState>, mut request: Request, next: Next) -> Response {
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let principal = presented_token(request.method(), request.uri().path(), request.headers())
        .and_then(|token| s.node.access().principal(token));
    match principal {
        Ok(p) => {
            request.extensions_mut().insert(p);
            next.run(request).await
        }
        Err(e) => access_problem(&AccessError::from(e)),
    }
}

/// A 401 or 403 problem. A 401 names the scheme (RFC 6750 §3).
fn access_problem(e: &AccessError) -> Response {
    let k = e.kind();
    let mut resp = problem(k.http_status, k.code, &e.to_string(), json!({}));
    let challenge = match e {
        AccessError::Unauthenticated(Unauthenticated::Missing) => "Bearer realm=\"ringkv\"",
        AccessError::Unauthenticated(Unauthenticated::Token(_) | Unauthenticated::Revoked) => {
            "Bearer realm=\"ringkv\", error=\"invalid_token\""
        }
        AccessError::Denied(_) => return resp,
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// The 403 problem that refuses `action` to `caller`, if it may not do it.
fn refusal(caller: &Principal, action: Action<'_>) -> Option<Response> {
    caller
        .check(action)
        .err()
        .map(|e| access_problem(&AccessError::from(e)))
}

/// The query parameters each route takes: one table for the whole API.
/// Everything not listed takes none.
fn known_parameters(method: &Method, path: &str) -> &'static [&'static str] {
    let read = method == Method::GET || method == Method::HEAD;
    if path.starts_with("/v1/kv/") && read {
        &["consistency"]
    } else if path.starts_with("/v1/kv/") && method == Method::PUT {
        &["ttl", "keep_ttl"]
    } else if path == "/v1/watch" && read {
        &["key", "prefix", "start_revision", "cursor", "values"]
    } else if path == "/v1/kv" && read {
        &[
            "prefix",
            "start",
            "end",
            "limit",
            "cursor",
            "keys_only",
            "consistency",
        ]
    } else {
        &[]
    }
}

/// Why a query string is refused that is not UTF-8 once percent-decoded.
const QUERY_NOT_UTF8: &str =
    "the query string cannot be read: its names and values must be UTF-8 once percent-decoded";

/// What an error message quotes of a client's input (a parameter's name,
/// a header's value): at most this many characters.
const QUOTED_CHARS: usize = 64;

/// Checks a request's query against [`known_parameters`]: an unknown name
/// or a repeated one is a 400 problem that names it and lists what the route
/// takes.
/// Most header fields a request may carry, and most bytes of them in all
/// (names and values; nginx's default allows 4 lines of 8 KiB).
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// Refuses a request whose headers are too many or too large, with `431`
/// and a problem document (hyper's own limit, far above, answers with an
/// empty body: see `api::http`).
async fn limit_headers(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return problem(
            431,
            "headers_too_large",
            &format!(
                "the request has {} header fields of {bytes} bytes in all; at most {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
            json!({}),
        );
    }
    next.run(request).await
}

async fn refuse_unknown_parameters(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query()
        && let Err(bad) = check_parameters(
            query,
            known_parameters(request.method(), request.uri().path()),
        )
    {
        return bad.into_response();
    }
    next.run(request).await
}

fn check_parameters(query: &str, known: &[&str]) -> Result<(), BadRequest> {
    let takes = if known.is_empty() {
        "this endpoint takes no query parameters".to_owned()
    } else {
        format!("this endpoint takes: {}", known.join(", "))
    };
    // `form_urlencoded` decodes lossily: a byte that is not UTF-8 would
    // silently become U+FFFD (a scan of another prefix). Refuse it.
    let not_utf8 = query.split('&').any(|pair| {
        let pair = pair.replace('+', " ");
        percent_encoding::percent_decode_str(&pair)
            .decode_utf8()
            .is_err()
    });
    if not_utf8 {
        return Err(BadRequest::new("invalid_parameter", QUERY_NOT_UTF8));
    }
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in form_urlencoded::parse(query.as_bytes()) {
        let Some(&known_name) = known.iter().find(|k| **k == name) else {
            return Err(BadRequest::new(
                "unknown_parameter",
                format!(
                    "unknown query parameter {}; {takes}",
                    quoted(&name, QUOTED_CHARS)
                ),
            ));
        };
        if seen.contains(&known_name) {
            return Err(BadRequest::new(
                "invalid_parameter",
                format!("query parameter \"{known_name}\" is given more than once"),
            ));
        }
        seen.push(known_name);
    }
    Ok(())
}

/// A problem+json response (RFC 9457).
fn problem(status: u16, code: &str, detail: &str, extra: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({
        "type": format!("https://ringkv.dev/problems/{code}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

fn error_response(e: &ClientError) -> Response {
    let k = kind(e);
    let extra = match e {
        ClientError::PreconditionFailed {
            current_mod_revision,
        } => json!({ "current_mod_revision": current_mod_revision }),
        ClientError::NoLeader { partition } => json!({ "partition": partition.0 }),
        _ => json!({}),
    };
    let mut resp = problem(k.http_status, k.code, &e.to_string(), extra);
    let h = resp.headers_mut();
    match e {
        ClientError::NoLeader { .. }
        | ClientError::Busy
        | ClientError::Dropped
        | ClientError::NotInCluster
        | ClientError::Stopping => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        ClientError::PreconditionFailed {
            current_mod_revision: Some(rev),
        } => {
            if let Ok(v) = HeaderValue::from_str(&format!("\"{rev}\"")) {
                h.insert(header::ETAG, v);
            }
        }
        _ => {}
    }
    resp
}

/// A 413 that states the body's real size where the client declared it
/// (`Content-Length`); a chunked body is not read past the limit, so its
/// size is not known.
fn value_too_large(headers: &HeaderMap, limit: usize) -> Response {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .filter(|&len| len > limit);
    match declared {
        Some(len) => error_response(&ClientError::ValueTooLarge { len, max: limit }),
        None => {
            let k = kind(&ClientError::ValueTooLarge {
                len: limit + 1,
                max: limit,
            });
            problem(
                k.http_status,
                k.code,
                &format!(
                    "value is more than {limit} bytes (the limit); it came without Content-Length and was not read further"
                ),
                json!({}),
            )
        }
    }
}

fn bad_request(code: &str, detail: &str) -> Response {
    problem(400, code, detail, json!({}))
}

/// A request refused before the node is asked anything: malformed (400),
/// or a condition that cannot hold (412).
struct BadRequest {
    status: u16,
    code: &'static str,
    detail: String,
}

impl BadRequest {
    fn new(code: &'static str, detail: impl Into<String>) -> Self {
        BadRequest {
            status: 400,
            code,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        problem(self.status, self.code, &self.detail, json!({}))
    }
}

/// The key of a `/v1/kv/{key}` path. A path whose key is not UTF-8 once
/// percent-decoded is a 400 problem (axum's own rejection is plain text).
struct KeyPath(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for KeyPath {
    type Rejection = BadRequest;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => Ok(KeyPath(key)),
            Err(_) => Err(BadRequest::new(
                "invalid_key",
                "the key in the path is not UTF-8 once percent-decoded; the REST API takes \
                 UTF-8 keys (gRPC and the Redis protocol take any bytes)",
            )),
        }
    }
}

/// A query string read into `T`; one that cannot be (not UTF-8 once
/// percent-decoded) is a 400 problem.
struct Params<T>(T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = BadRequest;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(Params(params)),
            Err(_) => Err(BadRequest::new("invalid_parameter", QUERY_NOT_UTF8)),
        }
    }
}

/// At most `max` characters of what a client sent, for an error message
/// (never an unbounded echo).
fn quoted(text: &str, max: usize) -> String {
    let mut q: String = text.chars().take(max).collect();
    if text.chars().count() > max {
        q.push_str("...");
    }
    format!("{q:?}")
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

fn etag(rev: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{rev}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

#[derive(Deserialize)]
struct WriteParams {
    ttl: Option<String>,
    keep_ttl: Option<String>,
}

/// `?ttl=30s` (a duration with its unit: `ms`, `s`, `m`, `h`; at least
/// 1 ms), or `?keep_ttl=true`; neither: the key does not expire.
fn parse_expiry(p: &WriteParams) -> Result<Expiry, BadRequest> {
    let keep = match p.keep_ttl.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(BadRequest::new(
                "invalid_parameter",
                format!("keep_ttl must be true or false, not {}", quoted(other, 64)),
            ));
        }
    };
    match (&p.ttl, keep) {
        (Some(_), true) => Err(BadRequest::new(
            "invalid_parameter",
            "ttl and keep_ttl=true contradict each other; give one",
        )),
        (None, true) => Ok(Expiry::Keep),
        (None, false) => Ok(Expiry::Clear),
        (Some(text), false) => {
            let ttl = crate::cli::parse_duration(text).map_err(|e| {
                BadRequest::new(
                    "invalid_expiry",
                    format!(
                        "ttl {}: {} (write it with a unit, e.g. ttl=30s or ttl=1500ms)",
                        quoted(text, 64),
                        e.split(':').next_back().unwrap_or(&e).trim()
                    ),
                )
            })?;
            Ok(Expiry::AfterMs(
                u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            ))
        }
    }
}

#[derive(Deserialize)]
struct ReadParams {
    consistency: Option<String>,
}

fn parse_consistency(s: Option<&str>) -> Result<Consistency, BadRequest> {
    match s {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("lease") => Ok(Consistency::Lease),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(BadRequest::new(
            "invalid_consistency",
            format!(
                "consistency must be linearizable, lease or stale, not {}",
                quoted(other, 64)
            ),
        )),
    }
}

/// Milliseconds until a deadline by this node's wall clock (0 once it has
/// passed; a key is read only until its partition's clock passes it).
fn remaining_ms(expires_at: u64) -> u64 {
    expires_at.saturating_sub(crate::clock::wall_clock_ms())
}

/// The JSON envelope of a key.
fn envelope(kv: &KeyValue) -> serde_json::Value {
    let key = String::from_utf8_lossy(&kv.key);
    let (value, encoding) = match std::str::from_utf8(&kv.value) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&kv.value),
            "base64",
        ),
    };
    let mut e = json!({
        "key": key,
        "value": value,
        "value_encoding": encoding,
        "version": kv.version,
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
    });
    if let Some(at) = kv.expires_at {
        e["expires_at_unix_ms"] = json!(at);
        e["ttl_ms"] = json!(remaining_ms(at));
    }
    e
}

async fn get_key(
    State(s): State<AppState>,
    Extension(caller): Extension<Principal>,
    KeyPath(key): KeyPath,
    Params(params): Params<ReadParams>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&caller, Action::Read(key.as_bytes())) {
        return refused;
    }
    let consistency = match parse_consistency(params.consistency.as_deref()) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let req = ClientRequest::Get {
        key: Bytes::from(key),
        consistency,
    };
    match s.node.request(req).await {
        Ok(ClientResponse::Value(Some(kv))) => {
            let mut resp = if wants_json(&headers) {
                Json(envelope(&kv)).into_response()
            } else {
                let mut r = Body::from(kv.value.clone()).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            };
            let h = resp.headers_mut();
            h.insert(header::ETAG, etag(kv.mod_revision));
            h.insert("x-ringkv-version", HeaderValue::from(kv.version));
            h.insert(
                "x-ringkv-create-revision",
                HeaderValue::from(kv.create_revision),
            );
            h.insert("x-ringkv-mod-revision", HeaderValue::from(kv.mod_revision));
            if let Some(at) = kv.expires_at {
                h.insert("x-ringkv-expires-at-unix-ms", HeaderValue::from(at));
                h.insert("x-ringkv-ttl-ms", HeaderValue::from(remaining_ms(at)));
            }
            resp
        }
        Ok(ClientResponse::Value(None)) => error_response(&ClientError::NotFound),
        Ok(other) => error_response(&ClientError::Internal(format!(
            "unexpected response {other:?}"
        ))),
        Err(e) => error_response(&e),
    }
}

#[derive(Deserialize)]
struct ScanParams {
    prefix: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    keys_only: Option<String>,
    consistency: Option<String>,
}

fn parse_scan(p: &ScanParams) -> Result<(scan::KeyRange, Bytes, u32, bool), BadRequest> {
    let range = scan::requested_range(
        p.prefix.clone().map(Bytes::from),
        p.start.clone().map(Bytes::from),
        p.end.clone().map(Bytes::from),
    )
    .map_err(|why| BadRequest::new("invalid_parameter", why))?;
    let invalid_limit = || {
        BadRequest::new(
            "invalid_limit",
            format!("limit must be a whole number from 1 to {MAX_SCAN_LIMIT}"),
        )
    };
    let limit = match p.limit.as_deref() {
        None => None,
        Some(l) => Some(l.parse::<u32>().map_err(|_| invalid_limit())?),
    };
    let limit = scan::page_limit(limit).map_err(|_| invalid_limit())?;
    let from = match p.cursor.as_deref() {
        None | Some("") => Bytes::new(),
        Some(c) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .map(Bytes::from)
            .map_err(|_| {
                BadRequest::new(
                    "invalid_cursor",
                    "cursor is not one this API gave out (pass the previous page's cursor as it is)",
                )
            })?,
    };
    let keys_only = match p.keys_only.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(_) => {
            return Err(BadRequest::new(
                "invalid_parameter",
                "keys_only must be true or false",
            ));
        }
    };
    Ok((range, from, limit, keys_only))
}

/// One page of a scan (see the module doc).
async fn scan_keys(
    State(s): State<AppState>,
    Extension(caller): Extension<Principal>,
    Params(params): Params<ScanParams>,
) -> Response {
    let parsed = parse_scan(&params)
        .and_then(|scan| parse_consistency(params.consistency.as_deref()).map(|c| (scan, c)));
    let ((range, from, limit, keys_only), consistency) = match parsed {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let action = Action::ReadRange {
        start: &range.start,
        end: range.end.as_deref(),
    };
    if let Some(refused) = refusal(&caller, action) {
        return refused;
    }
    let query = scan::PageQuery {
        range: &range,
        from,
        limit,
        keys_only,
        consistency,
        only: None,
    };
    let page = scan::scan_page(&s.node, s.partition_count, &query).await;
    match page {
        Ok(page) => {
            let kvs: Vec<serde_json::Value> = page
                .kvs
                .iter()
                .map(|kv| {
                    let mut e = envelope(kv);
                    if keys_only && let Some(o) = e.as_object_mut() {
                        o.remove("value");
                        o.remove("value_encoding");
                    }
                    e
                })
                .collect();
            let cursor = page
                .next
                .map(|next| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(next));
            Json(json!({ "kvs": kvs, "more": cursor.is_some(), "cursor": cursor })).into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// Reads `If-Match` / `If-None-Match` into a precondition.
fn precondition(headers: &HeaderMap) -> Result<Precondition, BadRequest> {
    let if_match = headers.get(header::IF_MATCH).map(|v| v.to_str());
    let if_none = headers.get(header::IF_NONE_MATCH).map(|v| v.to_str());
    match (if_match, if_none) {
        (None, None) => Ok(Precondition::None),
        (Some(_), Some(_)) => Err(BadRequest::new(
            "invalid_precondition",
            "send If-Match or If-None-Match, not both",
        )),
        (None, Some(Ok(v))) if v.trim() == "*" => Ok(Precondition::MustNotExist),
        (None, Some(_)) => Err(BadRequest::new(
            "invalid_precondition",
            "If-None-Match supports only \"*\" (create only)",
        )),
        (Some(Ok(v)), None) => {
            let v = v.trim();
            if v == "*" {
                return Ok(Precondition::MustExist);
            }
            if v.starts_with("W/") {
                // RFC 9110 13.1.1: If-Match compares strongly, and a weak
                // entity tag never matches: the condition is false.
                return Err(BadRequest {
                    status: 412,
                    code: "precondition_failed",
                    detail: "If-Match compares entity tags strongly: a weak tag (W/\"...\") \
                             never matches; send the ETag as given, e.g. \"42\""
                        .to_owned(),
                });
            }
            v.trim_matches('"')
                .parse::<u64>()
                .map(Precondition::ModRevision)
                .map_err(|_| {
                    BadRequest::new(
                        "invalid_precondition",
                        format!(
                            "If-Match must be \"*\" or a mod_revision like \"42\", not {}",
                            quoted(v, QUOTED_CHARS)
                        ),
                    )
                })
        }
        (Some(Err(_)), None) => Err(BadRequest::new(
            "invalid_precondition",
            "If-Match is not valid text",
        )),
    }
}

async fn put_key(
    State(s): State<AppState>,
    Extension(caller): Extension<Principal>,
    KeyPath(key): KeyPath,
    Params(params): Params<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Before the body is read: a refused writer's upload is not taken.
    if let Some(refused) = refusal(&caller, Action::Write(key.as_bytes())) {
        return refused;
    }
    let precondition = match precondition(&headers) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let expiry = match parse_expiry(&params) {
        Ok(e) => e,
        Err(r) => return r.into_response(),
    };
    // Read at most one byte beyond the limit: enough to know it is too large
    // without buffering an arbitrary upload; and no longer than
    // `--client-timeout`: a body that stalls does not hold the request open.
    let limit = s.max_value_bytes;
    let read = http_body_util::Limited::new(body, limit + 1).collect();
    let value = match tokio::time::timeout(s.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return value_too_large(&headers, limit);
            }
            return bad_request("invalid_body", &format!("could not read the body: {e}"));
        }
        Err(_) => {
            return problem(
                408,
                "body_timeout",
                &format!(
                    "the request body did not arrive within {} s",
                    s.body_timeout.as_secs()
                ),
                json!({}),
            );
        }
    };
    let req = ClientRequest::Put {
        key: Bytes::from(key),
        value,
        precondition,
        return_previous: false,
        expiry,
    };
    match s.node.request(req).await {
        Ok(ClientResponse::Put {
            version,
            mod_revision,
            created,
            ..
        }) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body =
                json!({ "version": version, "mod_revision": mod_revision, "created": created });
            let mut resp = (status, Json(body)).into_response();
            resp.headers_mut().insert(header::ETAG, etag(mod_revision));
            resp
        }
        Ok(other) => error_response(&ClientError::Internal(format!(
            "unexpected response {other:?}"
        ))),
        Err(e) => error_response(&e),
    }
}

async fn delete_key(
    State(s): State<AppState>,
    Extension(caller): Extension<Principal>,
    KeyPath(key): KeyPath,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refusal(&caller, Action::Write(key.as_bytes())) {
        return refused;
    }
    let precondition = match precondition(&headers) {
        Ok(Precondition::MustNotExist) => {
            return bad_request(
                "invalid_precondition",
                "If-None-Match: * makes no sense on a delete",
            );
        }
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let req = ClientRequest::Delete {
        key: Bytes::from(key),
        precondition,
        return_previous: false,
    };
    match s.node.request(req).await {
        Ok(ClientResponse::Deleted { revision, .. }) => {
            Json(json!({ "revision": revision })).into_response()
        }
        Ok(other) => error_response(&ClientError::Internal(format!(
            "unexpected response {other:?}"
        ))),
        Err(e) => error_response(&e),
    }
}

async fn cluster_status(State(s): State<AppState>) -> Json<serde_json::Value> {
    let view = s.node.view();
    let st = status_response(&view, &s.node, &s.handshake, &s.addrs);
    Json(json!({
        "node_id": st.node_id,
        "incarnation": st.incarnation,
        "cluster_uid": if st.cluster_uid.is_empty() { serde_json::Value::Null } else { json!(st.cluster_uid) },
        "formation": if st.formation.is_empty() { serde_json::Value::Null } else { json!(st.formation) },
        "refusals": st.refusals.iter().map(|r| json!({
            "peer": r.peer, "direction": r.direction, "reason": r.reason,
            "message": r.message, "count": r.count, "seconds_ago": r.seconds_ago,
        })).collect::<Vec<_>>(),
        "partition_count": st.partition_count,
        "replication_factor": st.replication_factor,
        "nodes": st.nodes.iter().map(|n| json!({
            "id": n.id, "grpc_addr": n.grpc_addr, "health": n.health.as_str(),
            "phi": if n.phi == f64::MAX { serde_json::Value::Null } else { json!(n.phi) },
            "state": if n.state.is_empty() { serde_json::Value::Null } else { json!(n.state) },
            "last_heard_seconds_ago": n.last_heard_seconds_ago,
        })).collect::<Vec<_>>(),
        "metadata_version": st.metadata_version,
        "metadata_leader": if st.metadata_leader == 0 { serde_json::Value::Null } else { json!(st.metadata_leader) },
        "controller": st.controller.then(|| json!({
            "moves": st.moves.iter().map(move_json).collect::<Vec<_>>(),
            "under_replicated": st.under_replicated,
        })),
        "partitions": st.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "leader": if p.leader == 0 { serde_json::Value::Null } else { json!(p.leader) },
            "replicas": p.replicas, "learners": p.learners, "outgoing": p.outgoing,
            "term": p.term, "commit_index": p.commit_index,
            "applied_index": p.applied_index, "keys": p.keys,
        })).collect::<Vec<_>>(),
    }))
}

/// One replica move as the REST API shows it (with its catch-up progress
/// while the new replica is a learner).
fn move_json(m: &ringkv_proto::v1::MoveStatus) -> serde_json::Value {
    let catching_up = m.phase == "catching-up";
    json!({
        "partition": m.partition, "kind": m.kind,
        "from": (m.from != 0).then_some(m.from), "to": (m.to != 0).then_some(m.to),
        "reason": m.reason, "phase": m.phase,
        "snapshot_bytes_acked": catching_up.then_some(m.snapshot_bytes_acked),
        "snapshot_bytes_total": catching_up.then_some(m.snapshot_bytes_total),
        "entries_behind": catching_up.then_some(m.entries_behind),
        "eta_seconds": m.eta_seconds,
    })
}

fn null_if_zero(id: u64) -> serde_json::Value {
    if id == 0 {
        serde_json::Value::Null
    } else {
        json!(id)
    }
}

async fn cluster_members(State(s): State<AppState>) -> Json<serde_json::Value> {
    let view = s.node.view();
    let st = status_response(&view, &s.node, &s.handshake, &s.addrs);
    Json(json!({
        "answered_by": st.node_id,
        "metadata_version": st.metadata_version,
        "controller": null_if_zero(st.metadata_leader),
        "members": st.nodes.iter().map(|n| json!({
            "id": n.id, "grpc_addr": n.grpc_addr,
            "state": if n.state.is_empty() { serde_json::Value::Null } else { json!(n.state) },
            "health": n.health, "last_heard_seconds_ago": n.last_heard_seconds_ago,
            "rest_addr": if n.rest_addr.is_empty() { serde_json::Value::Null } else { json!(n.rest_addr) },
            "resp_addr": if n.resp_addr.is_empty() { serde_json::Value::Null } else { json!(n.resp_addr) },
        })).collect::<Vec<_>>(),
    }))
}

async fn cluster_moves(State(s): State<AppState>) -> Json<serde_json::Value> {
    let view = s.node.view();
    let st = status_response(&view, &s.node, &s.handshake, &s.addrs);
    let moves = st
        .controller
        .then(|| st.moves.iter().map(move_json).collect::<Vec<_>>());
    Json(json!({
        "answered_by": st.node_id,
        "controller": null_if_zero(st.metadata_leader),
        "moves": moves,
        "under_replicated": st.controller.then_some(&st.under_replicated),
    }))
}

async fn locate(State(s): State<AppState>, KeyPath(key): KeyPath) -> Json<serde_json::Value> {
    let l = locate_response(&s.node, key.as_bytes());
    Json(json!({
        "key": key,
        "slot": l.slot,
        "partition": l.partition,
        "leader": if l.leader == 0 { serde_json::Value::Null } else { json!(l.leader) },
        "replicas": l.replicas,
    }))
}

/// `GET /ui`: the dashboard's page.
async fn ui_index() -> Response {
    asset("")
}

/// `GET /ui/{file}`: its script and style sheet. (A name that is not
/// UTF-8 is no file of ours: the same 404 problem, not axum's text.)
async fn ui_file(file: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Response {
    match file {
        Ok(Path(file)) => asset(&file),
        Err(_) => asset("/"),
    }
}

fn asset(name: &str) -> Response {
    match dashboard::ASSETS.iter().find(|(path, _, _)| *path == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => problem(
            404,
            "no_such_route",
            "no such dashboard file: the dashboard is at /ui",
            json!({}),
        ),
    }
}

/// `GET /v1/dashboard/cluster`: the whole cluster as one view.
async fn dashboard_cluster(State(s): State<AppState>) -> Response {
    Json(s.dashboard.current().await.as_ref().clone()).into_response()
}

/// `GET /v1/dashboard/stream`: the view as server-sent events, a `snapshot`
/// each time it is gathered (about once a second).
async fn dashboard_stream(State(s): State<AppState>) -> Response {
    let rx = s.dashboard.subscribe();
    // The current view at once (if there is one), then each new one.
    let events = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        loop {
            if !first || rx.borrow().is_none() {
                rx.changed().await.ok()?;
            }
            let latest = rx.borrow_and_update().clone();
            if let Some(snapshot) = latest {
                let data = serde_json::to_string(snapshot.as_ref()).unwrap_or_default();
                let event = SseEvent::default().event("snapshot").data(data);
                return Some((Ok::<_, std::convert::Infallible>(event), (rx, false)));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    if s.node.is_stopped() {
        problem(
            503,
            "stopped",
            "the node's event loop has stopped",
            json!({}),
        )
    } else {
        Json(json!({ "status": "ok" })).into_response()
    }
}

/// Ready when the node runs, every partition it replicates has a leader,
/// and none of its replicas is catching up. The body lists what is wrong:
/// leaderless partitions, this node's replicas that are catching up (with
/// how far behind they are), and partitions it leads that are
/// under-replicated (which replicas lag, by how much) — the last do not make
/// the node unready, they are its followers' trouble.
async fn readyz(State(s): State<AppState>) -> Response {
    if !s.node.is_started() && !s.node.is_stopped() {
        let formation = s.handshake.formation_status();
        return problem(
            503,
            "not_in_cluster",
            &format!("the node has not joined its cluster yet: {formation}"),
            json!({ "formation": formation }),
        );
    }
    let view = s.node.view();
    let leaderless: Vec<u32> = view.leaderless().map(|p| p.partition.0).collect();
    let catching_up: Vec<serde_json::Value> = view
        .catching_up()
        .map(|p| {
            json!({
                "partition": p.partition.0,
                "lag_entries": p.lag,
                "receiving_snapshot": p.receiving_snapshot.map(|(held, total)| json!({
                    "bytes_received": held, "bytes_total": total,
                })),
            })
        })
        .collect();
    let under_replicated: Vec<serde_json::Value> = view
        .under_replicated()
        .map(|p| {
            let lagging: Vec<&crate::view::FollowerView> =
                p.followers.iter().filter(|f| f.lagging).collect();
            json!({ "partition": p.partition.0, "lagging_replicas": lagging })
        })
        .collect();
    let details = json!({
        "leaderless_partitions": leaderless,
        "catching_up": catching_up,
        "under_replicated": under_replicated,
    });
    let stopped = s.node.is_stopped();
    if !stopped && view.ready && catching_up.is_empty() {
        let mut body = json!({ "status": "ready" });
        if let (Some(b), Some(d)) = (body.as_object_mut(), details.as_object()) {
            b.extend(d.clone());
        }
        return Json(body).into_response();
    }
    let detail = if stopped {
        "the node has stopped".to_owned()
    } else if !leaderless.is_empty() {
        format!(
            "{} partition(s) this node replicates have no leader yet",
            leaderless.len()
        )
    } else {
        let behind: u64 = view.catching_up().map(|p| p.lag).sum();
        format!(
            "{} partition(s) of this node are catching up ({behind} entries behind in all)",
            catching_up.len()
        )
    };
    problem(503, "not_ready", &detail, details)
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut resp = super::metrics::render(&s.node, &s.transport, &s.handshake).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

async fn empty_key() -> Response {
    error_response(&ClientError::EmptyKey)
}

async fn method_not_allowed() -> Response {
    problem(
        405,
        "method_not_allowed",
        "this endpoint does not support that method",
        json!({}),
    )
}

async fn not_a_route() -> Response {
    problem(
        404,
        "no_such_route",
        "no such endpoint; see /v1/kv/{key}, /v1/kv?prefix=..., /v1/cluster/status, /v1/cluster/members, /v1/cluster/moves",
        json!({}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_needs_its_unit_and_excludes_keep_ttl() {
        let params = |ttl: Option<&str>, keep_ttl: Option<&str>| WriteParams {
            ttl: ttl.map(str::to_owned),
            keep_ttl: keep_ttl.map(str::to_owned),
        };
        let ok = |p: WriteParams| parse_expiry(&p).map_err(|e| e.detail).unwrap();
        assert_eq!(ok(params(None, None)), Expiry::Clear);
        assert_eq!(ok(params(None, Some("false"))), Expiry::Clear);
        assert_eq!(ok(params(None, Some("true"))), Expiry::Keep);
        assert_eq!(ok(params(Some("30s"), None)), Expiry::AfterMs(30_000));
        assert_eq!(ok(params(Some("1m30s"), None)), Expiry::AfterMs(90_000));
        assert_eq!(ok(params(Some("250ms"), None)), Expiry::AfterMs(250));
        let e = parse_expiry(&params(Some("30"), None)).unwrap_err();
        assert_eq!(e.code, "invalid_expiry");
        assert!(e.detail.contains("ttl=30s"), "{}", e.detail);
        let e = parse_expiry(&params(Some("1s"), Some("true"))).unwrap_err();
        assert_eq!(e.code, "invalid_parameter");
        let e = parse_expiry(&params(None, Some("yes"))).unwrap_err();
        assert_eq!(e.code, "invalid_parameter");
    }

    #[test]
    fn parameters_are_checked_against_what_the_endpoint_takes() {
        let reads = known_parameters(&Method::GET, "/v1/kv/a/b");
        assert_eq!(reads, ["consistency"]);
        assert_eq!(
            known_parameters(&Method::PUT, "/v1/kv/a"),
            ["ttl", "keep_ttl"]
        );
        assert!(known_parameters(&Method::DELETE, "/v1/kv/a").is_empty());
        assert!(known_parameters(&Method::GET, "/v1/cluster/status").is_empty());

        assert!(check_parameters("consistency=stale", reads).is_ok());
        assert!(check_parameters("", reads).is_ok());
        let e = check_parameters("consistency=stale&ttl=5", reads).unwrap_err();
        assert_eq!(e.code, "unknown_parameter");
        assert_eq!(
            e.detail,
            "unknown query parameter \"ttl\"; this endpoint takes: consistency"
        );
        let e = check_parameters("ttl=5", &[]).unwrap_err();
        assert!(
            e.detail
                .ends_with("this endpoint takes no query parameters"),
            "{}",
            e.detail
        );
        let e = check_parameters("consistency=a&consistency=b", reads).unwrap_err();
        assert_eq!(e.code, "invalid_parameter");
        // Percent-encoded names are decoded before they are compared.
        assert!(check_parameters("consisten%63y=lease", reads).is_ok());
        // Bytes that are not UTF-8 are refused, not read as U+FFFD.
        let e = check_parameters("consistency=%FF", reads).unwrap_err();
        assert_eq!(e.code, "invalid_parameter");
        assert!(check_parameters("consistency=%C3%A9+x", reads).is_ok());
    }

    #[test]
    fn an_unknown_parameter_is_quoted_only_in_part() {
        let long = "x".repeat(100_000);
        let e = check_parameters(&format!("{long}=1"), &[]).unwrap_err();
        assert!(e.detail.len() < 200, "{} bytes", e.detail.len());
        assert!(
            e.detail
                .contains(&format!("\"{}...\"", "x".repeat(QUOTED_CHARS)))
        );
    }
}

#[derive(Deserialize)]
struct WatchParams {
    key: Option<String>,
    prefix: Option<String>,
    start_revision: Option<String>,
    cursor: Option<String>,
    values: Option<String>,
}

/// What a watch request asks for: its target, where it starts, whether
/// events carry values.
fn parse_watch(
    p: &WatchParams,
    last_event_id: Option<&str>,
) -> Result<(Target, Start, bool), BadRequest> {
    let target = match (&p.key, &p.prefix) {
        (Some(key), None) if !key.is_empty() => Target::Key(Bytes::from(key.clone())),
        (None, Some(prefix)) => Target::Prefix(Bytes::from(prefix.clone())),
        (Some(_), Some(_)) => {
            return Err(BadRequest::new(
                "invalid_parameter",
                "give key or prefix, not both",
            ));
        }
        _ => {
            return Err(BadRequest::new(
                "invalid_parameter",
                "a watch needs a non-empty key= or a prefix= (prefix= with nothing after it watches every key)",
            ));
        }
    };
    let cursor = match (p.cursor.as_deref(), last_event_id) {
        (Some(c), _) | (None, Some(c)) => Some(c),
        (None, None) => None,
    };
    let start = match (cursor, p.start_revision.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(BadRequest::new(
                "invalid_parameter",
                "give start_revision or a cursor (or Last-Event-ID), not both",
            ));
        }
        (Some(c), None) => Start::Cursor(
            Cursor::decode(c).map_err(|e| BadRequest::new("invalid_cursor", e.to_string()))?,
        ),
        (None, Some(r)) => match r.parse::<u64>() {
            Ok(r) if r > 0 => Start::Revision(r),
            _ => {
                return Err(BadRequest::new(
                    "invalid_parameter",
                    format!(
                        "start_revision must be a revision (1 or more), not {}",
                        quoted(r, QUOTED_CHARS)
                    ),
                ));
            }
        },
        (None, None) => Start::Now,
    };
    let values = match p.values.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(BadRequest::new(
                "invalid_parameter",
                "values must be true or false",
            ));
        }
    };
    Ok((target, start, values))
}

/// How a watch that cannot go on is answered: a problem before the
/// stream starts, the same JSON in an `error` event after.
fn watch_problem(e: &WatchError) -> (u16, &'static str, serde_json::Value) {
    match e {
        WatchError::Compacted {
            partition,
            compacted,
        } => (
            410,
            "compacted",
            json!({"partition": partition.0, "floor": compacted.floor}),
        ),
        WatchError::NotHere { partition } => {
            (421, "not_a_replica", json!({"partition": partition.0}))
        }
        WatchError::BadCursor(_) => (400, "invalid_cursor", json!({})),
        WatchError::StartNeedsOnePartition => (400, "invalid_parameter", json!({})),
        WatchError::Stopping => (503, "not_a_replica", json!({})),
    }
}

/// `GET /v1/watch`: server-sent events of the watched keys' changes.
async fn watch_keys(
    State(s): State<AppState>,
    Extension(caller): Extension<Principal>,
    headers: HeaderMap,
    Params(params): Params<WatchParams>,
) -> Response {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (target, start, values) = match parse_watch(&params, last_event_id) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    if let Err(e) = caller.check_target(&target) {
        return access_problem(&AccessError::from(e));
    }
    let watcher = match Watcher::attach(&s.node, s.partition_count, target, start).await {
        Ok(w) => w,
        Err(e) => {
            let (status, code, extra) = watch_problem(&e);
            return problem(status, code, &e.to_string(), extra);
        }
    };
    let first = SseEvent::default()
        .event("start")
        .id(watcher.cursor().encode())
        .data(json!({"cursor": watcher.cursor().encode()}).to_string());
    let state = (
        watcher,
        Some(first),
        std::collections::VecDeque::new(),
        false,
    );
    let node = s.node.clone();
    let events = futures::stream::unfold(state, move |(mut w, first, mut queue, done)| {
        let (node, caller) = (node.clone(), caller.clone());
        async move {
            if let Some(first) = first {
                return Some((
                    Ok::<_, std::convert::Infallible>(first),
                    (w, None, queue, done),
                ));
            }
            if let Some(e) = queue.pop_front() {
                return Some((Ok(e), (w, None, queue, done)));
            }
            if done {
                return None;
            }
            let mut seen = w.cursor().clone();
            let next = w.next().await;
            // A token revoked meanwhile ends the stream.
            if !node.access().still_allows(&caller) {
                let e = AccessError::from(Unauthenticated::Revoked);
                let k = e.kind();
                let body =
                    json!({"status": k.http_status, "code": k.code, "detail": e.to_string()});
                let event = SseEvent::default().event("error").data(body.to_string());
                return Some((Ok(event), (w, None, queue, true)));
            }
            match next {
                Ok(batch) => {
                    let n = batch.changes.len();
                    for (i, (p, c)) in batch.changes.iter().enumerate() {
                        let mut data = json!({
                            "key": String::from_utf8_lossy(&c.key),
                            "partition": p.0,
                            "revision": c.revision,
                        });
                        if c.kind == ChangeKind::Put {
                            data["version"] = json!(c.version);
                            if values {
                                let (value, encoding) = match std::str::from_utf8(&c.value) {
                                    Ok(v) => (v.to_owned(), "utf8"),
                                    Err(_) => (
                                        base64::engine::general_purpose::STANDARD.encode(&c.value),
                                        "base64",
                                    ),
                                };
                                data["value"] = json!(value);
                                data["value_encoding"] = json!(encoding);
                            }
                        }
                        let mut event = SseEvent::default()
                            .event(c.kind.as_str())
                            .data(data.to_string());
                        // The last change of its revision (of its partition)
                        // closes what a resume must not send again.
                        let next = batch.changes.get(i + 1);
                        if i + 1 == n {
                            event = event.id(batch.cursor.encode());
                        } else if next.is_none_or(|(np, nc)| np != p || nc.revision != c.revision) {
                            seen.set(*p, c.revision);
                            event = event.id(seen.encode());
                        }
                        queue.push_back(event);
                    }
                    let e = queue.pop_front().expect("a batch holds a change");
                    Some((Ok(e), (w, None, queue, false)))
                }
                Err(e) => {
                    let (status, code, extra) = watch_problem(&e);
                    let mut body = json!({"status": status, "code": code, "detail": e.to_string()});
                    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
                        b.extend(x.clone());
                    }
                    let event = SseEvent::default().event("error").data(body.to_string());
                    Some((Ok(event), (w, None, queue, true)))
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}
