//! The NAR writer against Nix itself: byte for byte equal to
//! `nix-store --dump` on store paths Nix built, and on random trees.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;

fn nix_dump(path: &Path) -> Vec<u8> {
    let out = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .output()
        .expect("nix-store (install nix-bin)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn ours(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    nixswarm_node::nar::dump(path, &mut v).unwrap();
    v
}

#[test]
fn hashes_to_the_signed_nar_hash_of_every_path_nix_built() {
    // The end-to-end fixture: 29 paths built by Nix, with their narinfos.
    let fixture = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixture-cache-v1");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/make-cache.sh");
    assert!(
        Command::new("bash")
            .arg(script)
            .arg(&fixture)
            .status()
            .unwrap()
            .success()
    );
    let paths = std::fs::read_to_string(fixture.join("paths")).unwrap();
    for p in paths.lines() {
        let base = p.strip_prefix("/nix/store/").unwrap();
        let text = std::fs::read_to_string(fixture.join(format!("cache/{}.narinfo", &base[..32]))).unwrap();
        let info = nixswarm_protocol::NarInfo::parse(&text).unwrap();
        let nar = ours(&fixture.join("store/nix/store").join(base));
        assert_eq!(nar.len() as u64, info.nar_size, "{p}");
        assert_eq!(nixswarm_protocol::Sha256Hash::digest(&nar), info.nar_hash, "{p}");
    }
}

#[test]
fn matches_nix_store_dump_on_a_store_like_tree() {
    // Files, executables, symlinks, nested and empty directories.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("p");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("share/empty")).unwrap();
    std::fs::write(root.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(root.join("share/data"), vec![7u8; 100_003]).unwrap();
    std::fs::write(root.join("share/zero"), b"").unwrap();
    std::os::unix::fs::symlink("../share/data", root.join("bin/link")).unwrap();
    assert_eq!(ours(&root), nix_dump(&root));
    let file = root.join("share/data");
    assert_eq!(ours(&file), nix_dump(&file));
    let link = root.join("bin/link");
    assert_eq!(ours(&link), nix_dump(&link));
}

#[derive(Debug, Clone)]
enum Tree {
    File(Vec<u8>, bool),
    Link(String),
    Dir(Vec<(String, Tree)>),
}

fn arb_tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()).prop_map(|(c, x)| Tree::File(c, x)),
        "[a-z./]{1,20}".prop_map(Tree::Link),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        proptest::collection::btree_map("[A-Za-z0-9._-]{1,12}", inner, 0..6)
            .prop_map(|m| Tree::Dir(m.into_iter().filter(|(n, _)| n != "." && n != "..").collect()))
    })
}

fn build(t: &Tree, at: &Path) {
    match t {
        Tree::File(c, exec) => {
            std::fs::write(at, c).unwrap();
            std::fs::set_permissions(at, std::fs::Permissions::from_mode(if *exec { 0o755 } else { 0o644 })).unwrap();
        }
        Tree::Link(target) => std::os::unix::fs::symlink(target, at).unwrap(),
        Tree::Dir(entries) => {
            std::fs::create_dir(at).unwrap();
            for (name, child) in entries {
                build(child, &at.join(name));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn matches_nix_store_dump_on_random_trees(t in arb_tree()) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        build(&t, &root);
        prop_assert_eq!(ours(&root), nix_dump(&root));
    }
}
