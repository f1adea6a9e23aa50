//! `dualbus vpin FILE`: VPIN of a trade file, bucket by bucket, for analysts.

use super::runtime;
use anyhow::bail;
use clap::Args;
use dualbus_engines::provider::replay::{FileFormat, ReplayOptions};
use dualbus_engines::provider::{Provider, Speed};
use dualbus_engines::vpin::{VpinCalculator, VpinParams};
use dualbus_model::market::MarketEvent;
use dualbus_model::vpin::VpinBucket;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `dualbus vpin`.
#[derive(Args, Debug)]
#[command(after_long_help = "\
VPIN (Easley, Lopez de Prado, O'Hara, 2012) with bulk volume classification, per symbol:
time bars of --bar-secs aligned to the epoch; dP = close - previous close (the first bar is the
reference only); buy fraction Phi(dP / sigma), sigma the sample standard deviation of the last
--sigma-bars dP (0.5 with fewer than 2 values or sigma 0); buckets of exactly --bucket-volume,
overflow spilling into the next ones; after each completed bucket n >= --window, VPIN = sum of
|sell - buy| over the last window buckets / (window x bucket volume). A toxicity alert when a
VPIN's percentile among all values so far crosses --cdf-threshold from below.

Without --bucket-volume, the bucket is the file's total volume / (50 x days spanned, at least 1)
(1/50 of the average daily volume, the paper's choice); the value used is printed.

Examples:
  dualbus vpin tests/data/binance-btcusdt-trades-2021-01-08.csv --format binance \\
      --bar-secs 1 --bucket-volume 0.5 --window 10 --sigma-bars 20
  dualbus vpin trades.csv --format tardis --symbol XBTUSD --json")]
pub struct VpinArgs {
    /// The trade file.
    file: PathBuf,
    /// Its format: binance or tardis.
    #[arg(long)]
    format: String,
    /// A Binance file's symbol (else from the file name); a Tardis file: only this symbol.
    #[arg(long)]
    symbol: Option<String>,
    /// Bar length in seconds.
    #[arg(long, default_value_t = 60)]
    bar_secs: u32,
    /// Volume per bucket (default: 1/50 of the average daily volume of the file).
    #[arg(long)]
    bucket_volume: Option<f64>,
    /// Buckets per VPIN value.
    #[arg(long, default_value_t = 50)]
    window: usize,
    /// Price changes in the volatility estimate.
    #[arg(long, default_value_t = 50)]
    sigma_bars: usize,
    /// Percentile threshold of the toxicity alert.
    #[arg(long, default_value_t = 0.9)]
    cdf_threshold: f64,
    /// A VPIN's percentile is taken among the symbol's latest this many values (a rolling
    /// window, itself included).
    #[arg(long, default_value_t = dualbus_engines::vpin::DEFAULT_PERCENTILE_WINDOW)]
    percentile_window: usize,
    /// One JSON object per bucket (`symbol`, `bucket`, `vpin`, `buy_volume`, `sell_volume`, `ts`).
    #[arg(long)]
    json: bool,
}

/// Runs `dualbus vpin`.
pub fn run(args: VpinArgs) -> anyhow::Result<()> {
    let format: FileFormat = args.format.parse()?;
    if format == FileFormat::Quotes {
        bail!("VPIN needs trades: --format binance or tardis (got quotes)");
    }
    let mut opts = ReplayOptions::new(&args.file, format).speed(Speed::Max);
    if let Some(s) = &args.symbol {
        opts = opts.symbol(s.clone());
    }
    let provider = super::open_replay(opts)?;
    let trades: Vec<(String, u64, f64, f64)> = runtime(1)?.block_on(async {
        let mut stream = provider.stream().await?;
        let mut out = Vec::new();
        let mut trades = Vec::new();
        loop {
            out.clear();
            let more = stream.next_batch(&mut out).await?;
            for ev in &out {
                if let MarketEvent::Trade(t) = ev {
                    // What the hub's validator would reject does not count.
                    if t.price.is_finite() && t.price > 0.0 && t.size.is_finite() && t.size >= 0.0 {
                        trades.push((t.symbol.clone(), t.ts, t.price, t.size));
                    }
                }
            }
            if !more {
                break;
            }
        }
        Ok::<_, anyhow::Error>(trades)
    })?;
    if trades.is_empty() {
        bail!("{}: no trades to compute VPIN from", args.file.display());
    }
    let bucket_volume = match args.bucket_volume {
        Some(v) => v,
        None => {
            let total: f64 = trades.iter().map(|t| t.3).sum();
            let (lo, hi) = trades
                .iter()
                .fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t.1), hi.max(t.1)));
            let days = ((hi - lo) as f64 / 86_400e9).ceil().max(1.0);
            total / (50.0 * days)
        }
    };
    let params = VpinParams {
        bar_secs: args.bar_secs,
        bucket_volume,
        window: args.window,
        sigma_bars: args.sigma_bars,
        cdf_threshold: args.cdf_threshold,
        percentile_window: args.percentile_window,
        ..Default::default()
    };
    let problems = params.problems();
    if !problems.is_empty() {
        bail!("invalid VPIN parameters:\n  - {}", problems.join("\n  - "));
    }
    let mut calcs: BTreeMap<String, VpinCalculator> = BTreeMap::new();
    let mut buckets: Vec<VpinBucket> = Vec::new();
    for (symbol, ts, price, size) in &trades {
        calcs
            .entry(symbol.clone())
            .or_insert_with(|| VpinCalculator::new(symbol, params.clone()))
            .on_trade(*ts, *price, *size, &mut buckets);
    }
    for c in calcs.values_mut() {
        c.finish(&mut buckets);
    }
    if args.json {
        for b in &buckets {
            println!(
                "{}",
                serde_json::json!({
                    "symbol": b.symbol,
                    "bucket": b.bucket,
                    "vpin": b.vpin,
                    "buy_volume": b.buy_volume,
                    "sell_volume": b.sell_volume,
                    "ts": b.ts,
                })
            );
        }
        return Ok(());
    }
    println!(
        "VPIN of {} ({} trades): bar {} s, bucket volume {}, window {}, sigma over {} bars, alert at percentile {}",
        args.file.display(),
        trades.len(),
        params.bar_secs,
        params.bucket_volume,
        params.window,
        params.sigma_bars,
        params.cdf_threshold
    );
    println!(
        "{:<12} {:>7} {:>10} {:>14} {:>14} {:>24} {:>6}",
        "symbol", "bucket", "vpin", "buy_volume", "sell_volume", "time (UTC)", "pct"
    );
    let mut alerts = 0;
    for b in &buckets {
        println!(
            "{:<12} {:>7} {:>10.6} {:>14.6} {:>14.6} {:>24} {:>6.3}{}",
            b.symbol,
            b.bucket,
            b.vpin,
            b.buy_volume,
            b.sell_volume,
            dualbus_engines::tearsheet::iso8601(b.ts),
            b.percentile,
            if b.toxic { "  TOXICITY ALERT" } else { "" }
        );
        alerts += usize::from(b.toxic);
    }
    if buckets.is_empty() {
        println!(
            "(no VPIN value: fewer than {} buckets of {} completed)",
            params.window, params.bucket_volume
        );
    }
    println!("{} VPIN values, {} toxicity alerts", buckets.len(), alerts);
    Ok(())
}
