//! Checking a NAR against its narinfo while it streams: NarSize, NarHash,
//! and for a flat (`fixed:sha256:`) or text (`text:sha256:`) content
//! address, the hash of the one file the NAR holds.
//!
//! A content-addressed narinfo needs no signature (see
//! [`NarInfo::trust`]), so for those two kinds the NarHash is whatever the
//! sender chose; only the content address ties the bytes to the path. Nix
//! checks it on import ("ca hash mismatch"); checking it here as well keeps
//! a forged NAR from being stored, announced and spread before any client
//! sees it. A recursive address (`fixed:r:sha256:`) is the NarHash itself,
//! which [`NarInfo::trust`] already requires.

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::content_address::ContentAddress;
use crate::hash::Sha256Hash;
use crate::narinfo::NarInfo;

/// Why a NAR does not match its narinfo.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarCheckError {
    #[error("more bytes than NarSize {expected}")]
    TooLong { expected: u64 },
    #[error("{actual} bytes, NarSize says {expected}")]
    WrongSize { actual: u64, expected: u64 },
    #[error("NAR hash {actual}, NarHash says {expected}")]
    WrongHash { actual: Sha256Hash, expected: Sha256Hash },
    #[error("content address {ca} needs a NAR of one regular file: {why}")]
    NotOneFile { ca: String, why: &'static str },
    #[error("content hash {actual}, content address says {expected}")]
    WrongContent { actual: Sha256Hash, expected: Sha256Hash },
}

impl NarCheckError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong { .. } => "too_long",
            Self::WrongSize { .. } => "too_short",
            Self::WrongHash { .. } => "hash_mismatch",
            Self::NotOneFile { .. } | Self::WrongContent { .. } => "ca_mismatch",
        }
    }
}

/// A streaming check of one NAR. Feed it every byte in order with
/// [`NarCheck::update`], then call [`NarCheck::finish`].
#[derive(Debug, Clone)]
pub struct NarCheck {
    sha: Sha256,
    size: u64,
    nar_size: u64,
    nar_hash: Sha256Hash,
    file: Option<OneFile>,
}

impl NarCheck {
    /// The check for `info`'s NAR.
    pub fn new(info: &NarInfo) -> Self {
        let file = match info.ca.as_deref().and_then(|c| c.parse().ok()) {
            Some(ca @ (ContentAddress::Flat(h) | ContentAddress::Text(h))) => Some(OneFile::new(ca.to_string(), h)),
            _ => None,
        };
        Self {
            sha: Sha256::new(),
            size: 0,
            nar_size: info.nar_size,
            nar_hash: info.nar_hash,
            file,
        }
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks the next bytes of the NAR.
    pub fn update(&mut self, data: &[u8]) -> Result<(), NarCheckError> {
        self.size += data.len() as u64;
        if self.size > self.nar_size {
            return Err(NarCheckError::TooLong {
                expected: self.nar_size,
            });
        }
        self.sha.update(data);
        match &mut self.file {
            Some(f) => f.update(data),
            None => Ok(()),
        }
    }

    /// Checks that the NAR is complete and right. Returns its sha256.
    pub fn finish(self) -> Result<Sha256Hash, NarCheckError> {
        if self.size != self.nar_size {
            return Err(NarCheckError::WrongSize {
                actual: self.size,
                expected: self.nar_size,
            });
        }
        let actual = Sha256Hash(self.sha.finalize().into());
        if actual != self.nar_hash {
            return Err(NarCheckError::WrongHash {
                actual,
                expected: self.nar_hash,
            });
        }
        if let Some(f) = self.file {
            f.finish()?;
        }
        Ok(actual)
    }
}

/// A NAR string: length, bytes, zero padding to 8.
fn nar_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len() + s.len().next_multiple_of(8) - s.len(), 0);
}

fn header(executable: bool) -> Vec<u8> {
    let mut h = Vec::new();
    for s in ["nix-archive-1", "(", "type", "regular"] {
        nar_str(&mut h, s.as_bytes());
    }
    if executable {
        nar_str(&mut h, b"executable");
        nar_str(&mut h, b"");
    }
    nar_str(&mut h, b"contents");
    h
}

#[derive(Debug, Clone)]
enum Part {
    /// The fixed header and the contents' length.
    Header(Vec<u8>),
    Contents {
        left: u64,
        len: u64,
    },
    /// The padding after the contents and the closing `)`.
    Trailer {
        want: Vec<u8>,
        at: usize,
    },
}

/// Parses the NAR of a single regular file (the only shape a flat or text
/// path has) and hashes the file's contents.
#[derive(Debug, Clone)]
struct OneFile {
    ca: String,
    want: Sha256Hash,
    sha: Sha256,
    part: Part,
}

impl OneFile {
    fn new(ca: String, want: Sha256Hash) -> Self {
        Self {
            ca,
            want,
            sha: Sha256::new(),
            part: Part::Header(Vec::new()),
        }
    }

    fn bad(&self, why: &'static str) -> NarCheckError {
        NarCheckError::NotOneFile {
            ca: self.ca.clone(),
            why,
        }
    }

    fn update(&mut self, mut data: &[u8]) -> Result<(), NarCheckError> {
        while !data.is_empty() {
            match &mut self.part {
                Part::Header(buf) => {
                    let (plain, exec) = (header(false), header(true));
                    let room = exec.len() + 8 - buf.len();
                    let take = room.min(data.len());
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    let fits = |h: &[u8]| buf[..buf.len().min(h.len())] == h[..buf.len().min(h.len())];
                    if !fits(&plain) && !fits(&exec) {
                        return Err(self.bad("not a regular file"));
                    }
                    let done = [plain, exec]
                        .into_iter()
                        .find(|h| buf.len() >= h.len() + 8 && fits(h))
                        .map(|h| h.len());
                    if let Some(at) = done {
                        let len = u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
                        let rest = buf.split_off(at + 8);
                        self.part = Part::Contents { left: len, len };
                        self.update(&rest)?;
                    }
                }
                Part::Contents { left, len } => {
                    let take = (*left).min(data.len() as u64) as usize;
                    self.sha.update(&data[..take]);
                    data = &data[take..];
                    *left -= take as u64;
                    if *left == 0 {
                        let mut want = vec![0; (len.next_multiple_of(8) - *len) as usize];
                        nar_str(&mut want, b")");
                        self.part = Part::Trailer { want, at: 0 };
                    }
                }
                Part::Trailer { want, at } => {
                    let take = (want.len() - *at).min(data.len());
                    if data[..take] != want[*at..*at + take] {
                        return Err(self.bad("bad padding or end"));
                    }
                    *at += take;
                    data = &data[take..];
                    if !data.is_empty() {
                        return Err(self.bad("bytes after the file"));
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(), NarCheckError> {
        match &self.part {
            Part::Trailer { want, at } if *at == want.len() => {}
            _ => return Err(self.bad("ends early")),
        }
        let actual = Sha256Hash(self.sha.finalize().into());
        if actual != self.want {
            return Err(NarCheckError::WrongContent {
                actual,
                expected: self.want,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NAR of one regular file, as `nix-store --dump` writes it.
    pub(crate) fn file_nar(contents: &[u8], executable: bool) -> Vec<u8> {
        let mut n = header(executable);
        nar_str(&mut n, contents);
        nar_str(&mut n, b")");
        n
    }

    fn run(nar: &[u8], ca: &str, piece: usize) -> Result<Sha256Hash, NarCheckError> {
        let info = info(nar, Some(ca));
        let mut c = NarCheck::new(&info);
        for p in nar.chunks(piece.max(1)) {
            c.update(p)?;
        }
        c.finish()
    }

    fn info(nar: &[u8], ca: Option<&str>) -> NarInfo {
        let ca = ca.map(|c| format!("CA: {c}\n")).unwrap_or_default();
        let text = format!(
            "StorePath: /nix/store/1g10pyjvgvxciw9qmziz7w578899g11y-x\nURL: nar/x.nar\nCompression: none\n\
             NarHash: {}\nNarSize: {}\nReferences: \n{ca}",
            Sha256Hash::digest(nar),
            nar.len()
        );
        NarInfo::parse(&text).unwrap()
    }

    #[test]
    fn a_flat_or_text_nar_must_hold_the_addressed_contents() {
        let good = Sha256Hash::digest(b"hello\n");
        for exec in [false, true] {
            let nar = file_nar(b"hello\n", exec);
            for piece in [1, 3, 8, 1000] {
                assert!(run(&nar, &format!("fixed:{good}"), piece).is_ok());
                assert!(run(&nar, &format!("text:{good}"), piece).is_ok());
            }
        }
        // The NarHash is right (the sender chose it), the contents are not.
        let forged = file_nar(b"evil!\n", false);
        let err = run(&forged, &format!("fixed:{good}"), 7).unwrap_err();
        assert!(matches!(err, NarCheckError::WrongContent { .. }), "{err}");
        assert!(run(&forged, &format!("text:{good}"), 7).is_err());
    }

    #[test]
    fn a_flat_nar_of_another_shape_is_refused() {
        let good = Sha256Hash::digest(b"hello\n");
        let ca = format!("fixed:{good}");
        let mut dir = Vec::new();
        for s in ["nix-archive-1", "(", "type", "directory", ")"] {
            nar_str(&mut dir, s.as_bytes());
        }
        let mut trailing = file_nar(b"hello\n", false);
        trailing.extend_from_slice(&[0; 8]);
        let mut bad_pad = file_nar(b"hello\n", false);
        let at = bad_pad.len() - 17;
        bad_pad[at] = 1;
        let short = &file_nar(b"hello\n", false)[..40];
        for (nar, what) in [
            (&dir[..], "dir"),
            (&trailing, "trailing"),
            (&bad_pad, "pad"),
            (short, "short"),
        ] {
            let err = run(nar, &ca, 5).unwrap_err();
            assert!(matches!(err, NarCheckError::NotOneFile { .. }), "{what}: {err}");
        }
    }

    #[test]
    fn size_and_hash_are_checked_for_every_nar() {
        let nar = file_nar(b"x", false);
        let mut i = info(&nar, None);
        let mut c = NarCheck::new(&i);
        c.update(&nar).unwrap();
        assert!(c.clone().finish().is_ok());
        assert!(matches!(c.update(b"y"), Err(NarCheckError::TooLong { .. })));
        let mut short = NarCheck::new(&i);
        short.update(&nar[..5]).unwrap();
        assert!(matches!(short.finish(), Err(NarCheckError::WrongSize { .. })));
        i.nar_hash = Sha256Hash::digest(b"other");
        let mut wrong = NarCheck::new(&i);
        wrong.update(&nar).unwrap();
        assert!(matches!(wrong.finish(), Err(NarCheckError::WrongHash { .. })));
    }

    proptest::proptest! {
        #[test]
        fn any_split_of_any_file_checks(contents in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                                        exec: bool, piece in 1usize..64) {
            let nar = file_nar(&contents, exec);
            let ca = format!("fixed:{}", Sha256Hash::digest(&contents));
            proptest::prop_assert!(run(&nar, &ca, piece).is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 1..300), piece in 1usize..64) {
            let _ = run(&bytes, &format!("text:{}", Sha256Hash::digest(b"")), piece);
        }
    }
}
