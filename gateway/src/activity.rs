//! What the dashboard shows besides counters: the most requested paths and
//! the latest warnings and errors. Both are bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

/// Paths counted at most (the least requested one makes room).
pub const MAX_COUNTED: usize = 1024;
/// Paths shown.
pub const TOP: usize = 10;
/// Messages kept.
pub const MAX_RECENT: usize = 50;

/// Paths handed to the node by `nixswarm import` (for the dashboard).
#[derive(Debug, Default)]
pub struct Imports {
    running: std::sync::atomic::AtomicU64,
    stored: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

/// One import in progress; counted as running until dropped.
#[derive(Debug)]
pub struct Importing<'a>(&'a Imports);

impl Imports {
    pub fn start(&self) -> Importing<'_> {
        self.running.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Importing(self)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({ "running": n(&self.running), "stored": n(&self.stored), "refused": n(&self.refused) })
    }
}

impl Importing<'_> {
    /// The path was stored (else, when dropped, it counts as refused).
    pub fn stored(self) {
        self.0.stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        std::mem::forget(self);
    }
}

impl Drop for Importing<'_> {
    fn drop(&mut self) {
        self.0.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.running.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Requests per store path (narinfo answers).
#[derive(Debug, Default)]
pub struct TopPaths(Mutex<HashMap<String, u64>>);

impl TopPaths {
    pub fn hit(&self, path: &str) {
        let Ok(mut m) = self.0.lock() else { return };
        if !m.contains_key(path)
            && m.len() >= MAX_COUNTED
            && let Some(least) = m.iter().min_by_key(|(_, n)| **n).map(|(p, _)| p.clone())
        {
            m.remove(&least);
        }
        *m.entry(path.to_owned()).or_default() += 1;
    }

    /// The [`TOP`] paths, most requested first.
    pub fn top(&self) -> Vec<(String, u64)> {
        let Ok(m) = self.0.lock() else { return Vec::new() };
        let mut v: Vec<(String, u64)> = m.iter().map(|(p, n)| (p.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(TOP);
        v
    }
}

/// The latest warnings and errors of this process (a tracing layer in the
/// binary fills it).
#[derive(Debug, Default)]
pub struct RecentLog(Mutex<VecDeque<(u64, String, String)>>);

impl RecentLog {
    /// The process's log.
    pub fn global() -> &'static RecentLog {
        static LOG: OnceLock<RecentLog> = OnceLock::new();
        LOG.get_or_init(RecentLog::default)
    }

    pub fn push(&self, level: &str, message: String) {
        let Ok(mut q) = self.0.lock() else { return };
        if q.len() >= MAX_RECENT {
            q.pop_front();
        }
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        q.push_back((at, level.to_owned(), message));
    }

    /// Newest first, as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let Ok(q) = self.0.lock() else { return json!([]) };
        q.iter()
            .rev()
            .map(|(at, level, message)| json!({ "at": at, "level": level, "message": message }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_is_ordered_and_counting_is_bounded() {
        let t = TopPaths::default();
        for (p, n) in [("a", 3), ("b", 5), ("c", 1)] {
            for _ in 0..n {
                t.hit(p);
            }
        }
        assert_eq!(t.top()[..2], [("b".into(), 5), ("a".into(), 3)]);
        for i in 0..2 * MAX_COUNTED {
            t.hit(&format!("p{i}"));
        }
        assert!(t.0.lock().unwrap().len() <= MAX_COUNTED);
        assert_eq!(t.top()[0], ("b".into(), 5), "the most requested stays");
    }

    #[test]
    fn the_log_keeps_the_latest() {
        let l = RecentLog::default();
        for i in 0..MAX_RECENT + 5 {
            l.push("WARN", format!("m{i}"));
        }
        let j = l.to_json();
        assert_eq!(j.as_array().unwrap().len(), MAX_RECENT);
        assert_eq!(j[0]["message"], format!("m{}", MAX_RECENT + 4));
    }
}
