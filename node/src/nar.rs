//! Canonical NAR serialisation of a path on disk, as `nix-store --dump`
//! writes it. Donor mode serves installed store paths from these bytes
//! without keeping a second copy.
//!
//! Format: every string is a u64 little-endian length, the bytes, and zero
//! padding to a multiple of 8. A node is `( type regular [executable ""]
//! contents <bytes> )`, `( type symlink target <target> )` or
//! `( type directory entry ( name <n> node <node> )... )` with entries
//! sorted by name, bytewise.
//!
//! [`dump_to`] walks a tree and hands a [`NarSink`] the framing bytes and
//! each regular file's contents separately, so a sink can record where in
//! the NAR each file lies ([`crate::installed`]'s layout) instead of copying.

use std::fs;
use std::io::{self, Read as _, Write};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Receives a NAR in order: framing bytes, and regular files' contents.
pub trait NarSink {
    /// Framing: tokens, lengths, names, symlink targets, padding.
    fn framing(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// The contents of the regular file at `rel` (relative to the dumped
    /// root; empty for a root that is a file): exactly `len` bytes, to be
    /// read from `file`. Fewer bytes means the file changed while read.
    fn contents(&mut self, rel: &Path, file: fs::File, len: u64) -> io::Result<()>;
}

/// A sink that writes the NAR bytes to a writer.
struct WriteSink<'a, W>(&'a mut W);

impl<W: Write> NarSink for WriteSink<'_, W> {
    fn framing(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }
    fn contents(&mut self, rel: &Path, file: fs::File, len: u64) -> io::Result<()> {
        let copied = io::copy(&mut file.take(len), self.0)?;
        if copied != len {
            return Err(changed(rel));
        }
        Ok(())
    }
}

/// The error for a file that shrank while it was read.
pub fn changed(rel: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{} changed while read", rel.display()),
    )
}

/// Opens a file of a store path for reading, only if it is a regular file
/// now: not through a symlink in its last component, and never waiting on
/// a FIFO or device swapped in since it was listed (`O_NONBLOCK` makes
/// opening one return at once; the type is then checked on the open file).
pub fn open_regular(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is no longer a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// Zero bytes padding a string of `len` bytes to a multiple of 8.
pub fn padding(len: u64) -> &'static [u8] {
    let rem = (len % 8) as usize;
    if rem == 0 { &[] } else { &[0u8; 8][..8 - rem] }
}

fn put_str(out: &mut impl NarSink, s: &[u8]) -> io::Result<()> {
    out.framing(&(s.len() as u64).to_le_bytes())?;
    out.framing(s)?;
    out.framing(padding(s.len() as u64))
}

/// Writes the NAR serialisation of `path` (a file, symlink or directory).
pub fn dump(path: &Path, out: &mut impl Write) -> io::Result<()> {
    dump_to(path, &mut WriteSink(out))
}

/// Walks `path` and hands its NAR serialisation to `sink`.
pub fn dump_to(path: &Path, sink: &mut impl NarSink) -> io::Result<()> {
    put_str(sink, b"nix-archive-1")?;
    node(path, &mut PathBuf::new(), sink)
}

fn node(path: &Path, rel: &mut PathBuf, out: &mut impl NarSink) -> io::Result<()> {
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
        out.framing(&len.to_le_bytes())?;
        out.contents(rel, open_regular(path)?, len)?;
        out.framing(padding(len))?;
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
            rel.push(&name);
            let r = node(&path.join(&name), rel, out);
            rel.pop();
            r?;
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
