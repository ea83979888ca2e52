//! Flow hashing, shared by the dataplane (which applies it per packet) and user space (which
//! uses it in tests and to predict placement).
//!
//! Invariant: the hash depends only on the fields passed in, so every packet of a flow (and every
//! fragment of a datagram, which the dataplane maps to its first fragment's flow) gets the same
//! value on every CPU and every router running the same code. Nothing router-local goes in: no
//! seed, no boot-time randomness, no ifindex, no CPU or queue number. The inputs are wire bytes
//! read as native integers ([`crate::ip_key`], `ports`), so routers agree only if they share a
//! byte order; the dataplane is built for little-endian BPF (`bpfel`) only, so they do.

/// Finalizer of murmur3: full avalanche of a 32-bit word.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hashes a flow. `src` and `dst` are [`crate::ip_key`] values; `ports` holds the source and
/// destination ports as the 4 wire bytes read as a native `u32`, or 0 for protocols without
/// ports.
///
/// Each field is spread by its own odd multiplier (so that swapping fields changes the result),
/// the products are combined, and murmur3's finalizer mixes the sum: a handful of
/// instructions on the per-packet path, with every input bit affecting every output bit.
#[inline(always)]
pub const fn flow_hash(src: u32, dst: u32, ports: u32, proto: u8) -> u32 {
    let a = fmix32(src.wrapping_mul(0x9e37_79b1) ^ dst.wrapping_mul(0x85eb_ca77).rotate_left(16));
    fmix32(a ^ ports.wrapping_mul(0xc2b2_ae3d) ^ proto as u32)
}

/// Folds an IPv6 address ([`crate::ip6_key`]) into 32 bits: each word is mixed into the
/// finalizer of the next, so every bit of the address affects every bit of the result. An
/// IPv6 member's identity (Maglev, fallback); too slow for the per-packet path (four chained
/// finalizers), which uses [`compress6`].
#[inline(always)]
pub const fn fold6(k: [u32; 4]) -> u32 {
    fmix32(k[0] ^ fmix32(k[1] ^ fmix32(k[2] ^ fmix32(k[3]))))
}

/// Compresses an IPv6 address ([`crate::ip6_key`]) into 32 bits for the per-packet hashes: each
/// word times its own odd constant, the products xored. The four multiplies are independent,
/// so the `ADDRS6` home bucket is a few cycles away from the address instead of [`fold6`]'s
/// four chained finalizers (which cost an IPv6 forward as much as the whole IPv4 path). Each
/// product is a bijection of its word, so addresses that differ in one word never collide; the
/// high bits depend on every bit of the address, the low ones only on the low bits of each
/// word: users take the high bits (`AddrBucket6::home`) or finalize them ([`flow_hash`]).
#[inline(always)]
pub const fn compress6(k: [u32; 4]) -> u32 {
    k[0].wrapping_mul(0xcc9e_2d51)
        ^ k[1].wrapping_mul(0x1b87_3593)
        ^ k[2].wrapping_mul(0x85eb_ca6b)
        ^ k[3].wrapping_mul(0xc2b2_ae35)
}

/// Hashes an IPv6 flow: [`flow_hash`] of the compressed addresses ([`compress6`]). The flow label is left out:
/// Linux re-rolls a connection's label on retransmission timeouts (`sk_rethink_txhash`, so that
/// ECMP routers move it to another path), so a hash over it would move a TCP connection to
/// another member whenever its connection-table entry is gone; and a later fragment carries the
/// label but not the ports, so the hash would not be the 5-tuple's anyway.
#[inline(always)]
pub const fn flow_hash6(src: [u32; 4], dst: [u32; 4], ports: u32, proto: u8) -> u32 {
    flow_hash(compress6(src), compress6(dst), ports, proto)
}

/// Maps a 32-bit hash uniformly onto `0..n` without a division (Lemire's multiply-shift).
#[inline(always)]
pub const fn pick_index(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

/// Score of a member for a flow in the dataplane's fallback (rendezvous hashing): a flow whose
/// member is out of service goes to the eligible live member with the highest score, ties to
/// the higher `member` (an [`crate::ip_key`]). It depends only on the flow and the member's
/// identity, so every CPU and every router with the same members makes the same choice, and
/// the flows of one failed member spread evenly over the others while no other flow moves.
#[inline(always)]
pub const fn fallback_score(hash: u32, member: u32) -> u32 {
    fmix32(hash ^ fmix32(member.wrapping_mul(0x9e37_79b1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is a fixed function of the flow: routers in front of one member LAN (and a
    /// router before and after an upgrade) must compute the same value, so a change here is a
    /// change of every flow's member for flows not in a connection table. Known answers for
    /// 192.0.2.10:40000 -> 198.51.100.53:7400 over TCP and UDP, and for ICMP.
    #[test]
    fn hash_is_a_fixed_function_of_the_flow() {
        let src = crate::ip_key([192, 0, 2, 10]);
        let dst = crate::ip_key([198, 51, 100, 53]);
        let ports = u32::from_ne_bytes([0x9c, 0x40, 0x1c, 0xe8]);
        assert_eq!(flow_hash(src, dst, ports, 6), 0x8a37_e132);
        assert_eq!(flow_hash(src, dst, ports, 17), 0x1915_d0ec);
        assert_eq!(flow_hash(src, dst, 0, 1), 0x0f96_2fd2);
    }

    #[test]
    fn fallback_spreads_a_failed_members_flows() {
        let members = [0x0200_71cbu32, 0x0600_71cb, 0x0a00_71cb];
        let mut counts = [0u32; 3];
        for port in 0..30_000u32 {
            let hash = flow_hash(0x0a00_0001, 0x3564_33c6, port, 17);
            let best = (0..3)
                .max_by_key(|&i| (fallback_score(hash, members[i]), members[i]))
                .unwrap();
            counts[best] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn hash_depends_on_every_field() {
        let base = flow_hash(1, 2, 3, 17);
        assert_ne!(base, flow_hash(9, 2, 3, 17));
        assert_ne!(base, flow_hash(1, 9, 3, 17));
        assert_ne!(base, flow_hash(1, 2, 9, 17));
        assert_ne!(base, flow_hash(1, 2, 3, 6));
        assert_eq!(base, flow_hash(1, 2, 3, 17));
    }

    #[test]
    fn fold6_depends_on_every_word() {
        let base = [1, 2, 3, 4];
        for i in 0..4 {
            let mut k = base;
            k[i] ^= 1 << 31;
            assert_ne!(fold6(k), fold6(base), "word {i}");
        }
        assert_ne!(
            flow_hash6(base, [4, 3, 2, 1], 7, 17),
            flow_hash6([4, 3, 2, 1], base, 7, 17)
        );
    }

    #[test]
    fn pick_index_stays_in_range_and_spreads() {
        let mut counts = [0u32; 3];
        for port in 0..30_000u32 {
            let i = pick_index(flow_hash(0x0a00_0001, 0x3564_33c6, port, 17), 3);
            counts[i as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven spread {counts:?}");
        }
        assert_eq!(pick_index(u32::MAX, 7), 6);
        assert_eq!(pick_index(0, 7), 0);
    }
}
