//! The dataplane as user space sees it: the embedded eBPF object and its pinned maps.
//!
//! Invariants:
//! - Every map is pinned under the [`PinDir`]; [`load`] creates the pins on first use and reuses
//!   them afterwards, so every attached interface and every process shares one state.
//! - Pins are reused only when [`check_pins`] finds all of them, with this binary's
//!   `LAYOUT_VERSION` and the object's key and value sizes; anything else is refused before the
//!   object is loaded, so a half-deleted or foreign pin directory is never mixed with new maps.
//! - A writer holding [`Maps`] checks [`Maps::is_live`] under the writers' lock before writing:
//!   a detach and re-attach while it waited would otherwise leave it writing dead maps.
use std::net::IpAddr;

use anycast_common::{
    AddrBucket, AddrBucket6, AddrEntry, AddrStats, FLOW_SETS, FLOW_WAYS, Host, IFACE_PROBES, Iface,
    IfaceSlot, Ip6Key, MemberInfo, MemberKey, MemberSet, MemberStats, Probe, Requester,
    RequesterKey, SetHead, addr_probe, any_ip, any_key, iface_probe, ip_key, ip6_key,
    member_set_index, member_set_of, names, programs,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuHashMap,
        PerCpuValues, Stack, xdp::DevMapHash,
    },
    programs::Xdp,
};

use crate::{EBPF_OBJECT, Error, Result, pin::PinDir};

/// What a pin directory holds, as [`check_pins`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pins {
    /// No map of the dataplane: loading creates them all.
    Fresh,
    /// Every map, compatible with this binary; `flows` is the connection table's size.
    Complete { flows: u32 },
}

const RECOVER_INCOMPLETE: &str = "detach every interface with `anycast-ctl detach IFACE...` \
    (which removes the remaining pins), then attach again";
const RECOVER_INCOMPATIBLE: &str = "detach every interface with the anycast-ctl that attached \
    them (memberships, counters and the connection table are lost), then attach with this one";

/// Checks the pinned maps against the embedded object before anything is loaded.
pub fn check_pins(pin: &PinDir) -> Result<Pins> {
    let present: Vec<&'static str> = names::PINNED
        .into_iter()
        .filter(|n| pin.map(n).exists())
        .collect();
    let incomplete = |missing| Error::PinsIncomplete {
        path: pin.path().to_path_buf(),
        missing,
        recover: RECOVER_INCOMPLETE,
    };
    if present.is_empty() {
        // Links without maps: a program still runs on maps nobody can reach any more.
        if pin.link_count() > 0 {
            return Err(incomplete(names::ADDRS));
        }
        return Ok(Pins::Fresh);
    }
    if !present.contains(&names::LAYOUT) {
        return Err(incompatible(
            pin,
            "it has no layout version (an older anycast-ctl made it)".into(),
        ));
    }
    if let Some(missing) = names::PINNED.into_iter().find(|n| !present.contains(n)) {
        return Err(incomplete(missing));
    }
    let layout: Array<MapData, u32> = open(pin, names::LAYOUT)?;
    let version = layout
        .get(&0, 0)
        .map_err(|e| Error::map(names::LAYOUT, e))?;
    if version != layout_version() {
        return Err(incompatible(
            pin,
            format!(
                "layout version {version}, and this anycast-ctl uses {}",
                layout_version()
            ),
        ));
    }
    let flows = check_sizes(pin)?;
    Ok(Pins::Complete { flows })
}

/// The layout version this binary's object has: `anycast_common::LAYOUT_VERSION`.
///
/// Test-only knob: a debug build (what the tests run; never a release or the package) reads
/// `ANYCAST_TEST_LAYOUT_VERSION` and then acts as an `anycast-ctl` built with that version, so
/// the tests can prove that another layout is refused without building a second object.
pub fn layout_version() -> u32 {
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var("ANYCAST_TEST_LAYOUT_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    anycast_common::LAYOUT_VERSION
}

fn incompatible(pin: &PinDir, what: String) -> Error {
    Error::PinsIncompatible {
        path: pin.path().to_path_buf(),
        what,
        recover: RECOVER_INCOMPATIBLE,
    }
}

/// Compares each pinned map's key size, value size and capacity with the object's; returns
/// the connection table's size in flows (its capacity, in sets, is the one that may differ).
fn check_sizes(pin: &PinDir) -> Result<u32> {
    let object = aya_obj::Object::parse(EBPF_OBJECT)
        .map_err(|e| Error::Usage(format!("parsing the embedded eBPF object: {e}")))?;
    let mut flows = 0;
    for name in names::PINNED {
        let info = MapInfo::from_pin(pin.map(name)).map_err(|e| Error::map(name, e))?;
        let Some(def) = object.maps.get(name) else {
            continue;
        };
        // Flags are not compared: the kernel adds some of its own (devmaps, for one).
        let want = (def.key_size(), def.value_size(), def.max_entries());
        let mut have = (info.key_size(), info.value_size(), info.max_entries());
        if name == names::FLOWS {
            flows = have.2.saturating_mul(FLOW_WAYS);
            have.2 = want.2;
        }
        if have != want {
            return Err(incompatible(
                pin,
                format!(
                    "map {name} has key/value size {}/{} and {} entries, and this anycast-ctl \
                     wants {}/{} and {}",
                    have.0, have.1, have.2, want.0, want.1, want.2
                ),
            ));
        }
    }
    Ok(flows)
}

/// Loads the eBPF object with its maps pinned under `pin` (created if missing, reused if not;
/// see [`check_pins`]). `flows` sizes a new connection table (flows, a power of two); an
/// existing one keeps its size, and asking for another is an error.
pub fn load(pin: &PinDir, flows: Option<u32>) -> Result<Ebpf> {
    // TABLES is a BTF map-of-maps, which carries no pinning attribute: pin it by path.
    let tables = pin.map(names::TABLES);
    let pins = check_pins(pin)?;
    let flows = match (pins, flows) {
        (Pins::Complete { flows: have }, Some(want)) if want != have => {
            return Err(Error::Usage(format!(
                "the connection table already holds {have} flows; --flows {want} applies only \
                 when the dataplane is first loaded (detach every interface first)"
            )));
        }
        (Pins::Complete { flows }, _) => flows,
        (Pins::Fresh, flows) => flows.unwrap_or(FLOW_SETS * FLOW_WAYS),
    };
    check_flows(flows).map_err(Error::Usage)?;
    let mask = flows / FLOW_WAYS - 1;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin.path())
        .map_pin_path(names::TABLES, tables.as_path())
        .map_max_entries(names::FLOWS, flows / FLOW_WAYS)
        .override_global(anycast_common::FLOW_SETS_MASK, &mask, true)
        .load(EBPF_OBJECT)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Error::NotRoot
            }
            _ => Error::load(&e),
        })?;
    if pins == Pins::Fresh {
        let mut layout: Array<MapData, u32> = open(pin, names::LAYOUT)?;
        layout
            .set(0, layout_version(), 0)
            .map_err(|e| Error::map(names::LAYOUT, e))?;
    }
    Ok(ebpf)
}

/// The dataplane program of a [`load`]ed object, loaded into the kernel (so verified): the
/// one step that can fail before any interface is touched.
pub fn verified(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(programs::ANYCAST)
        .expect("the embedded object has the anycast program")
        .try_into()?;
    program.load()?;
    Ok(program)
}

/// Checks a connection table size: a power of two, at least 1,024 flows.
pub fn check_flows(flows: u32) -> std::result::Result<u32, String> {
    if flows < 1024 || !flows.is_power_of_two() {
        return Err(format!(
            "connection table size {flows} must be a power of two of at least 1024"
        ));
    }
    Ok(flows)
}

/// Typed handles on the pinned maps.
pub struct Maps {
    pub addrs: Array<MapData, AddrBucket>,
    pub addrs6: Array<MapData, AddrBucket6>,
    pub member_sets: Array<MapData, MemberSet>,
    /// Keyed by [`anycast_common::any_key`], as are `host_ids` and `member_info`.
    pub addr_keys: HashMap<MapData, Ip6Key, u32>,
    pub hosts: Array<MapData, Host>,
    pub host_ids: HashMap<MapData, Ip6Key, u32>,
    /// Probed with [`Maps::iface`], [`Maps::set_iface`] and [`Maps::remove_iface`].
    pub ifaces: Array<MapData, Iface>,
    pub tx_ports: DevMapHash<MapData>,
    pub addr_stats: PerCpuArray<MapData, AddrStats>,
    pub member_stats: PerCpuArray<MapData, MemberStats>,
    pub stats: PerCpuArray<MapData, u64>,
    pub member_info: HashMap<MapData, MemberKey, MemberInfo>,
    /// Keyed by [`anycast_common::any_key`]: senders of both families.
    pub sender_seq: HashMap<MapData, Ip6Key, u64>,
    pub agent_stats: Array<MapData, u64>,
    /// Inner maps as raw `MapData` (their descriptors are needed for mmap).
    pub tables: ArrayOfMaps<MapData, MapData>,
    pub alloc: Array<MapData, u32>,
    pub free_counters: Stack<MapData, u32>,
    pub free_hosts: Stack<MapData, u32>,
    pub host_refs: Array<MapData, u32>,
    pub member_slots: Array<MapData, u32>,
    pub export: Array<MapData, u32>,
    /// Direct mode: the clients given each member (an LRU written by the dataplane), its ARP
    /// replies and user space's repoints (see [`crate::repoint`]).
    pub requesters: HashMap<MapData, RequesterKey, Requester>,
    pub direct_replies: PerCpuHashMap<MapData, u32, u64>,
    pub repoints: HashMap<MapData, u32, u64>,
    /// Multicast mode: member LANs where another router forwards (the agent's election).
    pub mcast_lans: HashMap<MapData, u32, anycast_common::McastLan>,
    /// `SLOT_STATE`, mapped: members out of service, times of the last flips, set heads.
    pub slot_state: crate::mapped::SlotStates,
    /// A one-word table, made on first use, that [`Maps::grace_period`] stores at
    /// `GRACE_INDEX`.
    pub grace: Option<MapData>,
    /// Grace periods [`Maps::settle`] waited for through these handles (a rewrite that came
    /// within `journal::REUSE_AFTER` of a flip); the paths that must not wait are tested on it.
    pub waits: u64,
    /// The undo log of the open transaction, if any (see [`crate::journal`]).
    pub journal: Option<Vec<crate::journal::Undo>>,
    /// Device and inode of the `ADDRS` pin these handles were opened from.
    pinned: (u64, u64),
}

impl Maps {
    /// Opens the pinned maps; fails with [`Error::NotAttached`] if there are none.
    pub fn open(pin: &PinDir) -> Result<Self> {
        if !pin.has_maps() {
            return Err(Error::NotAttached {
                path: pin.path().to_path_buf(),
            });
        }
        let pinned = pin_id(pin).ok_or_else(|| Error::NotAttached {
            path: pin.path().to_path_buf(),
        })?;
        Ok(Self {
            pinned,
            addrs: open(pin, names::ADDRS)?,
            addrs6: open(pin, names::ADDRS6)?,
            member_sets: open(pin, names::MEMBER_SETS)?,
            addr_keys: open(pin, names::ADDR_KEYS)?,
            hosts: open(pin, names::HOSTS)?,
            host_ids: open(pin, names::HOST_IDS)?,
            ifaces: open(pin, names::IFACES)?,
            tx_ports: open(pin, names::TX_PORTS)?,
            addr_stats: open(pin, names::ADDR_STATS)?,
            member_stats: open(pin, names::MEMBER_STATS)?,
            stats: open(pin, names::STATS)?,
            member_info: open(pin, names::MEMBER_INFO)?,
            sender_seq: open(pin, names::SENDER_SEQ)?,
            agent_stats: open(pin, names::AGENT_STATS)?,
            tables: open(pin, names::TABLES)?,
            alloc: open(pin, names::ALLOC)?,
            free_counters: open(pin, names::FREE_COUNTERS)?,
            free_hosts: open(pin, names::FREE_HOSTS)?,
            host_refs: open(pin, names::HOST_REFS)?,
            member_slots: open(pin, names::MEMBER_SLOTS)?,
            export: open(pin, names::EXPORT)?,
            requesters: open(pin, names::REQUESTERS)?,
            direct_replies: open(pin, names::DIRECT_REPLIES)?,
            repoints: open(pin, names::REPOINTS)?,
            mcast_lans: open(pin, names::MCAST_LANS)?,
            slot_state: open_slot_state(pin)?,
            grace: None,
            waits: 0,
            journal: None,
        })
    }
}

impl Maps {
    /// Records the last accepted sequence number of an advertisement sender (the agent's
    /// replay guard, kept across restarts).
    pub fn record_sender_seq(&mut self, sender: IpAddr, seq: u64) -> Result<()> {
        self.sender_seq
            .insert(any_key(sender), seq, 0)
            .map_err(|e| Error::map(names::SENDER_SEQ, e))
    }

    /// A slot's address counters, summed over the CPUs.
    pub fn addr_stats(&self, slot: u32) -> Result<AddrStats> {
        let per_cpu =
            (self.addr_stats.get(&slot, 0)).map_err(|e| Error::map(names::ADDR_STATS, e))?;
        Ok(sum(&per_cpu))
    }

    /// A member counter's figures, summed over the CPUs.
    pub fn member_stats(&self, counter: u32) -> Result<MemberStats> {
        let per_cpu =
            (self.member_stats.get(&counter, 0)).map_err(|e| Error::map(names::MEMBER_STATS, e))?;
        Ok(sum(&per_cpu))
    }

    /// Publishes the agent's counters in `AGENT_STATS` for `status` to read.
    pub fn store_agent_counters(&mut self, counters: &[u64]) -> Result<()> {
        for (index, value) in counters.iter().enumerate() {
            self.agent_stats
                .set(index as u32, value, 0)
                .map_err(|e| Error::map(names::AGENT_STATS, e))?;
        }
        Ok(())
    }

    /// Whether these handles are still the maps pinned under `pin` (not replaced by a detach
    /// and re-attach, nor deleted). Call it under the writers' lock, before writing.
    pub fn is_live(&self, pin: &PinDir) -> bool {
        pin_id(pin) == Some(self.pinned)
    }

    /// Device and inode of the `ADDRS` pin these handles were opened from (compare with
    /// `DirLockGuard::pin_id`).
    pub fn pinned_id(&self) -> (u64, u64) {
        self.pinned
    }

    /// [`Maps::is_live`] as an error.
    pub fn ensure_live(&self, pin: &PinDir) -> Result<()> {
        if self.is_live(pin) {
            return Ok(());
        }
        Err(Error::StateReplaced {
            path: pin.path().to_path_buf(),
        })
    }
}

/// Identity of the pinned state: the `ADDRS` pin's device and inode (bpffs never reuses an
/// inode number while the filesystem is mounted).
fn pin_id(pin: &PinDir) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(pin.map(names::ADDRS)).ok()?;
    Some((m.dev(), m.ino()))
}

/// An anycast address's entry in its family's index (`ADDRS`, `ADDRS6`), family aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrSlot {
    /// Index into `ADDR_STATS` and `TABLES`; with `version`, into `MEMBER_SETS`.
    pub slot: u32,
    /// Which of the two member sets is live.
    pub version: u32,
}

impl AddrSlot {
    /// This entry with the other member set live.
    pub fn flipped(self) -> Self {
        Self {
            version: self.version ^ 1,
            ..self
        }
    }
}

/// Where an anycast address is, or would go, in its family's index.
pub type Bucket = Probe<AddrSlot>;

/// The number of buckets of the index of `ip`'s family (for errors).
pub fn buckets_of(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => AddrBucket::BUCKETS,
        IpAddr::V6(_) => AddrBucket6::BUCKETS,
    }
}

/// Probes one address index with the dataplane's probe; with the found bucket's mode word
/// (`ADDR_MODE_*` and `ADDR_TRACK_*`; 0 when not found).
fn probe<B: AddrEntry + aya::Pod>(
    index: &Array<MapData, B>,
    name: &'static str,
    key: &B::Key,
) -> Result<(Bucket, u32)> {
    let found = addr_probe::<B, B, _>(key, |i| index.get(&i, 0).map_err(|e| Error::map(name, e)))?;
    Ok(match found {
        Probe::Found { index, entry } => (
            Probe::Found {
                index,
                entry: AddrSlot {
                    slot: entry.slot(),
                    version: *entry.version(),
                },
            },
            entry.mode_word(),
        ),
        Probe::Free { index } => (Probe::Free { index }, 0),
        Probe::Full => (Probe::Full, 0),
    })
}

impl Maps {
    /// Probes the index of `ip`'s family (`ADDRS`, `ADDRS6`) exactly as the dataplane does.
    pub fn bucket(&self, ip: IpAddr) -> Result<Bucket> {
        Ok(self.bucket_and_word(ip)?.0)
    }

    /// [`Maps::bucket`] and the found bucket's mode word, from the same reads.
    pub fn bucket_and_word(&self, ip: IpAddr) -> Result<(Bucket, u32)> {
        match ip {
            IpAddr::V4(v4) => probe(&self.addrs, names::ADDRS, &ip_key(v4.octets())),
            IpAddr::V6(v6) => probe(&self.addrs6, names::ADDRS6, &ip6_key(v6.octets())),
        }
    }

    /// Probes `IFACES` for `ifindex` exactly as the dataplane does.
    pub fn iface_slot(&self, ifindex: u32) -> Result<IfaceSlot<Iface>> {
        iface_probe(ifindex, |index| {
            self.ifaces
                .get(&index, 0)
                .map_err(|e| Error::map(names::IFACES, e))
        })
    }

    /// The `IFACES` entry of an attached interface.
    pub fn iface(&self, ifindex: u32) -> Result<Option<Iface>> {
        Ok(match self.iface_slot(ifindex)? {
            IfaceSlot::Found { entry, .. } => Some(entry),
            _ => None,
        })
    }

    /// Records `iface` (keyed by `iface.ifindex`) in `IFACES`, replacing its entry if present.
    /// Write it before the program is attached to the interface.
    pub fn set_iface(&mut self, iface: Iface) -> Result<()> {
        let index = match self.iface_slot(iface.ifindex)? {
            IfaceSlot::Found { index, .. } | IfaceSlot::Free { index } => index,
            IfaceSlot::Full => {
                return Err(Error::Full {
                    what: "IFACES",
                    max: IFACE_PROBES,
                });
            }
        };
        self.ifaces
            .set(index, iface, 0)
            .map_err(|e| Error::map(names::IFACES, e))
    }

    /// Empties the `IFACES` slot of `ifindex`, if it has one. Do it after detaching.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        if let IfaceSlot::Found { index, .. } = self.iface_slot(ifindex)? {
            self.ifaces
                .set(index, Iface::default(), 0)
                .map_err(|e| Error::map(names::IFACES, e))?;
        }
        Ok(())
    }

    /// Writes member set `index` and its head in `SLOT_STATE`. Only a spare may be written, and
    /// the write is not journaled: an undo leaves a spare as written (see `journal`).
    pub fn store_member_set(&mut self, index: u32, set: &MemberSet) -> Result<()> {
        self.member_sets
            .set(index, set, 0)
            .map_err(|e| Error::map(names::MEMBER_SETS, e))?;
        let (slot, version) = member_set_of(index);
        self.slot_state.set_head(slot, version, &SetHead::of(set));
        Ok(())
    }

    /// The live member set of an address.
    pub fn member_set(&self, entry: &AddrSlot) -> Result<MemberSet> {
        self.member_sets
            .get(&member_set_index(entry.slot, entry.version), 0)
            .map_err(|e| Error::map(names::MEMBER_SETS, e))
    }

    /// Every anycast address with its entry, sorted by address (IPv4 first).
    pub fn addresses(&self) -> Result<Vec<(IpAddr, AddrSlot)>> {
        let all = self.addresses_and_words()?;
        Ok(all.into_iter().map(|(ip, entry, _)| (ip, entry)).collect())
    }

    /// [`Maps::addresses`] with each bucket's mode word, from the same reads.
    pub fn addresses_and_words(&self) -> Result<Vec<(IpAddr, AddrSlot, u32)>> {
        // One batch read rather than a syscall per key (see `crate::batch`).
        let keys: Vec<(Ip6Key, u32)> = crate::batch::hash(&self.addr_keys)
            .map_err(|e| Error::io(format!("reading {}", names::ADDR_KEYS), e))?;
        let mut out = Vec::new();
        for (key, _) in keys {
            let ip = any_ip(key);
            if let (Bucket::Found { entry, .. }, word) = self.bucket_and_word(ip)? {
                out.push((ip, entry, word));
            }
        }
        out.sort_by_key(|(a, ..)| *a);
        Ok(out)
    }
}

/// Maps `SLOT_STATE` (the mapping outlives the descriptor).
fn open_slot_state(pin: &PinDir) -> Result<crate::mapped::SlotStates> {
    use std::os::fd::AsFd;
    let data = MapData::from_pin(pin.map(names::SLOT_STATE))
        .map_err(|e| Error::map(names::SLOT_STATE, e))?;
    crate::mapped::SlotStates::new(data.fd().as_fd())
        .map_err(|e| Error::io("mapping SLOT_STATE", e))
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(
    pin: &PinDir,
    name: &'static str,
) -> Result<T> {
    let data = MapData::from_pin(pin.map(name)).map_err(|e| Error::map(name, e))?;
    let map = Map::from_map_data(data).map_err(|e| Error::map(name, e))?;
    T::try_from(map).map_err(|e| Error::map(name, e))
}

/// Sums a per-CPU value.
pub fn sum<T: Copy + Default + std::ops::AddAssign>(values: &[T]) -> T {
    let mut total = T::default();
    for v in values {
        total += *v;
    }
    total
}

/// A zeroed per-CPU value, to reset a counter slot before it is reused.
pub fn zeroed<T: aya::Pod + Default + Clone>() -> Result<PerCpuValues<T>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::io("counting CPUs", e))?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| Error::io("per-CPU value", e))
}
