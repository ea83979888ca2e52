//! Weighted Maglev lookup tables: which member of an anycast address serves a flow.
//!
//! User space builds one table per anycast address from its member set; the dataplane hashes a
//! flow and indexes the table with it (e.g. `table[pick_index(hash, M)]`), so every packet of a
//! flow reaches the same member, and a change of the member set moves few flows.
//!
//! The construction is Maglev's (Eisenbud et al., NSDI'16, §3.4): each backend has a permutation
//! of the `M` slots, `offset + j * skip (mod M)` with `offset = h1(id) % M` and
//! `skip = h2(id) % (M - 1) + 1` from two independent hashes of its id (`M` prime, so every
//! permutation visits every slot), and backends take turns claiming the next slot of their
//! permutation that is still free. Weights work as in Katran's weighted variant, made exact:
//! backend `i` gets a quota `q_i` of slots, `M * w_i / Σw` rounded by largest remainder (the
//! quotas sum to `M`), and its turns come at the rate `q_i / max q` (a running sum, as in smooth
//! weighted round robin), so after `max q` rounds every backend has claimed exactly its quota and
//! all of them fill the table in step, as equal-weight Maglev does.
//!
//! Invariants of [`build`]:
//! - every entry is the index (into the caller's slice) of a backend with a quota > 0, so of a
//!   backend with weight > 0; a backend with weight 0 (draining) gets no entry, and the table is
//!   the one built without it;
//! - backend `i` owns exactly `q_i` entries: shares follow weights to within one slot (a backend
//!   whose exact share is below one slot may get none);
//! - the table depends only on the *set* of `(id, weight)` pairs and `M`: the same set in any
//!   order gives the same member identity in every slot (backends are sorted by id internally and
//!   the entries mapped back to the caller's indices), on every machine and every run. Ids
//!   are member identities (the member's IP), never positions, and nothing is seeded per run
//!   or per machine, so routers in front of one member LAN whose member sets hold the same
//!   members at different positions (learned in another order, with other holes) name the same
//!   member in every slot;
//! - removing or adding one of `N` equal members changes the removed or added member's `1/N` of
//!   the entries plus a little churn between the others: typically 0.1-0.5% of the table at
//!   `M` = 65,537, rarely up to ~1.1% (measured over random 5- and 10-member sets; the tail comes
//!   from pairs of members whose skips are in a small ratio such as 1:3, so that their affine
//!   permutations are correlated; Maglev accepts it for the exact balance). That is also why `M`
//!   must be at least [`MIN_SIZE_FACTOR`] times the number of backends.
//!
//! A build at `M` = 65,537 with 64 members takes about a quarter of the paper's ~1.8 ms
//! (0.47 ms on a Xeon VM, where a bitset of free slots, the build before, took 0.63):
//! offsets and skips are computed once, free slots are a byte map (doubled so that a probe
//! needs no `% M`, and one load per probe), walks look at 2, 4, 8 and then 16 positions per
//! branch as the table fills (so that the branch ending a walk is mostly predicted), the last
//! 128 slots are computed rather than walked to (a walk there takes hundreds of probes), and
//! [`Builder`] keeps its buffers between builds. Every one of these gives the slot the plain
//! walk gives: a unit test checks the tables byte for byte against it. What is left is
//! mostly probes (~410,000 per build, most of them once a third of the table is left) and a
//! mispredicted walk end for many of the 65,537 claims.

use std::time::Instant;

/// The table size of the Maglev paper and Katran (prime, 1,024 slots per backend at 64), used
/// by the tests and the build-time benchmark. The dataplane's default is
/// `anycast_common::PAPER_TABLE_SIZE`.
pub const PAPER_TABLE_SIZE: u32 = 65_537;

/// Most backends a table can name (its entries are `u8` indices).
pub const MAX_BACKENDS: usize = anycast_common::MAX_MEMBERS;

/// The table must have at least this many slots per backend (the paper's `M >> N`).
pub const MIN_SIZE_FACTOR: u32 = 100;

/// The largest table [`build`] makes (the builder's probes go up to `2 * size`, in a `u32`);
/// far above the dataplane's `anycast_common::MAX_TABLE_SIZE`.
pub const MAX_SIZE: u32 = 1 << 31;

/// Marks a free slot while building; never left in a built table.
const EMPTY: u8 = u8::MAX;
const _: () = assert!(MAX_BACKENDS < EMPTY as usize);

/// Seeds of the two hashes of a backend's id (offset and skip): distinct, fixed, nothing up the
/// sleeve (the first 128 fraction bits of pi). Changing them reshuffles every table.
const SEED_OFFSET: u64 = 0x243f_6a88_85a3_08d3;
const SEED_SKIP: u64 = 0x1319_8a2e_0370_7344;

/// A member of an anycast address, as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Stable identity, e.g. the member's IPv4 address as a `u32`; it alone places the backend's
    /// permutation, so it must not change while the member stays.
    pub id: u32,
    /// Relative share of the table; 0 drains the backend (no entries).
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("table size {0} is not prime")]
    NotPrime(u32),
    #[error("table size {size} is too small for {backends} backends (need at least {min})")]
    TooSmall {
        size: u32,
        backends: usize,
        min: u64,
    },
    #[error("table size {0} is above {MAX_SIZE}")]
    TooLarge(u32),
    #[error("no backends")]
    NoBackends,
    #[error("every backend has weight 0")]
    AllWeightsZero,
    #[error("{0} backends, at most {MAX_BACKENDS} fit a table")]
    TooManyBackends(usize),
    #[error("backend id {0:#x} appears more than once")]
    DuplicateId(u32),
}

/// Whether `n` is prime (trial division by 6k ± 1; at most ~22,000 divisions for a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut d = 5u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// splitmix64's finalizer: a bijection of `u64` with full avalanche.
const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `(offset, skip)` of the permutation of backend `id` in a table of prime size `m`.
fn permutation(id: u32, m: u32) -> (u32, u32) {
    let m = u64::from(m);
    let offset = mix64(u64::from(id) ^ SEED_OFFSET) % m;
    let skip = mix64(u64::from(id) ^ SEED_SKIP) % (m - 1) + 1;
    (offset as u32, skip as u32)
}

/// Slot quotas into `q`: `m * w_i / Σw`, rounded down, plus one for the `m - Σ floor` largest
/// remainders (ties to the lower position, i.e. the lower id as `build` passes them). They sum
/// to `m`.
fn quotas(weights: &[u32], m: u32, q: &mut [u32]) {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    debug_assert!(total > 0);
    let m64 = u64::from(m);
    // m * w < 2^64 and each quota <= m, so no overflow anywhere.
    for (q, &w) in q.iter_mut().zip(weights) {
        *q = (m64 * u64::from(w) / total) as u32;
    }
    let assigned: u64 = q.iter().map(|&x| u64::from(x)).sum();
    let left = (m64 - assigned) as usize; // < number of backends with weight > 0
    if left > 0 {
        let mut order = [0u8; MAX_BACKENDS];
        let mut n = 0;
        for (i, _) in weights.iter().enumerate().filter(|(_, w)| **w > 0) {
            order[n] = i as u8;
            n += 1;
        }
        let rem = |i: u8| m64 * u64::from(weights[usize::from(i)]) % total;
        order[..n].sort_unstable_by(|&a, &b| rem(b).cmp(&rem(a)).then(a.cmp(&b)));
        for &i in &order[..left] {
            q[usize::from(i)] += 1;
        }
    }
}

/// Builds the lookup table of size `size` (prime) for `backends`: entry `i` is the index into
/// `backends` of the member owning slot `i`.
///
/// Backends with weight 0 get no entries (drain). The result depends on the set of backends, not
/// their order (see the module docs). Errors: more than [`MAX_BACKENDS`] backends, none, `size`
/// not prime or above [`MAX_SIZE`], `size` below [`MIN_SIZE_FACTOR`] × `backends.len()`, an id
/// given twice, or no backend with weight > 0.
pub fn build(backends: &[Backend], size: u32) -> Result<Vec<u8>, MaglevError> {
    let mut table = Vec::new();
    Builder::default().build_into(backends, size, &mut table)?;
    Ok(table)
}

/// Working memory of [`build`], kept between builds so that a build allocates nothing once
/// the buffers have grown to the table size.
#[derive(Default)]
pub struct Builder {
    /// Free slots while a table is built.
    free: FreeSlots,
    endgame: Endgame,
    /// Entries per backend (by index into the caller's slice) of the last build.
    counts: Vec<u32>,
}

impl Builder {
    /// [`build`] into `table` (resized to `size`); on an error `table` is unchanged.
    pub fn build_into(
        &mut self,
        backends: &[Backend],
        size: u32,
        table: &mut Vec<u8>,
    ) -> Result<(), MaglevError> {
        let identity: [u8; MAX_BACKENDS] = std::array::from_fn(|i| i as u8);
        self.build_labelled(
            backends,
            &identity[..backends.len().min(MAX_BACKENDS)],
            size,
            table,
        )
    }

    /// [`Builder::build_into`], with `labels[i]` (below [`MAX_BACKENDS`]) in the entries of
    /// backend `i` instead of `i`: the same table with its entries renamed, in one pass.
    pub fn build_labelled(
        &mut self,
        backends: &[Backend],
        labels: &[u8],
        size: u32,
        table: &mut Vec<u8>,
    ) -> Result<(), MaglevError> {
        let (order, n) = canonical_order(backends, size)?;
        assert!(
            labels.len() == n && labels.iter().all(|&l| usize::from(l) < MAX_BACKENDS),
            "one label below {MAX_BACKENDS} per backend"
        );
        let order = &order[..n];
        let mut weights = [0u32; MAX_BACKENDS];
        for (w, &i) in weights.iter_mut().zip(order) {
            *w = backends[usize::from(i)].weight;
        }
        let mut quota = [0u32; MAX_BACKENDS];
        quotas(&weights[..n], size, &mut quota[..n]);
        self.counts.clear();
        self.counts.resize(n, 0);
        let mut turns = [Turn::default(); MAX_BACKENDS];
        let mut t = 0;
        for (&caller, &quota) in order.iter().zip(&quota) {
            self.counts[usize::from(caller)] = quota;
            if quota > 0 {
                let (label, id) = (
                    labels[usize::from(caller)],
                    backends[usize::from(caller)].id,
                );
                turns[t] = Turn::new(label, id, quota, size);
                t += 1;
            }
        }
        table.clear();
        table.resize(size as usize, EMPTY);
        fill(
            table,
            &mut turns[..t],
            &mut self.free,
            &mut self.endgame,
            size,
        );
        debug_assert!(!table.contains(&EMPTY));
        Ok(())
    }

    /// Entries per backend (by index into the slice given) of the last successful build:
    /// each backend's quota, which it owns exactly.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }
}

/// Checks `build`'s arguments and returns the indexes of `backends` in canonical order (the
/// first `n` of the array): by id, so that the table depends on the set only.
fn canonical_order(
    backends: &[Backend],
    size: u32,
) -> Result<([u8; MAX_BACKENDS], usize), MaglevError> {
    let n = backends.len();
    if n > MAX_BACKENDS {
        return Err(MaglevError::TooManyBackends(n));
    }
    if n == 0 {
        return Err(MaglevError::NoBackends);
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    if size > MAX_SIZE {
        return Err(MaglevError::TooLarge(size));
    }
    let min = u64::from(MIN_SIZE_FACTOR) * n as u64;
    if u64::from(size) < min {
        return Err(MaglevError::TooSmall {
            size,
            backends: n,
            min,
        });
    }
    let mut order = [0u8; MAX_BACKENDS];
    for (i, o) in order.iter_mut().enumerate().take(n) {
        *o = i as u8;
    }
    order[..n].sort_unstable_by_key(|&i| backends[usize::from(i)].id);
    if let Some(w) = order[..n]
        .windows(2)
        .find(|w| backends[usize::from(w[0])].id == backends[usize::from(w[1])].id)
    {
        return Err(MaglevError::DuplicateId(backends[usize::from(w[0])].id));
    }
    if backends.iter().all(|b| b.weight == 0) {
        return Err(MaglevError::AllWeightsZero);
    }
    Ok((order, n))
}

/// A backend with slots to claim (only those take turns) and where its permutation is.
#[derive(Clone, Copy, Default)]
struct Turn {
    caller: u8, // what the table stores: the backend's index into `backends`, or its label
    quota: u32,
    acc: u32, // running sum of `quota`: a turn each time it reaches `max_quota`
    offset: u32,
    next: u32, // next slot of the permutation, always below `size`
    skip: u32,
    /// `i * skip mod size` for `i` in `0..=GROUP` (each below `size`).
    stride: [u32; GROUP + 1],
}

impl Turn {
    fn new(caller: u8, id: u32, quota: u32, size: u32) -> Self {
        let (offset, skip) = permutation(id, size);
        let mut stride = [0; GROUP + 1];
        for i in 1..=GROUP {
            stride[i] = reduce(stride[i - 1] + skip, size); // 512 `%`s took ~4% of a build
        }
        Self {
            caller,
            quota,
            acc: 0,
            offset,
            next: offset,
            skip,
            stride,
        }
    }
}

/// Which slots are still free, one byte each (1 = free), twice over: bytes `s` and `size + s`
/// both stand for slot `s`, so a probe at `p + stride` (both below `size`) needs no reduction
/// modulo `size`. A probe is then one load (a bitset, tried before, fits L1 but needs four
/// more instructions per probe to find its bit, and the build is mostly probes: bytes made it
/// 20 % faster); the table is only written, once per slot, when the slot is claimed.
#[derive(Default)]
struct FreeSlots {
    size: u32,
    bytes: Vec<u8>,
}

impl FreeSlots {
    /// All of `0..size` free (`size` at most [`MAX_SIZE`], so `2 * size` fits a `u32`).
    fn reset(&mut self, size: u32) {
        assert!(size <= MAX_SIZE);
        self.size = size;
        self.bytes.clear();
        self.bytes.resize(2 * size as usize, 1);
    }

    /// 1 if slot `q mod size` is free, else 0; `q < 2 * size`.
    #[inline(always)]
    fn is_free(&self, q: u32) -> u32 {
        debug_assert!((q as usize) < self.bytes.len());
        // SAFETY: `bytes` has 2 * size entries and every caller passes `p + stride` with both
        // terms below `size` (`Turn::next`, `Turn::stride` and `reduce` keep them there). The
        // bounds check this skips is in every probe.
        u32::from(unsafe { *self.bytes.get_unchecked(q as usize) })
    }

    #[inline(always)]
    fn take(&mut self, slot: u32) {
        self.bytes[slot as usize] = 0;
        self.bytes[(slot + self.size) as usize] = 0;
    }

    /// The free slots, in increasing order.
    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        // Eight slots per look (few are free by the time this is called); the doubled half
        // holds the same bytes, so a look past `size` finds nothing new and is cut off.
        (self.bytes.chunks_exact(8).enumerate())
            .filter(|(_, chunk)| u64::from_ne_bytes((*chunk).try_into().expect("8 bytes")) != 0)
            .flat_map(|(c, chunk)| {
                (chunk.iter().enumerate())
                    .filter(|(_, b)| **b != 0)
                    .map(move |(i, _)| (c * 8 + i) as u32)
            })
            .take_while(|&s| s < self.size)
    }
}

/// The most positions a walk looks at per branch, and how many slots are computed rather
/// than walked to ([`Endgame`]).
const GROUP: usize = 16;
const ENDGAME: u32 = 128;

/// Fills `table` by turns.
///
/// After `max_quota` rounds backend i has had exactly floor(max_quota * q_i / max_quota) = q_i
/// turns, so the quotas (which sum to `size`) fill the table exactly. Each turn finds a free
/// slot because fewer than `size` slots are taken and the permutation visits all of them.
///
/// A claim's walk looks at 2, 4, 8 and then 16 positions per branch as the table fills
/// (while more than 2/3, 1/3, 1/8 and then [`ENDGAME`] slots are free): enough that a walk
/// rarely needs a second group, so the branch is mostly predicted, and few enough that the
/// probes past the first free position stay cheap. The phases run one after the other (each loop knows its
/// group size) and all give the slot a one-position walk gives.
fn fill(table: &mut [u8], turns: &mut [Turn], bits: &mut FreeSlots, end: &mut Endgame, size: u32) {
    let max_quota = turns.iter().map(|t| t.quota).max().unwrap_or(0);
    bits.reset(size);
    let mut seq = Sequence {
        turns,
        k: 0,
        max_quota,
    };
    let mut free = size;
    free = walk_phase::<2>(table, &mut seq, bits, size, free, size / 3 * 2);
    free = walk_phase::<4>(table, &mut seq, bits, size, free, size / 3);
    free = walk_phase::<8>(table, &mut seq, bits, size, free, size / 8);
    free = walk_phase::<GROUP>(table, &mut seq, bits, size, free, ENDGAME);
    end.start(bits, seq.turns, size);
    for _ in 0..free {
        let k = seq.next_claimer();
        table[end.claim(k, size) as usize] = seq.turns[k].caller;
    }
}

/// The order of the turns: round after round, backend after backend.
struct Sequence<'a> {
    turns: &'a mut [Turn],
    /// The backend whose turn is next.
    k: usize,
    max_quota: u32,
}

impl Sequence<'_> {
    /// The next backend whose turn claims a slot (passing those whose turn it is not).
    #[inline(always)]
    fn next_claimer(&mut self) -> usize {
        loop {
            let k = self.k;
            self.k = if k + 1 == self.turns.len() { 0 } else { k + 1 };
            let t = &mut self.turns[k];
            // `acc += quota; if acc >= max_quota { acc -= max_quota; claim }`, rearranged so that
            // nothing exceeds `max_quota` (no overflow even for sizes near u32::MAX).
            if t.acc < self.max_quota - t.quota {
                t.acc += t.quota;
                continue;
            }
            t.acc -= self.max_quota - t.quota;
            return k;
        }
    }
}

/// Claims slots by walks of `G` positions per branch until `stop` slots are free (or none
/// was to begin with); returns the number free.
fn walk_phase<const G: usize>(
    table: &mut [u8],
    seq: &mut Sequence,
    bits: &mut FreeSlots,
    size: u32,
    mut free: u32,
    stop: u32,
) -> u32 {
    while free > stop {
        let k = seq.next_claimer();
        let t = &mut seq.turns[k];
        let (slot, next) = walk_group::<G>(bits, t, size);
        t.next = next;
        bits.take(slot);
        table[slot as usize] = t.caller;
        free -= 1;
    }
    free
}

/// `q mod size` for `q < 2 * size`, without a branch.
#[inline(always)]
fn reduce(q: u32, size: u32) -> u32 {
    std::hint::select_unpredictable(q >= size, q.wrapping_sub(size), q)
}

/// The first free slot of `t`'s permutation from `t.next` on, and the permutation's position
/// after it, looking at `G` positions per branch: the first free among them is the one a
/// one-position walk would take.
#[inline(always)]
fn walk_group<const G: usize>(bits: &FreeSlots, t: &Turn, size: u32) -> (u32, u32) {
    const { assert!(G <= GROUP) };
    let mut p = t.next;
    loop {
        let mut free = 0u32;
        for i in 0..G {
            free |= bits.is_free(p + t.stride[i]) << i;
        }
        if free != 0 {
            let i = free.trailing_zeros() as usize;
            return (
                reduce(p + t.stride[i], size),
                reduce(p + t.stride[i + 1], size),
            );
        }
        p = reduce(p + t.stride[G], size);
    }
}

/// The last few free slots, claimed without walking: what a walk would find, computed.
///
/// Slot `s` is step `(s - offset) / skip (mod size)` of a backend's permutation, so the first
/// free slot from step `at` on is the free slot whose step is the least at or after `at`
/// (cyclically; free slots have distinct steps). `steps` keeps each backend's step of each
/// free slot (one row per turn), so a claim is one pass over the free slots.
#[derive(Default)]
struct Endgame {
    free: Vec<u32>,
    /// `steps[k * stride + i]`: the step of `free[i]` in turn `k`'s permutation.
    steps: Vec<u32>,
    stride: usize,
    /// Per turn, the step of its next slot (`Turn::next`).
    at: Vec<u32>,
}

impl Endgame {
    fn start(&mut self, bits: &FreeSlots, turns: &[Turn], size: u32) {
        self.free.clear();
        self.free.extend(bits.iter());
        self.stride = self.free.len();
        self.steps.clear();
        self.at.clear();
        for t in turns {
            let step = Steps::new(t, size);
            self.at.push(step.of(t.next));
            self.steps.extend(self.free.iter().map(|&s| step.of(s)));
        }
    }

    /// Claims turn `k`'s next slot.
    fn claim(&mut self, k: usize, size: u32) -> u32 {
        let len = self.free.len();
        let row = &self.steps[k * self.stride..][..len];
        let (at, m) = (u64::from(self.at[k]), u64::from(size));
        // The least distance from `at` to a free slot's step, with its index in the low half.
        let best = (row.iter().enumerate())
            .map(|(i, &step)| {
                let step = u64::from(step);
                let d = if step >= at { step - at } else { step + m - at };
                (d << 32) | i as u64
            })
            .min()
            .expect("a turn finds a free slot");
        let i = best as u32 as usize;
        let slot = self.free[i];
        self.at[k] = if row[i] + 1 == size { 0 } else { row[i] + 1 };
        self.free.swap_remove(i);
        for r in self.steps.chunks_exact_mut(self.stride) {
            r[i] = r[len - 1];
        }
        slot
    }
}

/// Maps a slot to its step in one backend's permutation: `(slot - offset) * skip⁻¹ mod size`.
struct Steps {
    offset: u64,
    inverse: u64,
    size: u64,
    /// floor(2^64 / size), for Barrett reduction.
    reciprocal: u64,
}

impl Steps {
    fn new(t: &Turn, size: u32) -> Self {
        Self {
            offset: u64::from(t.offset),
            inverse: u64::from(inverse(t.skip, size)),
            size: u64::from(size),
            reciprocal: (u128::from(u64::MAX) + 1).div_euclid(u128::from(size)) as u64,
        }
    }

    fn of(&self, slot: u32) -> u32 {
        let slot = u64::from(slot);
        let d = if slot >= self.offset {
            slot - self.offset
        } else {
            slot + self.size - self.offset
        };
        // x mod size for x < 2^64: the quotient estimate is exact or one short.
        let x = d * self.inverse;
        let q = ((u128::from(x) * u128::from(self.reciprocal)) >> 64) as u64;
        let r = x - q * self.size;
        (if r >= self.size { r - self.size } else { r }) as u32
    }
}

/// The inverse of `a` modulo the prime `m` (`0 < a < m`), by the extended Euclidean algorithm.
fn inverse(a: u32, m: u32) -> u32 {
    let (mut r0, mut r1) = (i64::from(m), i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} has no inverse modulo {m}");
    t0.rem_euclid(i64::from(m)) as u32
}

/// Fraction of the table's entries that name each backend `0..n` (entries `>= n` are ignored).
pub fn share(table: &[u8], n: usize) -> Vec<f64> {
    let mut counts = vec![0usize; n];
    for &e in table {
        if let Some(c) = counts.get_mut(usize::from(e)) {
            *c += 1;
        }
    }
    counts
        .iter()
        .map(|&c| c as f64 / table.len() as f64)
        .collect()
}

/// Fraction of slots whose member identity differs between table `a` (entries index `a_ids`) and
/// table `b` (entries index `b_ids`). Panics if the tables differ in size or an entry is out of
/// range of its ids.
pub fn moved(a: &[u8], a_ids: &[u32], b: &[u8], b_ids: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len(), "tables of different sizes");
    let changed = a
        .iter()
        .zip(b)
        .filter(|&(&x, &y)| a_ids[usize::from(x)] != b_ids[usize::from(y)])
        .count();
    changed as f64 / a.len() as f64
}

/// Median time in milliseconds of [`build`] at [`PAPER_TABLE_SIZE`] with 64 equal members,
/// over `iterations` builds (at least one), for the benchmark program.
pub fn bench_build_ms(iterations: u32) -> f64 {
    let backends: Vec<Backend> = (0..MAX_BACKENDS as u32)
        .map(|i| Backend {
            id: 0x0a00_0001 + i,
            weight: 1,
        })
        .collect();
    let (mut builder, mut table) = (Builder::default(), Vec::new());
    let mut times: Vec<f64> = (0..iterations.max(1))
        .map(|_| {
            let start = Instant::now();
            let built = builder.build_into(
                std::hint::black_box(&backends),
                PAPER_TABLE_SIZE,
                &mut table,
            );
            std::hint::black_box(&table);
            built.expect("valid input");
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = PAPER_TABLE_SIZE;

    /// `n` members 10.0.0.1, 10.0.0.2, ... with weight 1.
    fn equal(n: usize) -> Vec<Backend> {
        (0..n as u32)
            .map(|i| Backend {
                id: 0x0a00_0001 + i,
                weight: 1,
            })
            .collect()
    }

    fn ids(backends: &[Backend]) -> Vec<u32> {
        backends.iter().map(|b| b.id).collect()
    }

    fn counts(table: &[u8], n: usize) -> Vec<u32> {
        let mut c = vec![0u32; n];
        for &e in table {
            c[usize::from(e)] += 1;
        }
        c
    }

    /// The construction as the module docs state it: every claim walks its permutation over
    /// the table itself, to the very last slot. What [`build`] must equal, byte for byte.
    fn reference(backends: &[Backend], size: u32) -> Vec<u8> {
        let (order, n) = canonical_order(backends, size).unwrap();
        let weights: Vec<u32> = (order[..n].iter())
            .map(|&i| backends[usize::from(i)].weight)
            .collect();
        let mut quota = vec![0; n];
        quotas(&weights, size, &mut quota);
        let mut turns: Vec<(u8, u32, u32, u32, u32)> = (order[..n].iter().zip(&quota))
            .filter(|&(_, &q)| q > 0)
            .map(|(&caller, &q)| {
                let (offset, skip) = permutation(backends[usize::from(caller)].id, size);
                (caller, q, 0, offset, skip)
            })
            .collect();
        let max_quota = turns.iter().map(|t| t.1).max().unwrap();
        let mut table = vec![EMPTY; size as usize];
        for _ in 0..max_quota {
            for (caller, quota, acc, next, skip) in &mut turns {
                *acc += *quota;
                if *acc < max_quota {
                    continue;
                }
                *acc -= max_quota;
                while table[*next as usize] != EMPTY {
                    *next = (*next + *skip) % size;
                }
                table[*next as usize] = *caller;
                *next = (*next + *skip) % size;
            }
        }
        table
    }

    /// `build` (grouped walks over the byte map, then the computed endgame, buffers reused) gives exactly the
    /// reference's table, over random sets, weights (drained members too) and sizes.
    #[test]
    fn build_equals_the_reference() {
        let mut seed = 0x5eed_u64;
        let mut rand = move || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(seed)
        };
        let mut builder = Builder::default();
        let mut table = Vec::new();
        let sizes = [
            101u32,
            307,
            1_009,
            6_451,
            anycast_common::DEFAULT_TABLE_SIZE,
            M,
        ];
        for trial in 0..60 {
            let size = sizes[trial % sizes.len()];
            let most = (size / MIN_SIZE_FACTOR).min(MAX_BACKENDS as u32) as u64;
            let n = 1 + (rand() % most) as usize;
            let mut backends: Vec<Backend> = Vec::with_capacity(n);
            while backends.len() < n {
                let id = rand() as u32;
                if backends.iter().all(|b| b.id != id) {
                    let weight = match rand() % 4 {
                        0 => 1,
                        1 => (rand() % 1_000) as u32,
                        2 => 100,
                        _ => rand() as u32 >> (rand() % 32),
                    };
                    backends.push(Backend { id, weight });
                }
            }
            if backends.iter().all(|b| b.weight == 0) {
                backends[0].weight = 1;
            }
            let want = reference(&backends, size);
            builder.build_into(&backends, size, &mut table).unwrap();
            assert_eq!(table, want, "trial {trial}: {n} backends at {size}");
        }
        for n in [2usize, 10, 64] {
            assert_eq!(
                build(&equal(n), M).unwrap(),
                reference(&equal(n), M),
                "{n} equal"
            );
        }
    }

    /// Labels rename the entries and nothing else; counts are the entries per backend.
    #[test]
    fn labels_rename_entries_and_counts_count_them() {
        let mut backends = equal(7);
        backends[3].weight = 0;
        backends[5].weight = 3;
        let plain = build(&backends, M).unwrap();
        let labels = [9u8, 3, 60, 0, 1, 42, 7];
        let (mut builder, mut table) = (Builder::default(), Vec::new());
        builder
            .build_labelled(&backends, &labels, M, &mut table)
            .unwrap();
        let renamed: Vec<u8> = plain.iter().map(|&e| labels[usize::from(e)]).collect();
        assert_eq!(table, renamed);
        assert_eq!(builder.counts(), &counts(&plain, 7)[..]);
    }

    #[test]
    fn inverses() {
        for m in [101u32, 65_537, 4_294_967_291] {
            for a in [1u32, 2, 3, 50, m - 1] {
                assert_eq!(u64::from(a) * u64::from(inverse(a, m)) % u64::from(m), 1);
            }
        }
    }

    #[test]
    fn is_prime_matches_known_values() {
        let primes = [
            2u32,
            3,
            5,
            7,
            11,
            13,
            251,
            65_521,
            65_537,
            655_373,
            4_294_967_291,
        ];
        for p in primes {
            assert!(is_prime(p), "{p}");
        }
        let composites = [
            0u32,
            1,
            4,
            6,
            9,
            15,
            25,
            49,
            65_535,
            65_536,
            65_541,
            4_294_967_295,
        ];
        for c in composites {
            assert!(!is_prime(c), "{c}");
        }
        assert_eq!((0..1_000).filter(|&n| is_prime(n)).count(), 168);
    }

    #[test]
    fn permutations_visit_every_slot() {
        for id in [0u32, 1, 0x0a00_0001, u32::MAX] {
            let (offset, skip) = permutation(id, 101);
            assert!(offset < 101 && (1..101).contains(&skip));
            let mut seen = [false; 101];
            let mut c = offset;
            for _ in 0..101 {
                seen[c as usize] = true;
                c = (c + skip) % 101;
            }
            assert!(seen.iter().all(|&s| s));
        }
    }

    /// 1. Ten equal members at M = 65,537: each share within 1% (relative) of 1/10.
    #[test]
    fn equal_members_get_equal_shares() {
        let table = build(&equal(10), M).unwrap();
        assert_eq!(table.len(), M as usize);
        let shares = share(&table, 10);
        println!("10 equal members: shares {shares:.5?}");
        for s in shares {
            assert!((s - 0.1).abs() <= 0.001, "share {s}");
        }
    }

    /// 2. Removing any one of N members changes at most 1/N + 0.01 of the entries in total.
    #[test]
    fn removing_a_member_moves_few_entries() {
        for n in [10usize, 5] {
            let all = equal(n);
            let before = build(&all, M).unwrap();
            for removed in 0..n {
                let mut rest = all.clone();
                rest.remove(removed);
                let after = build(&rest, M).unwrap();
                let total = moved(&before, &ids(&all), &after, &ids(&rest));
                let own = before
                    .iter()
                    .filter(|&&e| usize::from(e) == removed)
                    .count();
                let other = total - own as f64 / M as f64;
                println!(
                    "remove member {removed} of {n}: moved {total:.5} (bound {:.5}), \
                     of which between survivors {other:.5}",
                    1.0 / n as f64 + 0.01
                );
                assert!(total <= 1.0 / n as f64 + 0.01, "moved {total}");
            }
        }
    }

    /// 3. Weights 1:2 and 1:2:3: shares within 1% (relative) of w / Σw.
    #[test]
    fn shares_follow_weights() {
        for weights in [&[1u32, 2][..], &[1, 2, 3]] {
            let backends: Vec<Backend> = weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| Backend {
                    id: 0xc0a8_0001 + i as u32,
                    weight,
                })
                .collect();
            let table = build(&backends, M).unwrap();
            let sum: u32 = weights.iter().sum();
            let shares = share(&table, weights.len());
            println!("weights {weights:?}: shares {shares:.5?}");
            for (s, &w) in shares.iter().zip(weights) {
                let want = f64::from(w) / f64::from(sum);
                assert!((s - want).abs() <= 0.01 * want, "share {s}, want {want}");
            }
        }
    }

    /// Each backend owns exactly its largest-remainder quota.
    #[test]
    fn counts_are_exact_quotas() {
        let weights = [3u32, 0, 7, 1, 1, 10, 2];
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend {
                id: 1000 - i as u32,
                weight,
            })
            .collect();
        let table = build(&backends, M).unwrap();
        let c = counts(&table, weights.len());
        let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        for (i, &w) in weights.iter().enumerate() {
            let exact = u64::from(M) * u64::from(w) / sum;
            assert!(
                u64::from(c[i]) == exact || u64::from(c[i]) == exact + 1,
                "backend {i}: {} slots, exact {exact}",
                c[i]
            );
        }
        assert_eq!(c.iter().sum::<u32>(), M);
    }

    /// 4. Weight 0 gets nothing, and draining equals removing.
    #[test]
    fn zero_weight_gets_no_entries() {
        let mut backends = equal(6);
        backends[2].weight = 0;
        backends[4].weight = 0;
        let table = build(&backends, M).unwrap();
        let c = counts(&table, 6);
        assert_eq!((c[2], c[4]), (0, 0));
        let without: Vec<Backend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
        let table2 = build(&without, M).unwrap();
        assert_eq!(moved(&table, &ids(&backends), &table2, &ids(&without)), 0.0);
    }

    /// 4. Invalid input is rejected.
    #[test]
    fn errors() {
        let zero = [Backend { id: 1, weight: 0 }, Backend { id: 2, weight: 0 }];
        assert_eq!(build(&zero, M), Err(MaglevError::AllWeightsZero));
        assert_eq!(build(&[], M), Err(MaglevError::NoBackends));
        assert_eq!(build(&equal(3), 65_536), Err(MaglevError::NotPrime(65_536)));
        assert_eq!(build(&equal(3), 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(build(&equal(3), 0), Err(MaglevError::NotPrime(0)));
        assert_eq!(
            build(&equal(3), 4_294_967_291),
            Err(MaglevError::TooLarge(4_294_967_291))
        );
        assert_eq!(build(&equal(65), M), Err(MaglevError::TooManyBackends(65)));
        assert_eq!(
            build(&equal(3), 293),
            Err(MaglevError::TooSmall {
                size: 293,
                backends: 3,
                min: 300
            })
        );
        assert!(build(&equal(3), 307).is_ok());
        let dup = [
            Backend { id: 7, weight: 1 },
            Backend { id: 8, weight: 1 },
            Backend { id: 7, weight: 2 },
        ];
        assert_eq!(build(&dup, M), Err(MaglevError::DuplicateId(7)));
    }

    /// 4. Same set in another order: same member in every slot.
    #[test]
    fn order_does_not_matter() {
        let mut backends = equal(12);
        for (i, b) in backends.iter_mut().enumerate() {
            b.weight = 1 + (i as u32 % 4);
        }
        let table = build(&backends, M).unwrap();
        let mut reversed = backends.clone();
        reversed.reverse();
        let mut rotated = backends.clone();
        rotated.rotate_left(5);
        for other in [reversed, rotated] {
            let t = build(&other, M).unwrap();
            assert_ne!(t, table, "indices differ, identities must not");
            assert_eq!(moved(&table, &ids(&backends), &t, &ids(&other)), 0.0);
        }
        assert_eq!(build(&backends, M).unwrap(), table);
    }

    /// A router's member set as `members::add` and `del` keep it: a join takes the first hole
    /// (or a new position at the end), a leave leaves a hole. Positions depend on the history.
    #[derive(Default)]
    struct Router {
        positions: Vec<Option<Backend>>,
    }

    impl Router {
        fn learn(history: &[(u32, Option<u32>)]) -> Self {
            let mut r = Router::default();
            for &(id, weight) in history {
                let at = r
                    .positions
                    .iter()
                    .position(|p| p.is_some_and(|b| b.id == id));
                match (weight, at) {
                    (Some(weight), Some(at)) => r.positions[at] = Some(Backend { id, weight }),
                    (Some(weight), None) => {
                        let hole = r.positions.iter().position(Option::is_none);
                        let at = hole.unwrap_or(r.positions.len());
                        if at == r.positions.len() {
                            r.positions.push(None);
                        }
                        r.positions[at] = Some(Backend { id, weight });
                    }
                    (None, Some(at)) => r.positions[at] = None,
                    (None, None) => panic!("{id} left without joining"),
                }
            }
            r
        }

        /// The member id each slot names, through positions as `members::write` maps them: the
        /// table is built from the backends in position order and its entries become positions.
        fn slot_owners(&self, size: u32) -> Vec<u32> {
            let at: Vec<(usize, Backend)> = (self.positions.iter().enumerate())
                .filter_map(|(p, b)| b.map(|b| (p, b)))
                .collect();
            let backends: Vec<Backend> = at.iter().map(|&(_, b)| b).collect();
            let table = build(&backends, size).unwrap();
            let position: Vec<usize> = at.iter().map(|&(p, _)| p).collect();
            (table.iter())
                .map(|&e| self.positions[position[usize::from(e)]].unwrap().id)
                .collect()
        }

        fn ids_by_position(&self) -> Vec<Option<u32>> {
            self.positions.iter().map(|p| p.map(|b| b.id)).collect()
        }
    }

    /// Several routers that learned the same members with the same weights, in different
    /// orders, through holes and reused positions, and with weight changes in between, name
    /// the same member in every slot: the table depends on the member set, not on positions.
    #[test]
    fn routers_agree_whatever_the_learning_order() {
        let (a, b, c, d, e) = (
            0xcb00_710b,
            0xcb00_710c,
            0xcb00_710d,
            0xcb00_710e,
            0xcb00_710f,
        );
        let (x, y) = (0xcb00_7163, 0xcb00_7164); // members that come and go on some routers
        let histories: [&[(u32, Option<u32>)]; 4] = [
            &[
                (a, Some(100)),
                (b, Some(100)),
                (c, Some(300)),
                (d, Some(100)),
                (e, Some(50)),
            ],
            &[
                (e, Some(50)),
                (d, Some(100)),
                (c, Some(300)),
                (b, Some(100)),
                (a, Some(100)),
            ],
            // Holes: x's and y's positions are reused by b and d.
            &[
                (x, Some(100)),
                (y, Some(100)),
                (c, Some(100)),
                (x, None),
                (b, Some(100)),
                (e, Some(50)),
                (y, None),
                (d, Some(100)),
                (a, Some(100)),
                (c, Some(300)),
            ],
            // A hole left at the front, a member that left and came back, a weight changed.
            &[
                (x, Some(100)),
                (d, Some(100)),
                (a, Some(7)),
                (e, Some(50)),
                (c, Some(300)),
                (x, None),
                (b, Some(100)),
                (a, None),
                (a, Some(7)),
                (a, Some(100)),
            ],
        ];
        let routers: Vec<Router> = histories.iter().map(|h| Router::learn(h)).collect();
        let layouts: std::collections::HashSet<_> =
            routers.iter().map(Router::ids_by_position).collect();
        assert_eq!(
            layouts.len(),
            routers.len(),
            "every router has its own positions"
        );
        for size in [anycast_common::DEFAULT_TABLE_SIZE, M, 1_009] {
            let first = routers[0].slot_owners(size);
            for (i, r) in routers.iter().enumerate().skip(1) {
                let owners = r.slot_owners(size);
                let differ = first.iter().zip(&owners).filter(|(p, q)| p != q).count();
                assert_eq!(
                    differ, 0,
                    "router {i} differs from router 0 in {differ} slots"
                );
            }
        }
    }

    /// What a flow that moves to another router while the membership changes can count on:
    /// the new router has no connection-table entry for it, so it keeps its member exactly when
    /// the new table names the same member in its slot. A leave moves the leaver's slots and,
    /// among the others, only Maglev's small churn; a join moves only slots to the joiner, plus
    /// that churn. Measured here for 3 and 8 members at the default size.
    #[test]
    fn a_membership_change_moves_only_the_changed_members_slots_and_a_little_churn() {
        let size = anycast_common::DEFAULT_TABLE_SIZE;
        for n in [3usize, 8] {
            let all = equal(n + 1);
            let (before, joined) = (&all[..n], all[n].id);
            let old = build(before, size).unwrap();
            let new = build(&all, size).unwrap();
            let churn = (old.iter().zip(&new))
                .filter(|&(&o, &w)| all[usize::from(w)].id != joined && o != w)
                .count() as f64
                / f64::from(size);
            println!("join to {n}: churn between the others {churn:.5}");
            assert!(churn <= 0.012, "join to {n}: churn {churn}");
            for left in 0..n {
                let mut rest = before.to_vec();
                rest.remove(left);
                let after = build(&rest, size).unwrap();
                let churn = (old.iter().zip(&after))
                    .filter(|&(&o, &w)| {
                        usize::from(o) != left && before[usize::from(o)] != rest[usize::from(w)]
                    })
                    .count() as f64
                    / f64::from(size);
                println!("leave {left} of {n}: churn between the others {churn:.5}");
                assert!(churn <= 0.012, "leave {left} of {n}: churn {churn}");
            }
        }
    }

    /// 4. 64 members at M = 65,537 (a debug build: correctness only, timing is the benchmark's).
    #[test]
    fn sixty_four_members() {
        let table = build(&equal(64), M).unwrap();
        assert!(table.iter().all(|&e| usize::from(e) < 64));
        let c = counts(&table, 64);
        let (lo, hi) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
        println!("64 members: {lo}..={hi} slots each");
        assert!(lo >= M / 64 && hi <= M / 64 + 1);
    }

    /// Extreme weights terminate and still fill the table with valid indices.
    #[test]
    fn extreme_weights() {
        let backends = [
            Backend { id: 3, weight: 1 },
            Backend {
                id: 1,
                weight: u32::MAX,
            },
            Backend {
                id: 2,
                weight: u32::MAX,
            },
        ];
        let table = build(&backends, 307).unwrap();
        let c = counts(&table, 3);
        assert_eq!(c, [0, 154, 153]);
        let solo = build(&[Backend { id: 9, weight: 5 }], 101).unwrap();
        assert!(solo.iter().all(|&e| e == 0));
    }

    /// 5. Adding a member to N moves at most 1/(N+1) + 0.01 of the entries.
    #[test]
    fn adding_a_member_moves_few_entries() {
        for n in [5usize, 10] {
            let before_set = equal(n);
            let before = build(&before_set, M).unwrap();
            // New ids below, between (after sorting) and above the existing ones.
            for new_id in [0x0900_0000, 0x0a00_0001 + n as u32, 0x0b00_0000] {
                let mut after_set = before_set.clone();
                after_set.insert(
                    n / 2,
                    Backend {
                        id: new_id,
                        weight: 1,
                    },
                );
                let after = build(&after_set, M).unwrap();
                let total = moved(&before, &ids(&before_set), &after, &ids(&after_set));
                let bound = 1.0 / (n + 1) as f64 + 0.01;
                println!("add {new_id:#x} to {n}: moved {total:.5} (bound {bound:.5})");
                assert!(total <= bound, "moved {total}");
            }
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(share(&[0, 1, 1, 3], 2), vec![0.25, 0.5]);
        assert_eq!(moved(&[0, 1], &[5, 6], &[1, 0], &[5, 6]), 1.0);
        assert_eq!(moved(&[0, 1], &[5, 6], &[1, 0], &[6, 5]), 0.0);
    }

    /// Runs the benchmark entry point; prints the time (run with `--nocapture`), asserts nothing
    /// about it.
    #[test]
    fn bench_build_runs() {
        let ms = bench_build_ms(11);
        println!("build at M = {M}, 64 members: median {ms:.3} ms");
        assert!(ms > 0.0);
    }
}
