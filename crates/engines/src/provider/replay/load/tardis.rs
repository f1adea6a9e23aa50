//! Tardis.dev trade files (`trades` CSV, any exchange): the header's columns, rows with the
//! tick rule for `unknown` sides, trade ids.

use super::*;

/// Column positions in a Tardis header.
#[derive(Debug)]
pub(super) struct TardisColumns {
    count: usize,
    symbol: usize,
    timestamp: usize,
    id: Option<usize>,
    side: usize,
    price: usize,
    amount: usize,
}

/// Tick-rule state of one symbol (Tardis `unknown` sides).
#[derive(Clone, Copy, Debug, Default)]
pub(in crate::provider::replay) struct TickRule {
    last_price: Option<f64>,
    last_change: Option<Side>,
}

impl TickRule {
    /// The side the tick rule gives a trade at `price`.
    pub(in crate::provider::replay) fn classify(&self, price: f64) -> Side {
        match self.last_price {
            Some(p) if price > p => Side::Buy,
            Some(p) if price < p => Side::Sell,
            _ => self.last_change.unwrap_or(Side::Buy),
        }
    }

    pub(in crate::provider::replay) fn observe(&mut self, price: f64) {
        if let Some(p) = self.last_price {
            if price > p {
                self.last_change = Some(Side::Buy);
            } else if price < p {
                self.last_change = Some(Side::Sell);
            }
        }
        self.last_price = Some(price);
    }
}

impl Loader<'_> {
    /// `Ok(None)`: a row of a symbol the filter leaves out.
    pub(super) fn parse_tardis(
        &mut self,
        c: &TardisColumns,
        line: &str,
    ) -> Result<Option<Row>, RowError> {
        let mut f = [""; MAX_FIELDS];
        let n = split_fields(line, &mut f);
        if n != c.count {
            return Err(RowError::FieldCount {
                expected: c.count,
                found: n,
            });
        }
        let name = f[c.symbol];
        if name.is_empty() {
            return Err(invalid("symbol", "a symbol"));
        }
        if let Some(want) = self.filter {
            if !name.eq_ignore_ascii_case(want) {
                if !self.others.iter().any(|o| o == name) {
                    self.others.push(name.to_string());
                }
                return Ok(None);
            }
        }
        let us: u64 = f[c.timestamp]
            .parse()
            .map_err(|_| invalid("timestamp", "Unix microseconds"))?;
        let ts = us
            .checked_mul(1_000)
            .ok_or(invalid("timestamp", "Unix microseconds"))?;
        let price = parse_f64(f[c.price], "price")?;
        let size = parse_f64(f[c.amount], "amount")?;
        let side = parse_tardis_side(f[c.side])?;
        let id = c.id.map_or(0, |i| trade_id(f[i]));
        let sym = self.intern(name);
        self.note_decimals(sym, f[c.price], Some(f[c.amount]));
        let ticks = &mut self.stats[sym as usize].ticks;
        let side = side.unwrap_or_else(|| ticks.classify(price));
        ticks.observe(price);
        Ok(Some(Row {
            ts,
            id,
            a: price,
            b: size,
            sym,
            side,
        }))
    }
}

/// `Ok(None)` for `unknown` (left to the tick rule).
pub(super) fn parse_tardis_side(s: &str) -> Result<Option<Side>, RowError> {
    if s.eq_ignore_ascii_case("buy") {
        Ok(Some(Side::Buy))
    } else if s.eq_ignore_ascii_case("sell") {
        Ok(Some(Side::Sell))
    } else if s.is_empty() || s.eq_ignore_ascii_case("unknown") {
        Ok(None)
    } else {
        Err(invalid("side", "buy, sell or unknown"))
    }
}

/// A Tardis trade id as a number: itself when numeric, else its FNV-1a hash (BitMEX ids are
/// UUIDs; a hash keeps distinct ids distinct without a lookup table), 0 when empty.
pub(in crate::provider::replay) fn trade_id(s: &str) -> u64 {
    if s.is_empty() {
        return 0;
    }
    if let Ok(n) = s.parse::<u64>() {
        return n;
    }
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub(super) fn tardis_layout(
    file: &str,
    header: &str,
    line_no: u64,
) -> Result<Layout, ProviderError> {
    const NEEDED: [&str; 6] = ["symbol", "timestamp", "side", "price", "amount", "id"];
    let (count, cols) = header_columns(file, header, &NEEDED)?;
    let missing: Vec<&str> = NEEDED[..5]
        .iter()
        .zip(&cols)
        .filter(|(_, c)| c.is_none())
        .map(|(n, _)| *n)
        .collect();
    match (cols[0], cols[1], cols[2], cols[3], cols[4]) {
        (Some(symbol), Some(timestamp), Some(side), Some(price), Some(amount)) => {
            Ok(Layout::Tardis(TardisColumns {
                count,
                symbol,
                timestamp,
                id: cols[5],
                side,
                price,
                amount,
            }))
        }
        _ => Err(missing_columns(
            file,
            FileFormat::Tardis,
            header,
            line_no,
            "exchange,symbol,timestamp,local_timestamp,id,side,price,amount",
            &missing,
        )),
    }
}
