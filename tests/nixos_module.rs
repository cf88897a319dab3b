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
        if p.is_dir() && name != "target" && name != ".git" {
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

/// Evaluates `example` (a NixOS configuration attribute set without
/// function arguments) through the module's defaults and settings function,
/// as the module does, and returns the generated settings as JSON.
fn generated_settings(example: &str) -> Result<serde_json::Value> {
    let dir = repo().join("nixos-module");
    let expr = format!(
        r#"
        let
          d = import {dir}/defaults.nix;
          ex = {example};
          c = (ex.nixpkgsCache or {{ }}).contribution or {{ }};
          g = (ex.nixpkgsCache or {{ }}).gateway or {{ }};
          update = a: b: a // builtins.mapAttrs (n: v:
            if builtins.isAttrs v && builtins.isAttrs (a.${{n}} or null) then update a.${{n}} v else v) b;
        in update (import {dir}/settings.nix {{
          contribute = c.enable or false;
          amount = c.amount or d.amount;
          location = c.location or d.location;
          shareInstalledPaths = c.shareInstalledPaths or d.shareInstalledPaths;
          shareKeys = c.shareKeys or d.shareKeys;
          uploadLimit = c.uploadLimit or d.uploadLimit;
          listenPort = c.listenPort or d.listenPort;
          bootstrapPeers = c.bootstrapPeers or d.bootstrapPeers;
          gatewayPort = g.port or d.gatewayPort;
          gatewayPriority = g.priority or d.gatewayPriority;
        }}) (c.settings or {{ }})
        "#,
        dir = dir.display()
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", &expr])
        .env("NIX_CONFIG", "build-users-group =\n")
        .output()?;
    ensure!(
        out.status.success(),
        "nix-instantiate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
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
    assert!(out.contains("amount = \"15%\""), "{out}");
    assert!(out.contains("upload-limit = \"5M\""), "{out}");
    Ok(())
}
