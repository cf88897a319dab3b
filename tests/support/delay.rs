//! A userspace delay line between two TAP devices, for WAN round trips on
//! machines without netem: every Ethernet frame read from one end is
//! written to the other a fixed time later, in order, at the MTU the
//! devices have (1500 bytes: the kernel hands a TAP opened without
//! `IFF_VNET_HDR` no offloaded super-frames). A frame that finds the line's
//! queue full is dropped, as a router's full buffer would.
//!
//! The TAP devices can live in different network namespaces: [`Tap::open`]
//! creates each one from a thread that entered its namespace, and the file
//! keeps working from any thread afterwards.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

/// One TAP device's file.
pub struct Tap(File);

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Creates TAP device `name` in network namespace `ns` (this process's
    /// own namespace if `None`). The device is down and has no address.
    pub fn open(ns: Option<&str>, name: &str) -> Result<Self> {
        ensure!(name.len() < libc::IFNAMSIZ, "interface name {name} too long");
        let (ns, name) = (ns.map(str::to_owned), name.to_owned());
        std::thread::spawn(move || -> Result<Self> {
            if let Some(ns) = &ns {
                super::netns::enter(ns)?;
            }
            let f = File::options()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .context("opening /dev/net/tun (the WAN testbed needs TAP devices)")?;
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: IFF_TAP | IFF_NO_PI,
                _pad: [0; 22],
            };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq
            // lays out (name, flags, padding to its full size).
            let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) };
            ensure!(r == 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
            Ok(Self(f))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the TAP thread panicked"))?
    }
}

/// Frames in flight in one direction.
struct Queue {
    frames: Mutex<VecDeque<(Instant, Vec<u8>)>>,
    ready: Condvar,
}

/// Counters of one direction.
#[derive(Default)]
pub struct Counters {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running delay line; dropping it stops its threads.
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// a → b and b → a.
    pub counters: [Arc<Counters>; 2],
}

/// Frames a direction may hold: 8 MiB of full-size frames, more than the
/// bandwidth-delay product of 500 MB/s over 10 ms.
const QUEUE_FRAMES: usize = 5600;

impl DelayLine {
    /// Forwards frames between `a` and `b`, each `delay` late.
    pub fn start(a: Tap, b: Tap, delay: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (a2, b2) = (a.0.try_clone()?, b.0.try_clone()?);
        let counters = [Arc::new(Counters::default()), Arc::new(Counters::default())];
        let mut threads = Vec::new();
        for (from, to, c) in [(a.0, b2, counters[0].clone()), (b.0, a2, counters[1].clone())] {
            let q = Arc::new(Queue {
                frames: Mutex::new(VecDeque::new()),
                ready: Condvar::new(),
            });
            let (qr, sr) = (q.clone(), stop.clone());
            threads.push(std::thread::spawn(move || read_loop(from, &qr, delay, &sr, &c)));
            let sw = stop.clone();
            threads.push(std::thread::spawn(move || write_loop(to, &q, &sw)));
        }
        Ok(Self {
            stop,
            threads,
            counters,
        })
    }
}

fn read_loop(mut from: File, q: &Queue, delay: Duration, stop: &AtomicBool, c: &Counters) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok(n) = from.read(&mut buf) else { return };
        let due = Instant::now() + delay;
        let mut frames = q.frames.lock().unwrap();
        if frames.len() >= QUEUE_FRAMES {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        frames.push_back((due, buf[..n].to_vec()));
        c.frames.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
        drop(frames);
        q.ready.notify_one();
    }
}

fn write_loop(mut to: File, q: &Queue, stop: &AtomicBool) {
    loop {
        let next = {
            let mut frames = q.frames.lock().unwrap();
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(f) = frames.pop_front() {
                    break f;
                }
                frames = q.ready.wait_timeout(frames, Duration::from_millis(100)).unwrap().0;
            }
        };
        let (due, frame) = next;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // A frame the device refuses (it is down, or gone) is lost, as on a wire.
        let _ = to.write(&frame);
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
