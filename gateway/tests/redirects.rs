//! An upstream's redirects, through the real HTTP client on 127.0.0.1: one
//! that points at another service on this machine is not followed (that
//! service never hears of it), one on the upstream's own origin is.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use nixswarm_gateway::{Upstream, Url, http_client};

async fn serve(router: Router) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/").parse().unwrap()
}

#[tokio::test]
async fn a_redirect_to_a_local_service_is_not_followed() {
    // A service on this machine that must never be reached.
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let local = serve(Router::new().fallback(move || {
        h.fetch_add(1, Ordering::SeqCst);
        async { "secret" }
    }))
    .await;
    let to_local = format!("{local}admin");
    let upstream = serve(
        Router::new()
            .route(
                "/away.narinfo",
                get(move || {
                    let to = to_local.clone();
                    async move { (StatusCode::FOUND, [(header::LOCATION, to)]).into_response() }
                }),
            )
            .route(
                "/home.narinfo",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/moved/home.narinfo")]).into_response() }),
            )
            .route("/moved/home.narinfo", get(|| async { "StorePath: x\n" })),
    )
    .await;
    let client = http_client(
        Duration::from_secs(5),
        Duration::from_secs(5),
        std::slice::from_ref(&upstream),
    )
    .unwrap();
    let up = Upstream::new(&upstream, client, Duration::from_secs(5)).unwrap();

    let err = up.get("away.narinfo", None).await.unwrap_err();
    assert!(format!("{err:?}").contains("redirect"), "{err:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the local service was reached");

    let home = up.get("home.narinfo", None).await.unwrap().unwrap();
    assert_eq!(home.text().await.unwrap(), "StorePath: x\n");
}

#[tokio::test]
async fn an_upstream_that_is_down_is_reported_with_the_cause() {
    // A port nobody listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url: Url = format!("http://127.0.0.1:{port}/").parse().unwrap();
    let client = http_client(
        Duration::from_secs(5),
        Duration::from_secs(5),
        std::slice::from_ref(&url),
    )
    .unwrap();
    let up = Upstream::new(&url, client, Duration::from_secs(5)).unwrap();
    let err = up.get("x.narinfo", None).await.unwrap_err().to_string();
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}
