//! Binance trade files (`data.binance.vision` `trades` CSV, no header): the rows.

use super::*;

impl Loader<'_> {
    pub(super) fn parse_binance(&mut self, sym: u32, line: &str) -> Result<Row, RowError> {
        let mut f = [""; MAX_FIELDS];
        let n = split_fields(line, &mut f);
        if n != 7 && n != 6 {
            return Err(RowError::FieldCount {
                expected: 7,
                found: n,
            });
        }
        let id = f[0]
            .parse::<u64>()
            .map_err(|_| invalid("id", "an integer"))?;
        let price = parse_f64(f[1], "price")?;
        let size = parse_f64(f[2], "qty")?;
        let time: u64 = f[4]
            .parse()
            .map_err(|_| invalid("time", "Unix milliseconds or microseconds"))?;
        // Dumps switched from milliseconds to microseconds in 2025; 1e14 ms is year 5138,
        // 1e14 us is 1973, so the magnitude tells them apart.
        let ts = if time > 100_000_000_000_000 {
            time.checked_mul(1_000)
        } else {
            time.checked_mul(1_000_000)
        }
        .ok_or(invalid("time", "Unix milliseconds or microseconds"))?;
        let side = match parse_bool(f[5]) {
            // The buyer was the resting order, so the seller crossed the spread.
            Some(true) => Side::Sell,
            Some(false) => Side::Buy,
            None => return Err(invalid("is_buyer_maker", "True or False")),
        };
        self.note_decimals(sym, f[1], Some(f[2]));
        Ok(Row {
            ts,
            id,
            a: price,
            b: size,
            sym,
            side,
        })
    }
}
