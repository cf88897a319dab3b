//! Narinfos, keys and signatures exactly as Nix 2.8 (Debian's nix-bin) wrote
//! them: `nix-store --generate-binary-cache-key test-1`, `nix copy --to
//! file://...?secret-key=...` of built derivations, `nix-store --add` and
//! `builtins.toFile` paths.

#![allow(clippy::unwrap_used)]

use nixswarm_protocol::{NarCheck, NarCheckError, NarInfo, NarInfoErrorKind, PublicKey, SecretKey, Sha256Hash, Trust};
use proptest::prelude::*;

const PUB: &str = include_str!("fixtures/pub");
const SEC: &str = include_str!("fixtures/sec");
const LEAF: &str = include_str!("fixtures/signed-leaf.narinfo");
const WITH_REF: &str = include_str!("fixtures/signed-with-ref.narinfo");
const CA_FLAT: &str = include_str!("fixtures/ca-flat.narinfo");
const CA_REC: &str = include_str!("fixtures/ca-recursive.narinfo");
const CA_TEXT: &str = include_str!("fixtures/ca-text.narinfo");
/// The NARs of the flat (`nix-store --add-fixed sha256`) and text
/// (`builtins.toFile`) paths, as `nix copy` wrote them.
const CA_FLAT_NAR: &[u8] = include_bytes!("fixtures/ca-flat.nar");
const CA_TEXT_NAR: &[u8] = include_bytes!("fixtures/ca-text.nar");

fn key() -> PublicKey {
    PUB.parse().unwrap()
}

#[test]
fn nix_narinfos_print_back_byte_for_byte() {
    for text in [LEAF, WITH_REF, CA_FLAT, CA_REC, CA_TEXT] {
        let info = NarInfo::parse(text).unwrap();
        assert_eq!(info.to_text(), text);
    }
}

#[test]
fn nix_signatures_verify() {
    for text in [LEAF, WITH_REF] {
        let info = NarInfo::parse(text).unwrap();
        assert_eq!(info.trust(&[key()]), Some(Trust::Signed("test-1".into())));
    }
    let info = NarInfo::parse(WITH_REF).unwrap();
    assert_eq!(info.references.len(), 1);
    assert!(
        info.fingerprint()
            .ends_with(";/nix/store/1g10pyjvgvxciw9qmziz7w578899g11y-a-small")
    );
}

#[test]
fn reference_hashes_leave_the_path_itself_out() {
    let info = NarInfo::parse(WITH_REF).unwrap();
    let other: nixswarm_protocol::StorePathHash = "1g10pyjvgvxciw9qmziz7w578899g11y".parse().unwrap();
    assert_eq!(info.reference_hashes(), vec![other]);
    let with_self = WITH_REF.replace(
        "References: 1g10pyjvgvxciw9qmziz7w578899g11y-a-small",
        "References: 1g10pyjvgvxciw9qmziz7w578899g11y-a-small iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-b-dir",
    );
    let info = NarInfo::parse(&with_self).unwrap();
    assert_eq!(info.references.len(), 2);
    assert_eq!(info.reference_hashes(), vec![other]);
}

#[test]
fn a_manifest_is_checked_against_the_narinfo() {
    use nixswarm_protocol::{ChunkManifest, ChunkRef};
    let info = NarInfo::parse(WITH_REF).unwrap();
    let manifest = |hash, size| {
        let chunks = vec![ChunkRef {
            id: nixswarm_protocol::ChunkId([7; 32]),
            size: size as u32,
        }];
        ChunkManifest::new(hash, size, chunks).unwrap()
    };
    assert_eq!(manifest(info.nar_hash, info.nar_size).check_against(&info), Ok(()));
    let other = Sha256Hash::digest(b"another NAR");
    assert!(matches!(
        manifest(other, info.nar_size).check_against(&info),
        Err(NarCheckError::WrongHash { .. })
    ));
    assert!(matches!(
        manifest(info.nar_hash, info.nar_size + 1).check_against(&info),
        Err(NarCheckError::WrongSize { .. })
    ));
}

#[test]
fn nix_secret_key_signs_like_nix() {
    let sk: SecretKey = SEC.parse().unwrap();
    assert_eq!(sk.public_key(), key());
    let info = NarInfo::parse(WITH_REF).unwrap();
    assert_eq!(sk.sign(&info.fingerprint()), info.sigs[0]);
}

#[test]
fn tampering_breaks_the_signature() {
    let other_key: PublicKey = "test-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".parse().unwrap();
    let info = NarInfo::parse(WITH_REF).unwrap();
    assert_eq!(info.trust(&[other_key]), None);
    assert_eq!(info.trust(&[]), None);

    let forged_hash = WITH_REF.replace(
        "NarHash: sha256:1gd6z7zagvwgwc9dprx1xz0x69kd8hmn6dpccssmy881ckad2w3x",
        "NarHash: sha256:0gd6z7zagvwgwc9dprx1xz0x69kd8hmn6dpccssmy881ckad2w3x",
    );
    assert_ne!(forged_hash, WITH_REF);
    assert_eq!(NarInfo::parse(&forged_hash).unwrap().trust(&[key()]), None);
    let forged_size = WITH_REF.replace("NarSize: 100712", "NarSize: 100713");
    assert_eq!(NarInfo::parse(&forged_size).unwrap().trust(&[key()]), None);
    let dropped_ref = WITH_REF.replace("References: 1g10pyjvgvxciw9qmziz7w578899g11y-a-small", "References: ");
    assert_eq!(NarInfo::parse(&dropped_ref).unwrap().trust(&[key()]), None);
    // URL, Compression, FileHash and FileSize are not signed.
    let rewritten = WITH_REF.replace("Compression: xz", "Compression: none").replace(
        "URL: nar/0va98q1nnhgmjhbz96ykn35mqxs4m9hbbw2xv2yr6907a79v2a8b.nar.xz",
        "URL: nar/x.nar",
    );
    assert!(NarInfo::parse(&rewritten).unwrap().trust(&[key()]).is_some());
}

#[test]
fn content_addressed_paths_are_trusted_only_when_the_path_matches() {
    for text in [CA_FLAT, CA_REC, CA_TEXT] {
        let info = NarInfo::parse(text).unwrap();
        assert!(info.sigs.is_empty());
        assert_eq!(info.trust(&[key()]), Some(Trust::ContentAddressed), "{text}");
    }
    // Same CA, another path: rejected.
    let moved = CA_REC.replace(
        "7x25z45vg5paacrx7mzrnsikmvkbx82a-d",
        "7x25z45vg5paacrx7mzrnsikmvkbx82a-e",
    );
    assert_eq!(NarInfo::parse(&moved).unwrap().trust(&[key()]), None);
    // A recursive CA whose NarHash disagrees: rejected.
    let wrong_nar = CA_REC.replace(
        "NarHash: sha256:014znj6hnd349vhlqmvfbl7aa0bawgrhp305jb92g2ahhzkmh6za",
        "NarHash: sha256:114znj6hnd349vhlqmvfbl7aa0bawgrhp305jb92g2ahhzkmh6za",
    );
    assert_eq!(NarInfo::parse(&wrong_nar).unwrap().trust(&[key()]), None);
    // Adding a reference to a text path changes its address.
    let with_ref = CA_TEXT.replace("References: ", "References: 1g10pyjvgvxciw9qmziz7w578899g11y-a-small");
    assert_eq!(NarInfo::parse(&with_ref).unwrap().trust(&[key()]), None);
}

fn check(info: &NarInfo, nar: &[u8]) -> Result<Sha256Hash, NarCheckError> {
    let mut c = NarCheck::new(info);
    for piece in nar.chunks(13) {
        c.update(piece)?;
    }
    c.finish()
}

#[test]
fn the_fixtures_are_of_the_kind_they_are_named_for() {
    assert!(CA_FLAT.contains("CA: fixed:sha256:"), "{CA_FLAT}");
    assert!(CA_REC.contains("CA: fixed:r:sha256:"), "{CA_REC}");
    assert!(CA_TEXT.contains("CA: text:sha256:"), "{CA_TEXT}");
}

#[test]
fn only_unsigned_flat_and_text_narinfos_are_unbound() {
    for (text, unbound) in [(CA_FLAT, true), (CA_TEXT, true), (CA_REC, false), (LEAF, false)] {
        let info = NarInfo::parse(text).unwrap();
        let trust = info.trust(&[key()]).unwrap();
        assert_eq!(info.unbound(&trust), unbound, "{text}");
        assert!(!info.unbound(&Trust::Signed("test-1".into())));
    }
}

#[test]
fn a_flat_or_text_path_with_substituted_content_is_refused() {
    for (text, nar, contents) in [
        (CA_FLAT, CA_FLAT_NAR, &b"a flat file\n"[..]),
        (CA_TEXT, CA_TEXT_NAR, &b"Hello, text\n"[..]),
    ] {
        let info = NarInfo::parse(text).unwrap();
        assert_eq!(check(&info, nar), Ok(info.nar_hash));
        // What a hostile sender does: same StorePath and CA (so the
        // narinfo is trusted unsigned), its own contents, and a NarHash
        // and NarSize that describe them.
        let forged = String::from_utf8(nar.to_vec())
            .unwrap()
            .replace(std::str::from_utf8(contents).unwrap(), "Evil content");
        let mut lie = info.clone();
        lie.nar_hash = Sha256Hash::digest(forged.as_bytes());
        lie.nar_size = forged.len() as u64;
        assert_eq!(lie.trust(&[]), Some(Trust::ContentAddressed));
        assert!(lie.unbound(&Trust::ContentAddressed));
        let err = check(&lie, forged.as_bytes()).unwrap_err();
        assert!(matches!(err, NarCheckError::WrongContent { .. }), "{err}");
    }
}

#[test]
fn parse_errors_say_what_and_where() {
    let e =
        NarInfo::parse("StorePath: /nix/store/iqh7ydji4vh3m6z5bkfk07jvbkfy0sq1-b-dir\nNarSize: many\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(matches!(e.kind, NarInfoErrorKind::Number { field: "NarSize", .. }));
    assert!(e.to_string().contains("line 2"), "{e}");

    let e = NarInfo::parse("<html>not a narinfo</html>\n").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(matches!(e.kind, NarInfoErrorKind::NotKeyValue(_)));

    let e = NarInfo::parse(&LEAF.replace("NarHash", "NarHashX")).unwrap_err();
    assert_eq!(e.kind, NarInfoErrorKind::Missing("NarHash"));

    let e = NarInfo::parse(&format!("{LEAF}NarSize: 1\n")).unwrap_err();
    assert_eq!(e.kind, NarInfoErrorKind::Duplicate("NarSize"));

    let e = NarInfo::parse(LEAF.trim_end()).unwrap_err();
    assert_eq!(e.kind, NarInfoErrorKind::Unterminated);

    let e = NarInfo::parse(&LEAF.replace("Sig: test-1:", "Sig: test-1:!")).unwrap_err();
    assert!(matches!(e.kind, NarInfoErrorKind::Signature(_)));

    let e = NarInfo::parse(&LEAF.replace("StorePath: /nix/store/", "StorePath: /etc/")).unwrap_err();
    assert!(matches!(e.kind, NarInfoErrorKind::StorePath { field: "StorePath", .. }));
}

#[test]
fn missing_compression_means_bzip2_like_nix() {
    let info = NarInfo::parse(&LEAF.replace("Compression: xz\n", "")).unwrap();
    assert_eq!(info.compression, "bzip2");
}

fn arb_narinfo() -> impl Strategy<Value = NarInfo> {
    let path = (any::<[u8; 20]>(), "[a-z0-9][a-z0-9.+_-]{0,20}").prop_map(|(h, n)| {
        nixswarm_protocol::StorePath::new(nixswarm_protocol::StorePathHash::from_bytes(&h), &n).unwrap()
    });
    (
        path.clone(),
        "nar/[a-z0-9]{1,52}\\.nar(\\.xz|\\.zst)?",
        prop_oneof![Just("none"), Just("xz"), Just("zstd"), Just("bzip2")],
        proptest::option::of(any::<[u8; 32]>()),
        proptest::option::of(any::<u64>()),
        any::<[u8; 32]>(),
        1u64..u64::MAX,
        proptest::collection::vec(path.clone(), 0..5),
        proptest::option::of(path),
        proptest::collection::vec(any::<[u8; 32]>(), 0..3),
        proptest::option::of("fixed:r:sha256:[0-9a-df-np-sv-z]{52}"),
    )
        .prop_map(
            |(store_path, url, compression, fh, fs, nh, nar_size, references, deriver, seeds, ca)| {
                let mut info = NarInfo {
                    store_path,
                    url,
                    compression: compression.to_owned(),
                    file_hash: fh.map(nixswarm_protocol::Sha256Hash),
                    file_size: fs,
                    nar_hash: nixswarm_protocol::Sha256Hash(nh),
                    nar_size,
                    references,
                    deriver,
                    sigs: Vec::new(),
                    ca,
                };
                let fp = info.fingerprint();
                info.sigs = seeds.iter().map(|s| SecretKey::from_seed("k-1", s).sign(&fp)).collect();
                info
            },
        )
}

proptest! {
    #[test]
    fn narinfo_round_trips(info in arb_narinfo()) {
        let text = info.to_text();
        prop_assert_eq!(NarInfo::parse(&text).unwrap(), info.clone());
        for seed_sig in &info.sigs {
            prop_assert_eq!(seed_sig.key_name(), "k-1");
        }
    }

    #[test]
    fn signed_narinfos_verify_and_truncations_never_do(info in arb_narinfo(), seed in any::<[u8; 32]>(), cut in 1usize..200) {
        let sk = SecretKey::from_seed("k-1", &seed);
        let mut signed = info.clone();
        signed.sigs = vec![sk.sign(&info.fingerprint())];
        prop_assert!(signed.trust(&[sk.public_key()]).is_some());
        let text = signed.to_text();
        let cut = cut.min(text.len());
        // Any truncation either fails to parse or fails to verify.
        if let Ok(t) = NarInfo::parse(&text[..text.len() - cut]) {
            prop_assert!(t != signed);
        }
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,400}") {
        let _ = NarInfo::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_mutated_nix_text(pos in 0usize..400, byte in any::<u8>()) {
        let mut bytes = WITH_REF.as_bytes().to_vec();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        if let Ok(text) = std::str::from_utf8(&bytes)
            && let Ok(info) = NarInfo::parse(text)
        {
            let _ = info.trust(&[key()]);
        }
    }
}
