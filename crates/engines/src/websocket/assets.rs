//! The page and its chart library, built into the binary.

/// The live page, served at `/`.
pub(super) const PAGE: &str = include_str!("page.html");

/// The chart library the page uses: uPlot 1.6.32 (MIT), vendored from the npm registry (see
/// `assets/uplot/README.md`), served at `/assets/uplot.js` and `/assets/uplot.css`.
pub(super) const UPLOT_JS: &str = include_str!("../../assets/uplot/uPlot.iife.min.js");
pub(super) const UPLOT_CSS: &str = include_str!("../../assets/uplot/uPlot.min.css");
