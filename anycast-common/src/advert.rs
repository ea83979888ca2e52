//! Wire format of the membership advertisement: a host tells the routers on its link which
//! anycast addresses it serves (RFC 1546, "Transmission and Reception of Anycast Datagrams").
//!
//! Layout (version 1, big-endian; docs/advert-format.md has the full description):
//!
//! ```text
//! header   28 B  magic "AC", version, flags, total length, entry count,
//!                sender IPv4 (0.0.0.0 with a type-4 entry), sequence number (u64),
//!                timestamp in ms (u64)
//! entries  TLVs  type (u8), length (u8), value; type 1 = IPv4 membership (12 B),
//!                type 2 = the sender's link-layer (MAC) address (6 B, at most one),
//!                type 3 = IPv6 membership (24 B), type 4 = IPv6 sender (16 B, at most one)
//! trailer  36 B  key id (u32), HMAC-SHA256 over every byte before the HMAC
//! ```
//!
//! A message has one sender, of one family: the header's IPv4 field, or a type-4 entry (then
//! the header field is 0.0.0.0). Its memberships are all of that family. Types 3 and 4 were
//! added within version 1: a receiver that does not know them skips them as unknown entries, so
//! an IPv6 message gives it no membership it could apply (see docs/advert-format.md).
//!
//! [`Packet`] is a zero-copy view of a buffer; [`Repr`] is the parsed message. Contract:
//! - after [`Packet::check_len`] succeeds, no accessor of [`Packet`] panics;
//! - [`Packet::entries`] never panics, on any buffer;
//! - [`Repr::parse`] never panics, on any input;
//! - [`Repr::emit`] never panics on a buffer of at least [`Repr::buffer_len`] bytes.
//!
//! Parsing checks structure only. The HMAC (anycast-ctl's `advert_auth`), the sender against the
//! IP source, the TTL, the clock skew and the sequence number are the receiver's job.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Entry type of the sender's link-layer address: the MAC routers forward to, signed with the
/// rest, so that no unauthenticated frame can rebind the member's IP to another MAC.
pub const LINK_ADDR_KIND: u8 = 2;
/// Value length of a link-layer address entry (an Ethernet MAC).
pub const LINK_ADDR_LEN: u8 = 6;

/// Header flag: the sender is an anycast router saying hello on the link (multicast mode's
/// forwarder election, anycast-ctl's `agent::routers`); such a message carries no membership.
/// A receiver that does not know the flag ignores it, and finds nothing to apply.
pub const FLAG_ROUTER: u8 = 0x01;

/// The first two bytes of every advertisement: "AC".
pub const MAGIC: [u8; 2] = *b"AC";
/// The version this module speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::ENTRIES_START;
/// Length of the trailer: key id and HMAC.
pub const TRAILER_LEN: usize = 4 + HMAC_LEN;
/// Length of the HMAC-SHA256 tag.
pub const HMAC_LEN: usize = 32;
/// The shortest message: header and trailer, no entries.
pub const MIN_LEN: usize = HEADER_LEN + TRAILER_LEN;
/// The longest message: fits the 1280-byte IPv6 minimum MTU with IP and UDP headers.
pub const MAX_LEN: usize = 1200;
/// The most entries (of any type) a message may carry.
pub const MAX_ENTRIES: usize = 64;
/// Type and length bytes in front of each entry value.
pub const ENTRY_HEADER_LEN: usize = 2;
/// Entry type of a membership (IPv4 anycast address).
pub const MEMBERSHIP_KIND: u8 = 1;
/// Value length of a membership entry.
pub const MEMBERSHIP_LEN: u8 = 12;
/// Entry type of an IPv6 membership.
pub const MEMBERSHIP6_KIND: u8 = 3;
/// Value length of an IPv6 membership entry.
pub const MEMBERSHIP6_LEN: u8 = 24;
/// Entry type of the sender's IPv6 address (the header's IPv4 sender is then 0.0.0.0).
pub const SENDER6_KIND: u8 = 4;
/// Value length of an IPv6 sender entry.
pub const SENDER6_LEN: u8 = 16;

/// Default multicast group of advertisements: 239.255.15.46 (organisation-local scope).
pub const DEFAULT_GROUP: [u8; 4] = [239, 255, 15, 46];
/// Default IPv6 multicast group of advertisements: ff12::1546, link-local scope with the T
/// (non-permanent) flag set, so it cannot collide with an IANA assignment (RFC 4291 2.7).
pub const DEFAULT_GROUP6: [u8; 16] = [0xff, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x15, 0x46];
/// Default UDP port of advertisements, both families.
pub const DEFAULT_PORT: u16 = 5446;
/// IP TTL (IPv6 hop limit) of every advertisement; receivers drop any other (GTSM, RFC 5082).
pub const REQUIRED_TTL: u8 = 255;
/// Largest difference between a message's timestamp and the receiver's clock it accepts.
pub const MAX_CLOCK_SKEW_MS: u64 = 30_000;

mod field {
    pub type Field = core::ops::Range<usize>;

    pub const MAGIC: Field = 0..2;
    pub const VERSION: usize = 2;
    pub const FLAGS: usize = 3;
    pub const TOTAL_LEN: Field = 4..6;
    pub const ENTRY_COUNT: Field = 6..8;
    pub const SENDER: Field = 8..12;
    pub const SEQ: Field = 12..20;
    pub const TIMESTAMP: Field = 20..28;
    pub const ENTRIES_START: usize = 28;

    /// The entry TLVs of a message of `total` bytes.
    pub const fn entries(total: usize) -> Field {
        ENTRIES_START..total - super::TRAILER_LEN
    }
    /// The key id of a message of `total` bytes.
    pub const fn key_id(total: usize) -> Field {
        total - super::TRAILER_LEN..total - super::HMAC_LEN
    }
    /// The HMAC of a message of `total` bytes.
    pub const fn hmac(total: usize) -> Field {
        total - super::HMAC_LEN..total
    }

    /// Offsets inside the value of a membership entry: the anycast address (4 bytes in type
    /// 1, 16 in type 3), then the same 8 bytes in both types, at these offsets after it.
    pub mod membership {
        use super::Field;

        pub const HOLD: Field = 0..4;
        pub const PREFERENCE: Field = 4..6;
        pub const WEIGHT: Field = 6..8;
    }
}

/// Why a buffer is not a valid advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header, or than its total length field.
    Truncated,
    /// The first two bytes are not "AC".
    BadMagic,
    /// A version other than [`VERSION`].
    UnsupportedVersion(u8),
    /// The total length field is below [`MIN_LEN`], or the buffer is longer than it says.
    BadLength,
    /// The message is longer than [`MAX_LEN`].
    TooLong,
    /// The entry count is above [`MAX_ENTRIES`].
    TooManyEntries,
    /// A known entry type with the wrong value length.
    BadEntry { kind: u8, len: u8 },
    /// An entry runs past the end of the entries.
    EntryOverrun,
    /// The entry count field differs from the number of entries present.
    BadEntryCount,
    /// Two membership entries for the same anycast address.
    DuplicateEntry(IpAddr),
    /// Two link-layer address entries.
    DuplicateLinkAddr,
    /// Two IPv6 sender entries.
    DuplicateSender,
    /// An IPv6 sender entry in a message whose IPv4 sender field is not 0.0.0.0: two senders.
    TwoSenders,
    /// A membership of the other address family than the sender's.
    FamilyMismatch,
}

impl Error {
    /// A short snake_case name of the problem, for counters and logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::BadMagic => "bad_magic",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::BadLength => "bad_length",
            Error::TooLong => "too_long",
            Error::TooManyEntries => "too_many_entries",
            Error::BadEntry { .. } => "bad_entry",
            Error::EntryOverrun => "entry_overrun",
            Error::BadEntryCount => "bad_entry_count",
            Error::DuplicateEntry(_) => "duplicate_entry",
            Error::DuplicateLinkAddr => "duplicate_link_addr",
            Error::DuplicateSender => "duplicate_sender",
            Error::TwoSenders => "two_senders",
            Error::FamilyMismatch => "family_mismatch",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "advertisement truncated"),
            Error::BadMagic => write!(f, "not an advertisement (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported advertisement version {v}"),
            Error::BadLength => write!(f, "total length disagrees with the datagram"),
            Error::TooLong => write!(f, "advertisement longer than {MAX_LEN} bytes"),
            Error::TooManyEntries => write!(f, "more than {MAX_ENTRIES} entries"),
            Error::BadEntry { kind, len } => {
                write!(f, "entry of type {kind} has a bad length {len}")
            }
            Error::EntryOverrun => write!(f, "entry runs past the end of the entries"),
            Error::BadEntryCount => write!(f, "entry count disagrees with the entries"),
            Error::DuplicateEntry(addr) => write!(f, "two entries for {addr}"),
            Error::DuplicateLinkAddr => write!(f, "two link-layer address entries"),
            Error::DuplicateSender => write!(f, "two IPv6 sender entries"),
            Error::TwoSenders => write!(f, "an IPv6 sender entry and an IPv4 sender field"),
            Error::FamilyMismatch => write!(f, "a membership of another family than the sender"),
        }
    }
}

impl core::error::Error for Error {}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// A read/write view of an advertisement in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the header: magic, version, the total length against the buffer (which must be
    /// exactly that long) and the limits. After it succeeds no accessor panics.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.magic() != MAGIC {
            return Err(Error::BadMagic);
        }
        if self.version() != VERSION {
            return Err(Error::UnsupportedVersion(self.version()));
        }
        let total = usize::from(self.total_len());
        if total > MAX_LEN || len > MAX_LEN {
            return Err(Error::TooLong);
        }
        if total < MIN_LEN {
            return Err(Error::BadLength);
        }
        if len < total {
            return Err(Error::Truncated);
        }
        if len > total {
            return Err(Error::BadLength);
        }
        if usize::from(self.entry_count()) > MAX_ENTRIES {
            return Err(Error::TooManyEntries);
        }
        Ok(())
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The magic bytes.
    pub fn magic(&self) -> [u8; 2] {
        let b = &self.buffer.as_ref()[field::MAGIC];
        [b[0], b[1]]
    }

    /// The version.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// The flags ([`FLAG_ROUTER`]; receivers ignore those they do not know).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The total length field: header, entries and trailer.
    pub fn total_len(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[field::TOTAL_LEN])
    }

    /// The entry count field (entries of every type).
    pub fn entry_count(&self) -> u16 {
        be_u16(&self.buffer.as_ref()[field::ENTRY_COUNT])
    }

    /// The header's sender field: the sender's unicast IPv4 address, or 0.0.0.0 when a type-4
    /// entry names an IPv6 sender ([`Repr::sender`] is the message's sender either way).
    pub fn sender(&self) -> Ipv4Addr {
        ipv4(&self.buffer.as_ref()[field::SENDER])
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::SEQ])
    }

    /// The timestamp, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::TIMESTAMP])
    }

    /// The id of the key the HMAC was computed with.
    pub fn key_id(&self) -> u32 {
        be_u32(&self.buffer.as_ref()[field::key_id(self.end())])
    }

    /// The HMAC tag ([`HMAC_LEN`] bytes).
    pub fn hmac(&self) -> &[u8] {
        &self.buffer.as_ref()[field::hmac(self.end())]
    }

    /// Every byte the HMAC covers: header, entries and key id.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.end() - HMAC_LEN]
    }

    /// The entries, in order. Never panics: a malformed entry ends the iteration with an error.
    pub fn entries(&self) -> Entries<'_> {
        let buf = self.buffer.as_ref();
        let total = usize::from(self.total_len_or_zero()).min(buf.len());
        let rest = match total.checked_sub(TRAILER_LEN) {
            Some(end) if end >= HEADER_LEN => &buf[HEADER_LEN..end],
            _ => &[],
        };
        Entries { rest, done: false }
    }

    fn end(&self) -> usize {
        usize::from(self.total_len())
    }

    fn total_len_or_zero(&self) -> u16 {
        match self.buffer.as_ref().get(field::TOTAL_LEN) {
            Some(b) => be_u16(b),
            None => 0,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the magic bytes.
    pub fn set_magic(&mut self) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&MAGIC);
    }

    /// Sets the version.
    pub fn set_version(&mut self, value: u8) {
        self.buffer.as_mut()[field::VERSION] = value;
    }

    /// Sets the flags.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::TOTAL_LEN].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the entry count.
    pub fn set_entry_count(&mut self, value: u16) {
        self.buffer.as_mut()[field::ENTRY_COUNT].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the sender.
    pub fn set_sender(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&value.octets());
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, value: u64) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the timestamp.
    pub fn set_timestamp_ms(&mut self, value: u64) {
        self.buffer.as_mut()[field::TIMESTAMP].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the key id (the total length must be set first).
    pub fn set_key_id(&mut self, value: u32) {
        let range = field::key_id(self.end());
        self.buffer.as_mut()[range].copy_from_slice(&value.to_be_bytes());
    }

    /// The HMAC tag, to fill (the total length must be set first).
    pub fn hmac_mut(&mut self) -> &mut [u8] {
        let range = field::hmac(self.end());
        &mut self.buffer.as_mut()[range]
    }

    /// The entry TLVs, to fill (the total length must be set first).
    pub fn entries_mut(&mut self) -> &mut [u8] {
        let range = field::entries(self.end());
        &mut self.buffer.as_mut()[range]
    }
}

/// One membership: the sender serves `anycast`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Membership {
    /// The anycast address served: IPv4 (entry type 1) or IPv6 (type 3).
    pub anycast: IpAddr,
    /// How long the membership lasts without a refresh, in milliseconds; 0 leaves at once.
    pub hold_ms: u32,
    /// Lower is better: only the members of the lowest preference receive traffic.
    pub preference: u16,
    /// Share of traffic among members of equal preference; 0 drains the member.
    pub weight: u16,
}

impl Membership {
    /// A placeholder for unused slots of [`Repr::entries`].
    pub const EMPTY: Membership = Membership {
        anycast: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        hold_ms: 0,
        preference: 0,
        weight: 0,
    };

    /// True if the entry withdraws the membership (hold time 0).
    pub const fn is_leave(&self) -> bool {
        self.hold_ms == 0
    }

    /// True if the member should get no new traffic (weight 0).
    pub const fn is_drain(&self) -> bool {
        self.weight == 0
    }

    /// Parses the value of a type-1 or type-3 entry, whose length is checked: the address
    /// (4 or 16 bytes), then hold time, preference and weight.
    fn parse(value: &[u8]) -> Membership {
        use field::membership as f;
        let (anycast, tail) = if value.len() == usize::from(MEMBERSHIP_LEN) {
            (IpAddr::V4(ipv4(value)), &value[4..])
        } else {
            (IpAddr::V6(ipv6(value)), &value[16..])
        };
        Membership {
            anycast,
            hold_ms: be_u32(&tail[f::HOLD]),
            preference: be_u16(&tail[f::PREFERENCE]),
            weight: be_u16(&tail[f::WEIGHT]),
        }
    }

    /// The entry type and value length of this membership's family.
    const fn kind_len(&self) -> (u8, u8) {
        match self.anycast {
            IpAddr::V4(_) => (MEMBERSHIP_KIND, MEMBERSHIP_LEN),
            IpAddr::V6(_) => (MEMBERSHIP6_KIND, MEMBERSHIP6_LEN),
        }
    }

    /// Bytes of the whole TLV: 14 (IPv4) or 26 (IPv6).
    pub const fn tlv_len(&self) -> usize {
        ENTRY_HEADER_LEN + self.kind_len().1 as usize
    }

    /// Writes the TLV (type, length, value) into the first [`tlv_len`](Self::tlv_len) bytes
    /// of `buf`.
    fn emit(&self, buf: &mut [u8]) {
        use field::membership as f;
        let (kind, len) = self.kind_len();
        buf[0] = kind;
        buf[1] = len;
        let value = &mut buf[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + usize::from(len)];
        let tail = match self.anycast {
            IpAddr::V4(a) => {
                value[..4].copy_from_slice(&a.octets());
                &mut value[4..]
            }
            IpAddr::V6(a) => {
                value[..16].copy_from_slice(&a.octets());
                &mut value[16..]
            }
        };
        tail[f::HOLD].copy_from_slice(&self.hold_ms.to_be_bytes());
        tail[f::PREFERENCE].copy_from_slice(&self.preference.to_be_bytes());
        tail[f::WEIGHT].copy_from_slice(&self.weight.to_be_bytes());
    }
}

/// One entry of an advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Type 1 (IPv4 anycast address) or 3 (IPv6).
    Membership(Membership),
    /// Type 2: the sender's MAC.
    LinkAddr([u8; 6]),
    /// Type 4: the sender's IPv6 address.
    Sender6(Ipv6Addr),
    /// A type this version does not know, skipped.
    Unknown { kind: u8, len: u8 },
}

/// Iterator over the entries of a [`Packet`]; see [`Packet::entries`].
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
    done: bool,
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        let item = self.next_entry();
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

impl Entries<'_> {
    fn next_entry(&mut self) -> Result<Entry, Error> {
        let &[kind, len, ..] = self.rest else {
            return Err(Error::EntryOverrun);
        };
        let Some((value, rest)) = self.rest[ENTRY_HEADER_LEN..].split_at_checked(usize::from(len))
        else {
            return Err(Error::EntryOverrun);
        };
        self.rest = rest;
        match kind {
            MEMBERSHIP_KIND if len == MEMBERSHIP_LEN => {
                Ok(Entry::Membership(Membership::parse(value)))
            }
            MEMBERSHIP6_KIND if len == MEMBERSHIP6_LEN => {
                Ok(Entry::Membership(Membership::parse(value)))
            }
            SENDER6_KIND if len == SENDER6_LEN => Ok(Entry::Sender6(ipv6(value))),
            MEMBERSHIP_KIND | MEMBERSHIP6_KIND | SENDER6_KIND => Err(Error::BadEntry { kind, len }),
            LINK_ADDR_KIND if len == LINK_ADDR_LEN => {
                let mut mac = [0; 6];
                mac.copy_from_slice(value);
                Ok(Entry::LinkAddr(mac))
            }
            LINK_ADDR_KIND => Err(Error::BadEntry { kind, len }),
            _ => Ok(Entry::Unknown { kind, len }),
        }
    }
}

/// A parsed advertisement (the HMAC is not part of it: it is checked on the [`Packet`]).
#[derive(Debug, Clone, Copy)]
pub struct Repr {
    /// The sender's unicast address: the member that serves the entries' addresses. IPv4 is
    /// written in the header; IPv6 as a type-4 entry (the header field then 0.0.0.0).
    pub sender: IpAddr,
    /// Sequence number, strictly increasing per sender.
    pub seq: u64,
    /// Milliseconds since the Unix epoch at the sender.
    pub timestamp_ms: u64,
    /// Id of the key the HMAC is computed with.
    pub key_id: u32,
    /// The membership entries, all of the sender's family; only the first `n_entries` are
    /// used.
    pub entries: [Membership; MAX_ENTRIES],
    /// How many of `entries` are used.
    pub n_entries: usize,
    /// The sender's link-layer address, if it sent one (type 2).
    pub link_addr: Option<[u8; 6]>,
    /// Entries of unknown types that were skipped (not emitted: their values are not kept).
    pub unknown_entries: u16,
}

impl PartialEq for Repr {
    fn eq(&self, other: &Repr) -> bool {
        self.sender == other.sender
            && self.seq == other.seq
            && self.timestamp_ms == other.timestamp_ms
            && self.key_id == other.key_id
            && self.memberships() == other.memberships()
            && self.link_addr == other.link_addr
            && self.unknown_entries == other.unknown_entries
    }
}

impl Eq for Repr {}

impl Repr {
    /// An advertisement without entries, from an IPv4 or an IPv6 sender.
    pub fn new(sender: impl Into<IpAddr>, seq: u64, timestamp_ms: u64, key_id: u32) -> Repr {
        Repr {
            sender: sender.into(),
            seq,
            timestamp_ms,
            key_id,
            entries: [Membership::EMPTY; MAX_ENTRIES],
            n_entries: 0,
            link_addr: None,
            unknown_entries: 0,
        }
    }

    /// Appends a membership. Fails with [`Error::FamilyMismatch`] if its family is not the
    /// sender's, with [`Error::TooManyEntries`] when [`MAX_ENTRIES`] entries (sender and
    /// link-layer address included) are already there, and with [`Error::TooLong`] when the
    /// message would outgrow [`MAX_LEN`] (IPv6 memberships: after 42 with a link address).
    pub fn push(&mut self, membership: Membership) -> Result<(), Error> {
        if membership.anycast.is_ipv4() != self.sender.is_ipv4() {
            return Err(Error::FamilyMismatch);
        }
        if self.entry_count() >= MAX_ENTRIES {
            return Err(Error::TooManyEntries);
        }
        if self.buffer_len() + membership.tlv_len() > MAX_LEN {
            return Err(Error::TooLong);
        }
        let slot = self
            .entries
            .get_mut(self.n_entries)
            .ok_or(Error::TooManyEntries)?;
        *slot = membership;
        self.n_entries += 1;
        Ok(())
    }

    /// Sets the sender's link-layer address; fails when it would make more than
    /// [`MAX_ENTRIES`] entries or more than [`MAX_LEN`] bytes.
    pub fn set_link_addr(&mut self, mac: [u8; 6]) -> Result<(), Error> {
        if self.link_addr.is_none() {
            if self.entry_count() >= MAX_ENTRIES {
                return Err(Error::TooManyEntries);
            }
            if self.buffer_len() + ENTRY_HEADER_LEN + usize::from(LINK_ADDR_LEN) > MAX_LEN {
                return Err(Error::TooLong);
            }
        }
        self.link_addr = Some(mac);
        Ok(())
    }

    /// The memberships in use.
    pub fn memberships(&self) -> &[Membership] {
        &self.entries[..self.n_entries.min(MAX_ENTRIES)]
    }

    /// Entries [`emit`](Self::emit) writes: sender (IPv6), memberships, link-layer address.
    fn entry_count(&self) -> usize {
        usize::from(self.sender.is_ipv6())
            + self.memberships().len()
            + usize::from(self.link_addr.is_some())
    }

    /// Parses a message: header checks ([`Packet::check_len`]), then every entry. Never panics.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr, Error> {
        packet.check_len()?;
        let sender = match Self::sender6(packet)? {
            Some(_) if !packet.sender().is_unspecified() => return Err(Error::TwoSenders),
            Some(v6) => IpAddr::V6(v6),
            None => IpAddr::V4(packet.sender()),
        };
        let mut repr = Repr::new(sender, packet.seq(), packet.timestamp_ms(), packet.key_id());
        let expected = usize::from(packet.entry_count());
        let mut seen = 0;
        for entry in packet.entries() {
            seen += 1;
            if seen > expected {
                return Err(Error::BadEntryCount);
            }
            match entry? {
                Entry::Membership(m) => {
                    if repr.memberships().iter().any(|e| e.anycast == m.anycast) {
                        return Err(Error::DuplicateEntry(m.anycast));
                    }
                    repr.push(m)?;
                }
                Entry::LinkAddr(mac) => {
                    if repr.link_addr.replace(mac).is_some() {
                        return Err(Error::DuplicateLinkAddr);
                    }
                }
                Entry::Sender6(_) => {}
                Entry::Unknown { .. } => repr.unknown_entries += 1,
            }
        }
        if seen != expected {
            return Err(Error::BadEntryCount);
        }
        Ok(repr)
    }

    /// The IPv6 sender entry of a checked packet, if it has one (a first pass, so that entries
    /// may come in any order).
    fn sender6<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Option<Ipv6Addr>, Error> {
        let mut sender = None;
        for entry in packet.entries() {
            if let Entry::Sender6(v6) = entry?
                && sender.replace(v6).is_some()
            {
                return Err(Error::DuplicateSender);
            }
        }
        Ok(sender)
    }

    /// Length of the emitted message.
    pub fn buffer_len(&self) -> usize {
        let sender6 = match self.sender {
            IpAddr::V4(_) => 0,
            IpAddr::V6(_) => ENTRY_HEADER_LEN + usize::from(SENDER6_LEN),
        };
        let memberships: usize = self.memberships().iter().map(Membership::tlv_len).sum();
        HEADER_LEN + sender6 + memberships + self.link_addr_len() + TRAILER_LEN
    }

    fn link_addr_len(&self) -> usize {
        match self.link_addr {
            Some(_) => ENTRY_HEADER_LEN + usize::from(LINK_ADDR_LEN),
            None => 0,
        }
    }

    /// Writes the message into the first [`buffer_len`](Self::buffer_len) bytes: everything
    /// but the HMAC, which it zeroes for the signer to fill. Unknown entries are not written.
    /// Entries go in this order: IPv6 sender, memberships, link-layer address.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        let total = self.buffer_len();
        packet.set_magic();
        packet.set_version(VERSION);
        packet.set_flags(0);
        // Both fit: push and set_link_addr keep total <= MAX_LEN and entries <= MAX_ENTRIES.
        packet.set_total_len(total as u16);
        packet.set_entry_count(self.entry_count() as u16);
        packet.set_sender(match self.sender {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        });
        packet.set_seq(self.seq);
        packet.set_timestamp_ms(self.timestamp_ms);
        let mut tlvs = packet.entries_mut();
        if let IpAddr::V6(v6) = self.sender {
            let (tlv, rest) = tlvs.split_at_mut(ENTRY_HEADER_LEN + usize::from(SENDER6_LEN));
            tlv[0] = SENDER6_KIND;
            tlv[1] = SENDER6_LEN;
            tlv[ENTRY_HEADER_LEN..].copy_from_slice(&v6.octets());
            tlvs = rest;
        }
        for m in self.memberships() {
            let (tlv, rest) = tlvs.split_at_mut(m.tlv_len());
            m.emit(tlv);
            tlvs = rest;
        }
        if let Some(mac) = self.link_addr {
            tlvs[0] = LINK_ADDR_KIND;
            tlvs[1] = LINK_ADDR_LEN;
            tlvs[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + 6].copy_from_slice(&mac);
        }
        packet.set_key_id(self.key_id);
        packet.hmac_mut().fill(0);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// 192.0.2.10, seq 42, 2023-11-14T22:13:20Z, key 7; serves 198.51.100.1 (hold 30 s,
    /// preference 10, weight 100) and leaves 198.51.100.2. HMAC zero (as emitted).
    static PACKET_BYTES: [u8; 92] = [
        0x41, 0x43, 0x01, 0x00, // magic, version, flags
        0x00, 0x5c, 0x00, 0x02, // total length 92, 2 entries
        0xc0, 0x00, 0x02, 0x0a, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // seq
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // timestamp
        0x01, 0x0c, 0xc6, 0x33, 0x64, 0x01, // membership 198.51.100.1
        0x00, 0x00, 0x75, 0x30, 0x00, 0x0a, 0x00, 0x64, // hold, preference, weight
        0x01, 0x0c, 0xc6, 0x33, 0x64, 0x02, // membership 198.51.100.2
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // leave
        0x00, 0x00, 0x00, 0x07, // key id
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // HMAC
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    ];

    /// One membership (198.51.100.1, hold 1 s, preference 1, weight 1) after an entry of
    /// unknown type 9 with 3 value bytes; HMAC 0xaa.
    static UNKNOWN_ENTRY_BYTES: [u8; 83] = [
        0x41, 0x43, 0x01, 0x80, // magic, version, flags (unknown bit, ignored)
        0x00, 0x53, 0x00, 0x02, // total length 83, 2 entries
        0xc0, 0x00, 0x02, 0x0b, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // seq
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // timestamp
        0x09, 0x03, 0xde, 0xad, 0xbe, // unknown entry
        0x01, 0x0c, 0xc6, 0x33, 0x64, 0x01, // membership
        0x00, 0x00, 0x03, 0xe8, 0x00, 0x01, 0x00, 0x01, //
        0x00, 0x00, 0x00, 0x01, // key id
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, // HMAC
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, //
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, //
        0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, //
    ];

    const SERVE: Membership = Membership {
        anycast: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        hold_ms: 30_000,
        preference: 10,
        weight: 100,
    };

    const LEAVE: Membership = Membership {
        anycast: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
        hold_ms: 0,
        preference: 0,
        weight: 0,
    };

    fn packet_repr() -> Repr {
        let mut repr = Repr::new(Ipv4Addr::new(192, 0, 2, 10), 42, 1_700_000_000_000, 7);
        repr.push(SERVE).unwrap();
        repr.push(LEAVE).unwrap();
        repr
    }

    /// Writes `repr`, then sets the raw header fields `edit` touches.
    fn emitted(repr: &Repr, edit: impl FnOnce(&mut Packet<&mut [u8]>)) -> Vec<u8> {
        let mut buf = vec![0; repr.buffer_len()];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        repr.emit(&mut packet);
        edit(&mut packet);
        buf
    }

    /// IPv6: sender 2001:db8:203::2, seq 42, the same timestamp, key 7; serves 2001:db8:53::53
    /// (hold 30 s, preference 10, weight 100) from MAC 02:11:00:00:00:02. HMAC zero.
    static PACKET6_BYTES: [u8; 116] = [
        0x41, 0x43, 0x01, 0x00, // magic, version 1, flags
        0x00, 0x74, 0x00, 0x03, // total length 116, 3 entries
        0x00, 0x00, 0x00, 0x00, // IPv4 sender 0.0.0.0: the sender is the type-4 entry
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // seq
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // timestamp
        0x04, 0x10, 0x20, 0x01, 0x0d, 0xb8, 0x02, 0x03, // IPv6 sender 2001:db8:203::2
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, //
        0x03, 0x18, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x53, // IPv6 membership 2001:db8:53::53
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x53, //
        0x00, 0x00, 0x75, 0x30, 0x00, 0x0a, 0x00, 0x64, // hold, preference, weight
        0x02, 0x06, 0x02, 0x11, 0x00, 0x00, 0x00, 0x02, // link-layer address
        0x00, 0x00, 0x00, 0x07, // key id
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // HMAC
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    ];

    const SENDER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 2);

    const SERVE6: Membership = Membership {
        anycast: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53)),
        hold_ms: 30_000,
        preference: 10,
        weight: 100,
    };

    fn packet6_repr() -> Repr {
        let mut repr = Repr::new(SENDER6, 42, 1_700_000_000_000, 7);
        repr.push(SERVE6).unwrap();
        repr.set_link_addr([0x02, 0x11, 0, 0, 0, 0x02]).unwrap();
        repr
    }

    /// Splices `tlv` in front of the entries and fixes the total length and entry count.
    fn with_entry(mut buf: Vec<u8>, tlv: &[u8]) -> Vec<u8> {
        buf.splice(HEADER_LEN..HEADER_LEN, tlv.iter().copied());
        let total = buf.len() as u16;
        let count = be_u16(&buf[field::ENTRY_COUNT]) + 1;
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_total_len(total);
        packet.set_entry_count(count);
        buf
    }

    #[test]
    fn ipv6_message_parses_and_emits_byte_for_byte() {
        let packet = Packet::new_checked(&PACKET6_BYTES[..]).unwrap();
        assert_eq!(packet.sender(), Ipv4Addr::UNSPECIFIED);
        let entries: Vec<_> = packet.entries().collect();
        assert_eq!(
            entries,
            [
                Ok(Entry::Sender6(SENDER6)),
                Ok(Entry::Membership(SERVE6)),
                Ok(Entry::LinkAddr([0x02, 0x11, 0, 0, 0, 0x02])),
            ]
        );
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr, packet6_repr());
        assert_eq!(repr.sender, IpAddr::V6(SENDER6));
        assert_eq!(repr.buffer_len(), PACKET6_BYTES.len());
        assert_eq!(emitted(&repr, |_| {}), PACKET6_BYTES);
    }

    /// Interop: an IPv4-only message of this code is a version-1 message, byte for byte (the
    /// vector predates the IPv6 entry types).
    #[test]
    fn ipv4_only_message_is_byte_identical_to_version_1() {
        assert_eq!(emitted(&packet_repr(), |_| {}), PACKET_BYTES);
        let mut repr = Repr::new(Ipv4Addr::new(192, 0, 2, 11), 1, 2, 1);
        repr.push(Membership {
            anycast: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            hold_ms: 1000,
            preference: 1,
            weight: 1,
        })
        .unwrap();
        let buf = emitted(&repr, |p| p.hmac_mut().fill(0xaa));
        // The version-1 vector less its unknown entry (and its flag bit).
        let mut v1 = UNKNOWN_ENTRY_BYTES.to_vec();
        v1.drain(HEADER_LEN..HEADER_LEN + 5);
        v1[3] = 0;
        v1[field::TOTAL_LEN].copy_from_slice(&78u16.to_be_bytes());
        v1[field::ENTRY_COUNT].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(buf, v1);
    }

    /// What a version-1 receiver (which knows types 1 and 2 and skips any other by its length)
    /// makes of an IPv6 message: the sender 0.0.0.0 and two unknown entries, no membership.
    #[test]
    fn an_ipv6_message_gives_a_version_1_parser_no_membership() {
        let packet = Packet::new_checked(&PACKET6_BYTES[..]).unwrap();
        let mut tlvs = &PACKET6_BYTES[HEADER_LEN..PACKET6_BYTES.len() - TRAILER_LEN];
        let (mut v1_known, mut v1_unknown) = (Vec::new(), 0);
        while let [kind, len, rest @ ..] = tlvs {
            match *kind {
                MEMBERSHIP_KIND | LINK_ADDR_KIND => v1_known.push(*kind),
                _ => v1_unknown += 1,
            }
            tlvs = &rest[usize::from(*len)..];
        }
        assert_eq!((v1_known, v1_unknown), (vec![LINK_ADDR_KIND], 2));
        assert_eq!(packet.sender(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn entries_may_come_in_any_order() {
        // The sender entry last: moved from the front to just before the trailer.
        let mut buf = PACKET6_BYTES.to_vec();
        let sender: Vec<u8> = buf.drain(HEADER_LEN..HEADER_LEN + 18).collect();
        let end = buf.len() - TRAILER_LEN;
        buf.splice(end..end, sender);
        let parsed = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(parsed, packet6_repr());
    }

    #[test]
    fn one_sender_of_one_family() {
        // An IPv6 sender entry beside a non-zero IPv4 sender field.
        let mut buf = PACKET6_BYTES;
        buf[field::SENDER].copy_from_slice(&[192, 0, 2, 10]);
        let parsed = Repr::parse(&Packet::new_unchecked(&buf[..]));
        assert_eq!(parsed, Err(Error::TwoSenders));
        // Two IPv6 sender entries.
        let sender = PACKET6_BYTES[HEADER_LEN..HEADER_LEN + 18].to_vec();
        let twice = with_entry(PACKET6_BYTES.to_vec(), &sender);
        let parsed = Repr::parse(&Packet::new_checked(&twice[..]).unwrap());
        assert_eq!(parsed, Err(Error::DuplicateSender));
        // An IPv4 membership from an IPv6 sender, and an IPv6 one from an IPv4 sender.
        let v4_entry = PACKET_BYTES[HEADER_LEN..HEADER_LEN + 14].to_vec();
        let mixed = with_entry(PACKET6_BYTES.to_vec(), &v4_entry);
        let parsed = Repr::parse(&Packet::new_checked(&mixed[..]).unwrap());
        assert_eq!(parsed, Err(Error::FamilyMismatch));
        let v6_entry = PACKET6_BYTES[HEADER_LEN + 18..HEADER_LEN + 44].to_vec();
        let mixed = with_entry(PACKET_BYTES.to_vec(), &v6_entry);
        let parsed = Repr::parse(&Packet::new_checked(&mixed[..]).unwrap());
        assert_eq!(parsed, Err(Error::FamilyMismatch));
        // And the builder refuses to make either.
        assert_eq!(packet6_repr().push(SERVE), Err(Error::FamilyMismatch));
        assert_eq!(packet_repr().push(SERVE6), Err(Error::FamilyMismatch));
        assert_eq!(Error::FamilyMismatch.reason(), "family_mismatch");
    }

    #[test]
    fn ipv6_entries_of_a_wrong_length_or_twice_rejected() {
        for (offset, kind) in [
            (HEADER_LEN, SENDER6_KIND),
            (HEADER_LEN + 18, MEMBERSHIP6_KIND),
        ] {
            let mut buf = PACKET6_BYTES.to_vec();
            let len = buf[offset + 1];
            buf[offset + 1] = len - 1;
            buf.remove(offset + 2);
            let total = buf.len() as u16;
            buf[field::TOTAL_LEN].copy_from_slice(&total.to_be_bytes());
            let parsed = Repr::parse(&Packet::new_checked(&buf[..]).unwrap());
            assert_eq!(parsed, Err(Error::BadEntry { kind, len: len - 1 }));
        }
        let membership = PACKET6_BYTES[HEADER_LEN + 18..HEADER_LEN + 44].to_vec();
        let twice = with_entry(PACKET6_BYTES.to_vec(), &membership);
        let parsed = Repr::parse(&Packet::new_checked(&twice[..]).unwrap());
        assert_eq!(parsed, Err(Error::DuplicateEntry(SERVE6.anycast)));
    }

    /// 42 IPv6 memberships with the sender and link-layer entries fit in MAX_LEN; a 43rd does
    /// not, and the builder says so instead of emitting an oversized message.
    #[test]
    fn ipv6_memberships_are_limited_by_size() {
        let mut repr = Repr::new(SENDER6, 1, 1, 1);
        repr.set_link_addr([2, 0, 0, 0, 0, 1]).unwrap();
        for i in 0..42u16 {
            let anycast = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, i);
            repr.push(Membership {
                anycast: anycast.into(),
                ..SERVE6
            })
            .unwrap();
        }
        let next = Membership {
            anycast: Ipv6Addr::new(0x2001, 0xdb8, 0x54, 0, 0, 0, 0, 0).into(),
            ..SERVE6
        };
        assert_eq!(repr.push(next), Err(Error::TooLong));
        let buf = emitted(&repr, |_| {});
        assert!(buf.len() <= MAX_LEN, "{}", buf.len());
        let parsed = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(parsed, repr);
    }

    #[test]
    fn ipv6_truncation_at_every_offset() {
        for len in 0..PACKET6_BYTES.len() {
            let prefix = &PACKET6_BYTES[..len];
            assert_eq!(Packet::new_checked(prefix), Err(Error::Truncated), "{len}");
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(prefix)),
                Err(Error::Truncated),
                "{len}"
            );
            assert!(Packet::new_unchecked(prefix).entries().count() <= 3);
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.magic(), MAGIC);
        assert_eq!(packet.version(), 1);
        assert_eq!(packet.flags(), 0);
        assert_eq!(packet.total_len(), 92);
        assert_eq!(packet.entry_count(), 2);
        assert_eq!(packet.sender(), Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(packet.seq(), 42);
        assert_eq!(packet.timestamp_ms(), 1_700_000_000_000);
        assert_eq!(packet.key_id(), 7);
        assert_eq!(packet.hmac(), &[0; HMAC_LEN]);
        assert_eq!(packet.signed_bytes(), &PACKET_BYTES[..60]);
        let entries: Vec<_> = packet.entries().collect();
        assert_eq!(
            entries,
            [Ok(Entry::Membership(SERVE)), Ok(Entry::Membership(LEAVE))]
        );
        assert!(LEAVE.is_leave() && LEAVE.is_drain());
        assert!(!SERVE.is_leave() && !SERVE.is_drain());
    }

    #[test]
    fn construct() {
        let mut buf = [0xff; 92];
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_magic();
        packet.set_version(1);
        packet.set_flags(0);
        packet.set_total_len(92);
        packet.set_entry_count(2);
        packet.set_sender(Ipv4Addr::new(192, 0, 2, 10));
        packet.set_seq(42);
        packet.set_timestamp_ms(1_700_000_000_000);
        let tlvs = packet.entries_mut();
        SERVE.emit(&mut tlvs[..14]);
        LEAVE.emit(&mut tlvs[14..]);
        packet.set_key_id(7);
        packet.hmac_mut().fill(0);
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn parse() {
        let repr = Repr::parse(&Packet::new_unchecked(&PACKET_BYTES[..])).unwrap();
        assert_eq!(repr, packet_repr());
        assert_eq!(repr.memberships(), [SERVE, LEAVE]);
        assert_eq!(repr.unknown_entries, 0);
    }

    #[test]
    fn emit() {
        let repr = packet_repr();
        assert_eq!(repr.buffer_len(), PACKET_BYTES.len());
        let mut buf = [0x55; 92];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, PACKET_BYTES);
    }

    /// Regression: the member's MAC was taken from unauthenticated ARP. It now travels in the
    /// signed advertisement, as a type-2 entry.
    #[test]
    fn link_addr_entry_round_trips_and_is_checked() {
        let mut repr = Repr::new(Ipv4Addr::new(203, 0, 113, 2), 1, 2, 3);
        repr.push(SERVE).unwrap();
        repr.set_link_addr([0x02, 0x11, 0, 0, 0, 0x02]).unwrap();
        let buf = emitted(&repr, |_| {});
        assert_eq!(buf.len(), MIN_LEN + 14 + 8);
        assert_eq!(
            &buf[HEADER_LEN + 14..HEADER_LEN + 22],
            &[2, 6, 0x02, 0x11, 0, 0, 0, 0x02]
        );
        assert_eq!(be_u16(&buf[field::ENTRY_COUNT]), 2);
        let parsed = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(parsed, repr);

        // A second link address, and one of the wrong length, are rejected.
        let mut twice = buf.clone();
        let entry = twice[HEADER_LEN + 14..HEADER_LEN + 22].to_vec();
        twice.splice(HEADER_LEN + 22..HEADER_LEN + 22, entry);
        let total = twice.len() as u16;
        twice[field::TOTAL_LEN].copy_from_slice(&total.to_be_bytes());
        twice[field::ENTRY_COUNT].copy_from_slice(&3u16.to_be_bytes());
        let packet = Packet::new_checked(&twice[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::DuplicateLinkAddr));
        let mut short = buf.clone();
        short[HEADER_LEN + 15] = 5;
        short.remove(HEADER_LEN + 16);
        let total = short.len() as u16;
        short[field::TOTAL_LEN].copy_from_slice(&total.to_be_bytes());
        let packet = Packet::new_checked(&short[..]).unwrap();
        assert_eq!(
            Repr::parse(&packet),
            Err(Error::BadEntry { kind: 2, len: 5 })
        );
    }

    #[test]
    fn round_trip() {
        let mut repr = Repr::new(Ipv4Addr::new(10, 0, 0, 1), u64::MAX, 1, u32::MAX);
        for i in 0..MAX_ENTRIES as u32 {
            repr.push(Membership {
                anycast: Ipv4Addr::from(0xc633_6400 + i).into(),
                hold_ms: i * 1000,
                preference: i as u16,
                weight: 0xffff - i as u16,
            })
            .unwrap();
        }
        assert_eq!(repr.push(SERVE), Err(Error::TooManyEntries));
        let buf = emitted(&repr, |_| {});
        assert!(buf.len() <= MAX_LEN);
        let parsed = Repr::parse(&Packet::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(parsed, repr);

        let empty = Repr::new(Ipv4Addr::new(10, 0, 0, 1), 0, 0, 0);
        let buf = emitted(&empty, |_| {});
        assert_eq!(buf.len(), MIN_LEN);
        assert_eq!(Repr::parse(&Packet::new_unchecked(&buf[..])), Ok(empty));
    }

    #[test]
    fn truncation_at_every_offset() {
        for bytes in [&PACKET_BYTES[..], &UNKNOWN_ENTRY_BYTES[..]] {
            for len in 0..bytes.len() {
                let prefix = &bytes[..len];
                assert_eq!(Packet::new_checked(prefix), Err(Error::Truncated), "{len}");
                assert_eq!(
                    Repr::parse(&Packet::new_unchecked(prefix)),
                    Err(Error::Truncated),
                    "{len}"
                );
                // Never panics, and finds no more entries than the whole message has.
                assert!(Packet::new_unchecked(prefix).entries().count() <= 2);
            }
        }
    }

    #[test]
    fn bad_magic_and_unknown_version_rejected() {
        let mut buf = PACKET_BYTES;
        buf[1] = b'D';
        assert_eq!(Packet::new_checked(&buf[..]), Err(Error::BadMagic));
        let mut buf = PACKET_BYTES;
        buf[2] = 2;
        let err = Repr::parse(&Packet::new_unchecked(&buf[..])).unwrap_err();
        assert_eq!(err, Error::UnsupportedVersion(2));
        assert_eq!(err.reason(), "unsupported_version");
    }

    #[test]
    fn unknown_entry_skipped_and_counted() {
        let packet = Packet::new_checked(&UNKNOWN_ENTRY_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0x80);
        assert_eq!(packet.hmac(), &[0xaa; HMAC_LEN]);
        let entries: Vec<_> = packet.entries().collect();
        assert_eq!(entries[0], Ok(Entry::Unknown { kind: 9, len: 3 }));
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.unknown_entries, 1);
        assert_eq!(
            repr.memberships(),
            [Membership {
                anycast: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
                hold_ms: 1000,
                preference: 1,
                weight: 1,
            }]
        );
    }

    #[test]
    fn wrong_length_for_known_entry_rejected() {
        // The second membership claims 11 value bytes.
        let mut buf = PACKET_BYTES;
        buf[43] = 11;
        let err = Repr::parse(&Packet::new_unchecked(&buf[..])).unwrap_err();
        assert_eq!(err, Error::BadEntry { kind: 1, len: 11 });
        assert_eq!(err.reason(), "bad_entry");
    }

    #[test]
    fn entry_overrun_and_count_mismatch_rejected() {
        // The second entry claims 13 value bytes: one more than the entries hold.
        for kind in [MEMBERSHIP_KIND, 0x77] {
            let mut buf = PACKET_BYTES;
            buf[42] = kind;
            buf[43] = 13;
            let parsed = Repr::parse(&Packet::new_unchecked(&buf[..]));
            assert_eq!(parsed, Err(Error::EntryOverrun), "{kind}");
        }

        for count in [0, 1, 3, 64] {
            let buf = emitted(&packet_repr(), |p| p.set_entry_count(count));
            let parsed = Repr::parse(&Packet::new_unchecked(&buf[..]));
            assert_eq!(parsed, Err(Error::BadEntryCount), "{count}");
        }
    }

    #[test]
    fn duplicate_membership_rejected() {
        let mut repr = packet_repr();
        repr.entries[1].anycast = SERVE.anycast;
        let buf = emitted(&repr, |_| {});
        let parsed = Repr::parse(&Packet::new_unchecked(&buf[..]));
        assert_eq!(parsed, Err(Error::DuplicateEntry(SERVE.anycast)));
    }

    #[test]
    fn total_length_mismatch_rejected() {
        let mut long = PACKET_BYTES.to_vec();
        long.push(0);
        assert_eq!(Packet::new_checked(&long[..]), Err(Error::BadLength));
        let short = emitted(&packet_repr(), |p| p.set_total_len(93));
        assert_eq!(Packet::new_checked(&short[..]), Err(Error::Truncated));
        let tiny = emitted(&packet_repr(), |p| p.set_total_len(MIN_LEN as u16 - 1));
        assert_eq!(Packet::new_checked(&tiny[..]), Err(Error::BadLength));
        assert_eq!(Error::BadLength.reason(), "bad_length");
    }

    #[test]
    fn too_many_entries_rejected() {
        let buf = emitted(&packet_repr(), |p| {
            p.set_entry_count(MAX_ENTRIES as u16 + 1)
        });
        let err = Repr::parse(&Packet::new_unchecked(&buf[..])).unwrap_err();
        assert_eq!(err, Error::TooManyEntries);
        assert_eq!(err.reason(), "too_many_entries");

        // 65 one-byte unknown entries fit in the size limit but not in the count.
        let mut buf = emitted(&Repr::new(Ipv4Addr::LOCALHOST, 1, 1, 1), |_| {});
        let tlvs: Vec<u8> = (0..65).flat_map(|_| [0x63, 0]).collect();
        buf.splice(HEADER_LEN..HEADER_LEN, tlvs);
        let total = buf.len() as u16;
        let mut packet = Packet::new_unchecked(&mut buf[..]);
        packet.set_total_len(total);
        packet.set_entry_count(64);
        let parsed = Repr::parse(&Packet::new_unchecked(&buf[..]));
        assert_eq!(parsed, Err(Error::BadEntryCount));
    }

    #[test]
    fn size_limit() {
        // An unknown entry pads a message to exactly MAX_LEN: accepted; one byte more is not.
        for (len, expected) in [(MAX_LEN, Ok(())), (MAX_LEN + 1, Err(Error::TooLong))] {
            let mut buf = emitted(&Repr::new(Ipv4Addr::LOCALHOST, 1, 1, 1), |_| {});
            let mut tlvs = Vec::new();
            let mut count = 0;
            while tlvs.len() < len - MIN_LEN {
                let value = (len - MIN_LEN - tlvs.len() - ENTRY_HEADER_LEN).min(255);
                tlvs.extend([0x63, value as u8]);
                tlvs.extend(core::iter::repeat_n(0, value));
                count += 1;
            }
            buf.splice(HEADER_LEN..HEADER_LEN, tlvs);
            let mut packet = Packet::new_unchecked(&mut buf[..]);
            packet.set_total_len(len as u16);
            packet.set_entry_count(count);
            let packet = Packet::new_unchecked(&buf[..]);
            assert_eq!(packet.check_len(), expected, "{len}");
            if expected.is_ok() {
                assert_eq!(Repr::parse(&packet).unwrap().unknown_entries, count);
            }
        }
        assert_eq!(Error::TooLong.reason(), "too_long");
    }

    #[test]
    fn reasons_are_snake_case() {
        let all = [
            Error::Truncated,
            Error::BadMagic,
            Error::UnsupportedVersion(0),
            Error::BadLength,
            Error::TooLong,
            Error::TooManyEntries,
            Error::BadEntry { kind: 1, len: 0 },
            Error::EntryOverrun,
            Error::BadEntryCount,
            Error::DuplicateEntry(Ipv4Addr::UNSPECIFIED.into()),
            Error::DuplicateLinkAddr,
            Error::DuplicateSender,
            Error::TwoSenders,
            Error::FamilyMismatch,
        ];
        for err in all {
            let reason = err.reason();
            assert!(reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
