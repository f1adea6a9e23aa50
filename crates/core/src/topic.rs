//! Topics and patterns: dot-separated segments, matched segment by segment.
//!
//! A [`Topic`] names what a message is about (`market_data.trade.BTCUSDT`); a [`Pattern`]
//! selects topics (`market_data.trade.*`, `market_data.>`). They are distinct types so that a
//! pattern can never be published to. By convention a topic's first segment is its kind's name,
//! which lets the bus pick the streams a pattern needs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Why a topic or pattern was rejected; names the offending segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The whole string was empty.
    #[error("empty {what}")]
    Empty {
        /// `topic` or `pattern`.
        what: &'static str,
    },
    /// One segment is invalid.
    #[error("invalid {what} {input:?}: segment {index} ({segment:?}) {reason}")]
    BadSegment {
        /// `topic` or `pattern`.
        what: &'static str,
        /// The rejected string.
        input: String,
        /// Zero-based index of the segment.
        index: usize,
        /// The segment itself.
        segment: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("{what} is {len} bytes long, the limit is {MAX_TOPIC_LEN}")]
    TooLong {
        /// `topic` or `pattern`.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

/// Longest accepted topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

fn valid_literal(seg: &str) -> bool {
    !seg.is_empty()
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A validated topic: segments of `[A-Za-z0-9_-]` separated by dots. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates and builds a topic.
    ///
    /// # Errors
    /// [`TopicError`] naming the first bad segment.
    pub fn new(s: &str) -> Result<Topic, TopicError> {
        const WHAT: &str = "topic";
        if s.is_empty() {
            return Err(TopicError::Empty { what: WHAT });
        }
        if s.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong {
                what: WHAT,
                len: s.len(),
            });
        }
        for (index, seg) in s.split('.').enumerate() {
            if !valid_literal(seg) {
                let reason = if seg.is_empty() {
                    "is empty"
                } else if seg == "*" || seg == ">" {
                    "is a wildcard, which only patterns may contain"
                } else {
                    "may only contain A-Z, a-z, 0-9, '_' and '-'"
                };
                return Err(TopicError::BadSegment {
                    what: WHAT,
                    input: s.to_string(),
                    index,
                    segment: seg.to_string(),
                    reason,
                });
            }
        }
        Ok(Topic(Arc::from(s)))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first segment: by convention the kind's name.
    pub fn first_segment(&self) -> &str {
        let end = self
            .0
            .bytes()
            .position(|b| b == b'.')
            .unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// Whether the first segment is exactly `name`.
    pub fn starts_with_segment(&self, name: &str) -> bool {
        let t = self.0.as_bytes();
        t.starts_with(name.as_bytes()) && (t.len() == name.len() || t[name.len()] == b'.')
    }

    /// Whether both are the same allocation (a cheap equality check that may say `false` for
    /// equal topics).
    pub fn ptr_eq(a: &Topic, b: &Topic) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// Iterates over the segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.0)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::new(s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `>`: one or more remaining segments (last position only).
    Rest,
}

/// A validated topic pattern: like a topic, plus `*` (exactly one segment) and `>` (one or more
/// remaining segments, only as the last segment).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
    segments: Arc<[Segment]>,
}

impl Pattern {
    /// Validates and builds a pattern.
    ///
    /// # Errors
    /// [`TopicError`] naming the first bad segment.
    pub fn new(s: &str) -> Result<Pattern, TopicError> {
        const WHAT: &str = "pattern";
        if s.is_empty() {
            return Err(TopicError::Empty { what: WHAT });
        }
        if s.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong {
                what: WHAT,
                len: s.len(),
            });
        }
        let parts: Vec<&str> = s.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (index, seg) in parts.iter().enumerate() {
            let bad = |reason| TopicError::BadSegment {
                what: WHAT,
                input: s.to_string(),
                index,
                segment: seg.to_string(),
                reason,
            };
            let parsed = match *seg {
                "*" => Segment::One,
                ">" if index == last => Segment::Rest,
                ">" => return Err(bad("is '>', which is only allowed as the last segment")),
                "" => return Err(bad("is empty")),
                lit if valid_literal(lit) => Segment::Literal(lit.into()),
                _ => {
                    return Err(bad(
                        "may only contain A-Z, a-z, 0-9, '_', '-', or be * or >",
                    ))
                }
            };
            segments.push(parsed);
        }
        Ok(Pattern {
            text: Arc::from(s),
            segments: segments.into(),
        })
    }

    /// A pattern matching exactly `topic`.
    pub fn exact(topic: &Topic) -> Pattern {
        Pattern::new(topic.as_str()).expect("a valid topic is a valid pattern")
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first segment when it is a literal: the kind this pattern selects.
    pub fn literal_first_segment(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether `topic` matches, segment by segment.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// Like [`Pattern::matches`] on an already validated topic string.
    pub fn matches_str(&self, topic: &str) -> bool {
        let t = topic.as_bytes();
        let mut pos = 0usize; // start of the current topic segment
        let mut first = true;
        for seg in self.segments.iter() {
            if !first {
                // Step over the dot that ended the previous segment.
                if pos >= t.len() {
                    return false;
                }
                pos += 1;
            }
            first = false;
            if pos > t.len() || (pos == t.len() && !t.is_empty()) {
                return false;
            }
            match seg {
                Segment::Rest => return pos < t.len(),
                Segment::One => {
                    let end = t[pos..]
                        .iter()
                        .position(|&b| b == b'.')
                        .map_or(t.len(), |i| pos + i);
                    pos = end;
                }
                Segment::Literal(lit) => {
                    let lit = lit.as_bytes();
                    let end = pos + lit.len();
                    if end > t.len() || &t[pos..end] != lit || (end < t.len() && t[end] != b'.') {
                        return false;
                    }
                    pos = end;
                }
            }
        }
        pos == t.len()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }
    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn matching_is_segment_aware() {
        assert!(p("market_data.trade.*").matches(&t("market_data.trade.BTCUSDT")));
        assert!(!p("market_data.trade.*").matches(&t("market_data.trade.BTC.X")));
        assert!(!p("market_data.trade.*").matches(&t("market_data.trade")));
        assert!(p("market_data.>").matches(&t("market_data.trade.BTCUSDT")));
        assert!(!p("market_data.>").matches(&t("market_data")));
        // A prefix of a segment is not a match.
        assert!(!p("market.>").matches(&t("market_data.trade")));
        assert!(!p("market_data.tra").matches(&t("market_data.trade")));
        assert!(p("*.trade.>").matches(&t("market_data.trade.ETH-USD")));
        assert!(p(">").matches(&t("a")));
    }

    #[test]
    fn errors_name_the_segment() {
        let e = Topic::new("market_data..BTC").unwrap_err().to_string();
        assert!(e.contains("segment 1") && e.contains("is empty"), "{e}");
        let e = Topic::new("market_data.trade.BTC/USD")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"BTC/USD\""), "{e}");
        let e = Topic::new("market_data.*").unwrap_err().to_string();
        assert!(e.contains("wildcard"), "{e}");
        let e = Pattern::new("a.>.b").unwrap_err().to_string();
        assert!(e.contains("segment 1") && e.contains("last segment"), "{e}");
        let e = Pattern::new("a.b c").unwrap_err().to_string();
        assert!(e.contains("\"b c\""), "{e}");
        assert!(Topic::new("").is_err());
        assert!(Topic::new(&"a".repeat(300)).is_err());
    }

    /// The obviously correct matcher the real one is checked against.
    fn naive_match(pattern: &[String], topic: &[String]) -> bool {
        match (pattern.first(), topic.first()) {
            (None, None) => true,
            (Some(ps), _) if ps == ">" => !topic.is_empty(),
            (Some(ps), Some(ts)) => {
                (ps == "*" || ps == ts) && naive_match(&pattern[1..], &topic[1..])
            }
            _ => false,
        }
    }

    fn seg() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("ab".to_string())
        ]
    }

    fn pat_seg() -> impl Strategy<Value = String> {
        prop_oneof![seg(), Just("*".to_string())]
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(
            topic in proptest::collection::vec(seg(), 1..5),
            mut pattern in proptest::collection::vec(pat_seg(), 1..5),
            rest in any::<bool>(),
        ) {
            if rest { *pattern.last_mut().unwrap() = ">".to_string(); }
            let t = Topic::new(&topic.join(".")).unwrap();
            let p = Pattern::new(&pattern.join(".")).unwrap();
            prop_assert_eq!(p.matches(&t), naive_match(&pattern, &topic));
        }
    }
}
