//! Progress of a long command (import, export, pin): one line rewritten in
//! place on a terminal; elsewhere (a log, a pipe) a plain line every
//! [`PLAIN_EVERY`].

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

/// How often a plain progress line is written when stderr is no terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// A progress line on stderr.
#[derive(Debug)]
pub struct Progress {
    terminal: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// `done` of `total` items, `bytes` so far, working on `what`.
    pub fn update(&mut self, done: usize, total: usize, bytes: u64, what: &str) {
        if self.terminal {
            eprint!("\r\x1b[K[{done}/{total}] {} MiB  {what}", bytes >> 20);
            self.shown = true;
        } else if self.last.elapsed() >= PLAIN_EVERY {
            self.last = Instant::now();
            eprintln!("{done} of {total} paths, {} MiB", bytes >> 20);
        }
    }

    /// Ends the line in place before other output.
    pub fn interrupt(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}
