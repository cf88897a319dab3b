//! What may leave the machine. Trusting a key (accepting what it signed)
//! is not sharing it: a user who trusts their company's cache key keeps the
//! company's paths for themself. A path is shared only when a signature by
//! a share key verifies (by default cache.nixos.org-1's alone), or, if
//! asked for, when it is an unsigned content-addressed path. The narinfo
//! handed to peers carries only the share keys' signatures, so the names of
//! private keys never travel either.

use std::collections::HashMap;
use std::sync::Mutex;

use nixswarm_protocol::{NarInfo, PublicKey, Trust};

/// Decisions remembered (by the narinfo text's BLAKE3) before the memo is
/// cleared: a donor of 100k paths re-checks none of them on re-announce.
const MEMO_CAP: usize = 200_000;

/// Which signatures of a narinfo may travel: a bit per `Sig` line, in order.
type Keep = u64;

/// The rule for what leaves the machine.
#[derive(Debug)]
pub struct SharePolicy {
    keys: Vec<PublicKey>,
    content_addressed: bool,
    memo: Mutex<HashMap<[u8; 32], Option<Keep>>>,
}

impl SharePolicy {
    /// Shares what `keys` signed, and unsigned content-addressed paths if
    /// `content_addressed`.
    pub fn new(keys: Vec<PublicKey>, content_addressed: bool) -> Self {
        Self {
            keys,
            content_addressed,
            memo: Mutex::default(),
        }
    }

    /// Shares nothing.
    pub fn nothing() -> Self {
        Self::new(Vec::new(), false)
    }

    /// The share keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Option<Keep>>> {
        self.memo.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn decide(&self, info: &NarInfo) -> Option<Keep> {
        let fp = info.fingerprint();
        let mut keep: Keep = 0;
        for (i, sig) in info.sigs.iter().enumerate().take(Keep::BITS as usize) {
            if self.keys.iter().any(|k| k.verify(&fp, sig)) {
                keep |= 1 << i;
            }
        }
        if keep != 0 {
            return Some(keep);
        }
        (self.content_addressed && info.trust(&[]) == Some(Trust::ContentAddressed)).then_some(0)
    }

    /// The narinfo as it may be sent to peers (only the share keys'
    /// signatures), or `None` if the path must not leave the machine.
    pub fn outgoing(&self, text: &str) -> Option<String> {
        let mut info = NarInfo::parse(text).ok()?;
        let id = *blake3::hash(text.as_bytes()).as_bytes();
        let known = self.memo().get(&id).copied();
        let keep = match known {
            Some(k) => k,
            None => {
                let k = self.decide(&info);
                let mut memo = self.memo();
                if memo.len() >= MEMO_CAP {
                    memo.clear();
                }
                memo.insert(id, k);
                k
            }
        }?;
        let mut i = 0;
        info.sigs.retain(|_| {
            let kept = i < Keep::BITS && keep & (1 << i) != 0;
            i += 1;
            kept
        });
        Some(info.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixswarm_protocol::{SecretKey, Sha256Hash, StorePath};

    fn key(name: &str) -> SecretKey {
        SecretKey::from_seed(name, blake3::hash(name.as_bytes()).as_bytes())
    }

    fn narinfo(signers: &[&SecretKey]) -> NarInfo {
        let mut info = NarInfo {
            store_path: "/nix/store/1g10pyjvgvxciw9qmziz7w578899g11y-a"
                .parse::<StorePath>()
                .unwrap(),
            url: "nar/x.nar".into(),
            compression: "none".into(),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256Hash::digest(b"nar"),
            nar_size: 3,
            references: vec![],
            deriver: None,
            sigs: vec![],
            ca: None,
        };
        for k in signers {
            info.sigs.push(k.sign(&info.fingerprint()));
        }
        info
    }

    #[test]
    fn only_share_keys_signatures_leave_and_only_with_them() {
        let (public, company) = (key("cache.example.org-1"), key("company-1"));
        let policy = SharePolicy::new(vec![public.public_key()], false);

        let private = narinfo(&[&company]).to_text();
        assert_eq!(policy.outgoing(&private), None);
        assert_eq!(policy.outgoing(&private), None, "remembered the same way");

        let both = narinfo(&[&company, &public]).to_text();
        let out = NarInfo::parse(&policy.outgoing(&both).unwrap()).unwrap();
        assert_eq!(out.sigs.len(), 1);
        assert!(out.to_text().contains("cache.example.org-1:"));
        assert!(!out.to_text().contains("company-1"), "{out}");
        assert!(out.trust(&[public.public_key()]).is_some());

        // A Sig line that only claims the share key's name does not count.
        let mut forged = narinfo(&[&company]);
        forged.sigs.insert(0, public.sign("another fingerprint"));
        assert_eq!(policy.outgoing(&forged.to_text()), None);
        assert_eq!(SharePolicy::nothing().outgoing(&both), None);
    }

    #[test]
    fn unsigned_content_addressed_paths_are_shared_only_when_asked() {
        let text = include_str!("../../protocol/tests/fixtures/ca-flat.narinfo");
        let k = key("cache.example.org-1").public_key();
        assert_eq!(SharePolicy::new(vec![k.clone()], false).outgoing(text), None);
        let out = SharePolicy::new(vec![k], true).outgoing(text).unwrap();
        assert_eq!(NarInfo::parse(&out).unwrap(), NarInfo::parse(text).unwrap());
        // Unsigned and not content-addressed: never.
        assert_eq!(SharePolicy::new(vec![], true).outgoing(&narinfo(&[]).to_text()), None);
    }
}
