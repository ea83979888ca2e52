//! Counter families: each counter's index and its printed name, defined together so the two
//! cannot drift apart.
//!
//! Invariant: a counter enum is only an index. The maps hold plain `u64`s at `index()` (or, for
//! [`PassReason`], at `index()` of `AddrStats::passed`); no Rust enum crosses the map boundary.
//! `ALL` lists every variant in index order, with no gaps (asserted at compile time), except
//! [`AgentCounter`], whose map keeps spare slots after the last counter.

/// Defines a `#[repr(u32)]` counter enum with `ALL`, `COUNT`, `index()` and `name()`, each
/// variant written beside its index and name.
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $index:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every counter, in index order.
            pub const ALL: [Self; [$($value),*].len()] = [$(Self::$variant),*];
            /// Number of counters.
            pub const COUNT: usize = Self::ALL.len();

            /// The counter's index in its map (or array).
            #[inline(always)]
            pub const fn index(self) -> $index {
                self as u32 as $index
            }

            /// The counter's name, as printed by anycast-ctl and in its JSON output.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }
        }
    };
}

counters! {
    /// Global dataplane counters: `STATS` indices. (Frames that reach an anycast address are
    /// counted per address instead, in `AddrStats`.)
    pub enum Stat: u32 {
        /// IPv4 or IPv6 to an address that is not anycast: passed untouched.
        NotAnycast = 0 => "not_anycast",
        /// Neither IPv4, IPv6 nor ARP: passed untouched.
        OtherEthertype = 1 => "other_ethertype",
        /// Truncated or malformed Ethernet/IPv4/IPv6/ARP/ICMPv6 header: passed untouched.
        Malformed = 2 => "malformed",
        /// ARP not answered by the dataplane: passed untouched.
        ArpPassed = 3 => "arp_passed",
        /// Frame for an anycast address on an interface without an `IFACES` entry.
        IfaceUnknown = 4 => "iface_unknown",
        /// Non-first fragment whose first fragment was not seen: placed by its 3-tuple.
        FragOrphan = 5 => "fragment_orphan",
        /// ARP request for an anycast address with members that the dataplane must not answer:
        /// an ARP probe (sender IP 0.0.0.0), a broadcast, multicast or zero sender MAC, or an
        /// Ethernet destination other than broadcast and the receiving interface's MAC. Passed
        /// untouched.
        ArpRefused = 6 => "arp_refused",
        /// Neighbour solicitation the dataplane does not answer: its target is not an anycast
        /// address, or one without members. Passed untouched.
        NdPassed = 7 => "nd_passed",
        /// Neighbour solicitation that fails RFC 4861 7.1.1 validation (hop limit not 255,
        /// code not 0, too short, multicast target, an option of length 0, a bad checksum, or
        /// from `::` with a source link-layer option or to a unicast address). Passed untouched.
        NdInvalid = 8 => "nd_invalid",
        /// Valid neighbour solicitation for an anycast address with members that the dataplane
        /// must not answer: a group or zero source MAC, an Ethernet destination other than the
        /// receiving interface and the target's solicited-node group, or an IPv6 destination
        /// other than the target and its solicited-node address. Passed untouched.
        NdRefused = 9 => "nd_refused",
    }
}

counters! {
    /// Why a packet to an anycast address is passed to the kernel: indices of
    /// `AddrStats::passed`.
    pub enum PassReason: usize {
        /// TTL (IPv4) or hop limit (IPv6) 1 or 0: the kernel sends ICMP time exceeded.
        TtlExceeded = 0 => "ttl_exceeded",
        /// No member takes the flow (or its host record is gone).
        NoMember = 1 => "no_member",
        /// The member's MAC is not known yet.
        MacUnknown = 2 => "mac_unknown",
        /// The member's egress interface is not in `TX_PORTS`.
        EgressNotAttached = 3 => "egress_not_attached",
        /// The Ethernet destination is not the receiving interface's MAC (another host's,
        /// broadcast or multicast): not sent to this router.
        NotForRouter = 4 => "not_for_router",
        /// The IPv4 header checksum is wrong (IPv6 has none).
        BadChecksum = 5 => "bad_checksum",
        /// The source cannot send: 0.0.0.0/8, 127.0.0.0/8, multicast, 240.0.0.0/4 (broadcast
        /// included), or the anycast address itself; for IPv6 `::`, `::1`, multicast,
        /// link-local, IPv4-mapped, or the anycast address itself.
        BadSource = 6 => "bad_source",
        /// IPv6 only: more extension headers than the dataplane walks, or one it does not
        /// walk (anything but hop-by-hop, routing, destination options and fragment) before
        /// the upper layer.
        ExtHeaders = 7 => "ext_headers",
    }
}

counters! {
    /// The agent's advertisement counters (`AGENT_STATS` indices): accepted advertisements,
    /// then rejections by reason. Every variant but `Accepted` is a reason the agent drops an
    /// advertisement (or, for `OutsidePrefix`, `NotOnLink`, `NotAnycast` and
    /// `FamilyUnsupported`, one membership of an accepted advertisement).
    pub enum AgentCounter: u32 {
        Accepted = 0 => "accepted",
        Malformed = 1 => "malformed",
        BadTtl = 2 => "bad_ttl",
        WrongInterface = 3 => "wrong_interface",
        SenderMismatch = 4 => "sender_mismatch",
        Unauthenticated = 5 => "unauthenticated",
        UnknownKey = 6 => "unknown_key",
        BadHmac = 7 => "bad_hmac",
        Replayed = 8 => "replayed",
        StaleTimestamp = 9 => "stale_timestamp",
        OutsidePrefix = 10 => "outside_prefix",
        NotOnLink = 11 => "not_on_link",
        BadLinkAddr = 12 => "bad_link_addr",
        NotAnycast = 13 => "not_anycast",
        SenderNotAllowed = 14 => "sender_not_allowed",
        /// A believed membership of a family the members API cannot take. Every family is
        /// applied now, so it stays 0; kept so that the indices and names do not move.
        FamilyUnsupported = 15 => "family_unsupported",
    }
}

/// Entries of `AGENT_STATS`: the agent counters and spare slots for new ones (a new counter
/// then needs no new map layout).
pub const AGENT_COUNTERS: u32 = 16;

const _: () = {
    let mut i = 0;
    while i < Stat::COUNT {
        assert!(Stat::ALL[i].index() as usize == i);
        i += 1;
    }
    let mut i = 0;
    while i < PassReason::COUNT {
        assert!(PassReason::ALL[i].index() == i);
        i += 1;
    }
    let mut i = 0;
    while i < AgentCounter::COUNT {
        assert!(AgentCounter::ALL[i].index() as usize == i);
        i += 1;
    }
    assert!(AgentCounter::COUNT <= AGENT_COUNTERS as usize);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_within_a_family() {
        fn distinct(names: &[&str]) {
            for (i, a) in names.iter().enumerate() {
                assert!(!a.is_empty());
                assert!(!names[i + 1..].contains(a), "{a} twice");
            }
        }
        distinct(&Stat::ALL.map(Stat::name));
        distinct(&PassReason::ALL.map(PassReason::name));
        distinct(&AgentCounter::ALL.map(AgentCounter::name));
    }
}
