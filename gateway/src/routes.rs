//! The HTTP routes Nix uses: `/nix-cache-info`, `/<hash>.narinfo`,
//! `/nar/<hash>-<narhash>.nar`, `/log/<drv>`, `/<hash>.ls`; and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use async_compression::Level;
use async_compression::tokio::bufread::ZstdEncoder;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use nixswarm_protocol::{NarInfo, Sha256Hash, StorePath, StorePathHash, nixbase32};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::AppState;
use crate::error::GatewayError;
use crate::nar::file::{self, Passed};
use crate::nar::verify::{self, Verified};
use crate::nar::{Body as NarBody, Codings};
use crate::range::{self, RangeRequest};
use crate::source::ByteStream;

type Result<T> = std::result::Result<T, GatewayError>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/nix-cache-info", get(cache_info))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/dht", get(crate::dht::table))
        .route("/dht/{hash}", get(crate::dht::providers))
        .route(
            "/pin/{hash}",
            axum::routing::post(crate::pin::pin).delete(crate::pin::unpin),
        )
        .route("/import/{hash}", axum::routing::put(crate::import::import))
        .route("/export/{hash}", get(crate::export::export))
        .route("/nar/{file}", get(nar))
        .route("/log/{drv}", get(log))
        .route("/{file}", get(by_name))
        .fallback(|| async { GatewayError::NotFound })
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::guard::guard))
        .layer(axum::middleware::map_response_with_state(state.clone(), count_status))
        .with_state(state)
}

/// Counts every answer by its status code (a 5xx makes Nix give up on the
/// substituter unless `fallback` is set).
async fn count_status(State(state): State<Arc<AppState>>, response: Response) -> Response {
    state
        .metrics
        .responses
        .get_or_create(&crate::metrics::StatusLabels {
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// Records a route's latency when dropped.
struct Timer<'a> {
    state: &'a AppState,
    route: &'static str,
    start: Instant,
}

impl<'a> Timer<'a> {
    fn new(state: &'a AppState, route: &'static str) -> Self {
        Self {
            state,
            route,
            start: Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        tracing::debug!(route = self.route, us = took.as_micros(), "answered");
        self.state.metrics.observe(self.route, took.as_secs_f64());
    }
}

async fn cache_info(State(state): State<Arc<AppState>>) -> Response {
    let _t = Timer::new(&state, "nix-cache-info");
    state.metrics.request("nix-cache-info", "local");
    let body = format!(
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {}\n",
        state.options.priority
    );
    ([(header::CONTENT_TYPE, "text/x-nix-cache-info")], body).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Ok(stats) = state.store.stats().await {
        state.metrics.store_paths.set(stats.paths as i64);
        state.metrics.store_bytes.set(stats.bytes as i64);
    }
    if let Some(Ok(i)) = state.installed.as_ref().map(|i| i.stats()) {
        state.metrics.installed_paths.set(i.paths_shared as i64);
        state.metrics.installed_bytes.set(i.bytes_indexed as i64);
        state.metrics.installed_queued.set(i.queued as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// `nixswarm status`: the node and the store, as JSON.
/// The dashboard: one page, nothing loaded from elsewhere, that reads
/// `/status` every 2 s.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// The address another node joins through: an advertised direct one, else
/// a specific listen address, else any, with `/p2p/<id>`.
fn join_address(node: &nixswarm_node::NodeStatus) -> Option<String> {
    let unspecified = |a: &&String| a.starts_with("/ip4/0.0.0.0/") || a.starts_with("/ip6/::/");
    let direct = node.external_addrs.iter().find(|a| !a.contains("/p2p-circuit"));
    let addr = direct
        .or_else(|| node.listen_addrs.iter().find(|a| !unspecified(a)))
        .or(node.listen_addrs.first())?;
    let addr = addr.split("/p2p/").next().unwrap_or(addr);
    Some(format!("{addr}/p2p/{}", node.peer_id))
}

async fn status(State(state): State<Arc<AppState>>) -> Result<Response> {
    let store = state.store.stats().await?;
    let node = match &state.node {
        Some(n) => n.status().await.ok(),
        None => None,
    };
    let installed = state.installed.as_ref().and_then(|i| i.stats().ok());
    let served = |s| state.metrics.served_total(s);
    let (local, peer, upstream) = (served("local"), served("peer"), served("upstream"));
    let share = if peer + upstream == 0 {
        0.0
    } else {
        peer as f64 / (peer + upstream) as f64
    };
    let join = node.as_ref().and_then(join_address);
    let top: Vec<serde_json::Value> = state
        .metrics
        .top_paths
        .top()
        .into_iter()
        .map(|(path, requests)| serde_json::json!({ "path": path, "requests": requests }))
        .collect();
    let body = serde_json::json!({
        "version": state.options.version,
        "join_address": join,
        "node": node,
        "served": {
            "local": local,
            "peer": peer,
            "upstream": upstream,
            // NAR bytes the upstreams did not have to send.
            "egress_saved": peer,
            // Of the NAR bytes fetched for the client, the part peers sent.
            "offload_share": share,
        },
        "prefetch": {
            // NAR bytes fetched from peers when their narinfo was served.
            "bytes": state.metrics.prefetched_bytes.get(),
            "asked_bytes": state.metrics.prefetched_asked_bytes.get(),
        },
        "store": { "paths": store.paths, "bytes": store.bytes, "quota": store.quota, "keep_fetched": state.options.keep_fetched },
        "installed": installed,
        "top_paths": top,
        "imports": state.metrics.imports.to_json(),
        "recent_errors": crate::activity::RecentLog::global().to_json(),
        "sharing": {
            // Trusted keys whose paths are used here but not shared.
            "trusted_not_shared": state.trusted_not_shared.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response())
}

/// The NAR URL the gateway hands out: it names the path and the NarHash, so
/// it stays servable from any source holding that exact NAR.
pub fn nar_url(info: &NarInfo) -> String {
    format!("nar/{}-{}.nar", info.store_path.hash(), info.nar_hash.to_nixbase32())
}

/// A narinfo as the gateway serves it: uncompressed NAR at the gateway's
/// own URL; everything signed (and the signatures) untouched.
pub fn rewrite(info: &NarInfo) -> String {
    let mut out = info.clone();
    out.url = nar_url(info);
    out.compression = "none".to_owned();
    out.file_hash = Some(info.nar_hash);
    out.file_size = Some(info.nar_size);
    out.to_text()
}

async fn by_name(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Result<Response> {
    if let Some(h) = file.strip_suffix(".narinfo") {
        let _t = Timer::new(&state, "narinfo");
        return narinfo(&state, h).await;
    }
    if let Some(h) = file.strip_suffix(".ls") {
        let _t = Timer::new(&state, "ls");
        let hash: StorePathHash = h.parse().map_err(|_| GatewayError::NotFound)?;
        return passthrough(&state, "ls", &format!("{hash}.ls")).await;
    }
    Err(GatewayError::NotFound)
}

async fn narinfo(state: &AppState, h: &str) -> Result<Response> {
    let hash: StorePathHash = h.parse().map_err(|_| GatewayError::NotFound)?;
    // A local read failure falls through to the sources: only "nobody has
    // it" is a 404, and Nix takes any other error for a broken substituter.
    let local = state.store.narinfo(hash).await.unwrap_or_else(|e| {
        tracing::warn!(%hash, error = %e, "local narinfo unreadable: asking the sources");
        None
    });
    let (info, source) = if let Some(info) = local {
        (info, "local")
    } else if let Some((idx, info)) = state.resolver.narinfo(&hash).await {
        // Nix asks for the NAR next, after the rest of the closure's narinfos.
        if state.options.keep_fetched {
            state.nar.prefetch(&info);
        }
        (info, state.resolver.source(idx).kind().as_str())
    } else {
        state.metrics.request("narinfo", "none");
        return Err(GatewayError::NotFound);
    };
    state.metrics.request("narinfo", source);
    state.metrics.top_paths.hit(&info.store_path.to_string());
    Ok(([(header::CONTENT_TYPE, "text/x-nix-narinfo")], rewrite(&info)).into_response())
}

fn parse_nar_file(file: &str) -> Option<(StorePathHash, Sha256Hash)> {
    let (hash, nar_hash) = file.strip_suffix(".nar")?.split_once('-')?;
    let nar_hash = nixbase32::decode_exact(nar_hash, 32).ok()?;
    Some((hash.parse().ok()?, Sha256Hash(nar_hash.try_into().ok()?)))
}

async fn nar(State(state): State<Arc<AppState>>, Path(file): Path<String>, headers: HeaderMap) -> Result<Response> {
    let _t = Timer::new(&state, "nar");
    let (hash, nar_hash) = parse_nar_file(&file).ok_or(GatewayError::NotFound)?;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let accepted = Codings::from_header(headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()));
    // zstd on the fly only for a client that names it.
    let zstd = accepted.lists("zstd");
    // Nix resuming a file it was getting: the rest of that same file, even
    // if the store has the NAR by now.
    let resumed = match range_header {
        Some(_) => state.nar.open_resumed(&hash, &nar_hash, &accepted).await,
        None => None,
    };
    let mut local = match resumed {
        Some(_) => None,
        None => open_local(&state, hash).await,
    };
    if resumed.is_none() && local.is_none() && state.nar.join_prefetch(&hash, &nar_hash).await {
        local = open_local(&state, hash).await;
    }
    // A NAR prefetched from peers, asked for the first time, counts as
    // the peers' bytes (the egress they saved).
    let origin = if state.nar.asked(&hash) { "peer" } else { "local" };
    if let Some(handle) = local
        && handle.narinfo.nar_hash == nar_hash
    {
        let size = handle.narinfo.nar_size;
        let (start, end, partial) = byte_range(range_header, size)?;
        state.metrics.request("nar", origin);
        let store = state.store.clone();
        let body = verify::local(handle, start, end, Some((origin, state.metrics.clone())), move |why| {
            tracing::error!(%hash, %why, "stored NAR is damaged: removing it so it is fetched again");
            let _ = store.blocking().remove(&hash);
        });
        return Ok(nar_response(body, size, start, end, partial, zstd));
    }

    let opened = match resumed {
        Some(r) => r,
        // A Range request otherwise wants the NAR's own bytes.
        None if range_header.is_some() => state.nar.open(&hash, &nar_hash, &Codings::None).await,
        None => state.nar.open(&hash, &nar_hash, &accepted).await,
    };
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            state.metrics.request("nar", "none");
            return Err(e.into());
        }
    };
    // By the source asked first; the bytes are counted by who sent them.
    state.metrics.request("nar", opened.first.as_str());
    let info = opened.info;
    // Written behind the client: the writer thread checks the store and
    // makes room, so this request waits for neither.
    let keep = state.options.keep_fetched.then(|| state.store.blocking().clone());
    let stream = match opened.body {
        NarBody::Nar(stream) => stream,
        NarBody::File(leg) => {
            let (encoding, file_size) = (leg.file.compression.clone(), leg.file.file_size.unwrap_or(0));
            let (start, end, partial) = byte_range(range_header, file_size)?;
            let p = Passed {
                info,
                start,
                end,
                keep,
                source: state.resolver.source(leg.id).clone(),
                blame: state.nar.blame(),
                metrics: state.metrics.clone(),
                cancel: state.cancel.clone(),
            };
            let body = file::passed_through(leg, p);
            return Ok(file_response(body, &encoding, (start, end, partial), file_size));
        }
    };
    let size = info.nar_size;
    let (start, end, partial) = byte_range(range_header, size)?;
    let v = Verified {
        info,
        start,
        end,
        keep,
        sources: state.resolver.sources.clone(),
        blame: state.nar.blame(),
        metrics: state.metrics.clone(),
        cancel: state.cancel.clone(),
    };
    let body = verify::verified(stream, v);
    Ok(nar_response(body, size, start, end, partial, zstd))
}

/// A NAR's file passed through (or the rest of it, for a resumed
/// download): the client decodes `encoding`.
fn file_response(
    body: ByteStream,
    encoding: &str,
    (start, end, partial): (u64, u64, bool),
    file_size: u64,
) -> Response {
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::CONTENT_ENCODING, encoding)
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::VARY, "Accept-Encoding");
    if partial {
        builder = builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{file_size}", end - 1));
    }
    builder
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| GatewayError::Internal("building NAR response".into()).into_response())
}

/// The stored NAR of `hash`, if the store holds it and can read it (a
/// local read failure falls through to the sources).
async fn open_local(state: &AppState, hash: StorePathHash) -> Option<nixswarm_node::NarHandle> {
    state.store.open_nar(hash).await.unwrap_or_else(|e| {
        tracing::warn!(%hash, error = %e, "local NAR unreadable: asking the sources");
        None
    })
}

fn byte_range(header: Option<&str>, size: u64) -> Result<(u64, u64, bool)> {
    match range::parse(header, size) {
        RangeRequest::Full => Ok((0, size, false)),
        RangeRequest::Partial { start, end } => Ok((start, end, true)),
        RangeRequest::Unsatisfiable => Err(GatewayError::RangeNotSatisfiable(size)),
    }
}

fn nar_response(body: ByteStream, size: u64, start: u64, end: u64, partial: bool, zstd: bool) -> Response {
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::ACCEPT_RANGES, "bytes");
    let body = if partial {
        builder = builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", end - 1))
            .header(header::CONTENT_LENGTH, end - start);
        Body::from_stream(body)
    } else if zstd {
        builder = builder
            .header(header::CONTENT_ENCODING, "zstd")
            .header(header::VARY, "Accept-Encoding");
        let encoder = ZstdEncoder::with_quality(StreamReader::new(body), Level::Precise(1));
        Body::from_stream(ReaderStream::with_capacity(encoder, 64 * 1024))
    } else {
        builder = builder.header(header::CONTENT_LENGTH, size);
        Body::from_stream(body)
    };
    builder
        .body(body)
        .unwrap_or_else(|_| GatewayError::Internal("building NAR response".into()).into_response())
}

async fn log(State(state): State<Arc<AppState>>, Path(drv): Path<String>) -> Result<Response> {
    let _t = Timer::new(&state, "log");
    let drv = StorePath::from_base_name(&drv).map_err(|_| GatewayError::NotFound)?;
    passthrough(&state, "log", &format!("log/{}", drv.base_name())).await
}

/// Unsigned extras (build logs, `.ls` listings): the first upstream that has
/// it, streamed as is.
async fn passthrough(state: &AppState, route: &'static str, rel: &str) -> Result<Response> {
    for up in &state.upstreams {
        match up.get(rel, None).await {
            Ok(Some(resp)) => {
                state.metrics.request(route, "upstream");
                let mut r = Response::builder().status(StatusCode::OK);
                for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
                    if let Some(v) = resp.headers().get(&name) {
                        r = r.header(name, v.clone());
                    }
                }
                let body = Body::from_stream(resp.bytes_stream().map(|r| r.map_err(std::io::Error::other)));
                return r.body(body).map_err(|e| GatewayError::Internal(e.to_string()));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "upstream failed"),
        }
    }
    state.metrics.request(route, "none");
    Err(GatewayError::NotFound)
}
