#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| paychan_fuzz_targets::rpc(data));
