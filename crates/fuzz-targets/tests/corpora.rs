//! Every fuzz target over its committed corpus (`fuzz/corpus/<target>/`, the inputs libFuzzer
//! found interesting, and every past finding), then over a bounded number of generated inputs:
//! a regression on a known input fails here, without a fuzzer installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use paychan_fuzz_targets::TARGETS;

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// xorshift64*: deterministic inputs, different for each target.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        // Half mutations of corpus entries, half fresh bytes.
        let mut out = if !seeds.is_empty() && self.next() % 2 == 0 {
            seeds[(self.next() % seeds.len() as u64) as usize].clone()
        } else {
            let len = (self.next() % 300) as usize;
            (0..len).map(|_| self.next() as u8).collect()
        };
        for _ in 0..(self.next() % 8) {
            if out.is_empty() {
                break;
            }
            let i = (self.next() % out.len() as u64) as usize;
            out[i] = self.next() as u8;
        }
        out
    }
}

#[test]
fn every_target_survives_its_corpus_and_generated_inputs() {
    for (i, (name, target)) in TARGETS.iter().enumerate() {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "{name}: the corpus is committed");
        for (path, data) in &seeds {
            let r = std::panic::catch_unwind(|| target(data));
            assert!(r.is_ok(), "{name}: {} fails", path.display());
        }
        let inputs: Vec<Vec<u8>> = seeds.into_iter().map(|(_, d)| d).collect();
        let runs = if *name == "channels" { 300 } else { 2_000 };
        let mut g = Gen(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
        for n in 0..runs {
            let data = g.bytes(&inputs);
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: generated input {n} fails: {data:02x?}");
        }
    }
}
