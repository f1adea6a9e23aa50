//! Reading a whole file: the loader shared by the formats, one module per format.

mod binance;
mod quotes;
pub(super) mod tardis;

use super::time::parse_timestamp_ns;
use super::*;
use quotes::{quote_layout, QuoteColumns};
use tardis::{tardis_layout, TardisColumns, TickRule};

/// Powers of ten for inferred tick and lot sizes, as literals so they are the nearest doubles.
const DECIMAL_STEPS: [f64; 13] = [
    1.0, 0.1, 0.01, 0.001, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12,
];

/// The widest row of any format; fields past it are only counted.
const MAX_FIELDS: usize = 16;

/// How to read a data row; Binance and quote rows all belong to one symbol (its index).
#[derive(Debug)]
enum Layout {
    Binance(u32),
    Tardis(TardisColumns),
    Quotes(u32, QuoteColumns),
}

/// Per-symbol state while loading.
#[derive(Debug)]
struct SymbolStats {
    price_dp: u8,
    size_dp: u8,
    ticks: TickRule,
}

/// Everything gathered while reading a file.
struct Loader<'a> {
    file: String,
    format: FileFormat,
    filter: Option<&'a str>,
    symbols: Vec<String>,
    stats: Vec<SymbolStats>,
    /// Symbols seen in a Tardis file but filtered out (for the error when none matches).
    others: Vec<String>,
    rows: Vec<Row>,
    skipped: Vec<SkippedRow>,
    skipped_before: Vec<usize>,
    /// The text of the first skipped row (its start), for the warning or the error.
    first_bad: Option<String>,
}

impl Loader<'_> {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(last) = self.symbols.last() {
            // Files are mostly one symbol: check the newest before searching.
            if last == name {
                return (self.symbols.len() - 1) as u32;
            }
        }
        if let Some(i) = self.symbols.iter().position(|s| s == name) {
            return i as u32;
        }
        self.symbols.push(name.to_string());
        self.stats.push(SymbolStats {
            price_dp: 0,
            size_dp: 0,
            ticks: TickRule::default(),
        });
        (self.symbols.len() - 1) as u32
    }

    fn skip(&mut self, line_no: u64, line: &[u8], problem: RowError) {
        if self.first_bad.is_none() {
            let text = String::from_utf8_lossy(&line[..line.len().min(60)]);
            let more = if line.len() > 60 { "…" } else { "" };
            self.first_bad = Some(format!("{text}{more}"));
        }
        self.skipped.push(SkippedRow {
            line: line_no,
            problem,
        });
        self.skipped_before.push(self.rows.len());
    }

    fn note_decimals(&mut self, sym: u32, price: &str, size: Option<&str>) {
        let st = &mut self.stats[sym as usize];
        st.price_dp = st.price_dp.max(decimals(price));
        if let Some(size) = size {
            st.size_dp = st.size_dp.max(decimals(size));
        }
    }
}

fn invalid(field: &'static str, expected: &'static str) -> RowError {
    RowError::Invalid { field, expected }
}

fn parse_f64(s: &str, field: &'static str) -> Result<f64, RowError> {
    s.parse::<f64>().map_err(|_| invalid(field, "a number"))
}

fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Splits on `,` into `out`; returns the number of fields (also those past `out`'s end).
fn split_fields<'a>(line: &'a str, out: &mut [&'a str; MAX_FIELDS]) -> usize {
    let mut n = 0;
    for field in line.split(',') {
        if let Some(slot) = out.get_mut(n) {
            *slot = field;
        }
        n += 1;
    }
    n
}

/// Decimal places of a plain decimal number, trailing zeros dropped (`0` for `1e-5`).
pub(super) fn decimals(s: &str) -> u8 {
    let Some((_, frac)) = s.split_once('.') else {
        return 0;
    };
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let places = frac.trim_end_matches('0').len();
    places.min(DECIMAL_STEPS.len() - 1) as u8
}

/// A symbol from a file name: the `-`/`_`-separated part just before `keyword`
/// (`binance-btcusdt-trades-2021-01-08.csv` with `trades` gives `BTCUSDT`).
pub(super) fn symbol_from_file_name(path: &Path, keywords: &[&str]) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split('.').next()?;
    let parts: Vec<&str> = stem.split(['-', '_']).collect();
    let at = parts
        .iter()
        .position(|p| keywords.iter().any(|k| p.eq_ignore_ascii_case(k)))?;
    let sym = parts.get(at.checked_sub(1)?)?;
    let plausible = sym.bytes().all(|b| b.is_ascii_alphanumeric())
        && sym.bytes().any(|b| b.is_ascii_alphabetic());
    plausible.then(|| sym.to_ascii_uppercase())
}

/// The header's column count and the position of each `needed` column (case-insensitive).
///
/// # Errors
/// [`ProviderError::Config`] when the header is wider than [`MAX_FIELDS`].
fn header_columns(
    file: &str,
    header: &str,
    needed: &[&'static str],
) -> Result<(usize, Vec<Option<usize>>), ProviderError> {
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    if names.len() > MAX_FIELDS {
        return Err(ProviderError::Config(format!(
            "{file}: header has {} columns; at most {MAX_FIELDS} are supported",
            names.len()
        )));
    }
    let found = needed
        .iter()
        .map(|want| names.iter().position(|n| n.eq_ignore_ascii_case(want)))
        .collect();
    Ok((names.len(), found))
}

/// A header without the columns a format needs: most likely a file of another format.
fn missing_columns(
    file: &str,
    format: FileFormat,
    header: &str,
    line_no: u64,
    expected: &str,
    missing: &[&str],
) -> ProviderError {
    let mut shown: String = header.chars().take(60).collect();
    if shown.len() < header.len() {
        shown.push('…');
    }
    let header = shown;
    ProviderError::Mismatch {
        message: format!(
            "{file}: not a {format} file: its header (line {line_no}, {header:?}) lacks {}; a \
             {format} header is {expected}",
            missing.join(", ")
        ),
        option: "format",
    }
}

/// Reads and parses the whole file.
pub(super) fn load(opts: &ReplayOptions) -> Result<ReplayData, ProviderError> {
    let file = opts.path.display().to_string();
    let io_err = |source| ProviderError::Io {
        path: file.clone(),
        source,
    };
    let handle = std::fs::File::open(&opts.path).map_err(io_err)?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, handle);

    let fixed_symbol = match opts.format {
        FileFormat::Binance => Some(
            opts.symbol
                .clone()
                .or_else(|| symbol_from_file_name(&opts.path, &["trades"]))
                .ok_or_else(|| ProviderError::Mismatch {
                    message: format!(
                        "{file}: a Binance trade dump does not name its symbol, nor does this \
                         file name (as BTCUSDT-trades-2021-01-08.csv would)"
                    ),
                    option: "symbol",
                })?,
        ),
        FileFormat::Quotes => Some(
            opts.symbol
                .clone()
                .or_else(|| symbol_from_file_name(&opts.path, &["quotes", "quote"]))
                .unwrap_or_else(|| "QUOTES".to_string()),
        ),
        FileFormat::Tardis => None,
    };
    let mut ld = Loader {
        file: file.clone(),
        format: opts.format,
        filter: match opts.format {
            FileFormat::Tardis => opts.symbol.as_deref(),
            _ => None,
        },
        symbols: Vec::new(),
        stats: Vec::new(),
        others: Vec::new(),
        rows: Vec::new(),
        skipped: Vec::new(),
        skipped_before: Vec::new(),
        first_bad: None,
    };
    // Tardis rows name their own symbol, so there this index is never used.
    let fixed_sym = fixed_symbol.as_deref().map_or(0, |s| ld.intern(s));

    let mut layout = match opts.format {
        FileFormat::Binance => Some(Layout::Binance(fixed_sym)),
        FileFormat::Tardis | FileFormat::Quotes => None, // read from the header
    };
    let mut buf = Vec::with_capacity(256);
    let mut line_no = 0u64;
    let mut data_lines = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
            break;
        }
        line_no += 1;
        let mut bytes = buf.as_slice();
        if line_no == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(bytes) else {
            data_lines += 1;
            ld.skip(line_no, bytes, RowError::NotUtf8);
            continue;
        };
        let Some(layout) = &layout else {
            layout = Some(match opts.format {
                FileFormat::Tardis => tardis_layout(&file, line, line_no)?,
                _ => quote_layout(&file, line, line_no, fixed_sym)?,
            });
            continue;
        };
        let parsed = match layout {
            Layout::Binance(sym) => {
                // Some dumps (futures) start with a header line.
                if data_lines == 0 && line.starts_with("id,") {
                    continue;
                }
                ld.parse_binance(*sym, line).map(Some)
            }
            Layout::Quotes(sym, c) => ld.parse_quote(*sym, c, line).map(Some),
            Layout::Tardis(c) => ld.parse_tardis(c, line),
        };
        data_lines += 1;
        match parsed {
            Ok(Some(row)) => ld.rows.push(row),
            Ok(None) => {}
            Err(problem) => ld.skip(line_no, bytes, problem),
        }
    }
    finish_load(opts, ld, data_lines)
}

/// Checks the load produced something and computes the instruments.
fn finish_load(
    opts: &ReplayOptions,
    ld: Loader<'_>,
    data_lines: u64,
) -> Result<ReplayData, ProviderError> {
    let file = &ld.file;
    let what = match ld.format {
        FileFormat::Binance | FileFormat::Tardis => "trade",
        FileFormat::Quotes => "quote",
    };
    let first_bad = |first: &SkippedRow| {
        format!(
            "line {}, {:?}: {}",
            first.line,
            ld.first_bad.as_deref().unwrap_or(""),
            first.problem
        )
    };
    if ld.rows.is_empty() {
        if let Some(first) = ld.skipped.first() {
            if ld.skipped.len() as u64 == data_lines {
                return Err(ProviderError::Mismatch {
                    message: format!(
                        "{file}: no line is a {} {what} (first bad {})",
                        ld.format,
                        first_bad(first)
                    ),
                    option: "format",
                });
            }
        }
    }
    if let Some(first) = ld.skipped.first() {
        if ld.skipped.len() == 1 {
            tracing::warn!("{file}: skipped 1 unreadable row: {}", first_bad(first));
        } else {
            let mut lines: Vec<String> = ld
                .skipped
                .iter()
                .take(LINES_NAMED)
                .map(|r| r.line.to_string())
                .collect();
            if ld.skipped.len() > LINES_NAMED {
                lines.push("…".into());
            }
            tracing::warn!(
                "{file}: skipped {} unreadable rows (lines {}); the first: {}",
                ld.skipped.len(),
                lines.join(", "),
                first_bad(first)
            );
        }
    }
    if ld.rows.is_empty() {
        if let Some(want) = ld.filter {
            return Err(ProviderError::Config(format!(
                "{file}: no trades of {want}; the file has {}",
                if ld.others.is_empty() {
                    "none".to_string()
                } else {
                    ld.others.join(", ")
                }
            )));
        }
        return Err(ProviderError::Config(format!("{file}: no data rows")));
    }
    let kind = match opts.format {
        FileFormat::Quotes => RowKind::Quotes,
        FileFormat::Binance | FileFormat::Tardis => RowKind::Trades,
    };
    let instruments = ld
        .symbols
        .iter()
        .zip(&ld.stats)
        .map(|(symbol, st)| Instrument {
            symbol: symbol.clone(),
            tick_size: DECIMAL_STEPS[usize::from(st.price_dp)],
            lot_size: match kind {
                RowKind::Trades => DECIMAL_STEPS[usize::from(st.size_dp)],
                RowKind::Quotes => 1.0,
            },
        })
        .collect();
    let time_range = ld.rows.iter().fold(None, |acc: Option<(u64, u64)>, r| {
        Some(acc.map_or((r.ts, r.ts), |(lo, hi)| (lo.min(r.ts), hi.max(r.ts))))
    });
    tracing::debug!(
        "{file}: {} rows of {} loaded, {} skipped",
        ld.rows.len(),
        ld.symbols.join(", "),
        ld.skipped.len()
    );
    Ok(ReplayData {
        kind,
        symbols: ld.symbols,
        instruments,
        rows: ld.rows,
        skipped: ld.skipped,
        skipped_before: ld.skipped_before,
        time_range,
    })
}
