//! A tenant-config API stand-in: an HTTP server that keeps tenant configs in
//! memory and answers with the platform API's status codes — 404 for an unknown
//! tenant, 409 when creating one that exists, 401 without the bearer token.
//!
//! Routes: GET/POST/PUT/DELETE `/tenants/{id}/config`. POST creates (409 if
//! present), PUT creates or replaces. `fail_next` makes the next N requests answer
//! 503, for retry tests.
//!
//! Conditional requests as RFC 9110 has them: GET answers a strong `ETag` (the
//! config's version), and a write carrying `If-Match` is refused with 412 unless the
//! config exists with that tag (§13.1.1). `without_etags` makes it an API that has no
//! ETags and ignores `If-Match`, as many do; `write_before_next_delete` lands a
//! client's write just before the next DELETE is handled, to make that race
//! deterministic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

/// A config and its version, the ETag's value.
type Versioned = (Value, u64);

#[derive(Default)]
struct Inner {
    configs: Mutex<BTreeMap<String, Versioned>>,
    /// The last version handed out: every write gets the next one.
    version: AtomicU64,
    /// An API without ETags: none sent, `If-Match` ignored.
    no_etags: AtomicBool,
    /// A write (tenant, body) to apply just before the next DELETE is handled.
    before_delete: Mutex<Option<(String, Value)>>,
    /// (tenant, field, value): every write of that tenant's config is stored with
    /// the field set, as an API that stamps what it stores.
    stamp: Mutex<Option<(String, String, Value)>>,
    token: Option<String>,
    /// Requests to let through before `fail_next` applies.
    pass_first: AtomicU32,
    fail_next: AtomicU32,
    writes: AtomicU32,
    /// Every request as received: method, path and Authorization header.
    received: Mutex<Vec<Received>>,
    /// When set, every request is answered with this status and body.
    answer: Mutex<Option<(StatusCode, String)>>,
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The Authorization header, if any: what a client sent as its credential.
    pub authorization: Option<String>,
    /// The If-Match header, if any: the condition a write was sent with.
    pub if_match: Option<String>,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

async fn record(State(s): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    s.received.lock().unwrap_or_else(|e| e.into_inner()).push(Received {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        authorization: header(req.headers(), "authorization"),
        if_match: header(req.headers(), "if-match"),
    });
    let canned = s.answer.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match canned {
        Some((status, body)) => (status, body).into_response(),
        None => next.run(req).await,
    }
}

/// A running config API; stops when dropped.
pub struct ConfigApi {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    match &inner.token {
        None => true,
        Some(t) => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {t}")),
    }
}

fn guard(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    let passing = inner
        .pass_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if !passing
        && inner
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "injected failure").into_response());
    }
    if !authorized(inner, headers) {
        return Some((StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response());
    }
    None
}

impl Inner {
    fn configs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Versioned>> {
        self.configs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// `body` as stored for `tenant`: stamped if so told.
    fn stored(&self, tenant: &str, mut body: Value) -> Versioned {
        if let Some((t, field, value)) = &*self.stamp.lock().unwrap_or_else(|e| e.into_inner())
            && t == tenant
            && let Some(map) = body.as_object_mut()
        {
            map.insert(field.clone(), value.clone());
        }
        (body, self.next_version())
    }

    /// Refuses a write whose `If-Match` names no tag of `current` (RFC 9110 §13.1.1:
    /// strong comparison; `*` matches any existing config; a weak tag never matches).
    fn precondition(&self, headers: &HeaderMap, current: Option<&Versioned>) -> Option<Response> {
        if self.no_etags.load(Ordering::SeqCst) {
            return None;
        }
        let wanted = headers.get("if-match")?.to_str().unwrap_or_default();
        let matches = current.is_some_and(|(_, version)| {
            wanted
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || t == etag(*version))
        });
        (!matches).then(|| (StatusCode::PRECONDITION_FAILED, "If-Match does not match").into_response())
    }

    /// The response for a stored config: its body and, unless disabled, its ETag.
    fn tagged(&self, status: StatusCode, (body, version): &Versioned) -> Response {
        let mut resp = (status, Json(body.clone())).into_response();
        if !self.no_etags.load(Ordering::SeqCst)
            && let Ok(v) = axum::http::HeaderValue::from_str(&etag(*version))
        {
            resp.headers_mut().insert(axum::http::header::ETAG, v);
        }
        resp
    }
}

/// A version as a strong entity tag.
fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

async fn get_config(State(s): State<Arc<Inner>>, Path(id): Path<String>, h: HeaderMap) -> Response {
    if let Some(r) = guard(&s, &h) {
        return r;
    }
    match s.configs().get(&id) {
        Some(v) => s.tagged(StatusCode::OK, v),
        None => (StatusCode::NOT_FOUND, "tenant not found").into_response(),
    }
}

async fn post_config(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = guard(&s, &h) {
        return r;
    }
    let mut configs = s.configs();
    if let Some(r) = s.precondition(&h, configs.get(&id)) {
        return r;
    }
    if configs.contains_key(&id) {
        return (StatusCode::CONFLICT, "tenant exists").into_response();
    }
    let stored = s.stored(&id, body);
    configs.insert(id, stored.clone());
    s.writes.fetch_add(1, Ordering::SeqCst);
    s.tagged(StatusCode::CREATED, &stored)
}

async fn put_config(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = guard(&s, &h) {
        return r;
    }
    let mut configs = s.configs();
    if let Some(r) = s.precondition(&h, configs.get(&id)) {
        return r;
    }
    let stored = s.stored(&id, body);
    configs.insert(id, stored.clone());
    s.writes.fetch_add(1, Ordering::SeqCst);
    s.tagged(StatusCode::OK, &stored)
}

async fn delete_config(State(s): State<Arc<Inner>>, Path(id): Path<String>, h: HeaderMap) -> Response {
    if let Some(r) = guard(&s, &h) {
        return r;
    }
    let planted = s.before_delete.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut configs = s.configs();
    if let Some((tenant, body)) = planted {
        // A client's write that reached the API first.
        configs.insert(tenant, (body, s.next_version()));
        s.writes.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(r) = s.precondition(&h, configs.get(&id)) {
        return r;
    }
    match configs.remove(&id) {
        Some(_) => {
            s.writes.fetch_add(1, Ordering::SeqCst);
            StatusCode::NO_CONTENT.into_response()
        }
        None => (StatusCode::NOT_FOUND, "tenant not found").into_response(),
    }
}

impl ConfigApi {
    /// Starts on `port` (0 = a free one) on 127.0.0.1; `token` makes the bearer token required.
    pub async fn start(port: u16, token: Option<&str>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            token: token.map(str::to_owned),
            ..Inner::default()
        });
        let app = Router::new()
            .route(
                "/tenants/{id}/config",
                get(get_config).post(post_config).put(put_config).delete(delete_config),
            )
            .layer(from_fn_with_state(inner.clone(), record))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn insert(&self, tenant: &str, config: Value) {
        let version = self.inner.next_version();
        self.inner.configs().insert(tenant.to_owned(), (config, version));
    }

    pub fn get(&self, tenant: &str) -> Option<Value> {
        self.inner.configs().get(tenant).map(|(body, _)| body.clone())
    }

    /// Every config, for before/after comparisons.
    pub fn all(&self) -> BTreeMap<String, Value> {
        self.inner
            .configs()
            .iter()
            .map(|(tenant, (body, _))| (tenant.clone(), body.clone()))
            .collect()
    }

    /// From now on no ETag is sent and `If-Match` is ignored, like an API that has
    /// no conditional requests.
    pub fn without_etags(&self) {
        self.inner.no_etags.store(true, Ordering::SeqCst);
    }

    /// From now on every write of `tenant`'s config is stored with `field` set to
    /// `value` (an API that stamps what it stores, or another writer of that tenant).
    pub fn stamp_writes_of(&self, tenant: &str, field: &str, value: Value) {
        *self.inner.stamp.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((tenant.to_owned(), field.to_owned(), value));
    }

    /// Just before the next DELETE is handled, `tenant`'s config becomes `body`: a
    /// client's write that lands after a migration compared the config and before
    /// its delete arrives.
    pub fn write_before_next_delete(&self, tenant: &str, body: Value) {
        *self.inner.before_delete.lock().unwrap_or_else(|e| e.into_inner()) = Some((tenant.to_owned(), body));
    }

    /// Successful writes (POST, PUT, DELETE) served so far.
    pub fn writes(&self) -> u32 {
        self.inner.writes.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on, every request is answered `status` with `body` (a misbehaving API or a
    /// proxy's error page).
    pub fn answer_every_request(&self, status: u16, body: String) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *self.inner.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some((status, body));
    }

    /// The next `n` requests answer 503.
    pub fn fail_next(&self, n: u32) {
        self.fail_after(0, n);
    }

    /// After `pass` more requests, the following `n` answer 503.
    pub fn fail_after(&self, pass: u32, n: u32) {
        self.inner.pass_first.store(pass, Ordering::SeqCst);
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    /// Waits until the server task ends (for the stand-alone binary).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for ConfigApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A LightRAG-like tenant config body.
pub fn sample_config(tenant: &str) -> Value {
    serde_json::json!({
        "workspace": tenant,
        "llm": {"model": "gpt-4o-mini", "max_tokens": 32768},
        "embedding": {"model": "bge-m3", "dim": 1024},
        "chunk_token_size": 1200,
        "chunk_overlap_token_size": 100,
        "display_name": format!("Tenant {tenant}"),
    })
}

/// What the target's config must be after migrating `source`'s [`sample_config`] to
/// `target`: the same body, its `workspace` naming the target (the display name is
/// the user's text and stays).
pub fn renamed_config(source: &str, target: &str) -> Value {
    let mut body = sample_config(source);
    body["workspace"] = Value::from(target);
    body
}
