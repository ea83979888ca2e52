//! The benchmark object (`anycast-bench`, beside the dataplane in anycast-ebpf): reference
//! programs the benchmarks measure in the same run as the dataplane, and the XDP_PASS program
//! the tests attach to veth peers. anycast-ctl never loads it; none of its maps is pinned.

/// Map names of the benchmark object.
pub mod names {
    /// Devmap: the one egress port of `bench_redirect` (index 0).
    pub const BENCH_PORT: &str = "BENCH_PORT";
    /// Per-CPU frame counter of `bench_gen`.
    pub const BENCH_SEQ: &str = "BENCH_SEQ";
    /// The [`super::BenchFrame`] `bench_gen` writes (index 0).
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    /// Every map of the benchmark object.
    pub const ALL: [&str; 3] = [BENCH_PORT, BENCH_SEQ, BENCH_FRAME];
}

/// Programs of the benchmark object.
pub mod programs {
    /// Baseline: swap MACs, XDP_TX.
    pub const BENCH_BASELINE: &str = "bench_baseline";
    /// Ceiling: redirect every frame to one port.
    pub const BENCH_REDIRECT: &str = "bench_redirect";
    /// Traffic generator (live frames): writes `BENCH_FRAME`, varies the source port.
    pub const BENCH_GEN: &str = "bench_gen";
    /// Sink: drops IPv4, passes everything else.
    pub const BENCH_SINK: &str = "bench_sink";
    /// XDP_PASS for a veth peer, so that it receives XDP_TX and redirected frames.
    pub const PEER_PASS: &str = "peer_pass";
    pub const ALL: [&str; 5] = [
        BENCH_BASELINE,
        BENCH_REDIRECT,
        BENCH_GEN,
        BENCH_SINK,
        PEER_PASS,
    ];
}

/// Capacity of [`BenchFrame`].
pub const BENCH_FRAME_BYTES: usize = 64;

/// The frame `bench_gen` writes over the start of every frame it generates: an Ethernet/IPv4
/// (IHL 5)/UDP frame, IP checksum included, UDP checksum 0. Set by the benchmark.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchFrame {
    /// Bytes of `bytes` to write, at most [`BENCH_FRAME_BYTES`].
    pub len: u32,
    pub bytes: [u8; BENCH_FRAME_BYTES],
}

impl BenchFrame {
    /// The template of `frame`, or `None` if it is longer than [`BENCH_FRAME_BYTES`].
    pub fn new(frame: &[u8]) -> Option<Self> {
        if frame.len() > BENCH_FRAME_BYTES {
            return None;
        }
        let mut bytes = [0; BENCH_FRAME_BYTES];
        bytes[..frame.len()].copy_from_slice(frame);
        Some(Self {
            len: frame.len() as u32,
            bytes,
        })
    }
}

const _: () = assert!(core::mem::size_of::<BenchFrame>() == 4 + BENCH_FRAME_BYTES);

// SAFETY: #[repr(C)], Copy, integers and a byte array only, no padding (size asserted above).
#[cfg(feature = "user")]
unsafe impl aya::Pod for BenchFrame {}

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_kernel_limit() {
        for n in super::names::ALL.iter().chain(super::programs::ALL.iter()) {
            assert!(n.len() < 16, "{n} is too long for BPF_OBJ_NAME_LEN");
        }
    }
}
