//! The scheduler driven by hand: no network, time passed in.
#![allow(clippy::unwrap_used)]

use super::*;
use nixswarm_protocol::manifest::ChunkRef;
use nixswarm_protocol::{ChunkManifest, Sha256Hash};

/// The smallest chunk a manifest allows (but for the last).
const C: usize = nixswarm_protocol::manifest::MIN_CHUNK_SIZE as usize;

/// `n` distinct chunks of `size` bytes each.
fn chunks(n: usize, size: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            Bytes::from(
                (0..size)
                    .map(|j| (i * 31 + j) as u8 ^ (i >> 8) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect()
}

fn manifest(data: &[Bytes]) -> ChunkManifest {
    let refs: Vec<ChunkRef> = data
        .iter()
        .map(|d| ChunkRef {
            id: ChunkId(*blake3::hash(d).as_bytes()),
            size: d.len() as u32,
        })
        .collect();
    let size = data.iter().map(|d| d.len() as u64).sum();
    ChunkManifest::new(Sha256Hash([0; 32]), size, refs).unwrap()
}

struct Harness {
    s: Schedule,
    data: HashMap<ChunkId, Bytes>,
    now: Instant,
}

impl Harness {
    fn new(data: &[Bytes], peers: &[PeerId], settings: ScheduleSettings) -> Self {
        let now = Instant::now();
        let m = manifest(data);
        Self {
            s: Schedule::new(&m, |_| false, peers.iter().copied(), settings, now),
            data: data
                .iter()
                .map(|d| (ChunkId(*blake3::hash(d).as_bytes()), d.clone()))
                .collect(),
            now,
        }
    }

    fn answer(&mut self, send: &Send) -> u64 {
        let got = send.ids.iter().map(|id| (*id, self.data[id].clone())).collect();
        self.s.on_outcome(send.peer, send.batch, Outcome::Chunks(got), self.now)
    }

    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(r) = self.s.next_ready() {
            match r {
                Ready::Data(b) => out.extend_from_slice(&b),
                Ready::Local(id) => out.extend_from_slice(&self.data[&id]),
            }
        }
        out
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

fn settings() -> ScheduleSettings {
    ScheduleSettings {
        batch: 4,
        per_peer: 2,
        ..ScheduleSettings::default()
    }
}

fn whole(data: &[Bytes]) -> Vec<u8> {
    data.iter().flat_map(|d| d.iter().copied()).collect()
}

#[test]
fn stripes_across_providers_within_their_slots_and_hands_out_in_order() {
    let data = chunks(40, C);
    let (a, b) = (PeerId::random(), PeerId::random());
    let mut h = Harness::new(&data, &[a, b], settings());
    let sends = h.s.sends(h.now);
    assert_eq!(sends.len(), 4, "two slots on each of two providers");
    assert_eq!(sends.iter().filter(|s| s.peer == a).count(), 2);
    assert!(h.s.sends(h.now).is_empty(), "no free slot");
    // Answer out of order: nothing is handed out before its turn.
    h.answer(&sends[1]);
    assert!(h.s.next_ready().is_none());
    h.answer(&sends[0]);
    let mut out = h.drain();
    assert_eq!(out.len(), 8 * C);
    for s in &sends[2..] {
        h.answer(s);
    }
    loop {
        out.extend(h.drain());
        let sends = h.s.sends(h.now);
        if sends.is_empty() {
            break;
        }
        for s in &sends {
            h.answer(s);
        }
    }
    assert!(h.s.is_done());
    assert_eq!(out, whole(&data));
    assert_eq!(h.s.fetched_bytes, 40 * C as u64);
    assert_eq!(h.s.duplicate_bytes, 0, "nobody was slow: no endgame");
}

#[test]
fn the_endgame_waits_for_a_slow_batch_then_asks_another_provider_once() {
    let data = chunks(8, C);
    let (a, b) = (PeerId::random(), PeerId::random());
    let mut h = Harness::new(&data, &[a, b], settings());
    let sends = h.s.sends(h.now);
    assert_eq!(sends.len(), 2, "two batches, one per provider");
    let (fast, slow) = (&sends[0], &sends[1]);
    h.advance(Duration::from_millis(10));
    h.answer(fast);
    assert!(h.s.sends(h.now).is_empty(), "not yet: the slow batch is only 10 ms old");
    let wake = h.s.next_deadline();
    assert!(wake > h.now && wake <= h.now + Duration::from_millis(200));
    h.now = wake;
    let dup = h.s.sends(h.now);
    assert_eq!(dup.len(), 1);
    assert_eq!(dup[0].ids, slow.ids);
    assert_ne!(dup[0].peer, slow.peer, "the copy goes to the other provider");
    h.advance(Duration::from_secs(1));
    assert!(h.s.sends(h.now).is_empty(), "never a third copy");
    h.answer(&dup[0]);
    assert_eq!(h.answer(slow), 0, "the late copy brings nothing new");
    assert_eq!(h.s.duplicate_bytes, 4 * C as u64);
    assert_eq!(h.drain(), whole(&data));
}

#[test]
fn a_lying_provider_is_dropped_and_its_batch_goes_to_another() {
    let data = chunks(8, C);
    let (a, liar) = (PeerId::random(), PeerId::random());
    let mut h = Harness::new(&data, &[a, liar], settings());
    let sends = h.s.sends(h.now);
    let bad = sends.iter().find(|s| s.peer == liar).unwrap().clone();
    h.s.on_outcome(liar, bad.batch, Outcome::Lied, h.now);
    assert!(!h.s.peers().any(|p| *p == liar));
    let good = sends.iter().find(|s| s.peer == a).unwrap().clone();
    h.answer(&good);
    let retry = h.s.sends(h.now);
    assert_eq!(retry.len(), 1);
    assert_eq!((retry[0].peer, &retry[0].ids), (a, &bad.ids));
    h.answer(&retry[0]);
    assert_eq!(h.drain(), whole(&data));
    // A late answer from the dropped liar is ignored.
    assert_eq!(h.s.on_outcome(liar, bad.batch, Outcome::Failed, h.now), 0);
}

#[test]
fn the_transfer_fails_when_every_provider_is_gone() {
    let data = chunks(8, C);
    let a = PeerId::random();
    let mut h = Harness::new(&data, &[a], settings());
    let sends = h.s.sends(h.now);
    h.answer(&sends[0]);
    h.s.on_outcome(a, sends[1].batch, Outcome::Failed, h.now);
    let why = h.s.failure(h.now).unwrap();
    assert!(why.contains("every peer failed after 0 of 8"), "{why}");
    assert_eq!(h.drain(), whole(&data[..4]), "what was verified is handed out");
}

#[test]
fn a_provider_that_stops_answering_hits_the_progress_deadline() {
    let data = chunks(8, C);
    let mut h = Harness::new(&data, &[PeerId::random()], settings());
    assert_eq!(h.s.sends(h.now).len(), 2);
    assert!(h.s.failure(h.now).is_none());
    assert_eq!(h.s.next_deadline(), h.now + Duration::from_secs(30));
    h.advance(Duration::from_secs(30));
    assert!(h.s.failure(h.now).unwrap().contains("no new chunk"));
}

#[test]
fn a_busy_provider_cools_down_then_is_asked_again() {
    let data = chunks(4, C);
    let a = PeerId::random();
    let mut h = Harness::new(&data, &[a], settings());
    let first = h.s.sends(h.now);
    h.s.on_outcome(a, first[0].batch, Outcome::Busy, h.now);
    assert!(h.s.sends(h.now).is_empty(), "cooling down");
    assert_eq!(h.s.next_deadline(), h.now + Duration::from_millis(50));
    h.advance(Duration::from_millis(50));
    let again = h.s.sends(h.now);
    assert_eq!(again[0].ids, first[0].ids);
    h.answer(&again[0]);
    assert_eq!(h.drain(), whole(&data));
}

#[test]
fn the_window_bounds_what_is_fetched_ahead() {
    let data = chunks(64, C);
    let s = ScheduleSettings {
        batch: 4,
        per_peer: 100,
        window: 10 * C as u64,
        ..ScheduleSettings::default()
    };
    let mut h = Harness::new(&data, &[PeerId::random()], s);
    let sends = h.s.sends(h.now);
    // Batches go out until the window is passed (by at most one batch).
    assert_eq!(sends.len(), 3, "12 chunks in flight for a 10-chunk window");
    // Answered but not handed out: still counts.
    for s in &sends[1..] {
        h.answer(s);
    }
    assert!(h.s.sends(h.now).is_empty());
    h.answer(&sends[0]);
    h.drain();
    assert_eq!(h.s.sends(h.now).len(), 3, "handing out frees the window");
}

#[test]
fn local_chunks_are_not_fetched_and_an_evicted_one_is() {
    let data = chunks(8, C);
    let m = manifest(&data);
    let local: HashSet<ChunkId> = m.chunks[..4].iter().map(|c| c.id).collect();
    let mut s = Schedule::new(
        &m,
        |id| local.contains(id),
        [PeerId::random()],
        settings(),
        Instant::now(),
    );
    let sends = s.sends(Instant::now());
    assert_eq!(sends.len(), 1);
    assert!(sends[0].ids.iter().all(|id| !local.contains(id)));
    let first = s.next_ready().unwrap();
    assert_eq!(first, Ready::Local(m.chunks[0].id));
    s.local_missing(m.chunks[0].id);
    let refetch = s.sends(Instant::now());
    assert_eq!(refetch[0].ids, vec![m.chunks[0].id]);
}

#[test]
fn chunk_responses_are_checked_against_the_batch() {
    let data = chunks(2, C);
    let m = manifest(&data);
    let ids: Vec<ChunkId> = m.chunks.iter().map(|c| c.id).collect();
    let size = |id: &ChunkId| m.chunks.iter().find(|c| c.id == *id).map(|c| c.size);
    let wire = |i: usize, data: Vec<u8>, compressed: bool| WireChunk {
        id: ids[i],
        compressed,
        data: data.into(),
    };
    let ok = check_chunks(&ids, size, vec![wire(0, data[0].to_vec(), false)]).unwrap();
    assert_eq!(ok, vec![(ids[0], data[0].clone())]);
    let z = zstd::bulk::compress(&data[1], 1).unwrap();
    assert_eq!(check_chunks(&ids, size, vec![wire(1, z, true)]).unwrap()[0].1, data[1]);
    assert!(check_chunks(&ids[..1], size, vec![wire(1, data[1].to_vec(), false)]).is_err());
    let mut bad = data[0].to_vec();
    bad[0] ^= 1;
    assert!(check_chunks(&ids, size, vec![wire(0, bad, false)]).is_err());
    assert!(check_chunks(&ids, size, vec![wire(0, data[0][..C - 1].to_vec(), false)]).is_err());
    assert!(check_chunks(&ids, size, vec![wire(0, vec![1, 2, 3], true)]).is_err());
}

#[test]
fn a_far_peer_gets_more_requests_in_flight() {
    let ms = Duration::from_millis;
    assert_eq!(depth_for(None, 4, 8), 4, "unmeasured: the default");
    assert_eq!(depth_for(Some(ms(1)), 4, 8), 4, "a LAN: the default");
    // 100 MB/s over 40 ms is 4 MB in flight: 16 windows, capped at 8.
    assert_eq!(depth_for(Some(ms(40)), 4, 8), 8);
    assert_eq!(depth_for(Some(ms(12)), 4, 8), 5);
    assert_eq!(depth_for(Some(ms(40)), 4, 2), 4, "never below the default");

    let data = chunks(40, C);
    let (near, far) = (PeerId::random(), PeerId::random());
    let mut h = Harness::new(&data, &[near, far], settings());
    h.s.set_depth(&far, 5);
    let sends = h.s.sends(h.now);
    assert_eq!(sends.iter().filter(|s| s.peer == near).count(), 2);
    assert_eq!(sends.iter().filter(|s| s.peer == far).count(), 5);
}
