//! MAC addresses as the CLI reads and prints them (`aa:bb:cc:dd:ee:ff`).
use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?} (expected six hex octets like 02:00:5e:10:00:01)")]
pub struct ParseMacError(String);

/// A MAC that cannot be a member's: frames sent to it would not reach one host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotUnicast {
    #[error("{0} is the broadcast MAC, not a member's")]
    Broadcast(MacAddr),
    #[error("{0} is a multicast MAC (low bit of the first octet set), not a member's")]
    Multicast(MacAddr),
    #[error("{0} is the all-zero MAC, not a member's")]
    Zero(MacAddr),
}

impl MacAddr {
    /// Whether this can be one host's MAC: not broadcast, multicast or all zeros.
    pub fn check_unicast(self) -> Result<Self, NotUnicast> {
        if self.0 == [0xff; 6] {
            Err(NotUnicast::Broadcast(self))
        } else if self.0[0] & 1 != 0 {
            Err(NotUnicast::Multicast(self))
        } else if self.0 == [0; 6] {
            Err(NotUnicast::Zero(self))
        } else {
            Ok(self)
        }
    }

    /// [`MacAddr::check_unicast`] as a yes or no.
    pub fn is_unicast(self) -> bool {
        self.check_unicast().is_ok()
    }
}

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
    fn only_unicast_is_a_members_mac() {
        let mac = |s: &str| s.parse::<MacAddr>().unwrap().check_unicast();
        assert!(mac("02:00:5e:10:00:01").is_ok());
        assert!(matches!(
            mac("ff:ff:ff:ff:ff:ff"),
            Err(NotUnicast::Broadcast(_))
        ));
        assert!(matches!(
            mac("01:00:5e:00:00:01"),
            Err(NotUnicast::Multicast(_))
        ));
        assert!(matches!(
            mac("33:33:00:00:00:01"),
            Err(NotUnicast::Multicast(_))
        ));
        assert!(matches!(mac("00:00:00:00:00:00"), Err(NotUnicast::Zero(_))));
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
