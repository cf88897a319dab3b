//! The NixOS module, checked with Debian's nix-bin (no nixpkgs needed):
//! every .nix file parses; the settings the module generates from its
//! defaults, and from the README's example configuration, are accepted by
//! `nixswarm check-config`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable repository").flatten() {
        let p = e.path();
        let name = e.file_name();
        // The copy of nixpkgs' lib is nixpkgs' own code, parsed when used.
        if p.is_dir() && name != "target" && name != ".git" && name != "nixpkgs-lib" {
            nix_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "nix") {
            out.push(p);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    support::fixture_nix_available();
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    assert!(files.len() >= 6, "found {files:?}");
    for f in files {
        let out = Command::new("nix-instantiate").arg("--parse").arg(&f).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Evaluates the module with nixpkgs' real module system
/// (`tests/nixos_module_eval.nix`, over the copy of nixpkgs' lib in
/// `tests/nixpkgs-lib`) and `configuration` on top; returns what it made:
/// failed assertions, settings, the service's configuration, tmpfiles,
/// users, firewall and substituters.
fn evaluate(configuration: &str) -> Result<serde_json::Value> {
    let out = instantiate(configuration)?;
    ensure!(
        out.status.success(),
        "the module does not evaluate with {configuration}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `nix-instantiate` of the evaluation harness with `configuration`.
fn instantiate(configuration: &str) -> Result<std::process::Output> {
    Ok(Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--readonly-mode"])
        .arg(repo().join("tests/nixos_module_eval.nix"))
        .args(["--arg", "configuration", configuration])
        .env("NIX_CONFIG", "build-users-group =\n")
        .output()?)
}

/// The module's generated settings for `configuration`, which must pass
/// its assertions.
fn generated_settings(configuration: &str) -> Result<serde_json::Value> {
    let v = evaluate(configuration)?;
    ensure!(
        v["failed"] == serde_json::json!([]),
        "assertions failed: {}",
        v["failed"]
    );
    Ok(v["settings"].clone())
}

/// Writes `settings` as TOML and runs `nixswarm check-config` on it.
fn check_config(settings: &serde_json::Value) -> Result<String> {
    let toml = toml::to_string(&toml::Value::try_from(settings)?)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nixswarm.toml");
    std::fs::write(&file, &toml)?;
    let out = Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .args(["check-config", "--config"])
        .arg(&file)
        .env_clear()
        .output()?;
    ensure!(
        out.status.success(),
        "check-config rejected\n{toml}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn the_module_defaults_pass_check_config() -> Result<()> {
    support::fixture_nix_available();
    let contributing = check_config(&generated_settings("{ nixpkgsCache.contribution.enable = true; }")?)?;
    assert!(
        contributing.contains("mode = \"auto\"") && contributing.contains("/tcp/37516"),
        "{contributing}"
    );
    assert!(
        contributing.contains("data-dir = \"/var/lib/nixswarm\""),
        "{contributing}"
    );
    assert!(
        contributing.contains("share-keys = [\"cache.nixos.org-1:"),
        "only cache.nixos.org's paths are shared by default: {contributing}"
    );
    let download_only = check_config(&generated_settings("{ nixpkgsCache.gateway.enable = true; }")?)?;
    assert!(download_only.contains("mode = \"client\""), "{download_only}");
    assert!(
        download_only.contains("listen = []"),
        "a download-only machine listens nowhere: {download_only}"
    );
    Ok(())
}

#[test]
fn the_readme_example_passes_check_config() -> Result<()> {
    support::fixture_nix_available();
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let block = readme
        .split("<!-- nixos-example -->")
        .nth(1)
        .and_then(|s| s.split("```nix").nth(1))
        .and_then(|s| s.split("```").next())
        .context("README has no nixos-example block")?;
    let body = block
        .trim()
        .strip_prefix("{ ... }:")
        .context("the example is a module `{ ... }: { ... }`")?;
    let out = check_config(&generated_settings(body)?)?;
    assert!(out.contains("amount = \"100%\""), "{out}");
    assert!(out.contains("location = \"/mnt/nixpkgsDisk/store\""), "{out}");
    Ok(())
}

/// The NixOS proposal's own configuration, as it wrote it (but for
/// `lib.percentage "100"`, which no nixpkgs has: the option takes "100%").
const PROPOSAL: &str = r#"{
  nixpkgsCache = {
    contribution = {
      enable = true;
      amount = "100%";
      location = "/mnt/nixpkgsDisk/";
    };
  };
}"#;

#[test]
fn the_proposals_configuration_evaluates_and_writes_only_to_its_disk() -> Result<()> {
    support::fixture_nix_available();
    let v = evaluate(PROPOSAL)?;
    ensure!(
        v["failed"] == serde_json::json!([]),
        "assertions failed: {}",
        v["failed"]
    );
    let out = check_config(&v["settings"])?;
    for want in [
        "data-dir = \"/var/lib/nixswarm\"",
        "amount = \"100%\"",
        "location = \"/mnt/nixpkgsDisk/store\"",
    ] {
        ensure!(out.contains(want), "{want} missing:\n{out}");
    }
    let svc = &v["serviceConfig"];
    ensure!(
        svc["ReadWritePaths"] == serde_json::json!(["/mnt/nixpkgsDisk"]),
        "the disk (without its trailing slash) is the one place outside the StateDirectory it may write: {svc}"
    );
    ensure!(
        svc["User"] == "nixswarm" && svc["Group"] == "nixswarm" && svc.get("DynamicUser").is_none(),
        "{svc}"
    );
    ensure!(
        v["tmpfiles"] == serde_json::json!(["d /mnt/nixpkgsDisk 0750 nixswarm nixswarm - -"]),
        "{}",
        v["tmpfiles"]
    );
    ensure!(
        v["unitConfig"]["RequiresMountsFor"] == serde_json::json!(["/mnt/nixpkgsDisk"]),
        "{}",
        v["unitConfig"]
    );
    ensure!(v["users"] == serde_json::json!(["nixswarm"]) && v["groups"] == serde_json::json!(["nixswarm"]));

    // The hardening is the default location's, with that one path added.
    let default = evaluate("{ nixpkgsCache.contribution.enable = true; }")?;
    let mut expected = default["serviceConfig"].clone();
    ensure!(expected["ReadWritePaths"] == serde_json::json!([]), "{expected}");
    expected["ReadWritePaths"] = serde_json::json!(["/mnt/nixpkgsDisk"]);
    ensure!(
        *svc == expected,
        "the service differs beyond ReadWritePaths:\n{svc}\n{expected}"
    );
    ensure!(
        default["tmpfiles"] == serde_json::json!([]),
        "the StateDirectory needs no tmpfiles rule"
    );
    for (k, want) in [
        ("ProtectSystem", serde_json::json!("strict")),
        ("ProtectHome", serde_json::json!(true)),
        ("NoNewPrivileges", serde_json::json!(true)),
        ("PrivateTmp", serde_json::json!(true)),
    ] {
        ensure!(svc[k] == want, "{k} is {} ", svc[k]);
    }
    Ok(())
}

#[test]
fn a_location_the_service_could_not_use_fails_the_build_with_a_clear_message() -> Result<()> {
    support::fixture_nix_available();
    for (location, says) in [
        ("cache/", "must be an absolute path, not \"cache/\""),
        ("/nix/store/cache", "must not be inside /nix/store"),
        ("/nix/store", "must not be inside /nix/store"),
        ("/", "must be a directory of its own"),
        ("/tmp/cache", "must not be under /tmp or /var/tmp"),
        ("/home/alice/cache", "must not be under /home, /root or /run/user"),
    ] {
        let v = evaluate(&format!(
            "{{ nixpkgsCache.contribution = {{ enable = true; location = \"{location}\"; }}; }}"
        ))?;
        let failed: Vec<String> = serde_json::from_value(v["failed"].clone())?;
        let failed = failed.join("\n");
        ensure!(
            failed.contains("nixpkgsCache.contribution.location") && failed.contains(says),
            "{location}: {failed}"
        );
    }
    // A good one under /var/lib, or a trailing slash, is fine.
    for location in ["/var/lib/nixswarm-big", "/srv/nixswarm/", "/mnt/nixpkgsDisk"] {
        let v = evaluate(&format!(
            "{{ nixpkgsCache.contribution = {{ enable = true; location = \"{location}\"; }}; }}"
        ))?;
        ensure!(v["failed"] == serde_json::json!([]), "{location}: {}", v["failed"]);
    }
    // What the option type refuses, nixpkgs' lib refuses with the option's name.
    let out = instantiate("{ nixpkgsCache.contribution = { enable = true; amount = \"all\"; }; }")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("nixpkgsCache.contribution.amount"),
        "{err}"
    );
    Ok(())
}
