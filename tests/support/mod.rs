//! Shared end-to-end test harness: the fixture cache built by Nix, a real
//! static HTTP server for it, `nixswarm run` as a child process, and the
//! real Nix client (Debian's nix-bin) substituting through the gateway.
#![allow(dead_code, clippy::unwrap_used)]

pub mod delay;
pub mod netns;
pub mod probe;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

/// The signed binary cache the tests substitute from.
pub struct Fixture {
    pub dir: PathBuf,
    pub paths: Vec<String>,
    pub trusted_pub: String,
}

impl Fixture {
    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }
    pub fn untrusted_cache(&self) -> PathBuf {
        self.dir.join("cache-untrusted")
    }
    /// The fixture store path named `name` (e.g. "leaf-1").
    pub fn path_named(&self, name: &str) -> &str {
        self.paths
            .iter()
            .find(|p| p.ends_with(&format!("-{name}")))
            .map(String::as_str)
            .expect("fixture path")
    }
}

fn require_nix() {
    let found = Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "nix-store not found: the end-to-end tests need Debian's nix-bin (scripts/test.sh installs it)"
    );
}

/// Fails the test with a clear message if Nix is not installed.
pub fn fixture_nix_available() {
    require_nix();
}

/// Every narinfo in a binary cache directory.
pub fn cache_narinfos(dir: &Path) -> Result<Vec<nixswarm_protocol::NarInfo>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "narinfo") {
            let text = std::fs::read_to_string(&p)?;
            out.push(nixswarm_protocol::NarInfo::parse(&text).with_context(|| p.display().to_string())?);
        }
    }
    Ok(out)
}

/// A log without its terminal colour codes.
pub fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        rest = rest.find('m').map_or("", |m| &rest[m + 1..]);
    }
    out.push_str(rest);
    out
}

/// Builds (once per target dir) the fixture cache with Nix.
pub fn fixture() -> Fixture {
    require_nix();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixture-cache-v1");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/make-cache.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(&dir)
        .status()
        .expect("running make-cache.sh");
    assert!(
        status.success(),
        "make-cache.sh failed: see the logs in {}",
        dir.display()
    );
    let paths = std::fs::read_to_string(dir.join("paths")).expect("fixture paths");
    let trusted_pub = std::fs::read_to_string(dir.join("keys/trusted.pub")).expect("fixture key");
    Fixture {
        paths: paths.lines().map(str::to_owned).collect(),
        trusted_pub: trusted_pub.trim().to_owned(),
        dir,
    }
}

/// A real HTTP server (axum + tower-http) serving a directory, in its own
/// thread with its own runtime; stopped when dropped. It keeps a log of the
/// requests it got (`GET /nar/...`), as an upstream's access log would.
pub struct StaticServer {
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Sent>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticServer {
    pub fn start(dir: &Path) -> Self {
        Self::start_in(dir, None)
    }

    /// The same, listening on 127.0.0.1 of network namespace `ns`.
    pub fn start_in(dir: &Path, ns: Option<&str>) -> Self {
        Self::start_with(dir, ns, None)
    }

    /// The same, sending each response body at most `rate` bytes a second
    /// (a slower upstream than loopback).
    pub fn start_paced(dir: &Path, rate: u64) -> Self {
        Self::start_with(dir, None, Some(rate))
    }

    fn start_with(dir: &Path, ns: Option<&str>, rate: Option<u64>) -> Self {
        let dir = dir.to_owned();
        let ns = ns.map(str::to_owned);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sent_log = sent.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let logger = log.clone();
        let thread = std::thread::spawn(move || {
            // Threads the runtime starts inherit this thread's namespace.
            if let Some(ns) = ns {
                netns::enter(&ns).unwrap();
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let record = tower::util::MapRequestLayer::new(move |req: axum::extract::Request| {
                    logger
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", req.method(), req.uri().path()));
                    req
                });
                let count =
                    axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
                        let sent_log = sent_log.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let resp = next.run(req).await;
                            count_body(resp, path, sent_log, rate)
                        }
                    });
                let app = axum::Router::new()
                    .fallback_service(tower_http::services::ServeDir::new(dir))
                    .layer(count)
                    .layer(record);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            url: format!("http://{addr}"),
            log,
            sent,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every request so far, as "METHOD /path", in order.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Every response body finished or dropped so far: how much of it was
    /// written before the client had all of it or went away.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One response body as the server wrote it, like an access log's
/// `$body_bytes_sent` beside the file's length.
#[derive(Debug, Clone)]
pub struct Sent {
    pub path: String,
    /// Content-Length, if the response had one.
    pub len: Option<u64>,
    pub sent: u64,
}

impl Sent {
    /// True if the client went away before the whole body was written.
    pub fn cut_short(&self) -> bool {
        self.len.is_some_and(|l| self.sent < l)
    }
}

/// Records a body's bytes as they go out (when the body is dropped), and
/// paces them to `rate` bytes a second if given.
fn count_body(
    resp: axum::response::Response,
    path: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Sent>>>,
    rate: Option<u64>,
) -> axum::response::Response {
    use futures::StreamExt as _;
    struct Count {
        entry: Sent,
        log: std::sync::Arc<std::sync::Mutex<Vec<Sent>>>,
    }
    impl Drop for Count {
        fn drop(&mut self) {
            self.log.lock().unwrap().push(self.entry.clone());
        }
    }
    let len = resp
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (parts, body) = resp.into_parts();
    let count = Count {
        entry: Sent { path, len, sent: 0 },
        log,
    };
    let stream = futures::stream::unfold((body.into_data_stream(), count), move |(mut s, mut count)| async move {
        let piece = s.next().await?;
        if let Ok(b) = &piece {
            if let Some(rate) = rate {
                tokio::time::sleep(Duration::from_secs_f64(b.len() as f64 / rate as f64)).await;
            }
            count.entry.sent += b.len() as u64;
        }
        Some((piece, (s, count)))
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// `nixswarm run` as a child process: gateway on 127.0.0.1:0, node on
/// 127.0.0.1 TCP port 0, mDNS off, installed paths not shared unless
/// asked for.
pub struct Gateway {
    pub url: String,
    pub data_dir: PathBuf,
    /// The node's addresses, with /p2p/<peer id>.
    pub node_addrs: Vec<String>,
    /// The network namespace it runs in (its URL is that namespace's).
    pub netns: Option<String>,
    child: Child,
}

impl Gateway {
    /// Starts the gateway with these upstreams, trusting `key`.
    pub fn start(data_dir: &Path, upstreams: &[&str], key: &str) -> Result<Self> {
        Self::start_with(data_dir, upstreams, key, &[])
    }

    /// Same, with extra flags for `nixswarm run`.
    pub fn start_with(data_dir: &Path, upstreams: &[&str], key: &str, extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixswarm"));
        cmd.args(["run", "--no-mdns", "--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
            // Every node is on 127.0.0.1: its loopback address is the one to dial.
            .env("NIXSWARM_ANNOUNCE_PRIVATE", "true");
        Self::launch(cmd, None, data_dir, upstreams, key, extra)
    }

    /// Starts it inside network namespace `ns`, listening for peers on
    /// `listen`, advertising only the addresses the node finds reachable
    /// (as on the internet).
    pub fn start_in(
        ns: &str,
        listen: &[&str],
        data_dir: &Path,
        upstreams: &[&str],
        key: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let mut cmd = netns::Net::command(ns, env!("CARGO_BIN_EXE_nixswarm"));
        cmd.args(["run", "--no-mdns"]);
        for l in listen {
            cmd.args(["--p2p-listen", l]);
        }
        Self::launch(cmd, Some(ns), data_dir, upstreams, key, extra)
    }

    fn launch(
        mut cmd: Command,
        netns: Option<&str>,
        data_dir: &Path,
        upstreams: &[&str],
        key: &str,
        extra: &[&str],
    ) -> Result<Self> {
        // The test key stands for cache.nixos.org's: trusted and shared.
        cmd.args([
            "--gateway-listen",
            "127.0.0.1:0",
            "--trusted-key",
            key,
            "--share-key",
            key,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        // Never index this machine's own /nix/store, and serve peers at
        // full speed (flags override).
        .env("NIXSWARM_SHARE_INSTALLED", "false")
        .env("NIXSWARM_UPLOAD_LIMIT", "0")
        // No SSDP multicast from tests.
        .env("NIXSWARM_NO_UPNP", "true")
        .env(
            "RUST_LOG",
            std::env::var("NIXSWARM_CHILD_LOG")
                .unwrap_or_else(|_| "info,nixswarm_gateway=debug,nixswarm_node=debug".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data_dir.with_extension("log")).context("gateway log")?);
        if upstreams.is_empty() {
            cmd.arg("--no-upstream");
        }
        for u in upstreams {
            cmd.args(["--upstream", u]);
        }
        let mut child = cmd.spawn().context("starting nixswarm")?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut node_addrs = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "nixswarm exited during start-up; the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if let Some(a) = line.trim().strip_prefix("nixswarm node listening on ") {
                node_addrs.push(a.to_owned());
            } else if let Some(url) = line.trim().strip_prefix("nixswarm gateway listening on ") {
                return Ok(Self {
                    url: url.to_owned(),
                    data_dir: data_dir.to_owned(),
                    node_addrs,
                    netns: netns.map(str::to_owned),
                    child,
                });
            }
        }
    }

    /// JSON from `/status`.
    pub fn status(&self) -> Result<String> {
        let out = self
            .command(env!("CARGO_BIN_EXE_nixswarm"))
            .args(["status", "--json", "--gateway", &self.url])
            .output()?;
        ensure!(
            out.status.success(),
            "nixswarm status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `program`, run where the gateway runs (its namespace, if any).
    pub fn command(&self, program: &str) -> Command {
        netns::Net::command_in(self.netns.as_deref(), program)
    }

    /// The body of `GET path` from the gateway (curl, in its namespace).
    pub fn get(&self, path: &str) -> Result<String> {
        run_ok(
            self.command("curl").args(["-sSf", &format!("{}{path}", self.url)]),
            &format!("GET {path}"),
        )
    }

    /// A number from `/status` (e.g. "peers", "provider_records").
    pub fn status_number(&self, field: &str) -> Result<u64> {
        let status = self.status()?;
        Ok(status
            .split(&format!("\"{field}\":"))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0))
    }

    /// Waits until a `/status` number reaches `n` (20 s at most).
    pub fn wait_for(&self, field: &str, n: u64) -> Result<()> {
        for _ in 0..200 {
            if self.status_number(field)? >= n {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{field} never reached {n}: {}", self.status()?)
    }

    /// Stops the gateway with SIGTERM and waits for it.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        ensure!(status.success(), "gateway exited with {status}");
        Ok(())
    }

    /// The process id (for memory figures in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `nixswarm ARGS` with `env` added: whether it succeeded, and its
/// standard output followed by its standard error.
pub fn nixswarm(args: &[&str], env: &[(&str, &str)]) -> Result<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .context("running nixswarm")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Runs `c`; its standard output, or an error naming `what` with its
/// standard error.
pub fn run_ok(c: &mut Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    ensure!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// The HTTP status of a GET of `url`.
pub fn http_status(url: &str) -> Result<u16> {
    http_status_with("GET", url, &[])
}

/// The HTTP status of `method url` sent with `headers` ("Name: value").
pub fn http_status_with(method: &str, url: &str, headers: &[String]) -> Result<u16> {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
    for h in headers {
        c.args(["-H", h]);
    }
    Ok(run_ok(c.arg(url), &format!("curl {method} {url}"))?.trim().parse()?)
}

/// GETs `url` with curl and returns the body.
pub fn http_get(url: &str) -> Result<String> {
    run_ok(Command::new("curl").args(["-sf", url]), &format!("curl {url}"))
}

/// An upstream URL where nothing listens.
pub fn down_upstream() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = l.local_addr().expect("its address");
    format!("http://{addr}")
}

/// A fresh client store (`local?root=DIR`) with its own Nix disk cache.
pub struct ClientStore {
    pub root: PathBuf,
    xdg: PathBuf,
    /// Nix runs in this network namespace.
    netns: Option<String>,
}

impl ClientStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            root: dir.join("root"),
            xdg: dir.join("xdg"),
            netns: None,
        }
    }

    /// A client store whose Nix runs in network namespace `ns`.
    pub fn new_in(dir: &Path, ns: &str) -> Self {
        Self {
            netns: Some(ns.to_owned()),
            ..Self::new(dir)
        }
    }

    fn store(&self) -> String {
        format!("local?root={}", self.root.display())
    }

    fn nix(&self, program: &str) -> Command {
        let mut c = netns::Net::command_in(self.netns.as_deref(), program);
        c.env("XDG_CACHE_HOME", &self.xdg)
            .env("NIX_CONFIG", "build-users-group =\n");
        c
    }

    fn common(c: &mut Command, substituter: &str, key: &str) {
        c.args(["--option", "substituters", substituter])
            .args(["--option", "trusted-public-keys", key])
            .args(["--option", "require-sigs", "true"])
            .args(["--option", "connect-timeout", "5"])
            .args(["--max-jobs", "16"]);
    }

    /// `nix-store -r PATHS` substituting only from `substituter`.
    pub fn realise(&self, substituter: &str, key: &str, paths: &[String], keep_going: bool) -> Output {
        self.realise_with(substituter, key, paths, keep_going, &[])
    }

    /// The same, with more `nix-store` arguments (options).
    pub fn realise_with(
        &self,
        substituter: &str,
        key: &str,
        paths: &[String],
        keep_going: bool,
        extra: &[&str],
    ) -> Output {
        let mut c = self.nix("nix-store");
        c.args(["--store", &self.store()]);
        Self::common(&mut c, substituter, key);
        c.args(extra);
        if keep_going {
            c.arg("--keep-going");
        }
        c.arg("-r").args(paths).output().expect("running nix-store")
    }

    /// `nix copy --from SUBSTITUTER --to THIS_STORE PATHS`.
    pub fn copy_from(&self, substituter: &str, key: &str, paths: &[String]) -> Output {
        let mut c = self.nix("nix");
        c.args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--from",
            substituter,
            "--to",
            &self.store(),
        ]);
        c.args([
            "--option",
            "trusted-public-keys",
            key,
            "--option",
            "require-sigs",
            "true",
        ]);
        c.args(["--option", "substituters", ""]);
        c.args(paths).output().expect("running nix copy")
    }

    /// `nix-store --add FILE`: a content-addressed path, unsigned.
    pub fn add(&self, file: &Path) -> Result<String> {
        let mut c = self.nix("nix-store");
        c.args(["--store", &self.store(), "--add"]).arg(file);
        Ok(run_ok(&mut c, "nix-store --add")?.trim().to_owned())
    }

    /// `nix-store --add-fixed sha256 FILE`: a flat content-addressed path
    /// (`CA: fixed:sha256:...`), unsigned.
    pub fn add_flat(&self, file: &Path) -> Result<String> {
        let mut c = self.nix("nix-store");
        c.args(["--store", &self.store(), "--add-fixed", "sha256"]).arg(file);
        Ok(run_ok(&mut c, "nix-store --add-fixed")?.trim().to_owned())
    }

    /// `builtins.toFile NAME TEXT`: a text content-addressed path
    /// (`CA: text:sha256:...`), unsigned.
    pub fn to_file(&self, name: &str, text: &str) -> Result<String> {
        let mut c = self.nix("nix-instantiate");
        c.args(["--store", &self.store(), "--eval", "--read-write-mode", "--json", "-E"])
            .arg(format!("builtins.toFile {name:?} {text:?}"));
        Ok(serde_json::from_str(&run_ok(&mut c, "nix-instantiate --eval")?)?)
    }

    /// `nix copy --to file://DIR?compression=none PATHS`: an unsigned binary
    /// cache of these paths.
    pub fn copy_to_cache(&self, dir: &Path, paths: &[String]) -> Result<()> {
        let mut c = self.nix("nix");
        c.args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--store",
            &self.store(),
        ])
        .arg("--to")
        .arg(format!("file://{}?compression=none", dir.display()))
        .args(paths);
        run_ok(&mut c, "nix copy --to").map(drop)
    }

    /// Builds `expr` (a derivation using /bin/sh) in this store: unsigned.
    pub fn build(&self, expr: &str) -> Result<String> {
        let mut c = self.nix("nix-build");
        c.args(["--store", &self.store(), "--no-out-link"])
            .args(["--option", "substituters", ""])
            .args(["--option", "sandbox", "true"])
            .args(["--option", "extra-sandbox-paths", "/bin /usr /lib /lib64"])
            .args(["-E", expr]);
        Ok(run_ok(&mut c, "nix-build")?.trim().to_owned())
    }

    /// `nix-store --delete PATH` (garbage-collects one path).
    pub fn delete(&self, path: &str) -> Result<()> {
        let mut c = self.nix("nix-store");
        c.args(["--store", &self.store(), "--delete", path]);
        run_ok(&mut c, "nix-store --delete").map(drop)
    }

    /// The subset of `paths` that is valid in this store.
    pub fn valid(&self, paths: &[String]) -> Vec<String> {
        paths
            .iter()
            .filter(|p| {
                let mut c = self.nix("nix-store");
                c.args(["--store", &self.store(), "--check-validity", p]);
                c.stderr(Stdio::null()).status().is_ok_and(|s| s.success())
            })
            .cloned()
            .collect()
    }

    /// Checks that every valid path's files hash to its registered NarHash.
    pub fn verify_contents(&self, paths: &[String]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut c = self.nix("nix-store");
        c.args(["--store", &self.store(), "--verify-path"]).args(paths);
        let out = c.output()?;
        if !out.status.success() {
            bail!(
                "nix-store --verify-path failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Runs `nix-store -r` up to `attempts` times until every path is valid
/// (Nix's own behaviour is to fail a path whose download broke after bytes
/// were written; a second run is how a user retries).
pub fn realise_with_retries(
    client: &ClientStore,
    gw: &str,
    key: &str,
    paths: &[String],
    attempts: usize,
) -> Result<usize> {
    for attempt in 1..=attempts {
        let out = client.realise(gw, key, paths, true);
        if out.status.success() {
            return Ok(attempt);
        }
        eprintln!("attempt {attempt}: {}", String::from_utf8_lossy(&out.stderr));
    }
    bail!("paths still not valid after {attempts} attempts")
}

/// Explains a failed Nix command.
pub fn check(out: &Output, what: &str) -> Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Waits until nothing listens on `url` any more.
pub fn assert_down(url: &str) {
    let addr = url.trim_start_matches("http://");
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if std::net::TcpStream::connect(addr).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{url} still accepts connections");
}

/// Opens a stopped gateway's store and checks that every path in it is
/// trusted and reads back as its narinfo says (NarSize, NarHash and, for a
/// content-addressed path, its contents). Returns the stored hashes.
pub fn audit_gateway_store(
    data_dir: &Path,
    key: &nixswarm_protocol::PublicKey,
) -> Result<std::collections::HashSet<String>> {
    use nixswarm_node::{ChunkStore, StoreOptions};
    use nixswarm_protocol::NarCheck;
    let store = ChunkStore::open(&data_dir.join("store"), StoreOptions::with_quota(u64::MAX))?;
    let mut seen = std::collections::HashSet::new();
    for hash in store.list()? {
        let handle = store.open_nar(&hash)?.context("listed but not openable")?;
        ensure!(
            handle.narinfo.trust(std::slice::from_ref(key)).is_some(),
            "stored narinfo for {hash} is untrusted"
        );
        let mut check = NarCheck::new(&handle.narinfo);
        for piece in handle.reader(0, u64::MAX) {
            check.update(&piece?).with_context(|| format!("stored NAR of {hash}"))?;
        }
        check.finish().with_context(|| format!("stored NAR of {hash}"))?;
        seen.insert(hash.to_string());
    }
    Ok(seen)
}

/// `nixswarm import` of a fixture cache (its 29 paths) into `data_dir`.
pub fn import(data_dir: &std::path::Path, cache: &std::path::Path, key: &str) -> Result<()> {
    import_paths(data_dir, cache, key, 29)
}

/// Imports a cache of `paths` paths into a data dir with `nixswarm import`.
pub fn import_paths(data_dir: &std::path::Path, cache: &std::path::Path, key: &str, paths: usize) -> Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nixswarm"))
        .args([
            "import",
            &format!("file://{}", cache.display()),
            "--trusted-key",
            key,
            "--data-dir",
        ])
        .arg(data_dir)
        .output()?;
    ensure!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(stdout.contains(&format!("imported {paths} paths")), "{stdout}");
    Ok(())
}

/// Copies a directory tree (a binary cache, a data dir).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Where a binary cache keeps the narinfo of a store path.
pub fn narinfo_file(cache: &Path, path: &str) -> PathBuf {
    cache.join(format!(
        "{}.narinfo",
        &path["/nix/store/".len().."/nix/store/".len() + 32]
    ))
}

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}
