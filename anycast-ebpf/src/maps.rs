//! Every map of the dataplane, in one place. Names, layouts and capacities come from
//! `anycast_common::maps`; all maps are pinned by name under the pin directory user space
//! chooses, so they outlive any process and are shared by every attached interface.
use anycast_common::{
    ADDR_BUCKETS, ADDR6_BUCKETS, AGENT_COUNTERS, ALLOC_KINDS, AddrBucket, AddrBucket6, AddrEntry,
    AddrStats, EXPORT_FIELDS, FLOW_SETS, FlowSet, FragKey, FragKey6, Host, IFACE_SLOTS, Iface,
    Ip6Key, MAX_ADDRS, MAX_DIRECT_STATS, MAX_FRAGS, MAX_HOSTS, MAX_IFACES, MAX_MEMBER_COUNTERS,
    MAX_REQUESTERS, McastLan, MemberInfo, MemberKey, MemberRef, MemberSet, MemberStats, Probe,
    Requester, RequesterKey, SetHead, SlotState, Stat, TABLE_SLOTS, addr_probe, iface_probe,
    member_set_index,
};
use aya_ebpf::{
    Global,
    bindings::{BPF_F_INNER_MAP, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    btf_maps::{Array as BtfArray, ArrayOfMaps},
    macros::{btf_map, map},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, Stack},
};

/// IPv4 anycast address -> slot and live member set: an open-addressed array (see
/// `anycast_common::maps` for the probing and update rules).
#[map]
pub static ADDRS: Array<AddrBucket> = Array::pinned(ADDR_BUCKETS, 0);

/// IPv6 anycast address -> slot and live member set, like `ADDRS`.
#[map]
pub static ADDRS6: Array<AddrBucket6> = Array::pinned(ADDR6_BUCKETS, 0);

/// Two member sets per address slot; `AddrBucket::version` picks the live one.
#[map]
pub static MEMBER_SETS: Array<MemberSet> = Array::pinned(2 * MAX_ADDRS, 0);

/// Anycast address (either family, `any_key`) -> slot, for user space to enumerate addresses
/// (never read here).
#[map]
pub static ADDR_KEYS: HashMap<Ip6Key, u32> = HashMap::pinned(MAX_ADDRS, 0);

/// Member host index -> where and how to send to it. Written by user space only.
#[map]
pub static HOSTS: Array<Host> = Array::pinned(MAX_HOSTS, 0);

/// Attached ifindex -> its MAC and attach mode: an open-addressed array (see
/// `anycast_common::iface_probe`; a hash lookup would cost as much as the forward path).
#[map]
pub static IFACES: Array<Iface> = Array::pinned(IFACE_SLOTS, 0);

/// Egress ports for XDP_REDIRECT, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_IFACES, 0);

/// Per-address counters, indexed by `AddrBucket::slot`.
#[map]
pub static ADDR_STATS: PerCpuArray<AddrStats> = PerCpuArray::pinned(MAX_ADDRS, 0);

/// Per-member counters, indexed by `MemberRef::counter`.
#[map]
pub static MEMBER_STATS: PerCpuArray<MemberStats> = PerCpuArray::pinned(MAX_MEMBER_COUNTERS, 0);

/// Global counters, indexed by `Stat::index`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(Stat::COUNT as u32, 0);

/// First fragment of an IPv4 datagram -> the member it was sent to.
#[map]
pub static FRAGS: LruHashMap<FragKey, MemberRef> = LruHashMap::pinned(MAX_FRAGS, 0);

/// First fragment of an IPv6 datagram -> the member it was sent to.
#[map]
pub static FRAGS6: LruHashMap<FragKey6, MemberRef> = LruHashMap::pinned(MAX_FRAGS, 0);

/// A Maglev table: member positions packed 8 per word. Each member set has its own, created by
/// user space with `ceil(M / 8)` words (BPF_F_INNER_MAP lets the sizes differ) and written in
/// place through mmap while its set is the spare (see `anycast_common::maps`).
pub type Table = BtfArray<u64, 1, { (BPF_F_INNER_MAP | BPF_F_MMAPABLE) as usize }>;

/// Member set index (`member_set_index`) -> its Maglev table: the live set's table is the live
/// one. Pinned by user space (BTF maps carry no pinning).
#[btf_map]
pub static TABLES: ArrayOfMaps<Table, { TABLE_SLOTS as usize }> = ArrayOfMaps::new();

/// Address slot -> members out of service (`SlotState::down`, stored by user space through
/// mmap with one atomic write) and the heads of its two member sets (`SlotState::heads`,
/// written with the spare set before its flip).
#[map]
pub static SLOT_STATE: Array<SlotState> = Array::pinned(MAX_ADDRS, BPF_F_MMAPABLE);

/// The connection table: flows and their members, a 4-way set per element, LRU within a set.
/// Shared by all CPUs, so a flow keeps its member whichever CPU sees its packets. Mmapable only
/// so that its elements start page-aligned (each set is then one cache line); user space never
/// maps it. User space may size it at load time (`FLOW_SETS_MASK` follows).
#[map]
pub static FLOWS: Array<FlowSet> = Array::pinned(FLOW_SETS, BPF_F_MMAPABLE);

/// Sets of `FLOWS` minus one (a power of two minus one), set by the loader.
#[unsafe(no_mangle)]
pub static FLOW_SETS_MASK: Global<u32> = Global::new(FLOW_SETS - 1);

/// Clients of direct-mode addresses -> the member each was given (`direct`); user space reads
/// it to repoint the clients of a member that goes.
#[map]
pub static REQUESTERS: LruHashMap<RequesterKey, Requester> = LruHashMap::pinned(MAX_REQUESTERS, 0);

/// `anycast_common::direct::stat_key` -> ARP replies given in direct mode (per CPU).
#[map]
pub static DIRECT_REPLIES: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::pinned(MAX_DIRECT_STATS, BPF_F_NO_PREALLOC);

/// Member LAN ifindex -> the router to relay multicast-mode datagrams to (`multicast`);
/// written by the agent's router election, absent when this router forwards onto the LAN.
#[map]
pub static MCAST_LANS: HashMap<u32, McastLan> = HashMap::pinned(MAX_IFACES, 0);

// User-space-only maps: declared here so that every map of the dataplane is created, pinned
// and removed together; the program never reads them.

/// Member host address (either family, `any_key`) -> index into HOSTS: user space's directory
/// of member hosts.
#[map]
pub static HOST_IDS: HashMap<Ip6Key, u32> = HashMap::pinned(MAX_HOSTS, 0);

/// Membership -> its source, hold time, preference and weight.
#[map]
pub static MEMBER_INFO: HashMap<MemberKey, MemberInfo> =
    HashMap::pinned(MAX_MEMBER_COUNTERS, BPF_F_NO_PREALLOC);

/// Advertisement sender -> last accepted sequence number.
#[map]
pub static SENDER_SEQ: HashMap<Ip6Key, u64> = HashMap::pinned(MAX_HOSTS, BPF_F_NO_PREALLOC);

/// The agent's counters, indexed by `AgentCounter::index`.
#[map]
pub static AGENT_STATS: Array<u64> = Array::pinned(AGENT_COUNTERS, 0);

/// The layout version of the pinned maps (`anycast_common::LAYOUT_VERSION`), written by the
/// loader that created them.
#[map]
pub static LAYOUT: Array<u32> = Array::pinned(1, 0);

/// Allocator marks, indexed by `ALLOC_*`: the next never-used address slot, member counter and
/// host index.
#[map]
pub static ALLOC: Array<u32> = Array::pinned(ALLOC_KINDS, 0);

/// Freed member counter indexes, reused first.
#[map]
pub static FREE_COUNTERS: Stack<u32> = Stack::pinned(MAX_MEMBER_COUNTERS, 0);

/// Freed host indexes, reused first.
#[map]
pub static FREE_HOSTS: Stack<u32> = Stack::pinned(MAX_HOSTS, 0);

/// Host index -> memberships that refer to it; the host is dropped when it reaches 0.
#[map]
pub static HOST_REFS: Array<u32> = Array::pinned(MAX_HOSTS, 0);

/// Member counter index -> the member's slots in its address's Maglev table (for `show`).
#[map]
pub static MEMBER_SLOTS: Array<u32> = Array::pinned(MAX_MEMBER_COUNTERS, 0);

/// `anycast_common::direct::stat_key` -> clients repointed (user space's counter).
#[map]
pub static REPOINTS: HashMap<u32, u64> = HashMap::pinned(MAX_DIRECT_STATS, BPF_F_NO_PREALLOC);

/// Route export settings (on, table, protocol), indexed by `EXPORT_*`: pinned so that every
/// writer (CLI, agent) exports alike.
#[map]
pub static EXPORT: Array<u32> = Array::pinned(EXPORT_FIELDS, 0);

/// An anycast address: its counter slot, live member set (and so table) and the positions out
/// of service.
pub struct Addr<'a> {
    pub slot: u32,
    /// `member_set_index` of the live set, also the index of its table in `TABLES`.
    pub set_index: u32,
    /// The live set, read only for a member the table or the connection table names other
    /// than the single one, and by the fallback: `head` has what every datagram needs.
    pub set: &'a MemberSet,
    /// The live set's head, from the slot's `SlotState` line.
    pub head: SetHead,
    pub down: u64,
    /// `ADDR_MODE_*`.
    pub mode: u32,
    /// `ADDR_TRACK_TCP_ONLY` if only TCP connections go in the connection table, else 0.
    pub tcp_only: u32,
}

impl Addr<'_> {
    /// The member at `position`, if there is one and it is in service.
    #[inline(always)]
    pub fn serving(&self, position: u32) -> Option<MemberRef> {
        // One value for the bound check and the access: LLVM may otherwise check one copy of
        // `position` and index with another it recomputes, whose bound the verifier never saw.
        let position = core::hint::black_box(position);
        let member = *self.set.members.get(position as usize)?;
        self.in_service(position, member)
    }

    /// [`Addr::serving`], from the head if `position` is the single member's: for every
    /// datagram of a single-member address, the set is not read.
    #[inline(always)]
    pub fn serving_fast(&self, position: u32) -> Option<MemberRef> {
        if position + 1 == self.head.single {
            return self.in_service(position, self.head.single_member);
        }
        self.serving(position)
    }

    /// `member`, if it is a member (not a hole) and `position` is in service.
    #[inline(always)]
    pub fn in_service(&self, position: u32, member: MemberRef) -> Option<MemberRef> {
        (member.host != anycast_common::NO_HOST
            && self.down & anycast_common::position_bit(position) == 0)
            .then_some(member)
    }

    /// Whether `member` may be sent to at `position`: it is there and in service.
    #[inline(always)]
    pub fn serves(&self, position: u32, member: &MemberRef) -> bool {
        self.serving(position) == Some(*member)
    }
}

/// Looks up an IPv4 anycast address.
#[inline(always)]
pub fn addr<'a>(ip: u32) -> Option<Addr<'a>> {
    lookup(&ADDRS, &ip)
}

/// Looks up an IPv6 anycast address.
#[inline(always)]
pub fn addr6<'a>(ip: &Ip6Key) -> Option<Addr<'a>> {
    lookup(&ADDRS6, ip)
}

/// An address index lookup, for either family: the shared probe, then the live member set.
#[inline(always)]
fn lookup<'a, B: AddrEntry + 'a>(index: &'a Array<B>, key: &B::Key) -> Option<Addr<'a>> {
    let Ok(Probe::Found { entry, .. }) = addr_probe::<B, _, _>(key, |i| index.get(i).ok_or(()))
    else {
        return None;
    };
    // SAFETY: a plain aligned u32 read; user space flips it with one 32-bit store.
    let version = unsafe { core::ptr::read_volatile(entry.version()) };
    let set_index = member_set_index(entry.slot(), version);
    let set = MEMBER_SETS.get(set_index)?;
    let state = SLOT_STATE.get(entry.slot())?;
    // SAFETY: a plain aligned u64 read; user space stores it with one atomic write.
    let down = unsafe { core::ptr::read_volatile(&state.down) };
    // The live version's head is not written while it is live (it is the spare's until the
    // flip, and written only then).
    let head = state.heads[(version & 1) as usize];
    Some(Addr {
        slot: entry.slot(),
        set_index,
        set,
        head,
        down,
        mode: entry.mode(),
        tcp_only: entry.tcp_only(),
    })
}

/// Looks up an attached interface.
#[inline(always)]
pub fn iface<'a>(ifindex: u32) -> Option<&'a Iface> {
    match iface_probe(ifindex, |slot| IFACES.get(slot).ok_or(())) {
        Ok(Probe::Found { entry, .. }) => Some(entry),
        _ => None,
    }
}

#[inline(always)]
pub fn host<'a>(index: u32) -> Option<&'a Host> {
    HOSTS.get(index)
}
