//! The WAN testbed's own promises (`tests/support/delay.rs`,
//! `Net::delayed`, `Net::cap_uplink`), which `scripts/bench-wan.sh` rests
//! on: a delayed host is a round trip of twice its delay from the switch,
//! two delayed hosts twice that from each other, frames are at most 1500
//! bytes, and a capped uplink never sends faster than its cap. Only lower
//! bounds on time are asserted: a busy machine can only add to them.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use support::netns::{self, Net};

/// Runs `f` on a thread inside namespace `ns`.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// A listener in `ns` on `ip`:7000 that reads everything each connection sends.
fn sink(ns: &str, ip: &'static str) -> Result<()> {
    let l = inside(ns, move || Ok(TcpListener::bind((ip, 7000))?))?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || std::io::copy(&mut s, &mut std::io::sink()));
        }
    });
    Ok(())
}

/// The fastest of five TCP handshakes from `ns` to `ip`:7000: one round trip.
fn rtt(ns: &str, ip: &'static str) -> Result<Duration> {
    inside(ns, move || {
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let s =
                TcpStream::connect_timeout(&(ip.parse::<std::net::IpAddr>()?, 7000).into(), Duration::from_secs(5))?;
            best = best.min(t.elapsed());
            drop(s);
        }
        Ok(best)
    })
}

fn max_segment(s: &TcpStream) -> Result<u32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: TCP_MAXSEG writes one c_int into v.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    ensure!(r == 0, "getsockopt: {}", std::io::Error::last_os_error());
    Ok(u32::try_from(v)?)
}

#[test]
fn delayed_hosts_are_their_delay_away_at_internet_mtu() -> Result<()> {
    let mut net = Net::new("wan")?;
    let a = net.delayed("a", 1, Duration::from_millis(10))?;
    let b = net.delayed("b", 2, Duration::from_millis(10))?;
    let up = net.public("up", 200)?;
    sink(&up, "198.18.0.200")?;
    sink(&b, "198.18.0.2")?;

    let one_hop = rtt(&a, "198.18.0.200")?;
    let two_hops = rtt(&a, "198.18.0.2")?;
    eprintln!("round trips: one delayed hop {one_hop:?}, two {two_hops:?}");
    ensure!(one_hop >= Duration::from_millis(20), "one delayed hop took {one_hop:?}");
    ensure!(
        two_hops >= Duration::from_millis(40),
        "two delayed hops took {two_hops:?}"
    );
    ensure!(two_hops < Duration::from_secs(2), "two delayed hops took {two_hops:?}");

    // 1500-byte frames: TCP's segments carry at most 1460 bytes, and 4 MiB
    // arrive whole (the line neither splits nor drops what fits).
    let mss = inside(&a, || {
        let mut s = TcpStream::connect("198.18.0.2:7000")?;
        s.write_all(&vec![7u8; 4 << 20])?;
        max_segment(&s)
    })?;
    ensure!(
        mss <= 1460,
        "segments of {mss} bytes: the line passes frames over 1500 bytes"
    );
    Ok(())
}

#[test]
fn a_capped_uplink_sends_no_faster_than_its_cap() -> Result<()> {
    let mut net = Net::new("cap")?;
    let a = net.delayed("a", 1, Duration::from_millis(5))?;
    let b = net.delayed("b", 2, Duration::from_millis(5))?;
    Net::cap_uplink(&a, "eth0", 20)?;
    let done = inside(&b, || Ok(TcpListener::bind("198.18.0.2:7001")?))?;
    let reader = std::thread::spawn(move || -> Result<(usize, Instant)> {
        let (mut s, _) = done.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok((got.len(), Instant::now()))
    });
    const LEN: usize = 5 << 20;
    let start = inside(&a, || {
        let mut s = TcpStream::connect("198.18.0.2:7001")?;
        let t = Instant::now();
        s.write_all(&vec![1u8; LEN])?;
        Ok(t)
    })?;
    let (len, end) = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    ensure!(len == LEN, "received {len} of {LEN} bytes");
    let took = end.duration_since(start);
    let mbit = (LEN * 8) as f64 / took.as_secs_f64() / 1e6;
    eprintln!("5 MiB over a 20 Mbit/s uplink: {took:?} ({mbit:.1} Mbit/s)");
    // The token bucket's burst (64 KiB) is the only slack above the rate.
    ensure!(mbit <= 21.0, "the capped uplink carried {mbit:.1} Mbit/s");
    Ok(())
}
