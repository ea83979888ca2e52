//! MAC addresses as the CLI reads and prints them (`aa:bb:cc:dd:ee:ff`).
use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl MacAddr {
    /// Whether frames can be sent to it: not all-zero, not broadcast or multicast (the low bit
    /// of the first octet).
    pub fn is_unicast(&self) -> bool {
        self.0 != [0; 6] && self.0[0] & 1 == 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?} (expected six hex octets like 02:00:5e:10:00:01)")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for octet in &mut mac {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "02:00:5E:10:00:01".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
        assert_eq!(mac.to_string(), "02:00:5e:10:00:01");
        assert_eq!("02-00-5e-10-00-01".parse::<MacAddr>(), Ok(mac));
    }

    #[test]
    fn unicast_excludes_zero_broadcast_and_multicast() {
        assert!(MacAddr([2, 0, 0x5e, 0x10, 0, 1]).is_unicast());
        for mac in [
            [0; 6],
            [0xff; 6],
            [0x01, 0, 0x5e, 0, 0, 1],
            [0x33, 0x33, 0, 0, 0, 1],
        ] {
            assert!(!MacAddr(mac).is_unicast(), "{mac:x?}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "zz",
            "02:00:5e:10:00",
            "02:00:5e:10:00:01:02",
            "2:00:5e:10:00:01",
            "02:00:5e:10:00:0g",
            "02:00:5e:10:00:+1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
    }
}
