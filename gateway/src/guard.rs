//! Who may use the gateway: programs on this machine (Nix, `nixswarm`,
//! a metrics scraper), not the web pages its user visits.
//!
//! A page can reach 127.0.0.1 in two ways. **DNS rebinding**: a page at
//! `evil.example` makes its name resolve to 127.0.0.1, and the browser
//! then treats the gateway's answers as the page's own (same origin), so
//! the page reads `/status` or a NAR; its requests carry `Host:
//! evil.example:PORT`. **Cross-site requests**: a page sends simple GETs
//! and POSTs to `http://127.0.0.1:PORT` (it cannot read the answers, but
//! the gateway would fetch and keep what they name, and their timing
//! tells what is cached); browsers mark them with `Sec-Fetch-Site` and,
//! for most, `Origin`.
//!
//! So a request's `Host` must name this machine (an IP address,
//! `localhost`, or a name in `gateway.allowed-hosts`; browsers always send
//! one, so a request without it is a program's), and one carrying
//! `Sec-Fetch-Site` other than `none` or `same-origin`, or an `Origin`
//! other than the gateway's own, is refused. Nix sends neither header.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use std::sync::Arc;

use crate::AppState;
use crate::error::GatewayError;

/// The host names, besides IP addresses and `localhost`, that requests
/// may name (`gateway.allowed-hosts`), lowercased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self(names.into_iter().map(|n| n.to_ascii_lowercase()).collect())
    }

    fn allows(&self, name: &str) -> bool {
        name == "localhost" || self.0.iter().any(|n| n == name)
    }
}

/// The host name of a `Host` header (lowercased, an IPv6 address without
/// its brackets), or `None` if it is not one: a name or address with an
/// optional numeric port.
pub fn host_name(host: &str) -> Option<String> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !after.is_empty() {
            after.strip_prefix(':').filter(|p| is_port(p))?;
        }
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        addr
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        }
    };
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
    ok.then(|| name.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Why a request is refused, or `Ok` if a program on this machine could
/// have sent it.
pub fn check(headers: &HeaderMap, allowed: &AllowedHosts) -> Result<(), &'static str> {
    // Browsers always send Host: a request without one is a program's.
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.to_str().map_err(|_| "the Host header is not a host name")?),
        None => None,
    };
    if let Some(host) = host {
        let name = host_name(host).ok_or("the Host header is not a host name")?;
        if name.parse::<IpAddr>().is_err() && !allowed.allows(&name) {
            return Err(
                "the Host header names neither this machine nor a name in gateway.allowed-hosts \
                 (a web page rebinding its name to this address?)",
            );
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !matches!(site, "none" | "same-origin") {
            return Err("requests from web pages of other sites are refused");
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .zip(host)
            .is_some_and(|(o, host)| o.eq_ignore_ascii_case(host));
        if !own {
            return Err("requests from another origin are refused");
        }
    }
    Ok(())
}

/// The middleware on every route.
pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match check(request.headers(), &state.options.allowed_hosts) {
        Ok(()) => next.run(request).await,
        Err(why) => {
            state.metrics.refused_requests.inc();
            tracing::debug!(%why, uri = %request.uri(), "request refused");
            GatewayError::Forbidden(why).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn ok(pairs: &[(&'static str, &str)]) -> bool {
        check(&headers(pairs), &AllowedHosts::new(["cache.lan".to_owned()])).is_ok()
    }

    #[test]
    fn programs_on_this_machine_are_served() {
        // Nix, curl, `nixswarm status`: a Host, nothing else.
        assert!(ok(&[("host", "127.0.0.1:37515")]));
        assert!(ok(&[("host", "localhost:37515")]));
        assert!(ok(&[("host", "[::1]:37515")]));
        assert!(ok(&[("host", "LOCALHOST")]));
        // A machine serving its LAN under an address, or a configured name.
        assert!(ok(&[("host", "192.168.1.5:37515")]));
        assert!(ok(&[("host", "Cache.LAN:80")]));
        // The gateway's own pages (the dashboard) from the same origin.
        assert!(ok(&[
            ("host", "127.0.0.1:37515"),
            ("origin", "http://127.0.0.1:37515"),
            ("sec-fetch-site", "same-origin"),
        ]));
        assert!(ok(&[("host", "localhost:37515"), ("sec-fetch-site", "none")]));
    }

    #[test]
    fn a_rebound_name_is_refused() {
        assert!(!ok(&[("host", "evil.example:37515")]));
        assert!(!ok(&[("host", "evil.example")]));
        assert!(!ok(&[("host", "localhost.evil.example:37515")]));
        assert!(!ok(&[("host", "localhost.:37515")]));
        // Its own origin does not help.
        assert!(!ok(&[
            ("host", "evil.example:37515"),
            ("origin", "http://evil.example:37515"),
            ("sec-fetch-site", "same-origin"),
        ]));
        // No browser leaves Host out: a request without one is a program's
        // (HTTP/1.0, a test's in-process request), unless a page's headers
        // come with it.
        assert!(ok(&[]));
        assert!(!ok(&[("origin", "http://evil.example")]));
        assert!(!ok(&[("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("host", "127.0.0.1:37515:1")]));
        assert!(!ok(&[("host", "[::1]x")]));
    }

    #[test]
    fn cross_site_requests_are_refused() {
        for site in ["cross-site", "same-site", ""] {
            assert!(!ok(&[("host", "127.0.0.1:37515"), ("sec-fetch-site", site)]), "{site}");
        }
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:8000",
            "https://127.0.0.1:37515",
        ] {
            assert!(!ok(&[("host", "127.0.0.1:37515"), ("origin", origin)]), "{origin}");
        }
    }

    proptest! {
        #[test]
        fn host_parsing_never_panics_and_names_only_what_it_was_given(s in ".{0,64}") {
            if let Some(name) = host_name(&s) {
                prop_assert!(s.to_ascii_lowercase().contains(&name));
                prop_assert!(!name.is_empty());
            }
        }

        #[test]
        fn any_name_but_localhost_and_the_configured_ones_is_refused(
            name in "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,3}",
            port in proptest::option::of(1u16..),
        ) {
            let host = match port { Some(p) => format!("{name}:{p}"), None => name.clone() };
            let allowed = name == "localhost" || name == "cache.lan";
            prop_assert_eq!(ok(&[("host", &host)]), allowed);
        }
    }
}
