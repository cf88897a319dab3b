//! `nixswarm status`: asks the running gateway for its node's and store's
//! status and prints it (or the JSON with `--json`).

use anyhow::{Context as _, Result};
use clap::Args;

use crate::config::ClientArgs;

/// Flags of `nixswarm status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn run(args: &StatusArgs) -> Result<()> {
    let gateway = args.client.gateway_url()?;
    let base = gateway.as_str().trim_end_matches('/');
    let url = format!("{base}/status");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body: serde_json::Value = rt.block_on(async {
        let resp = super::pin::send(reqwest::Client::new().get(&url), base).await?;
        let text = resp.error_for_status()?.text().await.context("reading the status")?;
        serde_json::from_str(&text).context("parsing the status")
    })?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let node = &body["node"];
    if node.is_null() {
        println!("node:           not running (gateway only)");
    } else {
        let id = node["peer_id"].as_str().unwrap_or("?");
        // First, the address another node joins through (--bootstrap).
        if let Some(a) = body["join_address"].as_str() {
            println!("join through:   {a}");
        }
        println!("node id:        {id}");
        for a in node["listen_addrs"].as_array().into_iter().flatten() {
            println!("listening on:   {}", a.as_str().unwrap_or("?"));
        }
        println!("peers:          {}", n(&node["peers"]));
        println!("connections:    {}", n(&node["connections"]));
        println!(
            "reachability:   {} (DHT {})",
            node["reachability"].as_str().unwrap_or("?"),
            if node["dht_server"].as_bool().unwrap_or(false) {
                "server"
            } else {
                "client"
            }
        );
        for a in node["external_addrs"].as_array().into_iter().flatten() {
            println!("advertised:     {}", a.as_str().unwrap_or("?"));
        }
        for r in node["relays"].as_array().into_iter().flatten() {
            println!("relay:          {}", r.as_str().unwrap_or("?"));
        }
        println!("provided keys:  {}", n(&node["provided_keys"]));
        println!(
            "records held:   {} ({} refused: malformed or over a limit)",
            n(&node["provider_records"]),
            n(&node["records_refused"])
        );
        println!(
            "dials refused:  {} (addresses peers gave that are not public, or too many)",
            n(&node["dials_refused"])
        );
        println!(
            "kept out:       {} (DHT peers whose bucket held two of their network)",
            n(&node["not_admitted"])
        );
        println!("bytes served:   {}", bytes(n(&node["bytes_served"])));
        let up = &node["upload"];
        match up["limit"].as_u64() {
            None => println!("upload limit:   none"),
            Some(l) => println!(
                "upload limit:   {}/s ({}; held back {:.1} s in all)",
                bytes(l),
                if up["now"].as_bool().unwrap_or(false) {
                    "throttling now"
                } else {
                    "not throttling"
                },
                n(&up["waited_ms"]) as f64 / 1000.0
            ),
        }
        println!("bytes fetched:  {}", bytes(n(&node["bytes_fetched"])));
        println!(
            "  duplicates:   {} (received twice: the endgame's cost)",
            bytes(n(&node["bytes_fetched_duplicate"]))
        );
        println!(
            "  on the wire:  {} (compressed unless as stored was faster)",
            bytes(n(&node["bytes_fetched_wire"]))
        );
        println!(
            "  with lookups: {} (small NARs in one round trip)",
            bytes(n(&node["bytes_fetched_inline"]))
        );
    }
    let inst = &body["installed"];
    if inst.is_null() {
        println!("installed:      not shared");
    } else {
        println!("installed paths shared: {}", n(&inst["paths_shared"]));
        println!("bytes indexed:  {}", bytes(n(&inst["bytes_indexed"])));
        println!("to index:       {}", n(&inst["queued"]));
        println!(
            "not shareable:  {} (unsigned, signed only by a key not shared, or excluded)",
            n(&inst["not_shareable"])
        );
        println!(
            "rejected:       {} (files differ from the Nix database)",
            n(&inst["rejected"])
        );
    }
    let served = &body["served"];
    if !served.is_null() {
        println!(
            "NAR bytes served: {} from the store, {} from peers, {} from upstreams",
            bytes(n(&served["local"])),
            bytes(n(&served["peer"])),
            bytes(n(&served["upstream"]))
        );
        println!(
            "egress saved:   {} (offload share {:.1}%)",
            bytes(n(&served["egress_saved"])),
            served["offload_share"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    for k in body["sharing"]["trusted_not_shared"].as_array().into_iter().flatten() {
        let k = k.as_str().unwrap_or("?");
        let name = k.split(':').next().unwrap_or(k);
        println!("not shared:     paths signed only by {name} (trusted, not a share key; --share-key {k} shares them)");
    }
    let store = &body["store"];
    println!("stored paths:   {}", n(&store["paths"]));
    println!(
        "disk used:      {} of {} (quota)",
        bytes(n(&store["bytes"])),
        bytes(n(&store["quota"]))
    );
    Ok(())
}
