//! Types shared across the kernel/user boundary of anycast.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]` and `Copy`, holds only integers and byte
//! arrays, and has its size asserted at compile time, so the eBPF program and user space agree
//! on every map layout without a hand-kept copy. `aya::Pod` impls sit behind the `user` feature.
//!
//! IPv4 addresses in map keys and values are stored exactly as they appear on the wire: the four
//! octets read as a native-endian `u32` (see [`ip_key`]).
//!
//! docs/architecture.md lists every map with its writers and readers, and the encodings defined
//! here once for both sides.
#![no_std]

pub mod advert;
pub mod bench;
pub mod counters;
pub mod flow;
pub mod identity;
pub mod maps;
pub mod proto;

pub use counters::{AGENT_COUNTERS, AgentCounter, PassReason, Stat};
pub use flow::{fallback_score, flow_hash, pick_index};
pub use maps::*;

/// The map representation of an IPv4 address: its wire octets read as a native `u32`.
pub const fn ip_key(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an IPv4 address stored with [`ip_key`].
pub const fn ip_octets(key: u32) -> [u8; 4] {
    key.to_ne_bytes()
}
