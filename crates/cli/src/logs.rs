//! Log output of the `dualbus` command: `tracing` events on stderr, coloured only on a terminal
//! without `NO_COLOR`, at the level of `RUST_LOG` (default `warn`).
//!
//! A verb that provokes warnings on purpose (`dualbus stress` kills and freezes servers: every
//! client then logs its retries) can [`summarise`] them instead: warnings are counted by
//! message and not printed, and [`summary`] gives the counts for the verb's report.
//! `RUST_LOG` set by the user always prints.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

static SUMMARISE: AtomicBool = AtomicBool::new(false);
static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init() {
    use std::io::IsTerminal;
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let print = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(|m| {
            !(SUMMARISE.load(Ordering::Relaxed) && *m.level() == Level::WARN)
        }));
    tracing_subscriber::registry()
        .with(filter)
        .with(print)
        .with(Counter)
        .init();
}

/// From now on, count warnings by message instead of printing them, unless the user set
/// `RUST_LOG` or asked for detail (`verbose`). Returns whether warnings are being summarised.
pub fn summarise(verbose: bool) -> bool {
    let on = !verbose && std::env::var_os("RUST_LOG").is_none();
    SUMMARISE.store(on, Ordering::Relaxed);
    on
}

/// The warnings counted since [`summarise`], most frequent first: `(count, message)`.
pub fn summary() -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = COUNTS.lock().iter().map(|(m, n)| (*n, m.clone())).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v
}

/// One line for a report: "859 (477 read failed; retrying, 80 consumer group missing ...)".
pub fn summary_line(max_kinds: usize) -> String {
    let s = summary();
    let total: u64 = s.iter().map(|(n, _)| n).sum();
    if total == 0 {
        return "none".into();
    }
    let mut parts: Vec<String> = s
        .iter()
        .take(max_kinds)
        .map(|(n, m)| format!("{n} \"{m}\""))
        .collect();
    if s.len() > max_kinds {
        parts.push(format!(
            "{} of {} other kinds",
            total - s.iter().take(max_kinds).map(|(n, _)| n).sum::<u64>(),
            s.len() - max_kinds
        ));
    }
    format!("{total}: {}", parts.join(", "))
}

/// Counts warnings by their message while summarising.
struct Counter;

impl<S: Subscriber> Layer<S> for Counter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() != Level::WARN || !SUMMARISE.load(Ordering::Relaxed) {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        *COUNTS.lock().entry(m.0).or_default() += 1;
    }
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
