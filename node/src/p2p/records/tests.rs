use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::kad::store::RecordStore as _;
use libp2p::kad::{ProviderRecord, RecordKey};
use libp2p::{Multiaddr, PeerId};
use proptest::prelude::*;

use super::index::{Added, Index, Key, Limits};
use super::{ProviderStore, Refused};
use crate::p2p::proven::Proven;

fn key(n: u32) -> Key {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    k
}

fn addr() -> Vec<Multiaddr> {
    vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()]
}

fn limits(max_records: usize, max_per_peer: usize, max_per_key: usize) -> Limits {
    Limits {
        max_records,
        max_per_peer,
        max_per_key,
        rate: 10,
    }
}

const NOBODY: &dyn Fn(&PeerId) -> bool = &|_| false;

#[test]
fn a_peer_stops_at_its_quota_and_others_still_get_in() {
    let now = Instant::now();
    let mut ix = Index::new(limits(1000, 50, 20));
    let flooder = PeerId::random();
    let later = now + Duration::from_secs(60);
    let kept = (0..200).filter(|&n| ix.add(key(n), flooder, later, &addr(), NOBODY, now) == Added::New);
    assert_eq!(kept.count(), 50);
    assert_eq!(ix.count_of(&flooder), 50);
    let honest = PeerId::random();
    assert_eq!(ix.add(key(7), honest, later, &addr(), NOBODY, now), Added::New);
    assert_eq!(ix.providers(&key(7), NOBODY, now).len(), 2);
    ix.check();
}

#[test]
fn refreshes_are_rate_limited_after_the_burst() {
    let now = Instant::now();
    let mut ix = Index::new(limits(1000, 5, 20));
    let p = PeerId::random();
    let later = now + Duration::from_secs(60);
    // The burst is the quota (5): the first record is free, then 5 tokens.
    let answers: Vec<Added> = (0..10)
        .map(|_| ix.add(key(1), p, later, &addr(), NOBODY, now))
        .collect();
    assert_eq!(answers[0], Added::New);
    assert_eq!(answers.iter().filter(|a| **a == Added::Refreshed).count(), 5);
    assert_eq!(answers.iter().filter(|a| **a == Added::Refused).count(), 4);
    // 10 a second: after a second, ten more.
    let next = now + Duration::from_secs(1);
    let again = (0..20).filter(|_| ix.add(key(1), p, later, &addr(), NOBODY, next) != Added::Refused);
    assert_eq!(again.count(), 5, "the bucket holds at most the burst");
}

#[test]
fn a_full_key_takes_a_proven_provider_in_place_of_an_unproven_one() {
    let now = Instant::now();
    let later = now + Duration::from_secs(60);
    let mut ix = Index::new(limits(1000, 100, 3));
    let sybils: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
    for s in &sybils {
        assert_eq!(ix.add(key(1), *s, later, &addr(), NOBODY, now), Added::New);
    }
    let newcomer = PeerId::random();
    assert_eq!(ix.add(key(1), newcomer, later, &addr(), NOBODY, now), Added::Refused);
    let good = PeerId::random();
    let proven = move |p: &PeerId| *p == good;
    assert_eq!(ix.add(key(1), good, later, &addr(), &proven, now), Added::New);
    let listed = ix.providers(&key(1), &proven, now);
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].peer, good, "proven providers come first");
    ix.check();
}

#[test]
fn answers_take_turns_among_more_providers_than_fit() {
    let now = Instant::now();
    let later = now + Duration::from_secs(60);
    let mut ix = Index::new(limits(1000, 100, 200));
    let sybils: Vec<PeerId> = (0..30).map(|_| PeerId::random()).collect();
    for s in &sybils {
        ix.add(key(1), *s, later, &addr(), NOBODY, now);
    }
    // The one that serves came last; it is listed within two answers.
    let honest = PeerId::random();
    ix.add(key(1), honest, later, &addr(), NOBODY, now);
    let mut seen = HashSet::new();
    for _ in 0..2 {
        let answer = ix.providers(&key(1), NOBODY, now);
        assert_eq!(answer.len(), super::index::ANSWER);
        seen.extend(answer.into_iter().map(|p| p.peer));
    }
    assert_eq!(seen.len(), 31, "two answers cover every provider");
    // Once proven, it heads every answer.
    let proven = move |p: &PeerId| *p == honest;
    for _ in 0..3 {
        assert_eq!(ix.providers(&key(1), &proven, now)[0].peer, honest);
    }
}

#[test]
fn a_full_index_makes_the_largest_holder_give_way() {
    let now = Instant::now();
    let later = now + Duration::from_secs(60);
    let mut ix = Index::new(limits(100, 100, 20));
    let hog = PeerId::random();
    for n in 0..100 {
        ix.add(key(n), hog, later, &addr(), NOBODY, now);
    }
    assert_eq!(ix.len(), 100);
    assert_eq!(ix.add(key(1000), hog, later, &addr(), NOBODY, now), Added::Refused);
    let small: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
    for (i, p) in small.iter().enumerate() {
        assert_eq!(
            ix.add(key(2000 + i as u32), *p, later, &addr(), NOBODY, now),
            Added::New
        );
    }
    assert_eq!(ix.len(), 100);
    assert_eq!(ix.count_of(&hog), 90);
    ix.check();
}

#[test]
fn the_sweep_drops_expired_rows_in_slices() {
    let now = Instant::now();
    let mut ix = Index::new(limits(10_000, 10_000, 20));
    let p = PeerId::random();
    for n in 0..1000 {
        let ttl = if n % 2 == 0 { 1 } else { 100 };
        ix.add(key(n), p, now + Duration::from_secs(ttl), &addr(), NOBODY, now);
    }
    let then = now + Duration::from_secs(2);
    assert!(
        ix.providers(&key(0), NOBODY, then).is_empty(),
        "expired rows are never listed"
    );
    let mut dropped = 0;
    for _ in 0..5 {
        dropped += ix.sweep(300, then);
    }
    assert_eq!(dropped, 500);
    assert_eq!(ix.len(), 500);
    assert_eq!(ix.count_of(&p), 500);
    ix.check();
}

proptest! {
    #[test]
    fn random_operations_keep_the_index_consistent_and_bounded(
        ops in proptest::collection::vec((0u8..4, 0u32..40, 0usize..8, 0u64..5), 1..400)
    ) {
        let start = Instant::now();
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let l = limits(30, 10, 4);
        let mut ix = Index::new(l.clone());
        let proven = |p: &PeerId| *p == peers[0];
        for (t, (op, k, who, secs)) in ops.into_iter().enumerate() {
            let now = start + Duration::from_millis(t as u64 * 50);
            match op {
                0 | 1 => {
                    ix.add(key(k), peers[who], now + Duration::from_secs(secs), &addr(), &proven, now);
                }
                2 => ix.remove(&key(k), &peers[who]),
                _ => {
                    ix.sweep(7, now);
                }
            }
            ix.check();
            prop_assert!(ix.len() <= l.max_records);
            for p in &peers {
                prop_assert!(ix.count_of(p) <= l.max_per_peer);
            }
            prop_assert!(ix.providers(&key(k), &proven, now).len() <= l.max_per_key);
        }
    }
}

fn store(limits: Limits) -> (ProviderStore, PeerId) {
    let local = PeerId::random();
    let s = ProviderStore::new(
        local,
        limits,
        Duration::from_secs(3600),
        std::sync::Arc::new(Proven::default()),
    );
    (s, local)
}

fn record(k: &RecordKey, provider: PeerId) -> ProviderRecord {
    ProviderRecord {
        key: k.clone(),
        provider,
        expires: Some(Instant::now() + Duration::from_secs(60)),
        addresses: addr(),
    }
}

fn rkey(n: u32) -> RecordKey {
    RecordKey::from(key(n).to_vec())
}

#[test]
fn own_records_are_never_refused_and_come_first() {
    let (mut s, local) = store(limits(10, 10, 2));
    let other = PeerId::random();
    for n in 0..10 {
        s.add_provider(record(&rkey(n), other)).unwrap();
    }
    s.add_provider(record(&rkey(0), PeerId::random())).unwrap();
    // The index is full and key 0 has both its providers: ours still go in.
    for n in 0..5000 {
        s.add_provider(ProviderRecord::new(rkey(n), local, vec![])).unwrap();
    }
    assert_eq!(s.provided_count(), 5000);
    assert_eq!(s.provided().count(), 5000);
    assert_eq!(
        s.providers(&rkey(0)).len(),
        2,
        "with no advertised address our own record is left out"
    );
    let public: libp2p::Multiaddr = "/ip4/198.18.0.1/tcp/4001".parse().unwrap();
    s.set_advertised(vec![public.clone()]);
    let p = s.providers(&rkey(0));
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].provider, local);
    assert_eq!(
        p[0].addresses,
        vec![public],
        "our own record carries the advertised addresses"
    );
    s.remove_provider(&rkey(0), &local);
    assert_eq!(s.provided_count(), 4999);
    assert!(!s.providers(&rkey(0)).iter().any(|r| r.provider == local));
}

#[test]
fn value_records_are_refused_and_counted() {
    use libp2p::kad::Record;
    let (mut s, _) = store(Limits::default());
    let r = Record::new(RecordKey::new(b"anything"), vec![7; 16 << 10]);
    assert!(s.put(r.clone()).is_err());
    assert!(s.get(&r.key).is_none());
    assert_eq!(s.records().count(), 0);
    assert_eq!(s.refused().values, 1);
}

#[test]
fn keys_that_are_not_path_keys_are_refused_and_counted() {
    let (mut s, _) = store(Limits::default());
    let peer = PeerId::random();
    s.add_provider(record(&RecordKey::new(b"short"), peer)).unwrap();
    s.add_provider(record(&RecordKey::from(vec![0u8; 33]), peer)).unwrap();
    assert_eq!(s.provider_records(), 0);
    assert_eq!(
        s.refused(),
        Refused {
            malformed: 2,
            over_limit: 0,
            values: 0
        }
    );
}

#[test]
fn a_record_lives_no_longer_than_the_ttl_whatever_it_asks() {
    let local = PeerId::random();
    let mut s = ProviderStore::new(
        local,
        Limits::default(),
        Duration::from_secs(5),
        std::sync::Arc::new(Proven::default()),
    );
    let mut r = record(&rkey(1), PeerId::random());
    r.expires = None;
    s.add_provider(r).unwrap();
    let got = s.providers(&rkey(1));
    assert!(got[0].expires.unwrap() <= Instant::now() + Duration::from_secs(5));
}

#[test]
fn holds_100k_records_from_many_peers() {
    let (mut s, _) = store(Limits::default());
    let peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
    let mut seen = HashSet::new();
    for n in 0..100_000u32 {
        let p = peers[n as usize % peers.len()];
        s.add_provider(record(&rkey(n), p)).unwrap();
        seen.insert(p);
    }
    assert_eq!(s.provider_records(), 100_000);
    assert_eq!(s.records_of(&peers[0]), 5000);
    assert_eq!(s.refused().over_limit, 0);
}

#[test]
fn a_re_announcement_replaces_stale_addresses() {
    let (mut s, _) = store(limits(10, 10, 10));
    let peer = PeerId::random();
    let old: Multiaddr = "/ip4/198.18.0.1/tcp/4001/p2p-circuit".parse().unwrap();
    let new: Multiaddr = "/ip4/198.18.0.2/tcp/4001/p2p-circuit".parse().unwrap();
    let mut r = record(&rkey(1), peer);
    r.addresses = vec![old];
    s.add_provider(r.clone()).unwrap();
    r.addresses = vec![new.clone()];
    s.add_provider(r).unwrap();
    let p = s.providers(&rkey(1));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].addresses, vec![new], "the relay it moved to, not the one it left");
}

#[test]
fn a_record_keeps_only_addresses_its_sender_was_seen_at() {
    let a = |s: &str| s.parse::<Multiaddr>().unwrap();
    let relay = PeerId::random();
    let addrs = vec![
        a("/ip4/198.51.100.7/tcp/4001"),
        a("/ip4/198.51.100.7/udp/4001/quic-v1"),
        // A victim, the user's LAN and loopback, chosen by the sender.
        a("/ip4/203.0.113.9/tcp/80"),
        a("/ip4/192.168.1.1/tcp/80"),
        a("/ip4/127.0.0.1/tcp/22"),
        a("/ip6/2001:db8:1:2::99/tcp/4001"),
        a(&format!("/ip4/198.51.100.1/tcp/1/p2p/{relay}/p2p-circuit")),
        a(&format!("/ip4/198.51.100.2/tcp/1/p2p/{relay}/p2p-circuit")),
        a(&format!("/ip4/198.51.100.3/tcp/1/p2p/{relay}/p2p-circuit")),
    ];
    let from = ["198.51.100.7".parse().unwrap(), "2001:db8:1:2::1".parse().unwrap()];
    let kept = super::addresses_seen_from(&addrs, &from);
    assert_eq!(
        kept,
        [&addrs[0], &addrs[1], &addrs[5], &addrs[6], &addrs[7]].map(Clone::clone)
    );
    // Seen only through a relay: its circuit addresses, nothing direct.
    assert_eq!(
        super::addresses_seen_from(&addrs, &[]),
        [addrs[6].clone(), addrs[7].clone()]
    );
}
