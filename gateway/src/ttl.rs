//! [`TtlMap`]: a bounded map whose entries expire, shared by every cache
//! of the gateway (narinfos found, misses, bad sources, peer lookups,
//! prefetches).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A map whose entries expire after `ttl`. At `cap` entries, expired ones
/// are purged first; if it is still full, it starts over (a cache, never
/// the only record of anything).
#[derive(Debug)]
pub struct TtlMap<K, V> {
    ttl: Duration,
    cap: usize,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> TtlMap<K, V> {
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            map: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.lock()
            .get(k)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn insert(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.cap && !map.contains_key(&k) {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= self.cap {
                map.clear();
            }
        }
        map.insert(k, (Instant::now(), v));
    }

    pub fn remove(&self, k: &K) -> Option<V> {
        self.lock()
            .remove(k)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v)
    }

    /// Changes a live entry in place (its age stays); false if absent.
    pub fn update(&self, k: &K, f: impl FnOnce(&mut V)) -> bool {
        let mut map = self.lock();
        match map.get_mut(k).filter(|(at, _)| at.elapsed() < self.ttl) {
            Some((_, v)) => {
                f(v);
                true
            }
            None => false,
        }
    }

    /// The live values, for reports.
    pub fn values(&self) -> Vec<V> {
        self.lock()
            .values()
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_map_stays_bounded() {
        let m = TtlMap::new(Duration::from_millis(30), 4);
        for i in 0..10 {
            m.insert(i, i);
            assert!(m.lock().len() <= 4);
        }
        assert_eq!(m.get(&9), Some(9));
        assert!(m.update(&9, |v| *v = 90));
        assert_eq!(m.get(&9), Some(90));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(m.get(&9), None, "expired");
        assert!(!m.update(&9, |_| {}));
        let zero = TtlMap::new(Duration::ZERO, 4);
        zero.insert(1, 1);
        assert_eq!(zero.get(&1), None, "a zero TTL remembers nothing");
    }
}
