//! Progress bars for long work (a backtest, a replay at full speed), drawn with `indicatif` on
//! stderr, and only when stderr is a terminal: piped or captured output stays free of them.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A bar that is drawn on a terminal and does nothing otherwise. Updates are cheap to call
/// often: the position is handed to `indicatif` at most ten times a second.
pub struct Progress {
    bar: Option<ProgressBar>,
    last: Instant,
}

impl Progress {
    /// A bar of `total` units (`unit` names them in the spinner shown when the total is
    /// unknown, e.g. "rows"). Hidden when stderr is not a terminal.
    pub fn new(what: &str, total: Option<u64>, unit: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                last: Instant::now(),
            };
        }
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(&format!(
                    "{what} [{{bar:20}}] {{percent:>3}}% eta {{eta}} {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template(&format!(
                    "{what} {{spinner}} {{pos}} {unit}, {{elapsed}} {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar: Some(bar),
            last: Instant::now(),
        }
    }

    /// Moves the bar to the position and message `now` gives; `now` is called only when the
    /// bar is drawn and at most ten times a second.
    pub fn update(&mut self, now: impl FnOnce() -> (u64, String)) {
        let Some(bar) = &self.bar else { return };
        if self.last.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last = Instant::now();
        let (pos, msg) = now();
        bar.set_position(pos);
        bar.set_message(msg);
    }

    /// Removes the bar from the terminal, so the report that follows starts on a clean line.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
