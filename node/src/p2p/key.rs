//! The node's identity key on disk. Whoever reads it can pose as this
//! node (take over its provider records, its reputation with peers), so,
//! as ssh does with private keys, a key file that other users could read
//! or replace is refused rather than used, and a new one is written only
//! through a temporary file this process created itself.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use libp2p::identity;

use super::NodeError;

/// Loads the node key from `path`, creating it (mode 0600) if missing.
/// An existing key must be a regular file of this user's that no other
/// user can read or write.
pub fn load_or_create_key(path: &Path) -> Result<identity::Keypair, NodeError> {
    let err = |message: String| NodeError::Key {
        path: path.display().to_string(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            check_private(&meta).map_err(err)?;
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path).map_err(err),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Why a key file's metadata makes it unsafe to use, if it does.
fn check_private(meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err("is not a regular file (a symlink or device is not used as a key)".into());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "belongs to user {} and this process runs as {me}: another user could have replaced it",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets other users read or change it, so anyone could pose as this node; \
             `chmod 600` it if nobody else had access, or delete it for a new identity"
        ));
    }
    Ok(())
}

fn create(path: &Path) -> Result<identity::Keypair, String> {
    let key = identity::Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let tmp = path.with_extension("tmp");
    // A leftover from a crash (or anything else under that name) goes:
    // the new file must be this process's own, so it is created
    // exclusively, which also never follows a symlink.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", tmp.display())),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_key(&path).unwrap().public(), key.public());
    }

    #[test]
    fn a_key_others_can_read_or_replace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        load_or_create_key(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = load_or_create_key(&path).unwrap_err().to_string();
            assert!(e.contains("other users"), "{mode:o}: {e}");
        }
        // A symlink to a key is not followed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = load_or_create_key(&link).unwrap_err().to_string();
        assert!(e.contains("regular file"), "{e}");
    }

    #[test]
    fn a_planted_temporary_file_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        // Someone plants node.tmp as a symlink to a file of theirs, hoping
        // the key is written where they can read it.
        let theirs = dir.path().join("theirs");
        std::fs::write(&theirs, b"").unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&theirs, path.with_extension("tmp")).unwrap();
        load_or_create_key(&path).unwrap();
        assert!(
            std::fs::read(&theirs).unwrap().is_empty(),
            "the key went through the symlink"
        );
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_file());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
