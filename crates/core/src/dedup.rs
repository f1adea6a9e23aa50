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
    /// The source (`src`, `inst`), to unindex it when its slot is reused.
    key: (Arc<str>, Arc<str>),
    /// Seen again since the eviction hand last passed (a second chance).
    referenced: bool,
}

impl Window {
    fn new(words: usize, seq: u64, key: (Arc<str>, Arc<str>)) -> Window {
        let mut w = Window {
            max: seq,
            bits: vec![0; words].into_boxed_slice(),
            key,
            referenced: false,
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
                // Clear the bits of max+1..seq: whole words at once, masks at the edges.
                let mut s = self.max + 1;
                while s < seq {
                    let (i, _) = self.pos(s);
                    let bit = s % 64;
                    if bit == 0 && seq - s >= 64 {
                        self.bits[i] = 0;
                        s += 64;
                    } else {
                        self.bits[i] &= !(1u64 << bit);
                        s += 1;
                    }
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

/// Most sources a filter tracks; beyond it one not seen again lately is forgotten (the clock
/// rule of `SourceDedup::insert`; its duplicates can then no longer be recognised).
pub const MAX_SOURCES: usize = 4096;

/// Most memory one filter's windows take: with a large window, fewer sources are tracked
/// ([`SourceDedup::max_sources`]), so messages from many (possibly forged) sources cannot make a
/// subscription hold `MAX_SOURCES` windows of the largest size (512 MiB at the default window).
pub const MAX_BYTES: usize = 64 << 20;

/// The largest window: at least 64 sources fit in [`MAX_BYTES`].
pub const MAX_WINDOW: u64 = ((MAX_BYTES / 64) * 8) as u64;

/// Per-source duplicate filter. Not thread-safe; one per subscription.
pub struct SourceDedup {
    words: usize,
    max_sources: usize,
    /// The eviction hand: the next slot considered for reuse at the cap.
    hand: usize,
    index: HashMap<(Arc<str>, Arc<str>), usize>,
    windows: Vec<Window>,
    last: Option<(Arc<str>, Arc<str>, usize)>,
    too_old: u64,
}

impl SourceDedup {
    /// A filter remembering `window` sequence numbers per source (rounded up to a multiple of
    /// 64, at most [`MAX_WINDOW`]).
    pub fn new(window: u64) -> SourceDedup {
        let words = window.clamp(1, MAX_WINDOW).div_ceil(64) as usize;
        SourceDedup {
            words,
            max_sources: (MAX_BYTES / (words * 8)).clamp(1, MAX_SOURCES),
            hand: 0,
            index: HashMap::new(),
            windows: Vec::new(),
            last: None,
            too_old: 0,
        }
    }

    /// How many sources this filter tracks at most: [`MAX_SOURCES`], fewer for a window so
    /// large that they would take more than [`MAX_BYTES`].
    pub fn max_sources(&self) -> usize {
        self.max_sources
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
                        let slot = self.insert(src, inst, seq);
                        self.last = Some((src.clone(), inst.clone(), slot));
                        return Verdict::New;
                    }
                };
                self.last = Some((src.clone(), inst.clone(), slot));
                slot
            }
        };
        self.windows[slot].referenced = true;
        let verdict = self.windows[slot].check(seq);
        if verdict == Verdict::TooOld {
            self.too_old += 1;
        }
        verdict
    }

    /// Starts tracking a source. At the cap it reuses a slot by the clock (second chance)
    /// rule: the hand passes over sources seen again since its last pass, clearing their
    /// mark, and takes the first one not seen again. A source seen once (a forged or a
    /// finished one) goes before a source still sending, and each message costs O(1)
    /// amortized, however many sources there are (each step of the hand clears a mark that
    /// a message set).
    fn insert(&mut self, src: &Arc<str>, inst: &Arc<str>, seq: u64) -> usize {
        let key = (src.clone(), inst.clone());
        if self.windows.len() < self.max_sources {
            let slot = self.windows.len();
            self.windows.push(Window::new(self.words, seq, key.clone()));
            self.index.insert(key, slot);
            return slot;
        }
        let n = self.windows.len();
        while self.windows[self.hand].referenced {
            self.windows[self.hand].referenced = false;
            self.hand = (self.hand + 1) % n;
        }
        let slot = self.hand;
        self.hand = (self.hand + 1) % n;
        let old = std::mem::replace(
            &mut self.windows[slot],
            Window::new(self.words, seq, key.clone()),
        );
        self.index.remove(&old.key);
        self.index.insert(key, slot);
        slot
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
    fn sources_beyond_the_cap_evict_one_not_seen_again() {
        let mut d = SourceDedup::new(64);
        let inst: Arc<str> = Arc::from("i");
        let names: Vec<Arc<str>> = (0..=MAX_SOURCES)
            .map(|n| Arc::from(format!("s{n}")))
            .collect();
        for n in &names[..MAX_SOURCES] {
            assert_eq!(d.check(n, &inst, 1), Verdict::New);
        }
        // Touch the first source: the hand passes over it and takes the second.
        assert_eq!(d.check(&names[0], &inst, 1), Verdict::Duplicate);
        assert_eq!(d.check(&names[MAX_SOURCES], &inst, 1), Verdict::New);
        assert_eq!(d.check(&names[0], &inst, 1), Verdict::Duplicate);
        // The evicted source is new again.
        assert_eq!(d.check(&names[1], &inst, 1), Verdict::New);
        assert_eq!(d.index.len(), MAX_SOURCES);
    }

    /// A flood of one-off (forged) sources does not push out the sources that keep sending.
    #[test]
    fn one_off_sources_do_not_evict_the_sources_still_sending() {
        let mut d = SourceDedup::new(64);
        let inst: Arc<str> = Arc::from("i");
        let live: Vec<Arc<str>> = (0..8).map(|n| Arc::from(format!("live{n}"))).collect();
        let mut seq = 0;
        for n in 0..(3 * MAX_SOURCES) {
            seq += 1;
            for l in &live {
                d.check(l, &inst, seq);
            }
            assert_eq!(
                d.check(&Arc::from(format!("forged{n}")), &inst, 1),
                Verdict::New
            );
            assert!(d.windows.len() <= MAX_SOURCES);
        }
        // The live sources are still tracked: a repeat of their last message is a duplicate.
        for l in &live {
            assert_eq!(d.check(l, &inst, seq), Verdict::Duplicate, "{l}");
        }
        assert_eq!(d.index.len(), d.windows.len());
    }

    /// Many sources with the default window (2^20 numbers, 128 KiB each) stay within the
    /// memory budget: 512 are tracked, not 4,096 (which took 512 MiB).
    #[test]
    fn large_windows_track_fewer_sources_within_the_budget() {
        let mut d = SourceDedup::new(1 << 20);
        assert_eq!(d.max_sources(), 512);
        let inst: Arc<str> = Arc::from("i");
        for n in 0..2000 {
            assert_eq!(
                d.check(&Arc::from(format!("forged{n}")), &inst, n),
                Verdict::New
            );
        }
        assert_eq!(d.windows.len(), 512);
        let bytes: usize = d.windows.iter().map(|w| w.bits.len() * 8).sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert_eq!(SourceDedup::new(64).max_sources(), MAX_SOURCES);
        assert_eq!(SourceDedup::new(u64::MAX).max_sources(), 64);
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
        // A gap inside the window clears the skipped numbers, word by word.
        assert_eq!(d.check(&s, &i, 1300), Verdict::New);
        assert_eq!(d.check(&s, &i, 1200), Verdict::TooOld);
        let mut wide = SourceDedup::new(4096);
        assert_eq!(wide.check(&s, &i, 10), Verdict::New);
        assert_eq!(wide.check(&s, &i, 3000), Verdict::New);
        for seq in 2900..3000 {
            assert_eq!(wide.check(&s, &i, seq), Verdict::New, "{seq}");
        }
        assert_eq!(wide.check(&s, &i, 2950), Verdict::Duplicate);
        // A jump larger than the window clears it.
        assert_eq!(d.check(&s, &i, 1_000_000), Verdict::New);
        assert_eq!(d.check(&s, &i, 999_999), Verdict::New);
    }
}
