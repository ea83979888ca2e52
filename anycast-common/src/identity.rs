//! Wire format of the identity exchange (RFC 1546: applications that keep state "learn the
//! unicast address of their peer on the first exchange"): a client sends a query to an anycast
//! address, and the member that receives it answers, from the anycast address, with its unicast
//! address and hostname.
//!
//! Layout (version 1, big-endian; docs/identity-format.md has the full description):
//!
//! ```text
//! header   16 B  magic "AI", version, kind (1 query, 2 reply), family (0 query, 4 IPv4),
//!                hostname length, reserved (2 B, zero), nonce (u64, echoed by the reply)
//! query          zero padding up to QUERY_LEN (96 B) in all: a reply is never longer than
//!                its query, so a responder cannot be used to amplify traffic
//! reply     8 B  anycast address, member unicast address (IPv4)
//!                hostname (UTF-8, at most 64 B)
//! ```
//!
//! [`Repr`] is the parsed message. Contract: [`Repr::parse`] never panics, on any input;
//! [`Repr::emit`] never panics on a buffer of at least [`Repr::buffer_len`] bytes. The format is
//! small and fixed, so it has no zero-copy view: fields are at the offsets of `field`.

use core::fmt;
use core::net::Ipv4Addr;

/// The first two bytes of every identity message: "AI".
pub const MAGIC: [u8; 2] = *b"AI";
/// The version this module speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = field::ADDRS_START;
/// Length of a query, padding included (a longer datagram is a query too; its tail is ignored).
pub const QUERY_LEN: usize = 96;
/// The longest hostname a reply carries (Linux's HOST_NAME_MAX).
pub const MAX_HOSTNAME: usize = 64;
/// The longest reply.
pub const MAX_REPLY_LEN: usize = field::HOSTNAME_START + MAX_HOSTNAME;
/// Default UDP port of `announce --identity-port` and `probe --port`.
pub const DEFAULT_PORT: u16 = 5447;

const KIND_QUERY: u8 = 1;
const KIND_REPLY: u8 = 2;
const FAMILY_IPV4: u8 = 4;

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
    pub const ADDRS_START: usize = 16;
    pub const ANYCAST: Field = 16..20;
    pub const MEMBER: Field = 20..24;
    pub const HOSTNAME_START: usize = 24;
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
    /// A reply of an address family other than IPv4, or a query naming one.
    UnsupportedFamily(u8),
    /// Reserved bytes not zero, or a reply longer than its fields.
    BadLength,
    /// A hostname length above [`MAX_HOSTNAME`], or a hostname that is not UTF-8.
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

/// A reply: who answered for the anycast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub nonce: u64,
    pub anycast: Ipv4Addr,
    /// The member's unicast address.
    pub member: Ipv4Addr,
    hostname: [u8; MAX_HOSTNAME],
    hostname_len: u8,
}

impl Reply {
    /// A reply; `hostname` is cut to [`MAX_HOSTNAME`] bytes at a character boundary.
    pub fn new(nonce: u64, anycast: Ipv4Addr, member: Ipv4Addr, hostname: &str) -> Self {
        let mut len = hostname.len().min(MAX_HOSTNAME);
        while !hostname.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0; MAX_HOSTNAME];
        buf[..len].copy_from_slice(&hostname.as_bytes()[..len]);
        Reply {
            nonce,
            anycast,
            member,
            hostname: buf,
            hostname_len: len as u8,
        }
    }

    pub fn hostname(&self) -> &str {
        // Valid by construction: `new` cuts at a boundary, `parse` checks UTF-8.
        core::str::from_utf8(&self.hostname[..usize::from(self.hostname_len)]).unwrap_or("")
    }
}

/// A parsed identity message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    Query { nonce: u64 },
    Reply(Reply),
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
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
            KIND_REPLY if family != FAMILY_IPV4 => Err(Error::UnsupportedFamily(family)),
            KIND_REPLY if name_len > MAX_HOSTNAME => Err(Error::BadHostname),
            KIND_REPLY if buf.len() < field::HOSTNAME_START + name_len => Err(Error::Truncated),
            KIND_REPLY if buf.len() > field::HOSTNAME_START + name_len => Err(Error::BadLength),
            KIND_REPLY => {
                let name = &buf[field::HOSTNAME_START..];
                let name = core::str::from_utf8(name).map_err(|_| Error::BadHostname)?;
                Ok(Repr::Reply(Reply::new(
                    nonce,
                    ipv4(&buf[field::ANYCAST]),
                    ipv4(&buf[field::MEMBER]),
                    name,
                )))
            }
            kind => Err(Error::UnknownKind(kind)),
        }
    }

    /// Bytes [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Repr::Query { .. } => QUERY_LEN,
            Repr::Reply(r) => field::HOSTNAME_START + usize::from(r.hostname_len),
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
                buf[field::KIND] = KIND_REPLY;
                buf[field::FAMILY] = FAMILY_IPV4;
                buf[field::HOSTNAME_LEN] = r.hostname_len;
                buf[field::NONCE].copy_from_slice(&r.nonce.to_be_bytes());
                buf[field::ANYCAST].copy_from_slice(&r.anycast.octets());
                buf[field::MEMBER].copy_from_slice(&r.member.octets());
                buf[field::HOSTNAME_START..].copy_from_slice(r.hostname().as_bytes());
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

    fn reply() -> Repr {
        Repr::Reply(Reply::new(
            0x0102_0304_0506_0708,
            Ipv4Addr::new(198, 51, 100, 53),
            Ipv4Addr::new(203, 0, 113, 2),
            "m1",
        ))
    }

    #[test]
    fn reply_parses_and_emits_the_documented_bytes() {
        assert_eq!(Repr::parse(&REPLY_BYTES), Ok(reply()));
        let mut buf = [0xff; MAX_REPLY_LEN];
        let len = reply().emit(&mut buf);
        assert_eq!(&buf[..len], &REPLY_BYTES[..]);
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
        let longest = Repr::Reply(Reply::new(
            1,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::LOCALHOST,
            &"x".repeat(200),
        ));
        assert_eq!(longest.buffer_len(), MAX_REPLY_LEN);
    }

    #[test]
    fn truncation_at_every_length_is_an_error_not_a_panic() {
        for len in 0..REPLY_BYTES.len() {
            assert!(Repr::parse(&REPLY_BYTES[..len]).is_err(), "length {len}");
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
        assert_eq!(with(4, 6), Err(Error::UnsupportedFamily(6)));
        assert_eq!(with(5, 65), Err(Error::BadHostname));
        assert_eq!(with(5, 1), Err(Error::BadLength));
        assert_eq!(with(6, 1), Err(Error::BadLength));
        assert_eq!(with(24, 0xff), Err(Error::BadHostname));
    }

    #[test]
    fn hostnames_are_cut_at_a_character_boundary() {
        let name = "é".repeat(40); // 80 bytes
        let r = Reply::new(0, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, &name);
        assert_eq!(r.hostname(), "é".repeat(32));
    }
}
