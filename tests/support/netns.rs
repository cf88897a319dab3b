//! A small internet in network namespaces, for the NAT tests: a switch
//! ("the internet", 198.18.0.0/24, a range set aside for network tests),
//! public hosts on it, and homes behind masquerading routers that drop
//! every unsolicited inbound connection. Every address exists only inside
//! these namespaces; they are deleted when the [`Net`] is dropped.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Where they or network
//! namespaces are missing, [`Net::new`] fails and says which.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

use super::delay::{DelayLine, Tap};

/// The namespaces of one test.
pub struct Net {
    prefix: String,
    namespaces: Vec<String>,
    homes: u8,
    /// The delay lines of [`Net::delayed`] hosts; stopped before the
    /// namespaces go.
    lines: Vec<DelayLine>,
}

/// How a home router maps its LAN's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Masquerade keeping source ports where it can (most home routers):
    /// hole punching works.
    PortPreserving,
    /// A random source port for every connection (`fully-random`): the
    /// address peers observe is never the one a new connection uses, so
    /// hole punching cannot work.
    Random,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Net {
    /// A fresh set of namespaces named after this process and `tag`.
    pub fn new(tag: &str) -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the NAT tests need root (network namespaces and nftables); scripts/test.sh runs them as root");
        }
        for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
            ensure!(
                Command::new(tool).arg("-V").output().is_ok(),
                "the NAT tests need `{tool}` (Debian package {package}); scripts/test.sh installs it"
            );
        }
        let mut net = Self {
            prefix: format!("nsw{}{tag}", std::process::id()),
            namespaces: Vec::new(),
            homes: 0,
            lines: Vec::new(),
        };
        net.add("inet")
            .context("cannot create a network namespace (ip netns add); the NAT tests need them")?;
        ip(&["-n", &net.ns("inet"), "link", "add", "name", "sw", "type", "bridge"])?;
        ip(&["-n", &net.ns("inet"), "link", "set", "sw", "up"])?;
        Ok(net)
    }

    /// The full name of namespace `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add(&mut self, name: &str) -> Result<String> {
        let ns = self.ns(name);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Plugs `ns`'s interface `dev` into the internet switch.
    fn plug(&self, ns: &str, dev: &str, port: &str, addr: &str) -> Result<()> {
        let inet = self.ns("inet");
        ip(&[
            "link", "add", "name", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", &inet,
        ])?;
        ip(&["-n", &inet, "link", "set", port, "master", "sw", "up"])?;
        ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
        ip(&["-n", ns, "link", "set", dev, "up"])
    }

    /// A host on the internet at 198.18.0.`n`; returns its namespace.
    pub fn public(&mut self, name: &str, n: u8) -> Result<String> {
        let ns = self.add(name)?;
        self.plug(&ns, "eth0", &format!("p{n}"), &format!("198.18.0.{n}/24"))?;
        Ok(ns)
    }

    /// A host on the internet at 198.18.0.`n` whose link to the switch
    /// passes through a userspace delay line, `delay` late each way
    /// (1500-byte MTU). Returns its namespace.
    pub fn delayed(&mut self, name: &str, n: u8, delay: std::time::Duration) -> Result<String> {
        let ns = self.add(name)?;
        let inet = self.ns("inet");
        let port = format!("d{n}");
        let host_end = Tap::open(Some(&ns), "eth0")?;
        let switch_end = Tap::open(Some(&inet), &port)?;
        self.lines.push(DelayLine::start(host_end, switch_end, delay)?);
        ip(&["-n", &inet, "link", "set", &port, "mtu", "1500", "master", "sw", "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("198.18.0.{n}/24"), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "mtu", "1500", "up"])?;
        Ok(ns)
    }

    /// Caps what `ns` sends on `dev` at `mbit` Mbit/s (a token bucket, as
    /// a home uplink).
    pub fn cap_uplink(ns: &str, dev: &str, mbit: u32) -> Result<()> {
        let rate = format!("{mbit}mbit");
        let out = Self::command(ns, "tc")
            .args(["qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate])
            .args(["burst", "64kb", "latency", "200ms"])
            .output()
            .context("running tc (iproute2)")?;
        ensure!(
            out.status.success(),
            "tc tbf on {dev} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// A home: a router at 198.18.0.`n` masquerading for one host at
    /// 10.`k`.0.2 behind it. Returns the host's namespace.
    pub fn home(&mut self, name: &str, n: u8, nat: Nat) -> Result<String> {
        self.homes += 1;
        let k = self.homes;
        let router = self.add(&format!("{name}-router"))?;
        self.plug(&router, "wan", &format!("p{n}"), &format!("198.18.0.{n}/24"))?;
        let host = self.add(name)?;
        ip(&[
            "link", "add", "name", "lan", "netns", &router, "type", "veth", "peer", "name", "eth0", "netns", &host,
        ])?;
        ip(&["-n", &router, "addr", "add", &format!("10.{k}.0.1/24"), "dev", "lan"])?;
        ip(&["-n", &router, "link", "set", "lan", "up"])?;
        ip(&["-n", &host, "addr", "add", &format!("10.{k}.0.2/24"), "dev", "eth0"])?;
        ip(&["-n", &host, "link", "set", "eth0", "up"])?;
        ip(&["-n", &host, "route", "add", "default", "via", &format!("10.{k}.0.1")])?;
        let out = Command::new("ip")
            .args(["netns", "exec", &router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            .output()?;
        ensure!(
            out.status.success(),
            "ip_forward: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let masquerade = match nat {
            Nat::PortPreserving => "masquerade",
            Nat::Random => "masquerade fully-random",
        };
        let rules = format!(
            "table ip nat {{
  chain nat_out {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"wan\" {masquerade}
  }}
}}
table ip filter {{
  chain lan_only {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname \"lan\" oifname \"wan\" accept
  }}
  chain router_in {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname \"lo\" accept
    iifname \"lan\" accept
  }}
}}
"
        );
        Self::nft(&router, &rules)?;
        Ok(host)
    }

    /// Loads nftables `rules` (or commands) in namespace `ns`.
    pub fn nft(ns: &str, rules: &str) -> Result<()> {
        let mut nft = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        nft.stdin.take().context("nft stdin")?.write_all(rules.as_bytes())?;
        let out = nft.wait_with_output()?;
        ensure!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// `program` run inside namespace `ns`.
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// `program`, inside namespace `ns` if there is one.
    pub fn command_in(ns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match ns {
            Some(ns) => Self::command(ns, program),
            None => Command::new(program),
        }
    }

    /// Bytes received plus sent on `dev` in `ns`.
    pub fn traffic(ns: &str, dev: &str) -> Result<u64> {
        let read = |what: &str| -> Result<u64> {
            let out = Self::command(ns, "cat")
                .arg(Path::new("/sys/class/net").join(dev).join("statistics").join(what))
                .output()?;
            ensure!(out.status.success(), "{what} of {dev} in {ns}");
            Ok(String::from_utf8(out.stdout)?.trim().parse()?)
        };
        Ok(read("rx_bytes")? + read("tx_bytes")?)
    }
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(Path::new("/run/netns").join(ns)).with_context(|| format!("namespace {ns}"))?;
    // SAFETY: setns(2) on an open namespace file; it affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(r == 0, "setns {ns}: {}", std::io::Error::last_os_error());
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        self.lines.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
