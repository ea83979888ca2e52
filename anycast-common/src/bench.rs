//! The benchmark object (`anycast-bench`, beside the dataplane in anycast-ebpf): reference
//! programs the benchmarks measure in the same run as the dataplane, and the XDP_PASS program
//! the tests attach to veth peers. anycast-ctl never loads it; none of its maps is pinned.

/// Map names of the benchmark object.
pub mod names {
    /// Devmap: the egress ports of `bench_redirect` (index 0) and `bench_spread` (0..3).
    pub const BENCH_PORT: &str = "BENCH_PORT";
    /// Per-CPU frame counter of `bench_gen`.
    pub const BENCH_SEQ: &str = "BENCH_SEQ";
    /// The [`super::BenchFrame`] `bench_gen` and `bench_replay` write (index 0).
    pub const BENCH_FRAME: &str = "BENCH_FRAME";
    /// Program array: the program `bench_replay` tail-calls (index 0).
    pub const BENCH_TARGET: &str = "BENCH_TARGET";
    /// [`super::COLD_LINES`] cache lines, one read per frame by `bench_cold` and `bench_packed`.
    pub const BENCH_COLD: &str = "BENCH_COLD";
    /// Every map of the benchmark object.
    pub const ALL: [&str; 5] = [BENCH_PORT, BENCH_SEQ, BENCH_FRAME, BENCH_TARGET, BENCH_COLD];
}

/// Programs of the benchmark object.
pub mod programs {
    /// Baseline: swap MACs, XDP_TX.
    pub const BENCH_BASELINE: &str = "bench_baseline";
    /// Ceiling: redirect every frame to one port.
    pub const BENCH_REDIRECT: &str = "bench_redirect";
    /// Ceiling: redirect each frame to one of [`super::SPREAD_PORTS`] ports by its UDP ports.
    pub const BENCH_SPREAD: &str = "bench_spread";
    /// `bench_spread` plus the MAC and TTL rewrite of a forwarder.
    pub const BENCH_FORWARD: &str = "bench_forward";
    /// `bench_spread` plus one read of a cache line chosen by the flow (`BENCH_COLD`): what
    /// one line of per-flow state costs, by itself, once the flows outgrow the caches.
    pub const BENCH_COLD: &str = "bench_cold";
    /// `bench_cold` with the line picked by the flow's own index, so that the flows' lines are
    /// consecutive: as many lines as `bench_cold` reads, in 64 times fewer pages. Against
    /// `bench_cold` at the same flows, what the TLB misses of per-flow state cost.
    pub const BENCH_PACKED: &str = "bench_packed";
    /// Traffic generator (live frames): restores the headers of `BENCH_FRAME`, varies the flow
    /// (and, optionally, the IPv4 destination).
    pub const BENCH_GEN: &str = "bench_gen";
    /// TEST_RUN harness: restores `BENCH_FRAME` over the frame, then tail-calls
    /// `BENCH_TARGET[0]`, so that every repeat runs on the frame the benchmark gave (TEST_RUN
    /// does not reset the frame between repeats).
    pub const BENCH_REPLAY: &str = "bench_replay";
    /// Sink: drops IPv4 and IPv6 other than ICMPv6, passes everything else.
    pub const BENCH_SINK: &str = "bench_sink";
    /// XDP_PASS for a veth peer, so that it receives XDP_TX and redirected frames.
    pub const PEER_PASS: &str = "peer_pass";
    pub const ALL: [&str; 10] = [
        BENCH_BASELINE,
        BENCH_REDIRECT,
        BENCH_SPREAD,
        BENCH_FORWARD,
        BENCH_COLD,
        BENCH_PACKED,
        BENCH_GEN,
        BENCH_REPLAY,
        BENCH_SINK,
        PEER_PASS,
    ];
}

/// Capacity of [`BenchFrame`]: the headers of a generated frame, or a whole frame to replay
/// (a neighbour solicitation with its option is 86 bytes).
pub const BENCH_FRAME_BYTES: usize = 128;

/// Ports of `bench_spread` (BENCH_PORT indexes 0..SPREAD_PORTS).
pub const SPREAD_PORTS: u32 = 3;

/// Cache lines of BENCH_COLD (64 MiB, as many as the connection table's sets for 4,194,304
/// flows): a power of two.
pub const COLD_LINES: u32 = 1 << 20;

/// Capacity of BENCH_PORT.
pub const BENCH_PORTS: u32 = 4;

/// What `bench_gen` writes over the start of every frame it generates (and `bench_replay`
/// over every frame it replays, [`BenchFrame::replay`]): the headers of an
/// Ethernet/IPv4 (IHL 5)/UDP or Ethernet/IPv6/UDP frame (IPv4 checksum included), then the
/// flow's ports and, if `spread_mask` is set, the IPv4 destination. Set by the benchmark.
///
/// Frame `n` of a CPU is flow `i = n & flows_mask`: source port `1024 + i % 1024`, destination
/// port the template's plus `i / 1024`; and, for IPv4, destination address the template's
/// plus `n & spread_mask` (its low 16 bits must be 0 in the template), checksum patched.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchFrame {
    /// Bytes of `bytes` to write, at most [`BENCH_FRAME_BYTES`]: the headers through UDP's.
    pub len: u32,
    /// Offset of the UDP header (34 for IPv4, 54 for IPv6).
    pub l4: u32,
    /// Flows minus one (a power of two minus one).
    pub flows_mask: u32,
    /// IPv4 destinations minus one (a power of two minus one, at most 0xffff); 0: one.
    pub spread_mask: u32,
    pub bytes: [u8; BENCH_FRAME_BYTES],
}

impl BenchFrame {
    /// The template of `frame`'s first `len` bytes with its UDP header at `l4`, one flow, one
    /// destination; `None` if `len` exceeds the frame or [`BENCH_FRAME_BYTES`], or the UDP
    /// header does not fit in it.
    pub fn new(frame: &[u8], len: usize, l4: usize) -> Option<Self> {
        if len > BENCH_FRAME_BYTES || len > frame.len() || l4 + 8 > len {
            return None;
        }
        let mut bytes = [0; BENCH_FRAME_BYTES];
        bytes[..len].copy_from_slice(&frame[..len]);
        Some(Self {
            len: len as u32,
            l4: l4 as u32,
            flows_mask: 0,
            spread_mask: 0,
            bytes,
        })
    }

    /// The whole of `frame`, for `bench_replay` (which reads only `len` and `bytes`); `None` if
    /// it exceeds [`BENCH_FRAME_BYTES`].
    pub fn replay(frame: &[u8]) -> Option<Self> {
        if frame.len() > BENCH_FRAME_BYTES {
            return None;
        }
        let mut bytes = [0; BENCH_FRAME_BYTES];
        bytes[..frame.len()].copy_from_slice(frame);
        Some(Self {
            len: frame.len() as u32,
            l4: 0,
            flows_mask: 0,
            spread_mask: 0,
            bytes,
        })
    }
}

const _: () = assert!(core::mem::size_of::<BenchFrame>() == 16 + BENCH_FRAME_BYTES);

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
