//! Wire format of the identity exchange (RFC 1546: applications that keep state "learn the
//! unicast address of their peer on the first exchange"): a client sends a query to an anycast
//! address, and the member that receives it answers, from the anycast address, with its unicast
//! address and hostname.
//!
//! Layout (version 1, big-endian; docs/identity-format.md has the full description):
//!
//! ```text
//! header   16 B  magic "AI", version, kind (1 query, 2 reply), family (0 query, 4 IPv4,
//!                6 IPv6), hostname length, reserved (2 B, zero), nonce (u64, echoed)
//! query          zero padding up to QUERY_LEN (96 B) in all: a reply is never longer than
//!                its query, so a responder cannot be used to amplify traffic
//! reply  8/32 B  anycast address, member unicast address (both of the reply's family)
//!                hostname (UTF-8, at most 64 B in an IPv4 reply, 48 B in an IPv6 one)
//! ```
//!
//! [`Repr`] is the parsed message. Contract: [`Repr::parse`] never panics, on any input;
//! [`Repr::emit`] never panics on a buffer of at least [`Repr::buffer_len`] bytes. The format is
//! small and fixed, so it has no zero-copy view: fields are at the offsets of `field`.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The first two bytes of every identity message: "AI".
pub const MAGIC: [u8; 2] = *b"AI";
/// The version this module speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::ADDRS_START;
/// Length of a query, padding included (a longer datagram is a query too; its tail is ignored).
pub const QUERY_LEN: usize = 96;
/// The longest hostname an IPv4 reply carries (Linux's HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;
/// The longest hostname an IPv6 reply carries: its addresses take 24 bytes more, and the reply
/// must still fit in [`QUERY_LEN`].
pub const MAX_HOSTNAME6: usize = QUERY_LEN - field::ADDRS_START - 32;
/// The longest reply (of either family).
pub const MAX_REPLY_LEN: usize = QUERY_LEN;
/// Default UDP port of `announce --identity-port` and `probe --port`.
pub const DEFAULT_PORT: u16 = 5447;

const KIND_QUERY: u8 = 1;
const KIND_REPLY: u8 = 2;
const FAMILY_IPV4: u8 = 4;
const FAMILY_IPV6: u8 = 6;

const _: () = assert!(field::ADDRS_START + 8 + MAX_HOSTNAME <= MAX_REPLY_LEN);
const _: () = assert!(field::ADDRS_START + 32 + MAX_HOSTNAME6 <= MAX_REPLY_LEN);
const _: () = assert!(MAX_REPLY_LEN <= QUERY_LEN);

mod field {
    pub type Field = core::ops::Range<usize>;

    pub const MAGIC: Field = 0..2;
    pub const VERSION: usize = 2;
    pub const KIND: usize = 3;
    pub const FAMILY: usize = 4;
    pub const HOSTNAME_LEN: usize = 5;
    pub const RESERVED: Field = 6..8;
    pub const NONCE: Field = 8..16;
    /// The anycast address, then the member's, each `len` bytes (4 or 16), then the hostname.
    pub const ADDRS_START: usize = 16;

    pub const fn anycast(len: usize) -> Field {
        ADDRS_START..ADDRS_START + len
    }

    pub const fn member(len: usize) -> Field {
        ADDRS_START + len..ADDRS_START + 2 * len
    }

    pub const fn hostname_start(len: usize) -> usize {
        ADDRS_START + 2 * len
    }
}

/// Why a datagram is not a valid identity message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the header, a query shorter than [`QUERY_LEN`], or a reply shorter than its
    /// hostname length says.
    Truncated,
    /// The first two bytes are not "AI".
    BadMagic,
    /// A version other than [`VERSION`].
    UnsupportedVersion(u8),
    /// A kind other than query or reply.
    UnknownKind(u8),
    /// A reply of an address family other than IPv4 or IPv6, or a query naming one.
    UnsupportedFamily(u8),
    /// Reserved bytes not zero, or a reply longer than its fields.
    BadLength,
    /// A hostname length above [`MAX_HOSTNAME`] ([`MAX_HOSTNAME6`] in an IPv6 reply), or a
    /// hostname that is not UTF-8.
    BadHostname,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "truncated"),
            Error::BadMagic => write!(f, "not an identity message (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Error::UnknownKind(k) => write!(f, "unknown kind {k}"),
            Error::UnsupportedFamily(a) => write!(f, "unsupported address family {a}"),
            Error::BadLength => write!(f, "length or reserved bytes disagree with the format"),
            Error::BadHostname => write!(f, "hostname too long or not UTF-8"),
        }
    }
}

impl core::error::Error for Error {}

/// A reply: who answered for the anycast address. Both addresses are of one family (so the
/// fields are private: [`Reply::new`] checks that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub nonce: u64,
    anycast: IpAddr,
    member: IpAddr,
    hostname: [u8; MAX_HOSTNAME],
    hostname_len: u8,
}

impl Reply {
    /// A reply; `None` if `anycast` and `member` are of different families. `hostname` is cut
    /// to the family's limit ([`MAX_HOSTNAME`], [`MAX_HOSTNAME6`]) at a character boundary.
    pub fn new(
        nonce: u64,
        anycast: impl Into<IpAddr>,
        member: impl Into<IpAddr>,
        hostname: &str,
    ) -> Option<Self> {
        let (anycast, member) = (anycast.into(), member.into());
        if anycast.is_ipv4() != member.is_ipv4() {
            return None;
        }
        let mut len = hostname.len().min(max_hostname(anycast));
        while !hostname.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0; MAX_HOSTNAME];
        buf[..len].copy_from_slice(&hostname.as_bytes()[..len]);
        Some(Reply {
            nonce,
            anycast,
            member,
            hostname: buf,
            hostname_len: len as u8,
        })
    }

    /// The anycast address the query was sent to.
    pub fn anycast(&self) -> IpAddr {
        self.anycast
    }

    /// The member's unicast address, of the anycast address's family.
    pub fn member(&self) -> IpAddr {
        self.member
    }

    pub fn hostname(&self) -> &str {
        // Valid by construction: `new` cuts at a boundary, `parse` checks UTF-8.
        core::str::from_utf8(&self.hostname[..usize::from(self.hostname_len)]).unwrap_or("")
    }

    /// Length of one address of this reply's family.
    fn addr_len(&self) -> usize {
        addr_len(self.anycast)
    }
}

fn addr_len(a: IpAddr) -> usize {
    if a.is_ipv4() { 4 } else { 16 }
}

fn max_hostname(a: IpAddr) -> usize {
    if a.is_ipv4() {
        MAX_HOSTNAME
    } else {
        MAX_HOSTNAME6
    }
}

/// A parsed identity message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    Query { nonce: u64 },
    Reply(Reply),
}

/// The address of `len` bytes (4 or 16) at the start of `b`.
fn address(b: &[u8], len: usize) -> IpAddr {
    if len == 4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let mut o = [0; 16];
        o.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

fn octets(a: IpAddr, out: &mut [u8]) {
    match a {
        IpAddr::V4(v4) => out.copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
    }
}

impl Repr {
    /// Parses a datagram.
    pub fn parse(buf: &[u8]) -> Result<Repr, Error> {
        if buf.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if buf[field::MAGIC] != MAGIC {
            return Err(Error::BadMagic);
        }
        if buf[field::VERSION] != VERSION {
            return Err(Error::UnsupportedVersion(buf[field::VERSION]));
        }
        if buf[field::RESERVED] != [0, 0] {
            return Err(Error::BadLength);
        }
        let mut nonce = [0; 8];
        nonce.copy_from_slice(&buf[field::NONCE]);
        let nonce = u64::from_be_bytes(nonce);
        let (family, name_len) = (buf[field::FAMILY], usize::from(buf[field::HOSTNAME_LEN]));
        match buf[field::KIND] {
            KIND_QUERY if family != 0 => Err(Error::UnsupportedFamily(family)),
            KIND_QUERY if name_len != 0 => Err(Error::BadLength),
            KIND_QUERY if buf.len() < QUERY_LEN => Err(Error::Truncated),
            KIND_QUERY => Ok(Repr::Query { nonce }),
            KIND_REPLY => {
                let (len, max) = match family {
                    FAMILY_IPV4 => (4, MAX_HOSTNAME),
                    FAMILY_IPV6 => (16, MAX_HOSTNAME6),
                    other => return Err(Error::UnsupportedFamily(other)),
                };
                let start = field::hostname_start(len);
                if name_len > max {
                    return Err(Error::BadHostname);
                }
                if buf.len() < start + name_len {
                    return Err(Error::Truncated);
                }
                if buf.len() > start + name_len {
                    return Err(Error::BadLength);
                }
                let name = core::str::from_utf8(&buf[start..]).map_err(|_| Error::BadHostname)?;
                let anycast = address(&buf[field::anycast(len)], len);
                let member = address(&buf[field::member(len)], len);
                // Same family by construction, and the name fits: `new` cannot refuse.
                Reply::new(nonce, anycast, member, name)
                    .map(Repr::Reply)
                    .ok_or(Error::BadLength)
            }
            kind => Err(Error::UnknownKind(kind)),
        }
    }

    /// Bytes [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Repr::Query { .. } => QUERY_LEN,
            Repr::Reply(r) => field::hostname_start(r.addr_len()) + usize::from(r.hostname_len),
        }
    }

    /// Writes the message at the start of `buf` (at least [`Repr::buffer_len`] bytes); returns
    /// its length.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        let buf = &mut buf[..len];
        buf.fill(0);
        buf[field::MAGIC].copy_from_slice(&MAGIC);
        buf[field::VERSION] = VERSION;
        match self {
            Repr::Query { nonce } => {
                buf[field::KIND] = KIND_QUERY;
                buf[field::NONCE].copy_from_slice(&nonce.to_be_bytes());
            }
            Repr::Reply(r) => {
                let n = r.addr_len();
                buf[field::KIND] = KIND_REPLY;
                buf[field::FAMILY] = if n == 4 { FAMILY_IPV4 } else { FAMILY_IPV6 };
                buf[field::HOSTNAME_LEN] = r.hostname_len;
                buf[field::NONCE].copy_from_slice(&r.nonce.to_be_bytes());
                octets(r.anycast, &mut buf[field::anycast(n)]);
                octets(r.member, &mut buf[field::member(n)]);
                buf[field::hostname_start(n)..].copy_from_slice(r.hostname().as_bytes());
            }
        }
        len
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    /// Nonce 0x0102030405060708, 198.51.100.53 served by 203.0.113.2, hostname "m1".
    static REPLY_BYTES: [u8; 26] = [
        0x41, 0x49, 0x01, 0x02, // magic, version, kind reply
        0x04, 0x02, 0x00, 0x00, // family IPv4, hostname length 2, reserved
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // nonce
        0xc6, 0x33, 0x64, 0x35, // anycast
        0xcb, 0x00, 0x71, 0x02, // member
        b'm', b'1', // hostname
    ];

    /// Nonce 0x0102030405060708, 2001:db8:53::53 served by 2001:db8:203:1::2, hostname "m1".
    static REPLY6_BYTES: [u8; 50] = [
        0x41, 0x49, 0x01, 0x02, // magic, version, kind reply
        0x06, 0x02, 0x00, 0x00, // family IPv6, hostname length 2, reserved
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // nonce
        0x20, 0x01, 0x0d, 0xb8, 0x00, 0x53, 0x00, 0x00, // anycast
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x53, //
        0x20, 0x01, 0x0d, 0xb8, 0x02, 0x03, 0x00, 0x01, // member
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, //
        b'm', b'1', // hostname
    ];

    fn reply() -> Repr {
        Repr::Reply(
            Reply::new(
                0x0102_0304_0506_0708,
                Ipv4Addr::new(198, 51, 100, 53),
                Ipv4Addr::new(203, 0, 113, 2),
                "m1",
            )
            .unwrap(),
        )
    }

    fn reply6() -> Repr {
        let anycast: Ipv6Addr = "2001:db8:53::53".parse().unwrap();
        let member: Ipv6Addr = "2001:db8:203:1::2".parse().unwrap();
        Repr::Reply(Reply::new(0x0102_0304_0506_0708, anycast, member, "m1").unwrap())
    }

    #[test]
    fn reply_parses_and_emits_the_documented_bytes() {
        assert_eq!(Repr::parse(&REPLY_BYTES), Ok(reply()));
        let mut buf = [0xff; MAX_REPLY_LEN];
        let len = reply().emit(&mut buf);
        assert_eq!(&buf[..len], &REPLY_BYTES[..]);
    }

    #[test]
    fn ipv6_reply_parses_and_emits_the_documented_bytes() {
        assert_eq!(Repr::parse(&REPLY6_BYTES), Ok(reply6()));
        let mut buf = [0xff; MAX_REPLY_LEN];
        let len = reply6().emit(&mut buf);
        assert_eq!(&buf[..len], &REPLY6_BYTES[..]);
        let Ok(Repr::Reply(r)) = Repr::parse(&REPLY6_BYTES) else {
            panic!("not a reply");
        };
        assert!(r.anycast().is_ipv6() && r.member().is_ipv6());
    }

    #[test]
    fn mixed_families_are_refused_and_ipv6_hostnames_fit_the_query() {
        let v4 = Ipv4Addr::LOCALHOST;
        let v6 = Ipv6Addr::LOCALHOST;
        assert_eq!(Reply::new(1, v4, v6, "x"), None);
        assert_eq!(Reply::new(1, v6, v4, "x"), None);
        let long = Repr::Reply(Reply::new(1, v6, v6, &"x".repeat(200)).unwrap());
        assert_eq!(long.buffer_len(), QUERY_LEN);
        let Repr::Reply(r) = long else { panic!() };
        assert_eq!(r.hostname().len(), MAX_HOSTNAME6);
        // A hostname length above the IPv6 limit is refused even where an IPv4 one is fine.
        let mut b = REPLY6_BYTES.to_vec();
        b[5] = (MAX_HOSTNAME6 + 1) as u8;
        b.resize(48 + MAX_HOSTNAME6 + 1, b'x');
        assert_eq!(Repr::parse(&b), Err(Error::BadHostname));
    }

    #[test]
    fn query_round_trips_padded_and_never_shorter_than_any_reply() {
        let query = Repr::Query { nonce: 42 };
        let mut buf = [0xff; QUERY_LEN];
        assert_eq!(query.emit(&mut buf), QUERY_LEN);
        assert_eq!(&buf[..4], b"AI\x01\x01");
        assert!(buf[16..].iter().all(|b| *b == 0));
        assert_eq!(Repr::parse(&buf), Ok(query));
        // A longer datagram is still a query; a shorter one is refused (no amplification).
        let mut long = [0; 200];
        long[..QUERY_LEN].copy_from_slice(&buf);
        assert_eq!(Repr::parse(&long), Ok(query));
        assert_eq!(Repr::parse(&buf[..QUERY_LEN - 1]), Err(Error::Truncated));
        let longest = Repr::Reply(
            Reply::new(
                1,
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::LOCALHOST,
                &"x".repeat(200),
            )
            .unwrap(),
        );
        assert_eq!(longest.buffer_len(), 24 + MAX_HOSTNAME);
        assert!(longest.buffer_len() <= MAX_REPLY_LEN);
    }

    #[test]
    fn truncation_at_every_length_is_an_error_not_a_panic() {
        for len in 0..REPLY_BYTES.len() {
            assert!(Repr::parse(&REPLY_BYTES[..len]).is_err(), "length {len}");
        }
        for len in 0..REPLY6_BYTES.len() {
            assert!(Repr::parse(&REPLY6_BYTES[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let with = |i: usize, v: u8| {
            let mut b = REPLY_BYTES;
            b[i] = v;
            Repr::parse(&b)
        };
        assert_eq!(with(0, b'X'), Err(Error::BadMagic));
        assert_eq!(with(2, 2), Err(Error::UnsupportedVersion(2)));
        assert_eq!(with(3, 9), Err(Error::UnknownKind(9)));
        assert_eq!(with(4, 5), Err(Error::UnsupportedFamily(5)));
        // Family 6 with IPv4's 8 bytes of addresses: shorter than its addresses.
        assert_eq!(with(4, 6), Err(Error::Truncated));
        assert_eq!(with(5, 65), Err(Error::BadHostname));
        assert_eq!(with(5, 1), Err(Error::BadLength));
        assert_eq!(with(6, 1), Err(Error::BadLength));
        assert_eq!(with(24, 0xff), Err(Error::BadHostname));
    }

    #[test]
    fn hostnames_are_cut_at_a_character_boundary() {
        let name = "é".repeat(40); // 80 bytes
        let r = Reply::new(0, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, &name).unwrap();
        assert_eq!(r.hostname(), "é".repeat(32));
        let r = Reply::new(0, Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, &name).unwrap();
        assert_eq!(r.hostname(), "é".repeat(24));
    }
}
