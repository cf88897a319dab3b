//! Every option's default in `--help`, taken from [`Config::default`] so
//! the help cannot drift from what the program does. (clap's own
//! `default_value` would make each option look given and override the
//! configuration file and the environment.)

use clap::Command;

use super::Config;

/// `value` as the configuration file writes it.
fn shown<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Null) => "none".into(),
        Ok(serde_json::Value::Array(a)) if a.is_empty() => "none".into(),
        Ok(v) => v.to_string(),
        Err(_) => "?".into(),
    }
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The default of each option, by its argument id.
pub fn defaults() -> Vec<(&'static str, String)> {
    let c = Config::default();
    let on_off = |b: bool| if b { "on" } else { "off" }.to_owned();
    vec![
        ("config", "none".into()),
        ("data_dir", "$XDG_DATA_HOME/nixswarm (~/.local/share/nixswarm)".into()),
        ("gateway_listen", c.gateway.listen.to_string()),
        ("upstreams", c.upstream.urls.join(", ")),
        ("no_upstream", "off".into()),
        ("trusted_keys", "cache.nixos.org-1".into()),
        ("amount", c.store.amount.to_string()),
        ("location", "store in the data directory".into()),
        ("contribute", shown(&c.donor.contribute)),
        ("share_installed", c.donor.share_installed.to_string()),
        ("nix_store_root", c.donor.nix_store_root.display().to_string()),
        ("exclude", "none".into()),
        (
            "index_rate",
            c.donor.index_rate.map_or_else(|| "unlimited".into(), |r| r.to_string()),
        ),
        ("poll_interval", duration(c.donor.poll_interval)),
        ("share_keys", "cache.nixos.org-1".into()),
        ("share_content_addressed", c.donor.share_content_addressed.to_string()),
        ("p2p_listen", "TCP and QUIC on port 37516, IPv4 and IPv6".into()),
        ("bootstrap", "none".into()),
        ("no_mdns", format!("off: mDNS {}", on_off(c.p2p.mdns))),
        ("no_p2p", format!("off: the node {}", on_off(c.p2p.enable))),
        ("p2p_mode", shown(&c.p2p.mode)),
        ("announce_private", on_off(c.p2p.announce_private)),
        ("no_upnp", format!("off: UPnP {}", on_off(c.p2p.upnp))),
        (
            "no_relay_service",
            format!("off: the relay service {}", on_off(c.p2p.relay.serve)),
        ),
        ("relay_max_reservations", c.p2p.relay.max_reservations.to_string()),
        ("relay_max_circuits", c.p2p.relay.max_circuits.to_string()),
        ("relay_circuit_duration", duration(c.p2p.relay.circuit_duration)),
        ("relay_circuit_bytes", c.p2p.relay.circuit_bytes.to_string()),
        ("peer_timeout", duration(c.p2p.peer_timeout)),
        (
            "upload_limit",
            c.p2p.upload_limit.map_or_else(
                || format!("{}/s", crate::size::Size(super::DEFAULT_UPLOAD_LIMIT)),
                |r| format!("{r}/s"),
            ),
        ),
        ("lookup_budget", duration(c.p2p.lookup_budget)),
        ("peer_wait_have", duration(c.p2p.peer_wait_have)),
        ("peer_wait_rate", c.p2p.peer_wait_rate.to_string()),
        ("peer_wait_max", duration(c.p2p.peer_wait_max)),
        ("hedge_after", duration(c.p2p.hedge_after)),
        ("offload", shown(&c.p2p.offload)),
    ]
}

/// `cmd` with each option's default at the end of its help (options that
/// already name one are left alone).
pub fn with_defaults(mut cmd: Command) -> Command {
    for (id, default) in defaults() {
        let has = cmd.get_arguments().any(|a| a.get_id() == id);
        if has {
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                if help.contains("[default") {
                    a
                } else {
                    a.help(format!("{help} [default: {default}]"))
                }
            });
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_of_run_names_its_default() {
        let cmd = with_defaults(<crate::cli::run::RunArgs as clap::Args>::augment_args(Command::new(
            "run",
        )));
        let missing: Vec<String> = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help")
            .filter(|a| !a.get_help().is_some_and(|h| h.to_string().contains("[default")))
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(missing.is_empty(), "options without a default in --help: {missing:?}");
    }
}
