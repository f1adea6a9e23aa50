//! The fuzz targets of `fuzz/` as part of `cargo test`: each target's property (the same
//! function the fuzzer calls) on every file of its corpus, and on bounded numbers of random
//! inputs and of corpus files with a few bytes changed. `cargo +nightly fuzz run TARGET`
//! explores much further (fuzz/README.md).

use proptest::prelude::*;
use proptest::sample::Index;
use std::path::PathBuf;

/// A target's property: panics when the input breaks it.
type Property = fn(&[u8]);

/// The targets: their names (`fuzz/fuzz_targets/NAME.rs`, `fuzz/corpus/NAME/`) and properties.
const TARGETS: [(&str, Property); 8] = [
    ("wire_envelope", dualbus_core::fuzzing::wire_envelope),
    ("payload", dualbus_core::fuzzing::payload),
    ("resp_reply", dualbus_redis::fuzzing::reply_readers),
    ("replay_file", dualbus_engines::fuzzing::replay_file),
    ("binance", dualbus_engines::fuzzing::binance),
    ("config", dualbus_bus::fuzzing::config),
    (
        "dashboard_request",
        dualbus_engines::fuzzing::dashboard_request,
    ),
    ("engine_payloads", dualbus_engines::fuzzing::engine_payloads),
];

fn property(target: &str) -> Property {
    TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("a target")
}

/// Every file of a target's corpus (the seeds in the repository, and whatever a local fuzzer
/// run added).
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn every_corpus_file_keeps_its_property() {
    for (target, property) in TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "{target} has no corpus");
        for data in files {
            property(&data);
        }
    }
}

/// A random input, or a corpus file with up to eight bytes replaced.
fn input(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = corpus(target);
    let random = proptest::collection::vec(any::<u8>(), 0..1024);
    let mutated = (
        any::<Index>(),
        proptest::collection::vec((any::<Index>(), any::<u8>()), 1..8),
    )
        .prop_map(move |(which, changes)| {
            let mut data = which.get(&seeds).clone();
            if !data.is_empty() {
                for (at, byte) in changes {
                    let i = at.index(data.len());
                    data[i] = byte;
                }
            }
            data
        });
    prop_oneof![random, mutated]
}

macro_rules! property_tests {
    ($($name:ident),*) => {
        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            $(
                #[test]
                fn $name(data in input(stringify!($name))) {
                    property(stringify!($name))(&data);
                }
            )*
        }
    };
}

property_tests!(
    wire_envelope,
    payload,
    resp_reply,
    replay_file,
    binance,
    config,
    dashboard_request,
    engine_payloads
);
