//! Matching what leaf devices sent with what came out of the pipeline, by correlation id.

use std::collections::{HashMap, HashSet};
use std::fmt;

/// How the outcomes of one kind (RUL messages, Avro records, …) cover the sent messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages sent.
    pub expected: usize,
    /// Sent correlation ids with no outcome.
    pub missing: Vec<String>,
    /// Sent correlation ids with exactly one outcome.
    pub once: usize,
    /// Sent correlation ids with more than one outcome.
    pub duplicated: usize,
    /// Those correlation ids.
    pub duplicated_ids: Vec<String>,
    /// Outcomes beyond the first, over all correlation ids (at-least-once redeliveries).
    pub extra_copies: usize,
    /// Outcomes whose correlation id was never sent.
    pub unexpected: Vec<String>,
}

impl Tally {
    /// Counts the outcomes `got` against the correlation ids `expected`.
    pub fn count<'a>(
        expected: impl IntoIterator<Item = &'a str>,
        got: impl IntoIterator<Item = &'a str>,
    ) -> Tally {
        let expected: Vec<&str> = expected.into_iter().collect();
        let wanted: HashSet<&str> = expected.iter().copied().collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut unexpected = Vec::new();
        for cid in got {
            if wanted.contains(cid) {
                *seen.entry(cid).or_default() += 1;
            } else {
                unexpected.push(cid.to_owned());
            }
        }
        let mut t = Tally {
            expected: wanted.len(),
            unexpected,
            ..Tally::default()
        };
        for cid in wanted {
            match seen.get(cid).copied().unwrap_or(0) {
                0 => t.missing.push(cid.to_owned()),
                1 => t.once += 1,
                n => {
                    t.duplicated += 1;
                    t.extra_copies += n - 1;
                    t.duplicated_ids.push(cid.to_owned());
                }
            }
        }
        t.missing.sort();
        t.duplicated_ids.sort();
        t
    }

    /// Every sent message has exactly one outcome and nothing else came out.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.extra_copies == 0 && self.unexpected.is_empty()
    }

    /// Every sent message has at least one outcome and nothing else came out.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent: {} once, {} duplicated ({} extra copies), {} missing, {} unexpected",
            self.expected,
            self.once,
            self.duplicated,
            self.extra_copies,
            self.missing.len(),
            self.unexpected.len()
        )?;
        if !self.missing.is_empty() {
            let first: Vec<&str> = self.missing.iter().take(5).map(String::as_str).collect();
            write!(f, "; first missing: {}", first.join(", "))?;
        }
        if !self.unexpected.is_empty() {
            let first: Vec<&str> = self.unexpected.iter().take(5).map(String::as_str).collect();
            write!(f, "; first unexpected: {}", first.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_missing_duplicated_and_unexpected_outcomes() {
        let t = Tally::count(["a", "b", "c", "d"], ["a", "b", "b", "b", "c", "x"]);
        assert_eq!(t.expected, 4);
        assert_eq!(t.once, 2);
        assert_eq!((t.duplicated, t.extra_copies), (1, 2));
        assert_eq!(t.duplicated_ids, vec!["b".to_owned()]);
        assert_eq!(t.missing, vec!["d".to_owned()]);
        assert_eq!(t.unexpected, vec!["x".to_owned()]);
        assert!(!t.is_complete() && !t.is_exact());
        assert!(t.to_string().contains("first missing: d"), "{t}");
        assert!(Tally::count(["a"], ["a"]).is_exact());
        let dup = Tally::count(["a"], ["a", "a"]);
        assert!(dup.is_complete() && !dup.is_exact());
    }
}
