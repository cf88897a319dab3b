//! Where each byte of an installed path's NAR comes from: framing bytes kept
//! in the index, or a range of one file in the store. With it any chunk is
//! rebuilt by seeking, without serialising the NAR from the start.

use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};

use crate::nar::{NarSink, changed};

/// One piece of a NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes kept verbatim (tokens, names, symlink targets, padding).
    Framing(Vec<u8>),
    /// `len` bytes: the whole contents of the file at `rel` under the path.
    File { rel: PathBuf, len: u64 },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Framing(b) => b.len() as u64,
            Segment::File { len, .. } => *len,
        }
    }
}

/// Why a layout could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("layout is corrupt: {0}")]
pub struct LayoutError(&'static str);

/// A NAR as an ordered list of segments, with each one's offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    segments: Vec<(u64, Segment)>,
    size: u64,
}

impl Layout {
    /// The NAR's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn push(&mut self, s: Segment) {
        let len = s.len();
        if len == 0 {
            return;
        }
        if let (Segment::Framing(new), Some((_, Segment::Framing(last)))) = (&s, self.segments.last_mut()) {
            last.extend_from_slice(new);
        } else {
            self.segments.push((self.size, s));
        }
        self.size += len;
    }

    /// Encodes: per segment a tag (0 framing, 1 file), a u32 length and the
    /// bytes (framing or relative path), and for a file its u64 length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, s) in &self.segments {
            match s {
                Segment::Framing(b) => {
                    out.push(0);
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                Segment::File { rel, len } => {
                    let r = rel.as_os_str().as_bytes();
                    out.push(1);
                    out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                    out.extend_from_slice(r);
                    out.extend_from_slice(&len.to_le_bytes());
                }
            }
        }
        out
    }

    /// Decodes what [`Layout::encode`] wrote.
    pub fn decode(mut b: &[u8]) -> Result<Self, LayoutError> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], LayoutError> {
            if b.len() < n {
                return Err(LayoutError("truncated"));
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        let mut layout = Layout::default();
        while let Some((&tag, rest)) = b.split_first() {
            b = rest;
            let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| LayoutError("length"))?) as usize;
            let bytes = take(&mut b, n)?.to_vec();
            let seg = match tag {
                0 => Segment::Framing(bytes),
                1 => {
                    let len = u64::from_le_bytes(take(&mut b, 8)?.try_into().map_err(|_| LayoutError("size"))?);
                    let rel = PathBuf::from(std::ffi::OsString::from_vec(bytes));
                    if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                        return Err(LayoutError("file path leaves the store path"));
                    }
                    Segment::File { rel, len }
                }
                _ => return Err(LayoutError("unknown segment tag")),
            };
            layout.push(seg);
        }
        Ok(layout)
    }

    /// Reads NAR bytes `offset..offset + len` of the path rooted at `root`.
    /// Files are opened by their recorded names and read at an offset; the
    /// caller verifies what comes back (the files may have changed).
    pub fn read(&self, root: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range outside the NAR"))?;
        let mut out = Vec::with_capacity(len as usize);
        let first = self
            .segments
            .partition_point(|(start, _)| *start <= offset)
            .saturating_sub(1);
        for (start, seg) in &self.segments[first..] {
            if *start >= end {
                break;
            }
            let from = offset.max(*start) - start;
            let to = end.min(start + seg.len()) - start;
            match seg {
                Segment::Framing(b) => out.extend_from_slice(&b[from as usize..to as usize]),
                Segment::File { rel, .. } => {
                    let path = if rel.as_os_str().is_empty() {
                        root.to_owned()
                    } else {
                        root.join(rel)
                    };
                    let mut f = crate::nar::open_regular(&path)?;
                    f.seek(SeekFrom::Start(from))?;
                    let want = (to - from) as usize;
                    let before = out.len();
                    f.take(want as u64).read_to_end(&mut out)?;
                    if out.len() - before != want {
                        return Err(changed(rel));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A [`NarSink`] that records the layout and passes every NAR byte to
/// `bytes`, reading files in pieces of 256 KiB.
pub struct Recorder<F> {
    pub layout: Layout,
    bytes: F,
    buf: Vec<u8>,
}

impl<F> std::fmt::Debug for Recorder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl<F: FnMut(&[u8]) -> io::Result<()>> Recorder<F> {
    /// A recorder feeding `bytes`.
    pub fn new(bytes: F) -> Self {
        Self {
            layout: Layout::default(),
            bytes,
            buf: vec![0; 256 * 1024],
        }
    }
}

impl<F: FnMut(&[u8]) -> io::Result<()>> NarSink for Recorder<F> {
    fn framing(&mut self, b: &[u8]) -> io::Result<()> {
        self.layout.push(Segment::Framing(b.to_vec()));
        (self.bytes)(b)
    }

    fn contents(&mut self, rel: &Path, mut file: fs::File, len: u64) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let want = (self.buf.len() as u64).min(left) as usize;
            let n = file.read(&mut self.buf[..want])?;
            if n == 0 {
                return Err(changed(rel));
            }
            (self.bytes)(&self.buf[..n])?;
            left -= n as u64;
        }
        self.layout.push(Segment::File {
            rel: rel.to_owned(),
            len,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(dir: &Path, files: &[(String, Vec<u8>)]) {
        for (name, data) in files {
            let p = dir.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
        std::os::unix::fs::symlink("a/target", dir.join("link")).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Every range rebuilt from the layout equals the same range of the
        /// NAR written whole, and the layout survives encoding.
        #[test]
        fn any_range_matches_the_whole_nar(
            files in proptest::collection::vec(("[a-c]{1,2}(/[a-c]{1,2})?", proptest::collection::vec(any::<u8>(), 0..3000)), 1..6),
            cuts in proptest::collection::vec((any::<u16>(), any::<u16>()), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("p");
            fs::create_dir(&root).unwrap();
            // A name cannot be both a file and a directory: keep the first.
            let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
            for (n, d) in files {
                let clash = seen.iter().any(|(s, _)| s == &n || n.starts_with(&format!("{s}/")) || s.starts_with(&format!("{n}/")));
                if !clash { seen.push((n, d)); }
            }
            tree(&root, &seen);
            let mut whole = Vec::new();
            crate::nar::dump(&root, &mut whole).unwrap();
            let mut fed = Vec::new();
            let mut rec = Recorder::new(|b: &[u8]| { fed.extend_from_slice(b); Ok(()) });
            crate::nar::dump_to(&root, &mut rec).unwrap();
            let layout = rec.layout;
            prop_assert_eq!(&fed, &whole);
            prop_assert_eq!(layout.size(), whole.len() as u64);
            let layout = Layout::decode(&layout.encode()).unwrap();
            for (a, b) in cuts {
                let a = u64::from(a) % (whole.len() as u64);
                let n = u64::from(b) % (whole.len() as u64 - a + 1);
                let got = layout.read(&root, a, n).unwrap();
                prop_assert_eq!(&got[..], &whole[a as usize..(a + n) as usize]);
            }
        }

        /// Decoding arbitrary bytes never panics, and never yields a path
        /// outside the store path.
        #[test]
        fn decode_rejects_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(l) = Layout::decode(&bytes) {
                for (_, s) in &l.segments {
                    if let Segment::File { rel, .. } = s {
                        prop_assert!(!rel.is_absolute());
                    }
                }
            }
        }
    }

    #[test]
    fn a_dot_dot_path_is_refused() {
        let mut l = Layout::default();
        l.push(Segment::File {
            rel: PathBuf::from("../etc/shadow"),
            len: 1,
        });
        assert!(Layout::decode(&l.encode()).is_err());
    }

    #[test]
    fn a_file_that_shrank_is_an_error_not_short_data() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("f");
        fs::write(&root, vec![7u8; 1000]).unwrap();
        let mut rec = Recorder::new(|_: &[u8]| Ok(()));
        crate::nar::dump_to(&root, &mut rec).unwrap();
        let layout = rec.layout;
        fs::write(&root, vec![7u8; 10]).unwrap();
        assert!(layout.read(&root, 0, layout.size()).is_err());
    }

    /// A file swapped for a FIFO (whose open would wait for a writer
    /// forever) or for a symlink after indexing: the read fails at once.
    #[test]
    fn a_file_swapped_for_a_fifo_or_a_symlink_fails_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("f"), vec![7u8; 1000]).unwrap();
        let mut rec = Recorder::new(|_: &[u8]| Ok(()));
        crate::nar::dump_to(&root, &mut rec).unwrap();
        let layout = rec.layout;
        let secret = dir.path().join("secret");
        fs::write(&secret, vec![7u8; 1000]).unwrap();
        for swap in ["fifo", "symlink"] {
            fs::remove_file(root.join("f")).unwrap();
            if swap == "fifo" {
                let c = std::ffi::CString::new(root.join("f").as_os_str().as_bytes()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            } else {
                std::os::unix::fs::symlink(&secret, root.join("f")).unwrap();
            }
            let (tx, rx) = std::sync::mpsc::channel();
            let (l, r) = (layout.clone(), root.clone());
            std::thread::spawn(move || tx.send(l.read(&r, 0, l.size()).is_err()));
            let failed = rx.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(failed, Ok(true), "{swap}: the read waited or succeeded");
        }
    }
}
