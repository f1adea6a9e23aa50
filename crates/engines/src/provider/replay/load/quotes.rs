//! Quote files (`timestamp,bid,ask[,bid_size,ask_size]`): the header's columns and the rows.

use super::*;

/// Column positions in a quote header.
#[derive(Debug)]
pub(super) struct QuoteColumns {
    count: usize,
    timestamp: usize,
    bid: usize,
    ask: usize,
}

impl Loader<'_> {
    pub(super) fn parse_quote(
        &mut self,
        sym: u32,
        c: &QuoteColumns,
        line: &str,
    ) -> Result<Row, RowError> {
        let mut f = [""; MAX_FIELDS];
        let n = split_fields(line, &mut f);
        if n != c.count {
            return Err(RowError::FieldCount {
                expected: c.count,
                found: n,
            });
        }
        let ts = parse_timestamp_ns(f[c.timestamp])
            .ok_or(invalid("timestamp", "an ISO 8601 datetime or a Unix time"))?;
        let bid = parse_f64(f[c.bid], "bid")?;
        let ask = parse_f64(f[c.ask], "ask")?;
        self.note_decimals(sym, f[c.bid], None);
        self.note_decimals(sym, f[c.ask], None);
        Ok(Row {
            ts,
            id: 0,
            a: bid,
            b: ask,
            sym,
            side: Side::Buy,
        })
    }
}

pub(super) fn quote_layout(
    file: &str,
    header: &str,
    line_no: u64,
    sym: u32,
) -> Result<Layout, ProviderError> {
    const NEEDED: [&str; 3] = ["timestamp", "bid", "ask"];
    let (count, cols) = header_columns(file, header, &NEEDED)?;
    match (cols[0], cols[1], cols[2]) {
        (Some(timestamp), Some(bid), Some(ask)) => Ok(Layout::Quotes(
            sym,
            QuoteColumns {
                count,
                timestamp,
                bid,
                ask,
            },
        )),
        _ => {
            let missing: Vec<&str> = NEEDED
                .iter()
                .zip(&cols)
                .filter(|(_, c)| c.is_none())
                .map(|(n, _)| *n)
                .collect();
            Err(missing_columns(
                file,
                FileFormat::Quotes,
                header,
                line_no,
                "timestamp,bid,ask",
                &missing,
            ))
        }
    }
}
