//! The dashboard at the gateway's `/`, in a real browser: headless
//! Chromium (Debian's `chromium`) loads it from a node that has served
//! Nix, and the page shows the figures `/status` reports. A screenshot is
//! kept in the test's output directory. The counters a donor watches
//! survive a restart; the log carries no colour codes.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use support::{ClientStore, Gateway, StaticServer, check, fixture};

/// Chromium's path, or why the test cannot run.
fn chromium() -> Result<String> {
    for name in ["chromium", "chromium-browser"] {
        if Command::new(name)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(name.to_owned());
        }
    }
    bail!("the dashboard test needs Chromium (Debian package chromium); scripts/test.sh installs it")
}

/// Loads `url` in headless Chromium, lets its script run, and gives back
/// the rendered DOM; with `shot`, also saves a screenshot there.
fn render(url: &str, shot: Option<&Path>) -> Result<String> {
    let home = tempfile::tempdir()?;
    let mut c = Command::new(chromium()?);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        // Lets the page's fetch of /status finish before the DOM is read.
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", home.path().display()))
    .env("HOME", home.path());
    match shot {
        Some(p) => c.arg(format!("--screenshot={}", p.display())),
        None => c.arg("--dump-dom"),
    };
    let out = c.arg(url).output().context("running chromium")?;
    ensure!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Each element's `data-value`, by id, from a rendered page.
fn values(dom: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for part in dom.split("id=\"").skip(1) {
        let Some((id, rest)) = part.split_once('"') else {
            continue;
        };
        let Some((before, value)) = rest.split_once("data-value=\"") else {
            continue;
        };
        if before.contains('>') {
            continue; // the attribute belongs to a later element
        }
        out.insert(id.to_owned(), value.split('"').next().unwrap_or("").to_owned());
    }
    out
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

#[test]
fn the_dashboard_shows_in_a_browser_what_status_reports_and_counters_survive_a_restart() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let upstream = StaticServer::start(&fx.cache());
    let dir = tmp.path().join("gw");
    let gw = Gateway::start(&dir, &[&upstream.url], &fx.trusted_pub)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(&gw.url, &fx.trusted_pub, &fx.paths, false),
        "nix-store -r through the gateway",
    )?;
    gw.wait_for("paths", fx.paths.len() as u64)?;

    let dom = render(&format!("{}/", gw.url), None)?;
    ensure!(
        dom.contains("data-loaded=\"1\""),
        "the page never rendered /status: {dom}"
    );
    let shown = values(&dom);
    let status = json(&gw.status()?)?;
    let expect = [
        ("stored-paths", &status["store"]["paths"]),
        ("served-upstream", &status["served"]["upstream"]),
        ("served-peer", &status["served"]["peer"]),
        ("egress-saved", &status["served"]["egress_saved"]),
        ("bytes-served", &status["node"]["bytes_served"]),
        ("peers", &status["node"]["peers"]),
        ("disk", &status["store"]["bytes"]),
        ("upload-limit", &status["node"]["upload"]["limit"]),
        ("reachability", &status["node"]["reachability"]),
        ("join-address", &status["join_address"]),
        ("imports", &status["imports"]["stored"]),
    ];
    for (id, want) in expect {
        let want = match want {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let got = shown.get(id).with_context(|| format!("no #{id} on the page: {dom}"))?;
        ensure!(*got == want, "#{id} shows {got:?}, /status says {want:?}");
    }
    ensure!(
        status["served"]["upstream"].as_u64().unwrap_or(0) > 0,
        "nothing was served: {status}"
    );
    // The most requested paths are the fixture's.
    let top = status["top_paths"].as_array().context("top_paths")?;
    ensure!(!top.is_empty(), "{status}");
    let first = top[0]["path"].as_str().context("path")?;
    ensure!(dom.contains(first), "the page does not list {first}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    render(&format!("{}/", gw.url), Some(&shot))?;
    ensure!(std::fs::metadata(&shot)?.len() > 10_000, "an empty screenshot");
    eprintln!("dashboard screenshot: {}", shot.display());

    // The log is plain text: no colour codes in a file.
    ensure!(!gw.log().contains('\x1b'), "colour codes in the log");

    // A restart keeps what the donor watches.
    let before = status["served"].clone();
    gw.stop()?;
    let gw = Gateway::start(&dir, &[&upstream.url], &fx.trusted_pub)?;
    let after = json(&gw.status()?)?["served"].clone();
    for k in ["local", "peer", "upstream", "egress_saved"] {
        ensure!(
            after[k] == before[k],
            "{k}: {} before the restart, {} after",
            before[k],
            after[k]
        );
    }
    Ok(())
}
