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
    assert!(String::from_utf8_lossy(&out.stderr).contains("file:///DIR"));
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

/// `nixswarm ARGS` with `env`, RUST_BACKTRACE set (a user error must not
/// print one anyway).
fn nixswarm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixswarm"));
    c.args(args)
        .env_clear()
        .env("HOME", "/home/someone")
        .env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// The error of a failed run: exit code 1, one line, no backtrace.
fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("backtrace") && !err.contains("panicked"), "{err}");
    err
}

#[test]
fn user_errors_are_one_line_say_what_to_do_and_show_no_backtrace() {
    // Nothing listens on port 1 of loopback.
    let err = one_line_error(&nixswarm(&["status", "--gateway", "127.0.0.1:1"], &[]));
    assert!(
        err.contains("cannot reach the gateway at http://127.0.0.1:1") && err.contains("refused"),
        "{err}"
    );
    let err = one_line_error(&nixswarm(&["pin", "--gateway", "127.0.0.1:1", "/nix/store/x"], &[]));
    assert!(err.contains("not a store path"), "{err}");
    let err = one_line_error(&nixswarm(&["status", "--gateway", "ftp://x"], &[]));
    assert!(err.contains("HOST:PORT"), "{err}");

    // A secret key given for a public one: said so, and not echoed.
    let secret = "test-1:ZjQfTb8k6Bkv9dcbK5n1kvGrh7ZB+BszbNJcX8E+AgOYGwGz6lf2eGsXhjPAxvhc5Uwqwg8iW6P4mvRomYzZRg==";
    let err = one_line_error(&nixswarm(&["check-config", "--trusted-key", secret], &[]));
    assert!(
        err.contains("is a secret key") && err.contains("convert-secret-to-public"),
        "{err}"
    );
    assert!(!err.contains("ZjQfTb8k"), "the secret was echoed: {err}");

    // A size needs a unit, on the command line and in the file.
    let out = nixswarm(&["check-config", "--amount", "10"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no unit"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[store]\namount = 10\n").unwrap();
    // (toml's message quotes the line, over several.)
    let out = nixswarm(&["check-config", "--config", file.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no unit") && err.contains("10G") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn subcommands_take_only_their_own_options() {
    for cmd in ["status", "pin", "unpin", "import"] {
        let out = nixswarm(&[cmd, "--relay-max-circuits", "5", "x"], &[]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("unexpected argument '--relay-max-circuits'"),
            "{cmd}: {err}"
        );
        let help = nixswarm(&[cmd, "--help"], &[]);
        let lines = String::from_utf8_lossy(&help.stdout).lines().count();
        assert!(lines < 40, "{cmd} --help has {lines} lines");
    }
}

#[test]
fn boolean_variables_take_1_0_yes_no_true_false() {
    for (v, mdns) in [
        ("1", false),
        ("yes", false),
        ("true", false),
        ("0", true),
        ("no", true),
        ("false", true),
    ] {
        let out = stdout(&check_config(&[], &[("NIXSWARM_NO_MDNS", v)]));
        assert!(out.contains(&format!("mdns = {mdns}")), "{v}: {out}");
    }
}

#[test]
fn the_version_names_the_git_revision_and_a_closed_pipe_is_no_panic() {
    let out = nixswarm(&["--version"], &[]);
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with("nixswarm ") && v.contains("(git "), "{v}");

    // `nixswarm check-config | head -0`: the reader is gone before the
    // output is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .arg("check-config")
        .env_clear()
        .env("HOME", "/home/someone")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bootstrap_addresses_in_every_form_a_user_writes() {
    for ok in [
        "127.0.0.1:4001",
        "localhost:4001",
        "[::1]:4001",
        "/ip4/127.0.0.1/tcp/4001",
        "/dns4/localhost/tcp/4001",
        "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWQoYXAdKLWSANGYjCzBMV13Zd4yTU9ei87UDyXbQ8KVwJ",
    ] {
        let out = stdout(&check_config(&["--bootstrap", ok], &[]));
        assert!(out.contains(ok), "{ok}: {out}");
    }
    for bad in ["garbage", "/ip4/127.0.0.1", "127.0.0.1:port"] {
        let err = one_line_error(&nixswarm(&["check-config", "--bootstrap", bad], &[]));
        assert!(
            err.contains("HOST:PORT") && err.contains("nixswarm status"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_quic_port_in_use_is_an_error_with_its_cause() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("/ip4/127.0.0.1/udp/{port}/quic-v1");
    let out = nixswarm(
        &[
            "run",
            "--no-upstream",
            "--no-mdns",
            "--no-upnp",
            "--gateway-listen",
            "127.0.0.1:0",
            "--p2p-listen",
            &listen,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {listen}: ")) && err.contains("in use"),
        "{err}"
    );
}
