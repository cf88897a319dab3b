//! The `nixswarm` binary's configuration: defaults < TOML file < NIXSWARM_*
//! environment < flags, checked through `nixswarm check-config`.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixswarm"));
    c.arg("check-config")
        .args(args)
        .env_clear()
        .env("HOME", "/home/someone");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn defaults_use_the_xdg_data_dir_and_cache_nixos_org() {
    let out = stdout(&check_config(&[], &[]));
    assert!(
        out.contains("data-dir = \"/home/someone/.local/share/nixswarm\""),
        "{out}"
    );
    assert!(out.contains("https://cache.nixos.org"), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:37515\""), "{out}");
    let out = stdout(&check_config(&[], &[("XDG_DATA_HOME", "/xdg")]));
    assert!(out.contains("data-dir = \"/xdg/nixswarm\""), "{out}");
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[store]\ncache-size = \"1G\"\n[upstream]\nurls = [\"http://127.0.0.1:9\"]\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = stdout(&check_config(&["--config", f], &[]));
    assert!(
        out.contains("amount = \"1G\"") && out.contains("http://127.0.0.1:9"),
        "{out}"
    );
    let out = stdout(&check_config(&["--config", f], &[("NIXSWARM_AMOUNT", "2G")]));
    assert!(out.contains("amount = \"2G\""), "{out}");
    let out = stdout(&check_config(
        &["--config", f, "--amount", "3G"],
        &[("NIXSWARM_AMOUNT", "2G")],
    ));
    assert!(out.contains("amount = \"3G\""), "{out}");
    let out = stdout(&check_config(
        &[],
        &[
            ("NIXSWARM_CONFIG", f),
            ("NIXSWARM_UPSTREAM", "http://127.0.0.1:7,http://127.0.0.1:8"),
        ],
    ));
    assert!(
        out.contains("\"http://127.0.0.1:7\"") && out.contains("\"http://127.0.0.1:8\"") && !out.contains(":9\""),
        "{out}"
    );
    let out = stdout(&check_config(&["--no-upstream"], &[]));
    assert!(out.contains("urls = []"), "{out}");
}

#[test]
fn mistakes_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[gateway]\nlistne = \"127.0.0.1:1\"\n").unwrap();
    let out = check_config(&["--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listne") && err.contains("c.toml"), "{err}");

    let out = check_config(&["--trusted-key", "garbage"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME:BASE64"));
    let out = check_config(&["--amount", "10X"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    let out = check_config(&["--upstream", "ftp://example.invalid"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http"));
    let out = check_config(&["--config", "/nonexistent/c.toml"], &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/c.toml"));
}

#[test]
fn run_fails_clearly_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .args([
            "run",
            "--no-upstream",
            "--no-p2p",
            "--gateway-listen",
            &addr,
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("binding the gateway") && err.contains(&addr), "{err}");
}

#[test]
fn reachability_defaults_and_their_switches() {
    let out = stdout(&check_config(&[], &[]));
    for want in [
        "mode = \"auto\"",
        "announce-private = false",
        "upnp = true",
        "upload-limit = \"5",
        "/ip6/::/tcp/37516",
        "/ip6/::/udp/37516/quic-v1",
        "[p2p.relay]",
        "serve = true",
        "max-reservations = 128",
        "max-circuits = 16",
        "circuit-duration = \"2m\"",
        "circuit-bytes = \"128",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let out = stdout(&check_config(
        &[
            "--no-upnp",
            "--announce-private",
            "--p2p-mode",
            "server",
            "--upload-limit",
            "0",
            "--no-relay-service",
            "--relay-max-reservations",
            "8",
            "--relay-max-circuits",
            "4",
            "--relay-circuit-duration",
            "30s",
            "--relay-circuit-bytes",
            "64K",
        ],
        &[],
    ));
    for want in [
        "mode = \"server\"",
        "announce-private = true",
        "upnp = false",
        "serve = false",
        "max-reservations = 8",
        "max-circuits = 4",
        "circuit-duration = \"30s\"",
        "circuit-bytes = \"64",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let out = stdout(&check_config(&[], &[("NIXSWARM_NO_UPNP", "true")]));
    assert!(out.contains("upnp = false"), "{out}");
}
