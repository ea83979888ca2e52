//! Bulk reads of maps with `BPF_MAP_LOOKUP_BATCH`: a range of an array, or a whole hash map,
//! in one or a few syscalls where lookups cost one each (a scrape of 65,536 addresses made
//! ~400,000 of them, and they were 40 % of its time). [`crate::report`] reads the
//! counters and member records of every address this way when it reports them all.
//!
//! Invariants:
//! - the elements are those lookups would return, in index order for an array, and a
//!   per-CPU element is its values on the possible CPUs in a row (as
//!   [`aya::maps::PerCpuValues`] holds them);
//! - the maps come typed (aya checked their key and value sizes when they were opened), so
//!   every buffer is the size the kernel writes; arrays are read in chunks, so a read's memory
//!   does not grow with the number of elements times the number of CPUs;
//! - like lookups, a read is not an atomic snapshot: the dataplane counts on while it runs;
//! - the buffers handed to the kernel are sized for the `count` it is given (the only
//!   `unsafe` here is that syscall and the reading back of `Pod` values from bytes).
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    Pod,
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray},
};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Entries a hash map read asks for per syscall (the kernel copies them bucket by bucket and
/// needs room for the fullest bucket, which holds a handful).
const HASH_CHUNK: usize = 4096;

/// Elements an array read asks for per syscall: the buffer stays small (a per-CPU element is
/// one value per possible CPU, and there may be hundreds).
const ARRAY_CHUNK: u32 = 1024;

/// Elements `0..len` of `array` (`len` at most its `max_entries`).
pub fn array<T: Pod>(array: &Array<MapData, T>, len: u32) -> io::Result<Vec<T>> {
    let mut out = Vec::with_capacity(len as usize);
    chunks(array.map(), len, size_of::<T>(), |values| {
        out.extend(decode::<T>(values))
    })?;
    Ok(out)
}

/// Elements `0..len` of the per-CPU `array`, one call of `each` per element with its values
/// on the possible CPUs (as [`aya::maps::PerCpuValues`] holds them).
pub fn per_cpu_array<T: Pod>(
    array: &PerCpuArray<MapData, T>,
    len: u32,
    mut each: impl FnMut(&[T]),
) -> io::Result<()> {
    // The kernel pads each CPU's value to 8 bytes; these values need no padding.
    const { assert!(size_of::<T>().is_multiple_of(8)) };
    // The CPUs the kernel writes a value for (what aya's per-CPU lookups size theirs by).
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    chunks(array.map(), len, cpus * size_of::<T>(), |values| {
        let values = decode::<T>(values);
        values.chunks_exact(cpus).for_each(&mut each);
    })
}

/// Every entry of the hash map `map`.
pub fn hash<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> io::Result<Vec<(K, V)>> {
    let mut keys = vec![0u8; HASH_CHUNK * size_of::<K>()];
    let mut values = vec![0u8; HASH_CHUNK * size_of::<V>()];
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let (filled, next) = lookup(
            map.map(),
            token,
            (&mut keys, size_of::<K>()),
            (&mut values, size_of::<V>()),
            HASH_CHUNK,
        )?;
        let keys: Vec<K> = decode(&keys[..filled * size_of::<K>()]);
        let values: Vec<V> = decode(&values[..filled * size_of::<V>()]);
        out.extend(keys.into_iter().zip(values));
        match next {
            Some(next) => token = Some(next),
            None => return Ok(out),
        }
    }
}

/// Reads elements `0..len` of an array map whose values are `value_size` bytes, in chunks of
/// [`ARRAY_CHUNK`], handing each chunk's values to `each`.
fn chunks(
    map: &MapData,
    len: u32,
    value_size: usize,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let chunk = len.min(ARRAY_CHUNK) as usize;
    let mut keys = vec![0u8; chunk * 4];
    let mut values = vec![0u8; chunk * value_size];
    let (mut done, mut token) = (0, None);
    while done < len {
        let count = (len - done).min(ARRAY_CHUNK) as usize;
        let (filled, next) = lookup(map, token, (&mut keys, 4), (&mut values, value_size), count)?;
        check_filled(filled, count)?;
        each(&values[..count * value_size]);
        done += count as u32;
        token = next;
    }
    Ok(())
}

fn check_filled(filled: usize, wanted: usize) -> io::Result<()> {
    if filled == wanted {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "a batch read returned {filled} of {wanted} elements"
    )))
}

/// One `BPF_MAP_LOOKUP_BATCH` of up to `count` entries from where `token` says (the start
/// if `None`): how many came, and the token to go on with (`None` once the map has ended).
fn lookup(
    map: &MapData,
    token: Option<u32>,
    (keys, key_size): (&mut [u8], usize),
    (values, value_size): (&mut [u8], usize),
    count: usize,
) -> io::Result<(usize, Option<u32>)> {
    assert!(keys.len() >= count * key_size && values.len() >= count * value_size);
    let (in_batch, mut out_batch) = (token.unwrap_or(0), 0u32);
    // SAFETY: `bpf_attr` is a plain C union, valid all zeros.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.batch.in_batch = match token {
        Some(_) => &in_batch as *const u32 as u64,
        None => 0,
    };
    attr.batch.out_batch = &mut out_batch as *mut u32 as u64;
    attr.batch.keys = keys.as_mut_ptr() as u64;
    attr.batch.values = values.as_mut_ptr() as u64;
    attr.batch.count = count as u32;
    attr.batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
    // SAFETY: the kernel writes at most `count` keys and values (of the map's key and value
    // sizes, which the callers' sizes are) into buffers of at least that size, the tokens
    // are `u32`s (the batch token of arrays and hash maps), and all outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    // SAFETY: `batch` is the member the kernel wrote back (`count`).
    let filled = unsafe { attr.batch.count } as usize;
    if rc == 0 {
        return Ok((filled, Some(out_batch)));
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOENT) => Ok((filled, None)),
        e => Err(e),
    }
}

/// `Pod` values from their bytes (`bytes.len()` a multiple of the size).
fn decode<T: Pod>(bytes: &[u8]) -> Vec<T> {
    (bytes.chunks_exact(size_of::<T>()))
        // SAFETY: `T` is `Pod` (any bytes of its size are a valid `T`); the read is unaligned.
        .map(|b| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
        .collect()
}
