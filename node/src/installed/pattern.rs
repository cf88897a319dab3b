//! Store-path name patterns for paths never to share: `*` matches any run
//! of characters, `?` any one character, everything else itself.

use std::fmt;
use std::str::FromStr;

/// A name pattern, e.g. `*-secrets` or `my-company-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

/// Why a pattern is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("name pattern {0:?} is empty or contains '/'")]
pub struct PatternError(String);

impl FromStr for NamePattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, PatternError> {
        if s.is_empty() || s.contains('/') {
            return Err(PatternError(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl NamePattern {
    /// True if `name` (a store path's name, without hash) matches.
    pub fn matches(&self, name: &str) -> bool {
        let (p, n): (Vec<char>, Vec<char>) = (self.0.chars().collect(), name.chars().collect());
        // Iterative wildcard matching with one backtrack point.
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pat(s: &str) -> NamePattern {
        s.parse().unwrap()
    }

    #[test]
    fn wildcards() {
        assert!(pat("*-secrets").matches("my-secrets"));
        assert!(!pat("*-secrets").matches("my-secrets-2"));
        assert!(pat("corp-*").matches("corp-"));
        assert!(pat("a?c").matches("abc"));
        assert!(!pat("a?c").matches("ac"));
        assert!(pat("*a*b*").matches("xxaxxbxx"));
        assert!(!pat("*a*b*").matches("xxbxxaxx"));
        assert!("".parse::<NamePattern>().is_err());
        assert!("a/b".parse::<NamePattern>().is_err());
    }

    proptest! {
        /// Agrees with a plain recursive matcher.
        #[test]
        fn agrees_with_a_recursive_matcher(p in "[ab*?]{1,6}", n in "[ab]{0,8}") {
            prop_assert_eq!(pat(&p).matches(&n), naive(&p.chars().collect::<Vec<_>>(), &n.chars().collect::<Vec<_>>()));
        }
    }

    fn naive(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| naive(rest, &n[i..])),
            Some((c, rest)) => n
                .split_first()
                .is_some_and(|(d, nr)| (*c == '?' || c == d) && naive(rest, nr)),
        }
    }
}
