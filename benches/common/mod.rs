//! Helpers shared by the benchmarks: nginx as the reference server, curl,
//! medians.
#![allow(dead_code)]

pub mod corpus;
pub mod floor;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

/// Deterministic pseudo-random bytes (xorshift).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub struct Nginx {
    child: Child,
    pub url: String,
    /// With [`Nginx::start_logged`]: one line per request,
    /// "URI BYTES_SENT MSEC REQUEST_TIME".
    pub access_log: Option<std::path::PathBuf>,
}

impl Nginx {
    /// Serves `root` on 127.0.0.1 (sendfile on), with its files under `work/nginx`.
    pub fn start(root: &Path, work: &Path) -> Result<Self> {
        Self::launch(root, work, false, None)
    }

    /// The same, keeping an access log of each request's URI and body bytes.
    pub fn start_logged(root: &Path, work: &Path) -> Result<Self> {
        Self::launch(root, work, true, None)
    }

    /// Serves `root` inside network namespace `ns` on `ip`:`port`, with an
    /// access log if `log`.
    pub fn start_in(root: &Path, work: &Path, ns: &str, (ip, port): (&str, u16), log: bool) -> Result<Self> {
        Self::launch(root, work, log, Some((ns, ip, port)))
    }

    fn launch(root: &Path, work: &Path, log: bool, at: Option<(&str, &str, u16)>) -> Result<Self> {
        let (ip, port) = match at {
            Some((_, ip, port)) => (ip.to_owned(), port),
            None => (
                "127.0.0.1".to_owned(),
                std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            ),
        };
        let dir = work.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root root;"
        } else {
            ""
        };
        let d = dir.display();
        let access_log = log.then(|| dir.join("access.log"));
        let logging = match &access_log {
            Some(p) => format!(
                "log_format bench '$request_uri $body_bytes_sent $msec $request_time'; access_log {} bench;",
                p.display()
            ),
            None => "access_log off;".to_owned(),
        };
        let conf = format!(
            "{user}\ndaemon off;\nworker_processes 2;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\nhttp {{ {logging} sendfile on; tcp_nopush on;\n\
             types {{ text/x-nix-narinfo narinfo; }} default_type application/octet-stream;\n\
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen {ip}:{port}; root {}; disable_symlinks off; }} }}\n",
            root.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = crate::support::netns::Net::command_in(at.map(|(ns, ..)| ns), nginx)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .spawn()?;
        let url = format!("http://{ip}:{port}");
        let ns = at.map(|(ns, ..)| ns.to_owned());
        let up = std::thread::spawn(move || -> Result<bool> {
            if let Some(ns) = ns {
                crate::support::netns::enter(&ns)?;
            }
            for _ in 0..100 {
                if std::net::TcpStream::connect((ip.as_str(), port)).is_ok() {
                    return Ok(true);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(false)
        });
        ensure!(
            up.join().map_err(|_| anyhow::anyhow!("panicked"))??,
            "nginx did not start"
        );
        Ok(Self { child, url, access_log })
    }
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers (a SIGKILLed master leaves
    /// them running); SIGKILL only if it has not exited within 5 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, nginx's master (`ip netns exec`
        // execs it).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `url` with curl; returns (seconds, bytes).
pub fn curl(url: &str) -> Result<(f64, u64)> {
    curl_in(None, url)
}

/// The same, from inside network namespace `ns` if there is one.
pub fn curl_in(ns: Option<&str>, url: &str) -> Result<(f64, u64)> {
    let out = crate::support::netns::Net::command_in(ns, "curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url])
        .output()?;
    ensure!(out.status.success(), "curl {url} failed");
    let s = String::from_utf8(out.stdout)?;
    let mut it = s.split_whitespace();
    Ok((it.next().context("time")?.parse()?, it.next().context("size")?.parse()?))
}

/// CPU seconds (user + system) process `pid` has used so far.
/// A scratch directory for a benchmark's nodes, Nix stores and servers:
/// `$BENCH_TMPDIR` if set (a tmpfs, say), else cargo's temporary directory
/// for benchmarks.
pub fn scratch() -> Result<tempfile::TempDir> {
    let dir =
        std::env::var_os("BENCH_TMPDIR").map_or_else(|| env!("CARGO_TARGET_TMPDIR").into(), std::path::PathBuf::from);
    Ok(tempfile::tempdir_in(dir)?)
}

/// The kernel's cost of creating `n` files of 64 KiB (the store's average
/// chunk) in a fresh directory under `dir`, in 256 subdirectories as the
/// chunk store lays them out: wall seconds and this process's system CPU
/// seconds. On the development machine's ext4 (mounted with `discard`)
/// it swings twentyfold with how many files were deleted near the
/// directory lately, so a benchmark that keeps chunks reports it beside
/// its figures.
pub fn file_creation_cost(dir: &Path, n: usize) -> Result<(f64, f64)> {
    use std::io::Write as _;
    let d = tempfile::tempdir_in(dir)?;
    let sys = || -> Result<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        Ok(fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0)
    };
    let data = vec![0x5a_u8; 64 << 10];
    let (t, s0) = (std::time::Instant::now(), sys()?);
    for i in 0..n {
        let sub = d.path().join(format!("{:02x}", i % 256));
        std::fs::create_dir_all(&sub)?;
        std::fs::File::create(sub.join(i.to_string()))?.write_all(&data)?;
    }
    Ok((t.elapsed().as_secs_f64(), sys()? - s0))
}

pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 13, "short /proc stat");
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((f[11].parse::<f64>()? + f[12].parse::<f64>()?) / hz)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}
