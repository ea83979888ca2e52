//! Map names, capacities and value layouts of the dataplane.
//!
//! Invariants:
//! - A map name here is the name of a map in the eBPF object, and the file name of its pin.
//! - Values hold integers, byte arrays and named flag constants only; no `bool`, `Option` or
//!   Rust enum crosses the boundary.
//! - The dataplane finds an anycast address in `ADDRS` (IPv4) or `ADDRS6` (IPv6), open-addressed
//!   arrays (an array lookup is inlined by the verifier; a hash map lookup costs about as much as
//!   the rest of the forward path), both probed by [`addr_probe`] alone. An address sits within
//!   [`ADDR_PROBES`] buckets of its home bucket ([`AddrEntry::home`]), and addresses are never
//!   removed while the dataplane is loaded, so a lookup stops at the first empty bucket.
//! - Everything past the address index is family-independent: slots, `MEMBER_SETS`, `TABLES`,
//!   `HOSTS`, the counters and the connection table serve both families alike.
//! - Each address has two [`MemberSet`]s in `MEMBER_SETS`; its bucket names the live one. User
//!   space writes the other one, then flips `AddrBucket::version` (one aligned 32-bit store), so
//!   the dataplane never reads a half-written member set.
//! - Each address also has two Maglev tables in `TABLES`, at the same [`member_set_index`] as
//!   its two member sets: the flip of `AddrBucket::version` makes a set and its table live
//!   together. User space writes the spare table in place (tables are mmapable arrays) and
//!   flips; no update of `TABLES` (which waits for an RCU grace period) is on that path. A
//!   spare is written only after a grace period has passed since the flip that retired it
//!   (`SlotState::retired_at`), so no packet ever reads a table or set while it is rewritten.
//! - `SLOT_STATE` (mmapable) holds each address's `SlotState::down`: members out of service
//!   by position. One aligned 64-bit store by user space takes a member out at once (leave,
//!   expiry, link down, delete); its flows go to the fallback ([`crate::fallback_score`]) until
//!   the rebuilt set and table follow, which leave the position a hole and clear its bit.
//! - `SLOT_STATE` also holds the [`SetHead`] of both member sets of the slot, written with the
//!   set (the spare's, before the flip), so that member choice reads the slot's line, not the
//!   560-byte set, for the single member; the set is read for a member the table or the
//!   connection table names at another position, for later fragments and by the fallback.
//! - The dataplane finds the receiving interface in `IFACES`, an open-addressed array too, probed
//!   by [`iface_probe`] alone (the dataplane and user space share it). An interface sits within
//!   [`IFACE_PROBES`] slots of [`iface_home`]; removal empties a slot, so a lookup probes the
//!   whole run. An entry is written before the program is attached to its interface and
//!   removed after it is detached, so no frame ever sees it half-written.

use crate::counters::PassReason;

/// Pinned map names (also the pin file names under the pin directory).
pub mod names {
    /// Open-addressed array of [`super::AddrBucket`]: IPv4 anycast address -> slot and live set.
    pub const ADDRS: &str = "ADDRS";
    /// Open-addressed array of [`super::AddrBucket6`]: IPv6 anycast address -> slot and live set.
    pub const ADDRS6: &str = "ADDRS6";
    /// [`super::MemberSet`] pairs, indexed by [`super::member_set_index`].
    pub const MEMBER_SETS: &str = "MEMBER_SETS";
    /// Anycast address ([`crate::any_key`]) -> slot: user space's directory of `ADDRS` and
    /// `ADDRS6` (not read by the dataplane).
    pub const ADDR_KEYS: &str = "ADDR_KEYS";
    /// Member host index -> [`super::Host`].
    pub const HOSTS: &str = "HOSTS";
    /// Member host address ([`crate::any_key`]) -> host index: user space's directory of
    /// `HOSTS` (not read by the dataplane).
    pub const HOST_IDS: &str = "HOST_IDS";
    /// Open-addressed array of [`super::Iface`]: attached ifindex -> MAC and mode.
    pub const IFACES: &str = "IFACES";
    /// Egress devmap for XDP_REDIRECT, keyed by ifindex.
    pub const TX_PORTS: &str = "TX_PORTS";
    /// Per-CPU [`super::AddrStats`] indexed by address slot.
    pub const ADDR_STATS: &str = "ADDR_STATS";
    /// Per-CPU [`super::MemberStats`] indexed by member counter index.
    pub const MEMBER_STATS: &str = "MEMBER_STATS";
    /// Per-CPU global `u64` counters indexed by [`crate::Stat`].
    pub const STATS: &str = "STATS";
    /// LRU: first fragment of an IPv4 datagram -> the member it went to.
    pub const FRAGS: &str = "FRAGS";
    /// LRU: first fragment of an IPv6 datagram -> the member it went to.
    pub const FRAGS6: &str = "FRAGS6";
    /// Array of maps: [`super::member_set_index`] -> the Maglev lookup table (packed member
    /// positions) of that member set.
    pub const TABLES: &str = "TABLES";
    /// Mmapable array of [`super::SlotState`] indexed by address slot: members out of service
    /// and the heads of the slot's two member sets.
    pub const SLOT_STATE: &str = "SLOT_STATE";
    /// The connection table: [`super::FlowSet`]s of 4 ways, indexed by the flow hash.
    pub const FLOWS: &str = "FLOWS";
    /// [`super::MemberKey`] -> [`super::MemberInfo`]: where a membership came from (user space).
    pub const MEMBER_INFO: &str = "MEMBER_INFO";
    /// Advertisement sender ([`crate::any_key`], either family) -> last accepted sequence
    /// number (the agent's replay guard).
    pub const SENDER_SEQ: &str = "SENDER_SEQ";
    /// The agent's advertisement counters, indexed by [`crate::AgentCounter`].
    pub const AGENT_STATS: &str = "AGENT_STATS";
    /// One `u32`: the [`super::LAYOUT_VERSION`] of the maps pinned beside it.
    pub const LAYOUT: &str = "LAYOUT";
    /// User space's allocator marks, indexed by `ALLOC_*`: the next never-used index of each
    /// kind (not read by the dataplane).
    pub const ALLOC: &str = "ALLOC";
    /// Stack of freed member counter indexes, reused before the mark grows.
    pub const FREE_COUNTERS: &str = "FREE_COUNTERS";
    /// Stack of freed host indexes, reused before the mark grows.
    pub const FREE_HOSTS: &str = "FREE_HOSTS";
    /// Host index -> number of memberships that refer to it.
    pub const HOST_REFS: &str = "HOST_REFS";
    /// Member counter index -> the member's slots in its address's Maglev table.
    pub const MEMBER_SLOTS: &str = "MEMBER_SLOTS";
    /// Route export settings, indexed by `EXPORT_*` (user space only; see `anycast-ctl export`).
    pub const EXPORT: &str = "EXPORT";
    /// LRU: [`super::RequesterKey`] -> [`super::Requester`]: which member each client of a
    /// direct-mode address was given in an ARP reply (see `crate::direct`).
    pub const REQUESTERS: &str = "REQUESTERS";
    /// [`crate::direct::stat_key`] -> ARP replies given in direct mode (written by the
    /// dataplane).
    pub const DIRECT_REPLIES: &str = "DIRECT_REPLIES";
    /// [`crate::direct::stat_key`] -> clients repointed (written by user space).
    pub const REPOINTS: &str = "REPOINTS";
    /// Member LAN ifindex -> [`super::McastLan`]: in multicast mode, another router forwards
    /// onto that LAN, and this one relays to it (written by the agent's router election).
    pub const MCAST_LANS: &str = "MCAST_LANS";
    /// The maps pinned under the pin directory: every map of the object.
    pub const PINNED: [&str; 30] = ALL;
    /// Every map of the dataplane object.
    pub const ALL: [&str; 30] = [
        ADDRS,
        ADDRS6,
        MEMBER_SETS,
        ADDR_KEYS,
        HOSTS,
        HOST_IDS,
        IFACES,
        TX_PORTS,
        ADDR_STATS,
        MEMBER_STATS,
        STATS,
        FRAGS,
        FRAGS6,
        TABLES,
        FLOWS,
        MEMBER_INFO,
        SENDER_SEQ,
        AGENT_STATS,
        LAYOUT,
        ALLOC,
        FREE_COUNTERS,
        FREE_HOSTS,
        HOST_REFS,
        MEMBER_SLOTS,
        EXPORT,
        SLOT_STATE,
        REQUESTERS,
        DIRECT_REPLIES,
        REPOINTS,
        MCAST_LANS,
    ];
}

/// Programs in the dataplane object.
pub mod programs {
    /// The dataplane.
    pub const ANYCAST: &str = "anycast";
    pub const ALL: [&str; 1] = [ANYCAST];
}

/// Version of the pinned state's layout (map set, key and value layouts, their meaning),
/// recorded in the `LAYOUT` map. A binary refuses pins of another version instead of reusing
/// maps by name. Bump it with every change to a pinned map.
pub const LAYOUT_VERSION: u32 = 10;

/// `EXPORT` index: 1 when route export is on, 0 when off.
pub const EXPORT_ENABLED: u32 = 0;
/// `EXPORT` index: the kernel routing table of the exported host routes.
pub const EXPORT_TABLE: u32 = 1;
/// `EXPORT` index: the route protocol number the exported routes carry.
pub const EXPORT_PROTO: u32 = 2;
/// Entries of `EXPORT`.
pub const EXPORT_FIELDS: u32 = 3;

/// Anycast addresses of one family (the RFC's 2^16).
pub const MAX_ADDRS_PER_FAMILY: u32 = 65_536;
/// Address slots, shared by both families: 2^16 IPv4 and 2^16 IPv6 addresses.
pub const MAX_ADDRS: u32 = 2 * MAX_ADDRS_PER_FAMILY;
/// Buckets of the `ADDRS` index: a power of two, four per address, so probe runs stay short.
pub const ADDR_BUCKETS: u32 = 4 * MAX_ADDRS_PER_FAMILY;
/// Buckets of the `ADDRS6` index, likewise.
pub const ADDR6_BUCKETS: u32 = 4 * MAX_ADDRS_PER_FAMILY;
/// `AddrBucket6::home` takes the top `log2(ADDR6_BUCKETS)` bits of [`crate::compress6`].
const ADDR6_HOME_SHIFT: u32 = 32 - ADDR6_BUCKETS.trailing_zeros();
const _: () = assert!(ADDR6_BUCKETS.is_power_of_two());
/// An address is at most this many buckets after its home bucket.
pub const ADDR_PROBES: u32 = 16;
/// Members of one anycast address.
pub const MAX_MEMBERS: usize = 64;
/// Distinct member hosts.
pub const MAX_HOSTS: u32 = 65_536;
/// (address, member) pairs, each with its own counters: 16 members for each of 65,536 addresses.
pub const MAX_MEMBER_COUNTERS: u32 = 1 << 20;
/// Attached interfaces.
pub const MAX_IFACES: u32 = 1_024;
/// Slots of the `IFACES` index: a power of two, four per interface.
pub const IFACE_SLOTS: u32 = 4 * MAX_IFACES;
/// An interface is at most this many slots after its home slot.
pub const IFACE_PROBES: u32 = 8;
/// Datagrams in flight as fragments.
pub const MAX_FRAGS: u32 = 16_384;
/// Default Maglev table size per address: prime, 256 slots per member at [`MAX_MEMBERS`]
/// (Maglev asks for more than 100). Each table costs one byte per slot.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;
/// Largest Maglev table size.
pub const MAX_TABLE_SIZE: u32 = 1 << 20;
/// BPF_F_MMAPABLE: an array user space can write through `mmap`.
pub const MAP_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every Maglev table map: BPF_F_INNER_MAP, so tables of different sizes can sit in
/// one `TABLES` array, and BPF_F_MMAPABLE, so user space fills one with a copy, not a syscall
/// per word.
pub const TABLE_MAP_FLAGS: u32 = (1 << 12) | MAP_F_MMAPABLE;
/// Entries of `TABLES`: two per address slot ([`member_set_index`]), and [`GRACE_INDEX`].
pub const TABLE_SLOTS: u32 = 2 * MAX_ADDRS + 1;
/// The `TABLES` entry no address uses: user space updates it to wait for a grace period (an
/// update of an array of maps returns once every program that could see the old value ended).
pub const GRACE_INDEX: u32 = 2 * MAX_ADDRS;
/// Member positions packed per `u64` word of a table.
pub const TABLE_ENTRIES_PER_WORD: u32 = 8;

/// Words of a Maglev table map of `size` slots.
#[inline(always)]
pub const fn table_words(size: u32) -> u32 {
    size.div_ceil(TABLE_ENTRIES_PER_WORD)
}

/// Where slot `index` of a Maglev table is: the word holding it and the bit shift of its byte
/// in that word (slot `8w + i` is byte `i`, little-endian, of word `w`).
#[inline(always)]
pub const fn table_word_of(index: u32) -> (u32, u32) {
    (
        index / TABLE_ENTRIES_PER_WORD,
        (index % TABLE_ENTRIES_PER_WORD) * 8,
    )
}

/// The member position at `shift` (from [`table_word_of`]) in a table word.
#[inline(always)]
pub const fn table_position(word: u64, shift: u32) -> u32 {
    ((word >> shift) & 0xff) as u32
}

/// Packs the member positions of consecutive table slots (at most
/// [`TABLE_ENTRIES_PER_WORD`], the first at shift 0) into one table word; missing slots are 0.
pub fn pack_positions(positions: &[u8]) -> u64 {
    let mut word = [0u8; TABLE_ENTRIES_PER_WORD as usize];
    for (byte, position) in word.iter_mut().zip(positions) {
        *byte = *position;
    }
    u64::from_le_bytes(word)
}
/// Ways per set of the connection table.
pub const FLOW_WAYS: u32 = 4;
/// Default sets of the connection table: 262,144 x 4 = 1,048,576 flows in 16 MiB.
pub const FLOW_SETS: u32 = 1 << 18;
/// Name of the loader-set global holding the connection table's set mask.
pub const FLOW_SETS_MASK: &str = "FLOW_SETS_MASK";
/// `ALLOC` indices: address slots (never freed), member counters, host indexes.
pub const ALLOC_ADDR_SLOTS: u32 = 0;
pub const ALLOC_COUNTERS: u32 = 1;
pub const ALLOC_HOSTS: u32 = 2;
pub const ALLOC_KINDS: u32 = 3;
/// `MemberRef::host` of an empty position in a member set.
pub const NO_HOST: u32 = u32::MAX;

/// One member of an anycast address: the host to send to, and its counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberRef {
    /// Index into `HOSTS`.
    pub host: u32,
    /// Index into `MEMBER_STATS`.
    pub counter: u32,
}

/// `AddrBucket::mode`: the router answers ARP with its own MAC and forwards every datagram to
/// a member chosen per flow (the default).
pub const ADDR_MODE_PROXY: u32 = 0;
/// `AddrBucket::mode`: the router answers a client's ARP with the MAC of a member on the
/// client's link, chosen per client (`crate::direct`); the client then sends to it directly.
pub const ADDR_MODE_DIRECT: u32 = 1;
/// `AddrBucket::mode`: the router sends each datagram once onto its members' LAN, to the
/// address's link-level group ([`crate::multicast::group_mac`]), which every member joins: every
/// member gets every datagram (RFC 1546's second way).
pub const ADDR_MODE_MULTICAST: u32 = 2;
/// The bits of `AddrBucket::mode` that hold its `ADDR_MODE_*`; the bits above are flags.
pub const ADDR_MODE_MASK: u32 = 0xff;
/// `AddrBucket::mode` (and `AddrBucket6::mode`) flag: only TCP connections are kept in the
/// connection table; UDP and other datagrams are placed by the live Maglev table alone, so
/// they stay on their member while the member set does not change (`member track tcp`).
/// Clear (the default): every flow is tracked.
pub const ADDR_TRACK_TCP_ONLY: u32 = 1 << 8;

/// One bucket of the `ADDRS` index. `ip == 0` marks an empty bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrBucket {
    /// The anycast address ([`crate::ip_key`]).
    pub ip: u32,
    /// Index into `ADDR_STATS`; with `version`, into `MEMBER_SETS`. Fixed for the address's life.
    pub slot: u32,
    /// Which of the address's two member sets is live (0 or 1).
    pub version: u32,
    /// `ADDR_MODE_*` (the low byte: how clients on a member's link reach the address) and
    /// `ADDR_TRACK_*` flags above it. Kept by every rewrite of the bucket; changed only by the
    /// operator (`member add --mode/--track`, `member mode`, `member track`).
    pub mode: u32,
}

/// One bucket of the `ADDRS6` index: [`AddrBucket`] with an IPv6 key. `ip == [0; 4]` (`::`)
/// marks an empty bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrBucket6 {
    /// The anycast address ([`crate::ip6_key`]).
    pub ip: crate::Ip6Key,
    pub slot: u32,
    pub version: u32,
    /// `ADDR_TRACK_*` flags (IPv6 addresses are always proxied: no `ADDR_MODE_*`), kept as
    /// [`AddrBucket::mode`] is.
    pub mode: u32,
    pub _pad: u32,
}

/// A bucket of an address index (`ADDRS`, `ADDRS6`): what [`addr_probe`] needs of it.
pub trait AddrEntry: Copy + Default {
    /// The address as the index stores it.
    type Key: Copy;
    /// Buckets of the index (a power of two).
    const BUCKETS: u32;
    /// Home bucket of `key`.
    fn home(key: &Self::Key) -> u32;
    /// Whether `key` is the empty marker (no address has it).
    fn is_empty_key(key: &Self::Key) -> bool;
    /// Whether this bucket holds `key`.
    fn holds(&self, key: &Self::Key) -> bool;
    /// Whether this bucket is empty.
    fn is_empty(&self) -> bool;
    /// A bucket for `key` at `slot`, with live set `version`.
    fn new(key: Self::Key, slot: u32, version: u32) -> Self;
    fn key(&self) -> Self::Key;
    fn slot(&self) -> u32;
    fn version(&self) -> &u32;
    /// This bucket with the other member set live.
    fn flipped(&self) -> Self;
    /// The address's `ADDR_MODE_*` (IPv6 addresses are always proxied: direct mode is ARP's).
    #[inline(always)]
    fn mode(&self) -> u32 {
        ADDR_MODE_PROXY
    }
    /// [`ADDR_TRACK_TCP_ONLY`] if only TCP connections of the address go in the connection
    /// table, else 0 (a mask, not a `bool`: the dataplane uses it without a branch).
    fn tcp_only(&self) -> u32;
    /// The whole mode word: `ADDR_MODE_*` (IPv4) and `ADDR_TRACK_*` flags.
    fn mode_word(&self) -> u32;
}

impl AddrEntry for AddrBucket {
    type Key = u32;
    const BUCKETS: u32 = ADDR_BUCKETS;
    #[inline(always)]
    fn home(key: &u32) -> u32 {
        crate::flow::fmix32(*key) & (ADDR_BUCKETS - 1)
    }
    #[inline(always)]
    fn is_empty_key(key: &u32) -> bool {
        *key == 0
    }
    #[inline(always)]
    fn holds(&self, key: &u32) -> bool {
        self.ip == *key
    }
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.ip == 0
    }
    fn new(ip: u32, slot: u32, version: u32) -> Self {
        Self {
            ip,
            slot,
            version,
            mode: ADDR_MODE_PROXY,
        }
    }
    #[inline(always)]
    fn mode(&self) -> u32 {
        self.mode & ADDR_MODE_MASK
    }
    #[inline(always)]
    fn tcp_only(&self) -> u32 {
        self.mode & ADDR_TRACK_TCP_ONLY
    }
    fn mode_word(&self) -> u32 {
        self.mode
    }
    fn key(&self) -> u32 {
        self.ip
    }
    #[inline(always)]
    fn slot(&self) -> u32 {
        self.slot
    }
    #[inline(always)]
    fn version(&self) -> &u32 {
        &self.version
    }
    fn flipped(&self) -> Self {
        Self {
            version: self.version ^ 1,
            ..*self
        }
    }
}

impl AddrEntry for AddrBucket6 {
    type Key = crate::Ip6Key;
    const BUCKETS: u32 = ADDR6_BUCKETS;
    #[inline(always)]
    fn home(key: &crate::Ip6Key) -> u32 {
        // The high bits: they depend on every bit of the address.
        crate::flow::compress6(*key) >> ADDR6_HOME_SHIFT
    }
    #[inline(always)]
    fn is_empty_key(key: &crate::Ip6Key) -> bool {
        (key[0] | key[1] | key[2] | key[3]) == 0
    }
    #[inline(always)]
    fn holds(&self, key: &crate::Ip6Key) -> bool {
        // Word by word: `==` on arrays may become a `bcmp` call, which BPF cannot make.
        ((self.ip[0] ^ key[0])
            | (self.ip[1] ^ key[1])
            | (self.ip[2] ^ key[2])
            | (self.ip[3] ^ key[3]))
            == 0
    }
    #[inline(always)]
    fn is_empty(&self) -> bool {
        Self::is_empty_key(&self.ip)
    }
    fn new(ip: crate::Ip6Key, slot: u32, version: u32) -> Self {
        Self {
            ip,
            slot,
            version,
            mode: 0,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn tcp_only(&self) -> u32 {
        self.mode & ADDR_TRACK_TCP_ONLY
    }
    fn mode_word(&self) -> u32 {
        self.mode
    }
    fn key(&self) -> crate::Ip6Key {
        self.ip
    }
    #[inline(always)]
    fn slot(&self) -> u32 {
        self.slot
    }
    #[inline(always)]
    fn version(&self) -> &u32 {
        &self.version
    }
    fn flipped(&self) -> Self {
        Self {
            version: self.version ^ 1,
            ..*self
        }
    }
}

/// Probes an address index for `key`, reading buckets with `read`: the one probe loop of the
/// dataplane and of user space, for both families. Linear probing from the home bucket, at most
/// [`ADDR_PROBES`] buckets; an empty bucket ends the run (addresses are never removed). The
/// empty marker itself is never found.
#[inline(always)]
pub fn addr_probe<B: AddrEntry, T: core::borrow::Borrow<B>, E>(
    key: &B::Key,
    mut read: impl FnMut(u32) -> Result<T, E>,
) -> Result<Probe<T>, E> {
    if B::is_empty_key(key) {
        return Ok(Probe::Full);
    }
    let mut index = B::home(key);
    for _ in 0..ADDR_PROBES {
        let entry = read(index)?;
        if entry.borrow().holds(key) {
            return Ok(Probe::Found { index, entry });
        }
        if entry.borrow().is_empty() {
            return Ok(Probe::Free { index });
        }
        index = (index + 1) & (B::BUCKETS - 1);
    }
    Ok(Probe::Full)
}

/// Index into `MEMBER_SETS` of an address slot's set `version`.
#[inline(always)]
pub const fn member_set_index(slot: u32, version: u32) -> u32 {
    slot * 2 + (version & 1)
}

/// The address slot and version of a `MEMBER_SETS` index (the inverse of
/// [`member_set_index`]).
#[inline(always)]
pub const fn member_set_of(index: u32) -> (u32, u32) {
    (index / 2, index & 1)
}

/// The members of one anycast address, by position. A member keeps its position for life
/// (removal leaves a hole, `host == NO_HOST`), because the Maglev table and the connection
/// table name members by position.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberSet {
    /// Positions in use: every member is below this.
    pub n_members: u32,
    /// Slots of the address's Maglev table in `TABLES`; 0 = no table.
    pub table_size: u32,
    /// Position + 1 of the only member taking new flows, read before the table (an address
    /// whose new flows all go to one member has no table); 0 = use the table, if any.
    pub single: u32,
    /// Maglev table size to build the address's next table with; 0 = the default. Only user
    /// space reads it.
    pub maglev_size: u32,
    /// Positions taking new flows (bit `p` for position `p`): `single`'s or the table's.
    pub eligible: u64,
    /// Positions in hot standby (a weight, but not the best preference): the fallback when no
    /// eligible member is left in service.
    pub standby: u64,
    pub members: [MemberRef; MAX_MEMBERS],
    /// Only user space reads it: what the members removed from this set had forwarded (their
    /// `MEMBER_STATS`, read when each was taken out of service, just before the set without
    /// it was written). The address's forward totals are the live members' counters plus
    /// this, so they never go backwards when a member goes; it flips with the set, so a
    /// reader of one set sees each member counted once.
    pub gone: MemberStats,
}

/// The bit of member position `position` in `MemberSet::eligible`, `standby` and
/// `SlotState::down`.
#[inline(always)]
pub const fn position_bit(position: u32) -> u64 {
    1u64 << (position & 63)
}

/// One address slot's entry of `SLOT_STATE`, written in place by user space (mmap): one
/// 64-byte cache line (the array is mmapable, so its elements start page-aligned) with what
/// member choice reads of the address besides its bucket: the down bits and the live set's
/// head. A `MemberSet` is 560 bytes, so reading its head there would cost a line, and over
/// many addresses a page, of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    /// Member positions out of service ([`position_bit`]): the dataplane sends them nothing
    /// and gives their flows to the fallback. Written with one atomic store.
    pub down: u64,
    /// User space only: when the address's version last flipped (`CLOCK_MONOTONIC`, ns), 0
    /// once a grace period is known to have passed since. Until then the spare set and table
    /// may still have readers and must not be rewritten.
    pub retired_at: u64,
    /// [`SetHead::of`] the member set of each version: written with that set, before the flip
    /// that makes it live, so the live head always matches the live set.
    pub heads: [SetHead; 2],
    pub _reserved: [u64; 2],
}

/// What member choice reads of a member set for every datagram, copied into the slot's
/// [`SlotState`]: [`MemberSet::single`], [`MemberSet::table_size`] and the single member.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetHead {
    pub single: u32,
    pub table_size: u32,
    /// `members[single - 1]` when `single != 0` (read only then), else zero.
    pub single_member: MemberRef,
}

impl SetHead {
    pub fn of(set: &MemberSet) -> Self {
        let single_member = match set.single {
            // Never read (no position is -1); zero, as in a slot never written.
            0 => MemberRef::default(),
            s => set
                .members
                .get(s as usize - 1)
                .copied()
                .unwrap_or(MemberRef {
                    host: NO_HOST,
                    counter: 0,
                }),
        };
        Self {
            single: set.single,
            table_size: set.table_size,
            single_member,
        }
    }

    /// The head as the two native-endian words it occupies in [`SlotState::heads`].
    pub fn words(&self) -> [u64; 2] {
        let pair = |a: u32, b: u32| {
            let mut word = [0u8; 8];
            word[..4].copy_from_slice(&a.to_ne_bytes());
            word[4..].copy_from_slice(&b.to_ne_bytes());
            u64::from_ne_bytes(word)
        };
        [
            pair(self.single, self.table_size),
            pair(self.single_member.host, self.single_member.counter),
        ]
    }

    /// The head stored as `words` (the inverse of [`SetHead::words`]).
    pub fn from_words(words: [u64; 2]) -> Self {
        let halves = |w: u64| {
            let [a0, a1, a2, a3, b0, b1, b2, b3] = w.to_ne_bytes();
            (
                u32::from_ne_bytes([a0, a1, a2, a3]),
                u32::from_ne_bytes([b0, b1, b2, b3]),
            )
        };
        let (single, table_size) = halves(words[0]);
        let (host, counter) = halves(words[1]);
        Self {
            single,
            table_size,
            single_member: MemberRef { host, counter },
        }
    }
}

impl Default for MemberSet {
    fn default() -> Self {
        Self {
            n_members: 0,
            table_size: 0,
            single: 0,
            maglev_size: 0,
            eligible: 0,
            standby: 0,
            members: [MemberRef {
                host: NO_HOST,
                counter: 0,
            }; MAX_MEMBERS],
            gone: MemberStats::default(),
        }
    }
}

impl MemberSet {
    /// The positions in use, holes included.
    pub fn positions(&self) -> &[MemberRef] {
        let n = if (self.n_members as usize) < MAX_MEMBERS {
            self.n_members as usize
        } else {
            MAX_MEMBERS
        };
        &self.members[..n]
    }

    /// The members (holes skipped).
    pub fn members(&self) -> impl Iterator<Item = &MemberRef> {
        self.positions().iter().filter(|m| m.host != NO_HOST)
    }
}

/// One way of a connection-table set: a flow and the member it is on, in 16 bytes so that a
/// whole set is one cache line.
///
/// The flow is keyed by its client, its ports, its protocol and the anycast address's slot
/// (which stands for the destination: a slot is one address of one family), which is exact for
/// IPv4. An IPv6 client is keyed by its [`crate::compress6`]: two IPv6 clients of one address
/// whose folds and ports agree share an entry, which costs at most a flow's affinity, never a
/// wrong or dead destination (the member is checked against the live set before use).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// The client's address (IPv4), or its `compress6` (IPv6).
    pub src: u32,
    /// TCP/UDP ports as on the wire (0 for other protocols and later fragments).
    pub ports: u32,
    /// [`flow_key`] of the address slot and IP protocol; [`FLOW_UNUSED`] for a forgotten way
    /// (a never-used way is all zeros, which no flow matches: no IPv4 source is 0.0.0.0 and no
    /// IPv6 upper-layer protocol is 0, and its member is checked anyway).
    pub key: u32,
    /// [`flow_member`] of the member's counter index and position in its member set.
    pub member: u32,
}

/// `FlowEntry::key` of a forgotten way (no slot is that large).
pub const FLOW_UNUSED: u32 = u32::MAX;

/// `FlowEntry::key`: the address slot (below [`MAX_ADDRS`], so under 2^24) and IP protocol.
#[inline(always)]
pub const fn flow_key(slot: u32, proto: u8) -> u32 {
    slot << 8 | proto as u32
}

/// `FlowEntry::member`: a member's `MemberRef::counter` (unique among live memberships, below
/// [`MAX_MEMBER_COUNTERS`]) and its position (below [`MAX_MEMBERS`]).
#[inline(always)]
pub const fn flow_member(counter: u32, position: u32) -> u32 {
    counter << 8 | position
}

/// The position of a [`flow_member`].
#[inline(always)]
pub const fn flow_member_position(member: u32) -> u32 {
    member & 0xff
}

/// The counter index of a [`flow_member`].
#[inline(always)]
pub const fn flow_member_counter(member: u32) -> u32 {
    member >> 8
}

/// A set of the connection table: [`FLOW_WAYS`] ways in recency order (way 0 the most recent),
/// one array element and one 64-byte cache line (the array is mmapable, so its elements start
/// page-aligned).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet {
    pub ways: [FlowEntry; FLOW_WAYS as usize],
}

/// `Host::flags`: the MAC is known and may be used.
pub const HOST_MAC_KNOWN: u32 = 1 << 0;
/// `Host::flags`: the MAC was given by the operator; nothing else replaces it.
pub const HOST_MAC_STATIC: u32 = 1 << 1;
/// `Host::flags`: the MAC came in the member's signed advertisement; only the operator or
/// another signed advertisement replaces it. (Without either flag the MAC follows the kernel's
/// neighbour table.)
pub const HOST_MAC_SIGNED: u32 = 1 << 2;

/// A member host, on-link on an attached interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// The host's unicast address ([`crate::any_key`]; not read by the dataplane).
    pub ip: crate::Ip6Key,
    /// Egress interface.
    pub ifindex: u32,
    /// The host's MAC (Ethernet destination).
    pub mac: [u8; 6],
    /// The egress interface's MAC (Ethernet source).
    pub smac: [u8; 6],
    /// `HOST_*` flags.
    pub flags: u32,
}

impl Host {
    pub const fn mac_known(&self) -> bool {
        self.flags & HOST_MAC_KNOWN != 0
    }
}

/// `Iface::mode` values.
pub const MODE_NATIVE: u32 = 1;
pub const MODE_SKB: u32 = 2;

/// An interface the dataplane is attached to: one slot of `IFACES`. `ifindex == 0` marks an
/// empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    pub ifindex: u32,
    /// The interface's MAC: the only unicast Ethernet destination the dataplane forwards or
    /// answers, and the source of its ARP replies.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// `MODE_*`.
    pub mode: u32,
}

/// Home slot of an interface in `IFACES`. Interface indexes are small and dense, so below
/// [`IFACE_SLOTS`] they never collide.
#[inline(always)]
pub const fn iface_home(ifindex: u32) -> u32 {
    ifindex & (IFACE_SLOTS - 1)
}

/// The slot probed after `slot` in `IFACES` (linear probing, wrapping around).
#[inline(always)]
pub const fn next_iface_slot(slot: u32) -> u32 {
    (slot + 1) & (IFACE_SLOTS - 1)
}

/// Where a key is, or would go, in an open-addressed array (`ADDRS`, `ADDRS6`, `IFACES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe<T> {
    /// The key is in slot `index`.
    Found { index: u32, entry: T },
    /// The key is absent; `index` is the first free slot of its probe run.
    Free { index: u32 },
    /// The key is absent and its probe run has no free slot (or it is the empty marker).
    Full,
}

impl<T> Probe<T> {
    /// Whether the key is there.
    pub fn is_found(&self) -> bool {
        matches!(self, Probe::Found { .. })
    }
}

/// Where an interface is, or would go, in `IFACES`.
pub type IfaceSlot<T> = Probe<T>;

/// Probes `IFACES` for `ifindex`, reading slots with `read`: the one probe loop of the
/// dataplane and of user space. It stops at the interface; an empty slot does not end the run
/// (removal leaves holes).
#[inline(always)]
pub fn iface_probe<T: core::borrow::Borrow<Iface>, E>(
    ifindex: u32,
    mut read: impl FnMut(u32) -> Result<T, E>,
) -> Result<IfaceSlot<T>, E> {
    if ifindex == 0 {
        return Ok(IfaceSlot::Full);
    }
    let mut free = None;
    let mut index = iface_home(ifindex);
    for _ in 0..IFACE_PROBES {
        let entry = read(index)?;
        let owner = entry.borrow().ifindex;
        if owner == ifindex {
            return Ok(IfaceSlot::Found { index, entry });
        }
        if owner == 0 && free.is_none() {
            free = Some(index);
        }
        index = next_iface_slot(index);
    }
    Ok(match free {
        Some(index) => IfaceSlot::Free { index },
        None => IfaceSlot::Full,
    })
}

/// Per-address counters (per CPU; user space sums them): what the forward path does not count
/// per member. A datagram forwarded to a member is counted once, in the member's
/// [`MemberStats`] only, so the forward path touches one counter line, not two; the address's
/// forwarded and received totals are derived by user space:
/// forwarded = `multicast_*` + the members' counters + [`MemberSet::gone`], and
/// received = forwarded + the passed (`passed` summed, `passed_bytes`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrStats {
    /// Bytes of the datagrams passed to the kernel (their number is `passed` summed).
    pub passed_bytes: u64,
    /// Datagrams forwarded in multicast mode (to a LAN's group, or relayed to the router that
    /// puts them on it): not counted per member.
    pub multicast_packets: u64,
    pub multicast_bytes: u64,
    /// ARP replies (IPv4 address) or neighbour advertisements (IPv6 address) sent.
    pub arp_replies: u64,
    /// Indexed by [`PassReason::index`].
    pub passed: [u64; PassReason::COUNT],
}

impl core::ops::AddAssign for AddrStats {
    fn add_assign(&mut self, v: Self) {
        self.passed_bytes += v.passed_bytes;
        self.multicast_packets += v.multicast_packets;
        self.multicast_bytes += v.multicast_bytes;
        self.arp_replies += v.arp_replies;
        for (a, b) in self.passed.iter_mut().zip(v.passed) {
            *a += b;
        }
    }
}

/// Per-member counters (per CPU; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::AddAssign for MemberStats {
    fn add_assign(&mut self, v: Self) {
        self.packets += v.packets;
        self.bytes += v.bytes;
    }
}

/// Key of the fragment table: what identifies one IPv4 datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of the IPv6 fragment table: what identifies one IPv6 datagram (RFC 8200 4.5).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey6 {
    pub src: crate::Ip6Key,
    pub dst: crate::Ip6Key,
    /// The fragment header's identification, as on the wire.
    pub id: u32,
}

/// Key of `MEMBER_INFO`: one membership. Both addresses are [`crate::any_key`]s of one family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    pub anycast: crate::Ip6Key,
    pub member: crate::Ip6Key,
}

/// `MemberInfo::source`: added by an operator (`member add`); never expires.
pub const SOURCE_STATIC: u32 = 0;
/// `MemberInfo::source`: learned from advertisements; expires after `hold_ms`.
pub const SOURCE_LEARNED: u32 = 1;

/// Where a membership came from and how long it lasts. Read and written by user space only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberInfo {
    /// `SOURCE_*`.
    pub source: u32,
    /// Hold time of a learned member, in ms.
    pub hold_ms: u32,
    /// Wall-clock time of the last add or refresh, in ms since the Unix epoch.
    pub updated_ms: u64,
    /// Lower is better.
    pub preference: u16,
    /// Share of new flows; 0 = drain.
    pub weight: u16,
    pub _pad: u32,
}

/// Clients of direct-mode addresses remembered (`REQUESTERS`; the least recently answered go
/// first).
pub const MAX_REQUESTERS: u32 = 65_536;
/// Entries of `DIRECT_REPLIES` and `REPOINTS` each (addresses and members in direct mode).
pub const MAX_DIRECT_STATS: u32 = 65_536;

/// Value of `MCAST_LANS`: the router that forwards multicast-mode datagrams onto a member LAN
/// in this router's stead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct McastLan {
    /// Its MAC on that LAN: this router relays the datagrams there, unicast.
    pub relay_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Key of `REQUESTERS`: one client of one direct-mode address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequesterKey {
    /// The address's slot.
    pub slot: u32,
    /// The client's IPv4 address ([`crate::ip_key`]).
    pub ip: u32,
}

/// Value of `REQUESTERS`: the member a client was given, and where to reach the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    pub member: MemberRef,
    /// The member's position in the set it was chosen from.
    pub position: u32,
    /// The interface the client's request came in on (the member's too).
    pub ifindex: u32,
    /// The client's MAC (the request's sender hardware address).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

const _: () = {
    assert!(core::mem::size_of::<RequesterKey>() == 8);
    assert!(core::mem::size_of::<McastLan>() == 8);
    assert!(core::mem::size_of::<Requester>() == 24);
    assert!(core::mem::size_of::<MemberRef>() == 8);
    assert!(core::mem::size_of::<AddrBucket>() == 16);
    assert!(core::mem::size_of::<MemberSet>() == 32 + 8 * MAX_MEMBERS + 16);
    assert!(MAX_MEMBERS <= 64);
    assert!(core::mem::size_of::<SlotState>() == 64);
    assert!(core::mem::size_of::<SetHead>() == 16);
    assert!(core::mem::size_of::<AddrBucket6>() == 32);
    assert!(ADDR6_BUCKETS.is_power_of_two());
    assert!(core::mem::size_of::<FragKey6>() == 36);
    assert!(ADDR_BUCKETS.is_power_of_two());
    assert!(core::mem::size_of::<Host>() == 36);
    assert!(core::mem::size_of::<Iface>() == 16);
    assert!(IFACE_SLOTS.is_power_of_two());
    assert!(core::mem::size_of::<AddrStats>() == 8 * (4 + PassReason::COUNT));
    assert!(core::mem::size_of::<MemberStats>() == 16);
    assert!(core::mem::size_of::<FragKey>() == 12);
    assert!(core::mem::size_of::<MemberKey>() == 32);
    assert!(core::mem::size_of::<FlowEntry>() == 16);
    assert!(core::mem::size_of::<FlowSet>() == 64);
    assert!(MAX_ADDRS < 1 << 24 && MAX_MEMBER_COUNTERS < 1 << 24);
    assert!(MAX_MEMBERS <= u8::MAX as usize);
    assert!(core::mem::size_of::<MemberInfo>() == 24);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, made of integers and byte arrays only, and have
    // no padding bytes (sizes asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for MemberRef {}
    unsafe impl aya::Pod for AddrBucket {}
    unsafe impl aya::Pod for AddrBucket6 {}
    unsafe impl aya::Pod for FragKey6 {}
    unsafe impl aya::Pod for MemberSet {}
    unsafe impl aya::Pod for Host {}
    unsafe impl aya::Pod for Iface {}
    unsafe impl aya::Pod for AddrStats {}
    unsafe impl aya::Pod for MemberStats {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for MemberKey {}
    unsafe impl aya::Pod for FlowEntry {}
    unsafe impl aya::Pod for FlowSet {}
    unsafe impl aya::Pod for MemberInfo {}
    unsafe impl aya::Pod for SlotState {}
    unsafe impl aya::Pod for RequesterKey {}
    unsafe impl aya::Pod for McastLan {}
    unsafe impl aya::Pod for Requester {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_never_exceeds_capacity() {
        let mut e = MemberSet::default();
        assert_eq!(e.members().count(), 0);
        e.members[0] = MemberRef {
            host: 1,
            counter: 1,
        };
        e.members[2] = MemberRef {
            host: 2,
            counter: 2,
        };
        e.n_members = 3;
        assert_eq!(e.positions().len(), 3);
        assert_eq!(e.members().count(), 2);
        e.n_members = u32::MAX;
        assert_eq!(e.positions().len(), MAX_MEMBERS);
    }

    /// Linear probing with the real bucket function: 65,536 addresses, in a dense block and
    /// spread out, all land within ADDR_PROBES of home.
    #[test]
    fn full_index_keeps_probe_runs_short() {
        for (base, stride) in [
            (0xc612_0000u32, 1u32),
            (0x0a00_0001, 7919),
            (0xcb00_7100, 65_537),
        ] {
            let mut used = [false; ADDR_BUCKETS as usize];
            let mut worst = 0;
            for i in 0..MAX_ADDRS_PER_FAMILY {
                let ip = crate::ip_key(base.wrapping_add(i.wrapping_mul(stride)).to_be_bytes());
                let mut b = AddrBucket::home(&ip);
                let mut probes = 0;
                while used[b as usize] {
                    b = (b + 1) & (ADDR_BUCKETS - 1);
                    probes += 1;
                }
                used[b as usize] = true;
                worst = worst.max(probes);
            }
            assert!(
                worst < ADDR_PROBES,
                "probe run of {worst} for base {base:#x}"
            );
        }
    }

    /// The same for IPv6: 65,536 addresses in one /112, spread over /64s, in the last bits of
    /// many /48s, and one `::53` in each of 65,536 /48s, all within ADDR_PROBES of home.
    #[test]
    fn full_ipv6_index_keeps_probe_runs_short() {
        let shapes: [fn(u32) -> [u8; 16]; 4] = [
            |i| (0x2001_0db8_0053_u128 << 80 | i as u128).to_be_bytes(),
            |i| (0x2001_u128 << 112 | (i as u128) << 80 | 0x53).to_be_bytes(),
            |i| (0x2001_0db8_u128 << 96 | (i as u128) << 64 | 0x53).to_be_bytes(),
            |i| {
                (0x2001_0db8_u128 << 96 | (i as u128 & 0xff) << 80 | (i as u128 >> 8)).to_be_bytes()
            },
        ];
        for shape in shapes {
            let mut used = [false; ADDR6_BUCKETS as usize];
            let mut worst = 0;
            for i in 0..MAX_ADDRS_PER_FAMILY {
                let mut b = AddrBucket6::home(&crate::ip6_key(shape(i)));
                let mut probes = 0;
                while used[b as usize] {
                    b = (b + 1) & (ADDR6_BUCKETS - 1);
                    probes += 1;
                }
                used[b as usize] = true;
                worst = worst.max(probes);
            }
            assert!(worst < ADDR_PROBES, "probe run of {worst}");
        }
    }

    /// The probe finds what it placed, and stops at the first empty bucket.
    #[test]
    fn addr_probe_places_and_finds_ipv6() {
        let mut buckets = std::vec![AddrBucket6::default(); ADDR6_BUCKETS as usize];
        let keys: std::vec::Vec<_> = (1..50u128)
            .map(|i| crate::ip6_key((0x2001_0db8_u128 << 96 | i).to_be_bytes()))
            .collect();
        for (slot, key) in keys.iter().enumerate() {
            let read = |i: u32| Ok::<_, ()>(buckets[i as usize]);
            let Ok(Probe::Free { index }) = addr_probe::<AddrBucket6, _, _>(key, read) else {
                panic!("no bucket");
            };
            buckets[index as usize] = AddrBucket6::new(*key, slot as u32, 0);
        }
        for (slot, key) in keys.iter().enumerate() {
            let read = |i: u32| Ok::<_, ()>(buckets[i as usize]);
            match addr_probe::<AddrBucket6, _, _>(key, read) {
                Ok(Probe::Found { entry, .. }) => assert_eq!(entry.slot, slot as u32),
                other => panic!("{other:?}"),
            }
        }
        let read = |i: u32| Ok::<_, ()>(buckets[i as usize]);
        assert_eq!(
            addr_probe::<AddrBucket6, _, _>(&[0; 4], read),
            Ok(Probe::Full)
        );
    }

    /// Inserting through the probe, removing and probing again, on a plain array.
    #[test]
    fn iface_probe_finds_entries_across_holes() {
        let mut slots = [Iface::default(); IFACE_SLOTS as usize];
        let read = |s: &[Iface; IFACE_SLOTS as usize], i: u32| Ok::<_, ()>(s[i as usize]);
        // Three interfaces with the same home slot, then the middle one removed.
        let colliding = [7, 7 + IFACE_SLOTS, 7 + 2 * IFACE_SLOTS];
        for ifindex in colliding {
            let Ok(IfaceSlot::Free { index }) = iface_probe(ifindex, |i| read(&slots, i)) else {
                panic!("no slot for {ifindex}");
            };
            slots[index as usize].ifindex = ifindex;
        }
        slots[8].ifindex = 0;
        let found =
            |slots: &[Iface; IFACE_SLOTS as usize], ifindex| match iface_probe(ifindex, |i| {
                read(slots, i)
            }) {
                Ok(IfaceSlot::Found { index, .. }) => Some(index),
                _ => None,
            };
        assert_eq!(found(&slots, colliding[0]), Some(7));
        assert_eq!(found(&slots, colliding[1]), None);
        assert_eq!(found(&slots, colliding[2]), Some(9));
        assert_eq!(
            iface_probe(colliding[1], |i| read(&slots, i)),
            Ok(IfaceSlot::Free { index: 8 })
        );
        assert_eq!(iface_probe(0, |i| read(&slots, i)), Ok(IfaceSlot::Full));
        for i in 0..IFACE_PROBES {
            slots[iface_home(100 + i) as usize].ifindex = 1;
        }
        assert_eq!(iface_probe(100, |i| read(&slots, i)), Ok(IfaceSlot::Full));
    }

    #[test]
    fn table_words_round_trip() {
        let positions: [u8; 21] = core::array::from_fn(|i| (i * 3) as u8);
        let size = positions.len() as u32;
        let mut words = [0u64; 3];
        assert_eq!(table_words(size), 3);
        for (w, chunk) in positions
            .chunks(TABLE_ENTRIES_PER_WORD as usize)
            .enumerate()
        {
            words[w] = pack_positions(chunk);
        }
        for index in 0..size {
            let (word, shift) = table_word_of(index);
            assert_eq!(
                table_position(words[word as usize], shift),
                positions[index as usize] as u32
            );
        }
        // The unused slots of the last word are position 0.
        assert_eq!(table_position(words[2], table_word_of(23).1), 0);
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        for n in names::ALL.iter().chain(programs::ALL.iter()) {
            assert!(n.len() < 16, "{n} is too long for BPF_OBJ_NAME_LEN");
        }
    }

    #[test]
    fn set_head_names_the_single_member_and_round_trips_through_its_words() {
        let mut set = MemberSet::default();
        assert_eq!(SetHead::of(&set), SetHead::default());
        set.members[0] = MemberRef {
            host: 7,
            counter: 70,
        };
        set.members[5] = MemberRef {
            host: 9,
            counter: 0x000f_ffff,
        };
        set.single = 6;
        set.table_size = 0;
        let head = SetHead::of(&set);
        assert_eq!((head.single, head.table_size), (6, 0));
        assert_eq!(head.single_member, set.members[5]);
        set.single = 0;
        set.table_size = DEFAULT_TABLE_SIZE;
        let head = SetHead::of(&set);
        assert_eq!(head.table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(head.single_member, MemberRef::default());
        // A single beyond the positions names no member.
        set.single = MAX_MEMBERS as u32 + 1;
        assert_eq!(SetHead::of(&set).single_member.host, NO_HOST);

        let head = SetHead {
            single: 64,
            table_size: MAX_TABLE_SIZE,
            single_member: MemberRef {
                host: NO_HOST - 1,
                counter: 0x0102_0304,
            },
        };
        assert_eq!(SetHead::from_words(head.words()), head);
        // The words are the struct's own bytes, as the dataplane reads them.
        let words = head.words();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&words[0].to_ne_bytes());
        bytes[8..].copy_from_slice(&words[1].to_ne_bytes());
        let mut fields = [0u8; 16];
        fields[..4].copy_from_slice(&head.single.to_ne_bytes());
        fields[4..8].copy_from_slice(&head.table_size.to_ne_bytes());
        fields[8..12].copy_from_slice(&head.single_member.host.to_ne_bytes());
        fields[12..].copy_from_slice(&head.single_member.counter.to_ne_bytes());
        assert_eq!(bytes, fields);
        assert_eq!(core::mem::offset_of!(SlotState, heads) % 8, 0);
    }
}
