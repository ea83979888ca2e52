//! Fuzzes the identity parser: any bytes either fail [`Repr::parse`] cleanly or parse to a
//! `Repr` that emits and parses back to itself. Panics are findings.
#![no_main]

use anycast_common::identity::{QUERY_LEN, Repr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(repr) = Repr::parse(data) else {
        return;
    };
    let mut buf = [0u8; QUERY_LEN];
    let len = repr.emit(&mut buf);
    assert_eq!(Repr::parse(&buf[..len]), Ok(repr));
});
