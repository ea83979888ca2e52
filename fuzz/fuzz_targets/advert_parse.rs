//! Fuzzes the advertisement parser: any bytes either fail [`Packet::new_checked`] /
//! [`Repr::parse`] cleanly or parse to a `Repr` that emits and parses back to itself
//! (less the unknown entries, which `emit` cannot write). Both families: every parsed
//! membership has the sender's family, and an IPv6 sender leaves the header's IPv4 sender
//! field at 0.0.0.0. Panics are findings.
#![no_main]

use anycast_common::advert::{MAX_LEN, Packet, Repr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Never panics, on any input.
    let _ = Packet::new_unchecked(data).entries().count();
    let _ = Repr::parse(&Packet::new_unchecked(data));

    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    // After check_len no accessor panics.
    let _ = (
        packet.flags(),
        packet.sender(),
        packet.seq(),
        packet.timestamp_ms(),
    );
    let _ = (packet.key_id(), packet.hmac(), packet.signed_bytes());
    assert_eq!(packet.signed_bytes().len() + packet.hmac().len(), data.len());

    let Ok(repr) = Repr::parse(&packet) else {
        return;
    };
    assert!(
        repr.memberships()
            .iter()
            .all(|m| m.anycast.is_ipv4() == repr.sender.is_ipv4())
    );
    if repr.sender.is_ipv6() {
        assert!(packet.sender().is_unspecified());
    }
    assert!(repr.buffer_len() <= data.len());
    let mut storage = [0u8; MAX_LEN];
    let buf = &mut storage[..repr.buffer_len()];
    repr.emit(&mut Packet::new_unchecked(&mut *buf));
    let reparsed = Packet::new_checked(&*buf)
        .and_then(|packet| Repr::parse(&packet))
        .expect("an emitted message parses");
    let expected = Repr {
        unknown_entries: 0,
        ..repr
    };
    assert_eq!(reparsed, expected);
});
