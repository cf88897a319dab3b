//! Canonical NAR serialisation of a path on disk, as `nix-store --dump`
//! writes it: the groundwork for serving installed store paths without a
//! second copy (donor mode).
//!
//! Format: every string is a u64 little-endian length, the bytes, and zero
//! padding to a multiple of 8. A node is `( type regular [executable ""]
//! contents <bytes> )`, `( type symlink target <target> )` or
//! `( type directory entry ( name <n> node <node> )... )` with entries
//! sorted by name, bytewise.

use std::fs;
use std::io::{self, Read as _, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

fn put_len(out: &mut impl Write, len: u64) -> io::Result<()> {
    out.write_all(&len.to_le_bytes())
}

fn pad(out: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (len % 8) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 8][..8 - rem])?;
    }
    Ok(())
}

fn put_str(out: &mut impl Write, s: &[u8]) -> io::Result<()> {
    put_len(out, s.len() as u64)?;
    out.write_all(s)?;
    pad(out, s.len() as u64)
}

/// Writes the NAR serialisation of `path` (a file, symlink or directory).
pub fn dump(path: &Path, out: &mut impl Write) -> io::Result<()> {
    put_str(out, b"nix-archive-1")?;
    node(path, out)
}

fn node(path: &Path, out: &mut impl Write) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    put_str(out, b"(")?;
    put_str(out, b"type")?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        put_str(out, b"symlink")?;
        put_str(out, b"target")?;
        put_str(out, fs::read_link(path)?.as_os_str().as_bytes())?;
    } else if ft.is_file() {
        put_str(out, b"regular")?;
        if meta.permissions().mode() & 0o100 != 0 {
            put_str(out, b"executable")?;
            put_str(out, b"")?;
        }
        put_str(out, b"contents")?;
        let len = meta.len();
        put_len(out, len)?;
        let copied = io::copy(&mut fs::File::open(path)?.take(len), out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} changed while read", path.display()),
            ));
        }
        pad(out, len)?;
    } else if ft.is_dir() {
        put_str(out, b"directory")?;
        let mut entries: Vec<_> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in entries {
            put_str(out, b"entry")?;
            put_str(out, b"(")?;
            put_str(out, b"name")?;
            put_str(out, name.as_bytes())?;
            put_str(out, b"node")?;
            node(&path.join(&name), out)?;
            put_str(out, b")")?;
        }
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a file, symlink or directory", path.display()),
        ));
    }
    put_str(out, b")")
}
