//! The dataplane as user space sees it: the embedded eBPF object and its pinned maps.
//!
//! Invariant: every map is pinned under the [`PinDir`]; [`load`] creates the pins on first use
//! and reuses them afterwards, so every attached interface and every process shares one state.
use anycast_common::{
    ADDR_BUCKETS, ADDR_PROBES, AddrBucket, AddrStats, FLOW_SETS, FLOW_WAYS, Host, Iface,
    MemberInfo, MemberKey, MemberSet, MemberStats, addr_bucket, member_set_index, names,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, HashMap, Map, MapData, PerCpuArray, PerCpuValues, Stack,
        xdp::DevMapHash,
    },
};

use crate::{EBPF_OBJECT, Error, Result, pin::PinDir};

/// Loads the eBPF object with its maps pinned under `pin` (created if missing, reused if not).
/// `flows` sizes a new connection table (flows, a power of two); an existing one keeps its size.
pub fn load(pin: &PinDir, flows: Option<u32>) -> Result<Ebpf> {
    // TABLES is a BTF map-of-maps, which carries no pinning attribute: pin it by path.
    let tables = pin.map(names::TABLES);
    let flows = match MapData::from_pin(pin.map(names::FLOWS)) {
        Ok(existing) => existing
            .info()
            .map_err(|e| Error::map(names::FLOWS, e))?
            .max_entries(),
        Err(_) => flows.unwrap_or(FLOW_SETS * FLOW_WAYS),
    };
    check_flows(flows).map_err(Error::Usage)?;
    let mask = flows / FLOW_WAYS - 1;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin.path())
        .map_pin_path(names::TABLES, tables.as_path())
        .map_max_entries(names::FLOWS, flows)
        .override_global(anycast_common::FLOW_SETS_MASK, &mask, true)
        .load(EBPF_OBJECT)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Error::NotRoot
            }
            _ => Error::Load(e),
        })?;
    Ok(ebpf)
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
    pub member_sets: Array<MapData, MemberSet>,
    pub addr_keys: HashMap<MapData, u32, u32>,
    pub hosts: Array<MapData, Host>,
    pub host_ids: HashMap<MapData, u32, u32>,
    pub ifaces: HashMap<MapData, u32, Iface>,
    pub tx_ports: DevMapHash<MapData>,
    pub addr_stats: PerCpuArray<MapData, AddrStats>,
    pub member_stats: PerCpuArray<MapData, MemberStats>,
    pub stats: PerCpuArray<MapData, u64>,
    pub member_info: HashMap<MapData, MemberKey, MemberInfo>,
    pub sender_seq: HashMap<MapData, u32, u64>,
    pub agent_stats: Array<MapData, u64>,
    pub tables: ArrayOfMaps<MapData, Array<MapData, u64>>,
    pub alloc: Array<MapData, u32>,
    pub free_counters: Stack<MapData, u32>,
    pub free_hosts: Stack<MapData, u32>,
    pub host_refs: Array<MapData, u32>,
    pub member_slots: Array<MapData, u32>,
    /// The undo log of the open transaction, if any (see [`crate::journal`]).
    pub journal: Option<Vec<crate::journal::Undo>>,
    /// Maglev table size for tables rebuilt through these handles; `None` keeps each address's
    /// current size (or the default for a new one).
    pub table_size: Option<u32>,
}

impl Maps {
    /// Opens the pinned maps; fails with [`Error::NotAttached`] if there are none.
    pub fn open(pin: &PinDir) -> Result<Self> {
        if !pin.has_maps() {
            return Err(Error::NotAttached {
                path: pin.path().to_path_buf(),
            });
        }
        Ok(Self {
            addrs: open(pin, names::ADDRS)?,
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
            journal: None,
            table_size: None,
        })
    }
}

/// Where an anycast address is, or would go, in the `ADDRS` index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// The address is in bucket `index`.
    Found { index: u32, entry: AddrBucket },
    /// The address is absent; `index` is the first free bucket of its probe run.
    Free { index: u32 },
    /// The address is absent and its probe run has no free bucket.
    Full,
}

impl Maps {
    /// Probes `ADDRS` for `ip` exactly as the dataplane does.
    pub fn bucket(&self, ip: u32) -> Result<Bucket> {
        let mut index = addr_bucket(ip);
        for _ in 0..ADDR_PROBES {
            let entry = self
                .addrs
                .get(&index, 0)
                .map_err(|e| Error::map(names::ADDRS, e))?;
            if entry.ip == ip {
                return Ok(Bucket::Found { index, entry });
            }
            if entry.ip == 0 {
                return Ok(Bucket::Free { index });
            }
            index = (index + 1) & (ADDR_BUCKETS - 1);
        }
        Ok(Bucket::Full)
    }

    /// The live member set of an address.
    pub fn member_set(&self, entry: &AddrBucket) -> Result<MemberSet> {
        self.member_sets
            .get(&member_set_index(entry.slot, entry.version), 0)
            .map_err(|e| Error::map(names::MEMBER_SETS, e))
    }

    /// Every anycast address with its bucket, sorted by address.
    pub fn addresses(&self) -> Result<Vec<(std::net::Ipv4Addr, AddrBucket)>> {
        let mut out = Vec::new();
        for key in self.addr_keys.keys() {
            let ip = key.map_err(|e| Error::map(names::ADDR_KEYS, e))?;
            if let Bucket::Found { entry, .. } = self.bucket(ip)? {
                out.push((
                    std::net::Ipv4Addr::from(anycast_common::ip_octets(ip)),
                    entry,
                ));
            }
        }
        out.sort_by_key(|(a, _)| *a);
        Ok(out)
    }
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
pub fn sum<T: aya::Pod + Default>(values: &PerCpuValues<T>, add: impl Fn(&mut T, &T)) -> T {
    let mut total = T::default();
    for v in values.iter() {
        add(&mut total, v);
    }
    total
}

/// A zeroed per-CPU value, to reset a counter slot before it is reused.
pub fn zeroed<T: aya::Pod + Default + Clone>() -> Result<PerCpuValues<T>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::io("counting CPUs", e))?;
    PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|e| Error::io("per-CPU value", e))
}
