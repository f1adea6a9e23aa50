//! Partitions by symbol and Redis Cluster hash slots.
//!
//! With `[md] partitions = N` the MarketData bus splits each of its streams into N streams, one
//! per partition (`dualbus:md:{p3}:market_data`), and a message goes to the partition of its
//! topic's last segment (the symbol: `market_data.trade.BTCUSDT` -> `BTCUSDT`). The partition of
//! a symbol is `CRC16(symbol) mod N`, with the CRC16 Redis Cluster uses for hash slots
//! (XMODEM: polynomial 0x1021, initial value 0; Python's `binascii.crc_hqx(data, 0)`), so any
//! client in any language finds the same partition.
//!
//! The braces make `p3` the key's hash tag: every stream of one partition (and the `#groups`
//! hash the Redis transport keeps beside each stream) lives in one Redis Cluster slot, so one
//! partition's order is one stream's order, and commands on one partition's keys never cross
//! slots.

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// Most partitions a bus may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// CRC16-XMODEM (polynomial 0x1021, initial value 0, no reflection): the checksum Redis Cluster
/// hashes keys with.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of a key: the CRC16 of its hash tag (the text between the first `{`
/// and the next `}`, when not empty), else of the whole key, modulo 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// The symbol a topic is partitioned by: its last segment.
pub fn symbol_of(topic: &str) -> &str {
    topic.rsplit('.').next().unwrap_or(topic)
}

/// The partition (`0..n`) of a symbol among `n` partitions (`n` of 0 or 1: partition 0).
pub fn partition_of(symbol: &str, n: u32) -> u32 {
    if n <= 1 {
        return 0;
    }
    crc16(symbol.as_bytes()) as u32 % n
}

/// The partitions instance `k` of `n` takes (`--partition K/N`, `k` from 1): every partition
/// `p` with `p mod n == k - 1`, so `n` instances share `partitions` partitions with none left
/// out and none read twice.
pub fn partitions_of_instance(k: u32, n: u32, partitions: u32) -> Vec<u32> {
    (0..partitions.max(1))
        .filter(|p| n > 0 && p % n == k.wrapping_sub(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_the_redis_cluster_checksum() {
        // The check value of CRC16-XMODEM, quoted in the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn slots_follow_hash_tags() {
        // Keys with the same tag share a slot; an empty tag hashes the whole key.
        let a = slot_of(b"dualbus:md:{p3}:market_data");
        assert_eq!(a, slot_of(b"dualbus:md:{p3}:market_data#groups"));
        assert_eq!(a, slot_of(b"p3"));
        assert_eq!(slot_of(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot_of(b"foo{{bar}}zap"), crc16(b"{bar") % SLOTS);
        assert_eq!(
            slot_of(b"{user1000}.following"),
            slot_of(b"{user1000}.followers")
        );
        assert!(slot_of(b"dualbus:md:market_data") < SLOTS);
    }

    #[test]
    fn partitions_cover_every_symbol_once() {
        assert_eq!(symbol_of("market_data.trade.BTCUSDT"), "BTCUSDT");
        assert_eq!(symbol_of("market_data"), "market_data");
        assert_eq!(partition_of("BTCUSDT", 1), 0);
        let p = partition_of("BTCUSDT", 8);
        assert!(p < 8);
        assert_eq!(p, crc16(b"BTCUSDT") as u32 % 8);
        let mut all: Vec<u32> = (1..=3)
            .flat_map(|k| partitions_of_instance(k, 3, 8))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(partitions_of_instance(2, 4, 8), vec![1, 5]);
        assert_eq!(partitions_of_instance(1, 1, 1), vec![0]);
    }
}
