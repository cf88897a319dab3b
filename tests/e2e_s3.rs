//! `nixswarm import s3://...` from a real S3-compatible server (moto's,
//! from PyPI, started on 127.0.0.1 by the test) holding the fixture cache
//! that Nix wrote: listed and imported into a stopped node, and imported
//! with `--closure` through a running node, from which the real Nix client
//! then substitutes everything; and `nixswarm export` to a bucket, which a
//! fresh store imports back. The request signing has a unit test
//! against AWS's published example (`gateway/src/s3.rs`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use support::{ClientStore, Gateway, check, fixture};

/// Where scripts/test.sh puts moto.
const VENV: &str = "/opt/nixswarm-test-venv";

fn moto_bin(name: &str) -> Result<PathBuf> {
    let p = Path::new(VENV).join("bin").join(name);
    ensure!(
        p.exists(),
        "the S3 test needs moto in {VENV} (scripts/test.sh installs it: python3 -m venv {VENV} && {VENV}/bin/pip install 'moto[server]')"
    );
    Ok(p)
}

/// A moto S3 server on 127.0.0.1, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto(log: &Path) -> Result<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(moto_bin("moto_server")?)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting moto_server")?;
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let end = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > end {
            bail!("moto_server did not start: {}", std::fs::read_to_string(log)?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(moto)
}

/// Makes `bucket` and uploads the cache at `dir` under `prefix` (boto3).
fn upload(moto: &Moto, bucket: &str, prefix: &str, dir: &Path) -> Result<()> {
    let script = r#"
import os, sys, boto3
endpoint, bucket, prefix, root = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket=bucket)
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        s3.upload_file(p, bucket, prefix + "/" + os.path.relpath(p, root))
"#;
    let out = Command::new(moto_bin("python")?)
        .args(["-c", script, &moto.url, bucket, prefix])
        .arg(dir)
        .output()?;
    ensure!(out.status.success(), "upload: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The credentials moto takes.
const AWS: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];

fn import(url: &str, data_dir: &Path, key: &str, args: &[&str]) -> Result<String> {
    let dir = data_dir.display().to_string();
    let home = data_dir.parent().unwrap_or(data_dir).display().to_string();
    let head = ["import", url, "--trusted-key", key, "--data-dir", dir.as_str()];
    let env = [AWS[0], AWS[1], ("HOME", home.as_str())];
    let (ok, text) = support::nixswarm(&[&head[..], args].concat(), &env)?;
    ensure!(ok, "import {url}: {text}");
    Ok(text)
}

#[test]
fn a_cache_in_s3_is_imported_listed_or_by_closure_through_a_running_node() -> Result<()> {
    let fx = fixture();
    let tmp = tempfile::tempdir()?;
    let moto = start_moto(&tmp.path().join("moto.log"))?;
    upload(&moto, "cache", "sub", &fx.cache())?;
    let endpoint = moto.url.trim_start_matches("http://");
    let url = format!("s3://cache/sub?region=us-east-1&endpoint={endpoint}&scheme=http");
    let key = fx.trusted_pub.as_str();
    let n = fx.paths.len();

    // No node running: the bucket is listed, everything imported.
    let out = import(&url, &tmp.path().join("offline"), key, &[])?;
    ensure!(out.contains(&format!("imported {n} paths")), "{out}");

    // A running node: the top path's closure, through its gateway.
    let dir = tmp.path().join("gw");
    let gw = Gateway::start(&dir, &[], key)?;
    let out = import(&url, &dir, key, &[fx.path_named("top"), "--closure"])?;
    ensure!(
        out.contains("through the running node") && out.contains(&format!("imported {n} paths")),
        "{out}"
    );
    gw.wait_for("paths", n as u64)?;
    let client = ClientStore::new(&tmp.path().join("client"));
    check(
        &client.realise(&gw.url, key, &fx.paths, false),
        "nix-store -r from the node that imported from S3",
    )?;

    // And back: the node's paths exported to another bucket, which a
    // fresh store then imports (listing it, checking every signature).
    let make = Command::new(moto_bin("python")?)
        .args([
            "-c",
            "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='out')",
            &moto.url,
        ])
        .output()?;
    ensure!(make.status.success(), "{}", String::from_utf8_lossy(&make.stderr));
    let out_url = format!("s3://out/rebuilt?region=us-east-1&endpoint={endpoint}&scheme=http");
    let to = format!("--to={out_url}");
    let args = [
        "export",
        "--gateway",
        &gw.url,
        "--trusted-key",
        key,
        "--closure",
        &to,
        fx.path_named("top"),
    ];
    let (ok, text) = support::nixswarm(&args, &AWS)?;
    ensure!(ok && text.contains(&format!("exported {n} paths")), "{text}");
    let out = import(&out_url, &tmp.path().join("again"), key, &[])?;
    ensure!(out.contains(&format!("imported {n} paths")), "{out}");
    Ok(())
}
