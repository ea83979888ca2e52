//! The dataplane as user space sees it: the embedded eBPF object and its pinned maps.
//!
//! Invariant: every map is pinned under the [`PinDir`]; [`load`] creates the pins on first use
//! and reuses them afterwards, so every attached interface and every process shares one state.
use anycast_common::{AddrEntry, AddrStats, Host, Iface, MemberStats, names};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, xdp::DevMapHash},
};

use crate::{EBPF_OBJECT, Error, Result, pin::PinDir};

/// Loads the eBPF object with its maps pinned under `pin` (created if missing, reused if not).
pub fn load(pin: &PinDir) -> Result<Ebpf> {
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin.path())
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

/// Typed handles on the pinned maps.
pub struct Maps {
    pub addrs: HashMap<MapData, u32, AddrEntry>,
    pub hosts: Array<MapData, Host>,
    pub host_ids: HashMap<MapData, u32, u32>,
    pub ifaces: HashMap<MapData, u32, Iface>,
    pub tx_ports: DevMapHash<MapData>,
    pub addr_stats: PerCpuArray<MapData, AddrStats>,
    pub member_stats: PerCpuArray<MapData, MemberStats>,
    pub stats: PerCpuArray<MapData, u64>,
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
            hosts: open(pin, names::HOSTS)?,
            host_ids: open(pin, names::HOST_IDS)?,
            ifaces: open(pin, names::IFACES)?,
            tx_ports: open(pin, names::TX_PORTS)?,
            addr_stats: open(pin, names::ADDR_STATS)?,
            member_stats: open(pin, names::MEMBER_STATS)?,
            stats: open(pin, names::STATS)?,
        })
    }
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(pin: &PinDir, name: &'static str) -> Result<T> {
    let data = MapData::from_pin(pin.map(name)).map_err(|e| Error::map(name, e))?;
    let map = Map::from_map_data(data).map_err(|e| Error::map(name, e))?;
    T::try_from(map).map_err(|e| Error::map(name, e))
}

/// Sums a per-CPU value.
pub fn sum<T: aya::Pod + Default>(
    values: &PerCpuValues<T>,
    add: impl Fn(&mut T, &T),
) -> T {
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
