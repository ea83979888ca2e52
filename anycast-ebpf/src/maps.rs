//! Every map of the dataplane, in one place. Names, layouts and capacities come from
//! `anycast_common::maps`; all maps are pinned by name under the pin directory user space
//! chooses, so they outlive any process and are shared by every attached interface.
use anycast_common::{
    AddrEntry, AddrStats, FragKey, Host, Iface, MAX_ADDRS, MAX_FRAGS, MAX_HOSTS, MAX_IFACES,
    MAX_MEMBER_COUNTERS, MemberRef, MemberStats, STAT_COUNT,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};

/// Anycast address -> its member set. Not preallocated: an update swaps in a new element and
/// the old one is freed after an RCU grace period, so readers see one whole version.
#[map]
pub static ADDRS: HashMap<u32, AddrEntry> = HashMap::pinned(MAX_ADDRS, BPF_F_NO_PREALLOC);

/// Member host index -> where and how to send to it.
#[map]
pub static HOSTS: Array<Host> = Array::pinned(MAX_HOSTS, 0);

/// Member host IPv4 -> index into HOSTS, to learn MACs from ARP.
#[map]
pub static HOST_IDS: HashMap<u32, u32> = HashMap::pinned(MAX_HOSTS, 0);

/// Attached ifindex -> its MAC and attach mode.
#[map]
pub static IFACES: HashMap<u32, Iface> = HashMap::pinned(MAX_IFACES, 0);

/// Egress ports for XDP_REDIRECT, keyed by ifindex.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_IFACES, 0);

/// Per-address counters, indexed by `AddrEntry::slot`.
#[map]
pub static ADDR_STATS: PerCpuArray<AddrStats> = PerCpuArray::pinned(MAX_ADDRS, 0);

/// Per-member counters, indexed by `MemberRef::counter`.
#[map]
pub static MEMBER_STATS: PerCpuArray<MemberStats> = PerCpuArray::pinned(MAX_MEMBER_COUNTERS, 0);

/// Global counters, indexed by `STAT_*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

/// First fragment of a datagram -> the member it was sent to.
#[map]
pub static FRAGS: LruHashMap<FragKey, MemberRef> = LruHashMap::pinned(MAX_FRAGS, 0);

/// The member set of an anycast address.
#[inline(always)]
pub fn addr<'a>(ip: u32) -> Option<&'a AddrEntry> {
    // SAFETY: ADDRS is not preallocated, so an element stays valid until an RCU grace period
    // after it is replaced or deleted, which outlasts this program run; it is never written in
    // place.
    ADDRS.get_ptr(ip).map(|p| unsafe { &*p })
}

#[inline(always)]
pub fn host<'a>(index: u32) -> Option<&'a Host> {
    HOSTS.get(index)
}
