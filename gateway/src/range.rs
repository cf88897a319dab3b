//! `Range: bytes=...` parsing (a single range; several ranges are served as
//! the whole body, which HTTP allows).

/// What the Range header asks for, against a body of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: the whole body.
    Full,
    /// Bytes `start..end` (end exclusive).
    Partial { start: u64, end: u64 },
    /// A syntactically valid range that does not overlap the body: 416.
    Unsatisfiable,
}

/// Parses a Range header value for a body of `size` bytes.
pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok().filter(|_| s.bytes().all(|c| c.is_ascii_digit()));
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => return RangeRequest::Unsatisfiable,
            Some(n) => (size.saturating_sub(n), size),
            None => return RangeRequest::Full,
        },
        (false, true) => match num(a) {
            Some(s) => (s, size),
            None => return RangeRequest::Full,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e => (s, e.saturating_add(1).min(size)),
            _ => return RangeRequest::Full,
        },
        (true, true) => return RangeRequest::Full,
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    if start == 0 && end == size {
        return RangeRequest::Full;
    }
    RangeRequest::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(parse(None, 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=2-4"), 10), RangeRequest::Partial { start: 2, end: 5 });
        assert_eq!(parse(Some("bytes=2-"), 10), RangeRequest::Partial { start: 2, end: 10 });
        assert_eq!(parse(Some("bytes=-3"), 10), RangeRequest::Partial { start: 7, end: 10 });
        assert_eq!(parse(Some("bytes=-30"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=0-100"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=10-"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), RangeRequest::Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-2"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=1-2,4-5"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("items=1-2"), 10), RangeRequest::Full);
        assert_eq!(parse(Some("bytes=+1-2"), 10), RangeRequest::Full);
    }

    proptest! {
        #[test]
        fn partial_ranges_are_within_the_body(h in "\\PC{0,30}", size in 0u64..1000) {
            if let RangeRequest::Partial { start, end } = parse(Some(&h), size) {
                prop_assert!(start < end && end <= size);
            }
        }

        #[test]
        fn numeric_ranges(s in 0u64..2000, e in 0u64..2000, size in 1u64..1000) {
            match parse(Some(&format!("bytes={s}-{e}")), size) {
                RangeRequest::Partial { start, end } => prop_assert!(start == s && end == (e + 1).min(size)),
                RangeRequest::Unsatisfiable => prop_assert!(s >= size),
                RangeRequest::Full => prop_assert!(s > e || (s == 0 && e + 1 >= size)),
            }
        }
    }
}
