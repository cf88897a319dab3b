//! Where the upstream HTTP client may go. An upstream, or anyone on the
//! path of a plain-http one, answers with redirects; followed blindly they
//! would make the gateway send requests to this machine's own services or
//! its LAN (and hand the answers to Nix's hash check as timing). So a
//! redirect may stay on the upstream's origin, or go to another only over
//! https and only to a public address: an address literal is checked here,
//! a name when it is resolved ([`PublicOnly`]), so a name that resolves to
//! 127.0.0.1 is refused too. The configured upstreams themselves may be
//! anywhere (a LAN cache, a test server on 127.0.0.1).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use nixswarm_protocol::ip::is_public;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::{Attempt, Policy};

/// Redirects followed for one request, at most.
pub const MAX_REDIRECTS: usize = 5;

/// Why a redirect from an upstream's `from` to `to` is not followed, if
/// it is not.
pub fn refuse(from: &Url, to: &Url) -> Option<&'static str> {
    if to.origin() == from.origin() {
        return None;
    }
    if to.scheme() != "https" {
        return Some("a redirect to another origin must be https");
    }
    let Some(host) = to.host_str() else {
        return Some("a redirect without a host");
    };
    // An address literal (IPv6 in brackets); a name is checked when resolved.
    match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) if !is_public(ip) => Some("a redirect to a non-public address"),
        _ => None,
    }
}

/// The redirect policy of the upstream client.
pub fn redirects() -> Policy {
    Policy::custom(|attempt: Attempt<'_>| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let Some(first) = attempt.previous().first().cloned() else {
            return attempt.follow();
        };
        match refuse(&first, attempt.url()) {
            None => attempt.follow(),
            Some(why) => {
                tracing::warn!(from = %first, to = %attempt.url(), why, "upstream redirect not followed");
                attempt.error(why)
            }
        }
    })
}

/// A resolver that gives the configured upstreams' names whatever they
/// resolve to and any other name (one a redirect led to) only its public
/// addresses.
#[derive(Debug, Clone, Default)]
pub struct PublicOnly {
    trusted: Arc<HashSet<String>>,
}

impl PublicOnly {
    /// `upstreams`' own host names resolve as they are.
    pub fn new<'a>(upstreams: impl IntoIterator<Item = &'a Url>) -> Self {
        let trusted = upstreams
            .into_iter()
            .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
            .collect();
        Self {
            trusted: Arc::new(trusted),
        }
    }
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let trusted = self.trusted.contains(&name.as_str().to_ascii_lowercase());
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = found.into_iter().filter(|a| trusted || is_public(a.ip())).collect();
            if kept.is_empty() {
                return Err(format!("{} resolves to no public address", name.as_str()).into());
            }
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn a_redirect_may_stay_home_or_go_to_a_public_https_origin() {
        let up = url("http://127.0.0.1:8080/cache/");
        assert_eq!(refuse(&up, &url("http://127.0.0.1:8080/other/x.nar")), None);
        assert_eq!(refuse(&up, &url("https://cdn.example.org/x.nar")), None);
        assert_eq!(refuse(&up, &url("https://1.1.1.1/x.nar")), None);
        for to in [
            "http://127.0.0.1:8081/x",
            "http://cdn.example.org/x.nar",
            "https://127.0.0.1:8081/x",
            "https://192.168.1.1/admin",
            "https://[::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "file:///etc/passwd",
        ] {
            assert!(refuse(&up, &url(to)).is_some(), "{to}");
        }
        let https = url("https://cache.nixos.org/");
        assert!(
            refuse(&https, &url("http://cache.nixos.org/x")).is_some(),
            "never down to http"
        );
    }

    #[tokio::test]
    async fn a_name_is_given_only_its_public_addresses_unless_it_is_an_upstreams() {
        let none = PublicOnly::new([]);
        let name = |s: &str| s.parse::<Name>().unwrap();
        assert!(
            none.resolve(name("localhost")).await.is_err(),
            "localhost is not public"
        );
        let upstream = url("http://localhost:8080/");
        let trusting = PublicOnly::new([&upstream]);
        let addrs: Vec<SocketAddr> = trusting.resolve(name("localhost")).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
