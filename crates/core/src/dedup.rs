//! Duplicate suppression by (`src`, `inst`, `seq`).
//!
//! Each source keeps the highest sequence number seen and a bitmap of the last `window` numbers
//! below it, so a duplicate is recognised even when messages of one source arrive out of order
//! (a consumer reading several streams, a redelivery, a re-send after failover). A message older
//! than the window cannot be checked: it is let through (at-least-once is preferred over loss) and
//! counted in [`SourceDedup::too_old`].

use std::collections::HashMap;
use std::sync::Arc;

/// What [`SourceDedup::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time seen: handle it.
    New,
    /// Seen before: drop it.
    Duplicate,
    /// Older than the window: handled, since it cannot be checked.
    TooOld,
}

struct Window {
    max: u64,
    bits: Box<[u64]>,
}

impl Window {
    fn new(words: usize, seq: u64) -> Window {
        let mut w = Window {
            max: seq,
            bits: vec![0; words].into_boxed_slice(),
        };
        w.set(seq);
        w
    }
    fn span(&self) -> u64 {
        (self.bits.len() as u64) * 64
    }
    fn pos(&self, seq: u64) -> (usize, u64) {
        let p = seq % self.span();
        ((p / 64) as usize, 1u64 << (p % 64))
    }
    fn set(&mut self, seq: u64) {
        let (i, m) = self.pos(seq);
        self.bits[i] |= m;
    }
    fn check(&mut self, seq: u64) -> Verdict {
        if seq > self.max {
            let gap = seq - self.max;
            if gap >= self.span() {
                self.bits.fill(0);
            } else {
                for s in self.max + 1..seq {
                    let (i, m) = self.pos(s);
                    self.bits[i] &= !m;
                }
            }
            let (i, m) = self.pos(seq);
            self.bits[i] &= !m;
            self.max = seq;
            self.set(seq);
            return Verdict::New;
        }
        if self.max - seq >= self.span() {
            return Verdict::TooOld;
        }
        let (i, m) = self.pos(seq);
        if self.bits[i] & m != 0 {
            Verdict::Duplicate
        } else {
            self.bits[i] |= m;
            Verdict::New
        }
    }
}

/// Per-source duplicate filter. Not thread-safe; one per subscription.
pub struct SourceDedup {
    words: usize,
    index: HashMap<(Arc<str>, Arc<str>), usize>,
    windows: Vec<Window>,
    last: Option<(Arc<str>, Arc<str>, usize)>,
    too_old: u64,
}

impl SourceDedup {
    /// A filter remembering `window` sequence numbers per source (rounded up to a multiple of 64).
    pub fn new(window: u64) -> SourceDedup {
        SourceDedup {
            words: window.div_ceil(64).max(1) as usize,
            index: HashMap::new(),
            windows: Vec::new(),
            last: None,
            too_old: 0,
        }
    }

    /// Messages let through because they were older than the window.
    pub fn too_old(&self) -> u64 {
        self.too_old
    }

    /// Records `seq` for the source and says whether it was new.
    pub fn check(&mut self, src: &Arc<str>, inst: &Arc<str>, seq: u64) -> Verdict {
        let cached = match &self.last {
            // Consecutive messages mostly come from the same source: skip the hash lookup and
            // the reference counting.
            Some((s, i, slot))
                if (Arc::ptr_eq(s, src) || **s == **src)
                    && (Arc::ptr_eq(i, inst) || **i == **inst) =>
            {
                Some(*slot)
            }
            _ => None,
        };
        let slot = match cached {
            Some(slot) => slot,
            None => {
                let slot = match self.index.get(&(src.clone(), inst.clone())) {
                    Some(&slot) => slot,
                    None => {
                        let slot = self.windows.len();
                        self.windows.push(Window::new(self.words, seq));
                        self.index.insert((src.clone(), inst.clone()), slot);
                        self.last = Some((src.clone(), inst.clone(), slot));
                        return Verdict::New;
                    }
                };
                self.last = Some((src.clone(), inst.clone(), slot));
                slot
            }
        };
        let verdict = self.windows[slot].check(seq);
        if verdict == Verdict::TooOld {
            self.too_old += 1;
        }
        verdict
    }

    /// Un-records `seq` (its handler failed, so a redelivery must not count as a duplicate).
    pub fn forget(&mut self, src: &Arc<str>, inst: &Arc<str>, seq: u64) {
        if let Some(&slot) = self.index.get(&(src.clone(), inst.clone())) {
            let w = &mut self.windows[slot];
            if seq <= w.max && w.max - seq < w.span() {
                let (i, m) = w.pos(seq);
                w.bits[i] &= !m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_in_and_out_of_order() {
        let (s, i) = (Arc::from("risk"), Arc::from("risk-1"));
        let mut d = SourceDedup::new(128);
        assert_eq!(d.check(&s, &i, 10), Verdict::New);
        assert_eq!(d.check(&s, &i, 12), Verdict::New);
        assert_eq!(d.check(&s, &i, 11), Verdict::New);
        assert_eq!(d.check(&s, &i, 12), Verdict::Duplicate);
        assert_eq!(d.check(&s, &i, 10), Verdict::Duplicate);
        // Another instance of the same engine is another source.
        let i2: Arc<str> = Arc::from("risk-2");
        assert_eq!(d.check(&s, &i2, 10), Verdict::New);
        assert_eq!(d.check(&s, &i, 11), Verdict::Duplicate);
        d.forget(&s, &i, 11);
        assert_eq!(d.check(&s, &i, 11), Verdict::New);
    }

    #[test]
    fn window_slides_and_old_messages_pass() {
        let (s, i) = (Arc::from("a"), Arc::from("a-1"));
        let mut d = SourceDedup::new(64);
        for seq in 0..1000 {
            assert_eq!(d.check(&s, &i, seq), Verdict::New);
        }
        assert_eq!(d.check(&s, &i, 999), Verdict::Duplicate);
        assert_eq!(d.check(&s, &i, 950), Verdict::Duplicate);
        assert_eq!(d.check(&s, &i, 10), Verdict::TooOld);
        assert_eq!(d.too_old(), 1);
        // A jump larger than the window clears it.
        assert_eq!(d.check(&s, &i, 1_000_000), Verdict::New);
        assert_eq!(d.check(&s, &i, 999_999), Verdict::New);
    }
}
