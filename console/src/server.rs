//! The router and the HTTPS listener.
//!
//! TLS is rustls on ring, TLS 1.3, HTTP/1.1. Client certificates are
//! optional at the TLS layer and verified against the operator CA when
//! offered; a connection that presented one carries its CN as the
//! operator identity ([`Peer`]) into every request. Operator pages answer
//! 403 without one; `/healthz` and `/static/console.js` are public.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::config::{Config, TlsConfig};
use crate::error::{ConsoleError, PageError};
use crate::live::{Live, LiveEvent};
use crate::render;
use crate::shutdown::Shutdown;
use crate::stores::Stores;
use crate::views::{self, FleetParams, LineageParams};

/// The longest query string accepted (414 beyond it).
pub const MAX_QUERY_LEN: usize = 2048;
/// Request head bytes hyper buffers (headers, request line) before it
/// refuses the request.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// A TLS handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const CONSOLE_JS: &str = include_str!("../static/console.js");
const CONSOLE_CSS: &str = include_str!("../static/console.css");

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The CN of a client certificate that chains to the operator CA.
    pub operator: Option<String>,
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The databases.
    pub stores: Arc<Stores>,
    /// The broker's live state.
    pub live: Arc<Live>,
    /// Silence threshold of the dashboard.
    pub silent_after_secs: u64,
}

type Shared = Arc<AppState>;

/// The whole console as a router (tests drive it with `oneshot`, adding a
/// [`Peer`] extension as the listener does).
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(fleet_html))
        .route("/api/v1/fleet", get(fleet_json))
        .route("/devices/{id}", get(device_html))
        .route("/api/v1/devices/{id}", get(device_json))
        .route("/devices/{id}/lineage", get(lineage_html))
        .route("/api/v1/devices/{id}/lineage", get(lineage_json))
        .route("/events", get(events))
        .route("/static/console.js", get(console_js))
        .route("/static/console.css", get(console_css))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(not_found)
        .layer(middleware::from_fn(guard))
        .with_state(state)
}

/// Refuses over-long query strings before any handler runs, and sets the
/// headers every answer carries.
async fn guard(request: Request, next: Next) -> Response {
    let query_len = request.uri().query().map_or(0, str::len);
    let api = request.uri().path().starts_with("/api/");
    let mut response = if query_len > MAX_QUERY_LEN {
        failure(&PageError::UriTooLong(MAX_QUERY_LEN), api)
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn failure(e: &PageError, api: bool) -> Response {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        v: u32,
        error: &'a str,
    }
    let text = e.to_string();
    if api {
        json(
            e.status(),
            &ErrorBody {
                v: views::API_VERSION,
                error: &text,
            },
        )
    } else {
        html(e.status(), render::error_page(e))
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serialization failed: {e}\n"),
        )
            .into_response(),
    }
}

fn operator(peer: Option<&Peer>) -> Result<String, PageError> {
    peer.and_then(|p| p.operator.clone())
        .ok_or(PageError::Forbidden)
}

fn peer_of(request: &Request) -> Option<&Peer> {
    request.extensions().get::<Peer>()
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, PageError> {
    q.map(|Query(t)| t)
        .map_err(|e| PageError::BadRequest(e.body_text()))
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, PageError> {
    p.map(|Path(s)| s)
        .map_err(|e| PageError::BadRequest(e.body_text()))
}

/// One page in both forms: `render` is called only for HTML.
async fn answer<V: Serialize, F: Future<Output = Result<V, PageError>>>(
    peer: Option<Peer>,
    api: bool,
    build: impl FnOnce() -> Result<F, PageError>,
    render: impl FnOnce(&V, Option<&str>) -> String,
) -> Response {
    let who = match operator(peer.as_ref()) {
        Ok(who) => who,
        Err(e) => return failure(&e, api),
    };
    let view = match build() {
        Ok(future) => future.await,
        Err(e) => Err(e),
    };
    match view {
        Ok(view) if api => json(StatusCode::OK, &view),
        Ok(view) => html(StatusCode::OK, render(&view, Some(&who))),
        Err(e) => failure(&e, api),
    }
}

async fn fleet_page(
    s: Shared,
    peer: Option<Peer>,
    q: Result<Query<FleetParams>, QueryRejection>,
    api: bool,
) -> Response {
    answer(
        peer,
        api,
        || {
            let params = query(q)?;
            Ok(async move { views::fleet(&s.stores, &s.live, params, s.silent_after_secs).await })
        },
        render::fleet,
    )
    .await
}

async fn fleet_html(
    State(s): State<Shared>,
    q: Result<Query<FleetParams>, QueryRejection>,
    request: Request,
) -> Response {
    fleet_page(s, peer_of(&request).cloned(), q, false).await
}

async fn fleet_json(
    State(s): State<Shared>,
    q: Result<Query<FleetParams>, QueryRejection>,
    request: Request,
) -> Response {
    fleet_page(s, peer_of(&request).cloned(), q, true).await
}

async fn device_page(
    s: Shared,
    peer: Option<Peer>,
    id: Result<Path<String>, PathRejection>,
    api: bool,
) -> Response {
    answer(
        peer,
        api,
        || {
            let id = path(id)?;
            Ok(async move { views::device(&s.stores, &s.live, &id).await })
        },
        render::device,
    )
    .await
}

async fn device_html(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    device_page(s, peer_of(&request).cloned(), id, false).await
}

async fn device_json(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    device_page(s, peer_of(&request).cloned(), id, true).await
}

async fn lineage_page(
    s: Shared,
    peer: Option<Peer>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<LineageParams>, QueryRejection>,
    api: bool,
) -> Response {
    answer(
        peer,
        api,
        || {
            let id = path(id)?;
            let params = query(q)?;
            Ok(async move { views::lineage(&s.stores, &id, params).await })
        },
        render::lineage,
    )
    .await
}

async fn lineage_html(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<LineageParams>, QueryRejection>,
    request: Request,
) -> Response {
    lineage_page(s, peer_of(&request).cloned(), id, q, false).await
}

async fn lineage_json(
    State(s): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<LineageParams>, QueryRejection>,
    request: Request,
) -> Response {
    lineage_page(s, peer_of(&request).cloned(), id, q, true).await
}

/// Server-sent events: `device` (a [`crate::live::DeviceLive`]), `alert`
/// (a [`crate::live::AlertLive`]), and `lagged` when this subscriber fell
/// behind and should reload.
async fn events(State(s): State<Shared>, request: Request) -> Response {
    if let Err(e) = operator(peer_of(&request)) {
        return failure(&e, false);
    }
    Sse::new(event_stream(&s.live))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event_stream(live: &Live) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
    BroadcastStream::new(live.subscribe()).map(|item| {
        Ok(match item {
            Ok(LiveEvent::Device(d)) => Event::default()
                .event("device")
                .data(serde_json::to_string(&d).unwrap_or_default()),
            Ok(LiveEvent::Alert(a)) => Event::default()
                .event("alert")
                .data(serde_json::to_string(&a).unwrap_or_default()),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
        })
    })
}

async fn console_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CONSOLE_JS,
    )
        .into_response()
}

async fn console_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        CONSOLE_CSS,
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    let api = request.uri().path().starts_with("/api/");
    failure(&PageError::NotFound("no such page".into()), api)
}

// ------------------------------------------------------------ listener

/// The TLS configuration: the console's certificate, TLS 1.3, HTTP/1.1,
/// client certificates optional and verified against the operator CA.
pub fn tls_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ConsoleError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = mctc_service::tls::read_certs(&tls.cert)?;
    mctc_service::files::check_secret_mode(&tls.key)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| ConsoleError::Tls(format!("{}: {e}", tls.key.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in mctc_service::tls::read_certs(&tls.operator_ca)? {
        roots
            .add(cert)
            .map_err(|e| ConsoleError::Tls(format!("{}: {e}", tls.operator_ca.display())))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| ConsoleError::Tls(format!("operator CA: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConsoleError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| ConsoleError::Tls(format!("{}: {e}", tls.cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CN of a verified client certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Runs the console until `shutdown` is triggered: the listener, the
/// connections, and the broker link (if configured). Logs
/// `console listening addr=…` once it accepts connections.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ConsoleError> {
    let tls = tls_config(&config.tls)?;
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| ConsoleError::Listen {
                addr: config.listen.to_string(),
                source,
            })?;
    let live = Live::new(config.broker.is_some());
    let state = Arc::new(AppState {
        stores: Stores::new(&config.stores),
        live: Arc::clone(&live),
        silent_after_secs: config.silent_after_secs,
    });
    let mut tasks = JoinSet::new();
    if let Some(broker) = config.broker.clone() {
        let follow = Arc::clone(&live).follow(broker, shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = follow.await {
                tracing::error!(error = %e, "broker link not started");
            }
        });
    }
    let result = serve(listener, tls, router(state), shutdown).await;
    tasks.shutdown().await;
    result
}

/// Accepts TLS connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    mut shutdown: Shutdown,
) -> Result<(), ConsoleError> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "console listening");
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.wait() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let (tcp, remote) = tokio::select! {
            () = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let operator = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| common_name(c.as_ref()));
            if let Some(op) = &operator {
                tracing::info!(%remote, operator = %op, "operator connected");
            }
            let peer = Peer { operator };
            let service = tower::ServiceExt::map_request(
                app,
                move |mut r: Request<hyper::body::Incoming>| {
                    r.extensions_mut().insert(peer.clone());
                    r.map(Body::new)
                },
            );
            let service = hyper_util::service::TowerToHyperService::new(service);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.max_buf_size(MAX_HEAD_BYTES);
            if let Err(e) = http
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}
