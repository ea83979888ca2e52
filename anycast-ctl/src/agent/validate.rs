//! Which advertisements the agent believes.
//!
//! Both families alike. In order: the IP TTL (IPv6 hop limit) must be 255 (GTSM: the sender is
//! on the link); the datagram must arrive
//! on an agent interface; it must parse; its sender field must be the datagram's source; with
//! keys configured, its key id must be known and its HMAC tag must verify; its timestamp must be
//! within the replay window of the router's clock; and its sequence number must be above the
//! last one accepted from that sender. Only then is the sequence number recorded, so a forged
//! message can never move a sender's replay state.
use std::{collections::HashMap, net::IpAddr};

use anycast_common::advert::{Packet, REQUIRED_TTL, Repr};

use crate::{advert_auth, sys::Received};

/// Why an advertisement was dropped: the agent counter it bumps (every [`AgentCounter`] but
/// `Accepted`, defined with its `AGENT_STATS` index and name in anycast-common).
pub use anycast_common::AgentCounter as Reject;

pub struct Validator {
    keys: Option<advert_auth::Keys>,
    ifindexes: Vec<u32>,
    window_ms: u64,
    last_seq: HashMap<IpAddr, u64>,
}

impl Validator {
    /// `keys: None` accepts unauthenticated advertisements (`--insecure-no-auth`).
    pub fn new(keys: Option<advert_auth::Keys>, ifindexes: Vec<u32>, window_ms: u64) -> Self {
        Self {
            keys,
            ifindexes,
            window_ms,
            last_seq: HashMap::new(),
        }
    }

    /// Replaces the keys and the replay window (SIGHUP); replay state is kept.
    pub fn set_policy(&mut self, keys: Option<advert_auth::Keys>, window_ms: u64) {
        self.keys = keys;
        self.window_ms = window_ms;
    }

    /// Restores a sender's replay state (after an agent restart).
    pub fn remember(&mut self, sender: IpAddr, seq: u64) {
        self.last_seq.insert(sender, seq);
    }

    pub fn check(&mut self, datagram: &[u8], rx: &Received, now_ms: u64) -> Result<Repr, Reject> {
        if rx.ttl != Some(REQUIRED_TTL) {
            return Err(Reject::BadTtl);
        }
        if !self.ifindexes.contains(&rx.ifindex) {
            return Err(Reject::WrongInterface);
        }
        let packet = Packet::new_checked(datagram).map_err(|_| Reject::Malformed)?;
        let repr = Repr::parse(&packet).map_err(|_| Reject::Malformed)?;
        if repr.sender != rx.src {
            return Err(Reject::SenderMismatch);
        }
        if let Some(keys) = &self.keys {
            advert_auth::verify(&packet, keys).map_err(|e| match e {
                advert_auth::AuthError::UnknownKey(0) => Reject::Unauthenticated,
                advert_auth::AuthError::UnknownKey(_) => Reject::UnknownKey,
                advert_auth::AuthError::BadHmac => Reject::BadHmac,
                advert_auth::AuthError::Malformed(_) => Reject::Malformed,
            })?;
        }
        if let Some(keys) = &self.keys
            && !keys.allows(repr.key_id, repr.sender)
        {
            return Err(Reject::SenderNotAllowed);
        }
        if repr
            .link_addr
            .is_some_and(|mac| !crate::mac::MacAddr(mac).is_unicast())
        {
            return Err(Reject::BadLinkAddr);
        }
        if repr.timestamp_ms.abs_diff(now_ms) > self.window_ms {
            return Err(Reject::StaleTimestamp);
        }
        if self
            .last_seq
            .get(&repr.sender)
            .is_some_and(|last| repr.seq <= *last)
        {
            return Err(Reject::Replayed);
        }
        self.last_seq.insert(repr.sender, repr.seq);
        Ok(repr)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use anycast_common::advert::Membership;

    use super::*;

    const SENDER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    const NOW: u64 = 1_800_000_000_000;
    const SECRET: [u8; 32] = [7; 32];

    fn keys() -> advert_auth::Keys {
        advert_auth::Keys::new(vec![(1, SECRET.to_vec())]).unwrap()
    }

    const SENDER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 2);

    fn message(seq: u64, ts: u64, key_id: u32, secret: &[u8]) -> Vec<u8> {
        signed(
            SENDER.into(),
            Ipv4Addr::new(198, 51, 100, 53).into(),
            (seq, ts),
            (key_id, secret),
        )
    }

    /// `sender` serves `anycast`, signed with `key_id` (0: unsigned).
    fn signed(
        sender: IpAddr,
        anycast: IpAddr,
        (seq, ts): (u64, u64),
        (key_id, secret): (u32, &[u8]),
    ) -> Vec<u8> {
        let mut repr = Repr::new(sender, seq, ts, key_id);
        repr.push(Membership {
            anycast,
            hold_ms: 3000,
            preference: 10,
            weight: 1,
        })
        .unwrap();
        let mut buf = vec![0; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]));
        if key_id != 0 {
            advert_auth::sign(&mut buf, key_id, secret).unwrap();
        }
        buf
    }

    fn rx(len: usize) -> Received {
        Received {
            len,
            src: SENDER.into(),
            ttl: Some(255),
            ifindex: 4,
        }
    }

    fn rx6(len: usize) -> Received {
        Received {
            src: SENDER6.into(),
            ..rx(len)
        }
    }

    fn message6(seq: u64, key_id: u32) -> Vec<u8> {
        let anycast = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
        signed(
            SENDER6.into(),
            anycast.into(),
            (seq, NOW),
            (key_id, &SECRET),
        )
    }

    #[test]
    fn ipv6_messages_are_checked_like_ipv4_ones() {
        let mut v = Validator::new(Some(keys()), vec![4], 30_000);
        let m = message6(10, 1);
        // GTSM on the hop limit, counted as for the TTL.
        let mut hops = rx6(m.len());
        hops.ttl = Some(254);
        assert_eq!(v.check(&m, &hops, NOW), Err(Reject::BadTtl));
        // The sender entry must be the datagram's IPv6 source, not another, nor an IPv4 one.
        let mut spoofed = rx6(m.len());
        spoofed.src = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 6).into();
        assert_eq!(v.check(&m, &spoofed, NOW), Err(Reject::SenderMismatch));
        assert_eq!(v.check(&m, &rx(m.len()), NOW), Err(Reject::SenderMismatch));
        let mut flipped = m.clone();
        flipped[66] ^= 1; // the hold time
        assert_eq!(v.check(&flipped, &rx6(m.len()), NOW), Err(Reject::BadHmac));
        let repr = v.check(&m, &rx6(m.len()), NOW).unwrap();
        assert_eq!(repr.sender, IpAddr::V6(SENDER6));
        assert_eq!(v.check(&m, &rx6(m.len()), NOW), Err(Reject::Replayed));
        // Replay state is per sender: the IPv4 sender's own sequence is not affected.
        let m4 = message(10, NOW, 1, &SECRET);
        assert!(v.check(&m4, &rx(m4.len()), NOW).is_ok());
    }

    #[test]
    fn a_key_may_be_bound_to_ipv6_senders() {
        let hex = "07".repeat(32);
        let text = format!(
            "[[key]]\nid = 1\nsecret = \"{hex}\"\nsenders = [\"203.0.113.0/30\", \"2001:db8:203::/64\"]\n"
        );
        let keys = advert_auth::Keys::from_toml(&text).unwrap();
        assert!(keys.allows(1, SENDER6.into()));
        assert!(keys.allows(1, SENDER.into()));
        assert!(!keys.allows(1, Ipv6Addr::new(0x2001, 0xdb8, 0x204, 0, 0, 0, 0, 2).into()));
        let mut v = Validator::new(Some(keys), vec![4], 30_000);
        let m = message6(1, 1);
        assert!(v.check(&m, &rx6(m.len()), NOW).is_ok());
        let other = Ipv6Addr::new(0x2001, 0xdb8, 0x204, 0, 0, 0, 0, 2);
        let anycast = Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x53);
        let m = signed(other.into(), anycast.into(), (1, NOW), (1, &SECRET));
        let from_other = Received {
            src: other.into(),
            ..rx(m.len())
        };
        assert_eq!(v.check(&m, &from_other, NOW), Err(Reject::SenderNotAllowed));
    }

    #[test]
    fn accepts_a_good_message_once() {
        let mut v = Validator::new(Some(keys()), vec![4], 30_000);
        let m = message(10, NOW, 1, &SECRET);
        assert!(v.check(&m, &rx(m.len()), NOW).is_ok());
        assert_eq!(v.check(&m, &rx(m.len()), NOW), Err(Reject::Replayed));
        let older = message(9, NOW, 1, &SECRET);
        assert_eq!(
            v.check(&older, &rx(older.len()), NOW),
            Err(Reject::Replayed)
        );
        let newer = message(11, NOW, 1, &SECRET);
        assert!(v.check(&newer, &rx(newer.len()), NOW).is_ok());
    }

    #[test]
    fn rejects_each_problem_by_name() {
        let mut v = Validator::new(Some(keys()), vec![4], 30_000);
        let good = message(10, NOW, 1, &SECRET);
        let mut ttl = rx(good.len());
        ttl.ttl = Some(254);
        assert_eq!(v.check(&good, &ttl, NOW), Err(Reject::BadTtl));
        let mut iface = rx(good.len());
        iface.ifindex = 5;
        assert_eq!(v.check(&good, &iface, NOW), Err(Reject::WrongInterface));
        assert_eq!(v.check(&good[..20], &rx(20), NOW), Err(Reject::Malformed));
        let mut spoofed = rx(good.len());
        spoofed.src = Ipv4Addr::new(203, 0, 113, 6).into();
        assert_eq!(v.check(&good, &spoofed, NOW), Err(Reject::SenderMismatch));
        let wrong_key = message(10, NOW, 1, &[8; 32]);
        assert_eq!(
            v.check(&wrong_key, &rx(wrong_key.len()), NOW),
            Err(Reject::BadHmac)
        );
        let unknown = message(10, NOW, 2, &SECRET);
        assert_eq!(
            v.check(&unknown, &rx(unknown.len()), NOW),
            Err(Reject::UnknownKey)
        );
        let stale = message(10, NOW - 31_000, 1, &SECRET);
        assert_eq!(
            v.check(&stale, &rx(stale.len()), NOW),
            Err(Reject::StaleTimestamp)
        );
        let mut flipped = good.clone();
        flipped[30] ^= 1;
        assert_eq!(
            v.check(&flipped, &rx(flipped.len()), NOW),
            Err(Reject::BadHmac)
        );
        // None of the rejected messages moved the replay state.
        assert!(v.check(&good, &rx(good.len()), NOW).is_ok());
    }

    #[test]
    fn without_keys_accepts_unsigned() {
        let mut v = Validator::new(None, vec![4], 30_000);
        let m = message(1, NOW, 0, &[]);
        assert!(v.check(&m, &rx(m.len()), NOW).is_ok());
        let mut with_keys = Validator::new(Some(keys()), vec![4], 30_000);
        let m = message(2, NOW, 0, &[]);
        assert_eq!(
            with_keys.check(&m, &rx(m.len()), NOW),
            Err(Reject::Unauthenticated)
        );
    }

    /// Regression: any key holder could speak for any member (the sender field is only checked
    /// against the forgeable IP source). A key with `senders` signs only for those addresses.
    #[test]
    fn a_key_bound_to_senders_cannot_speak_for_another_member() {
        let hex = "07".repeat(32);
        let text = format!(
            "[[key]]\nid = 1\nsecret = \"{hex}\"\nsenders = [\"203.0.113.8/30\"]\n\
             [[key]]\nid = 2\nsecret = \"{hex}\"\n"
        );
        let keys = advert_auth::Keys::from_toml(&text).unwrap();
        assert!(keys.allows(1, Ipv4Addr::new(203, 0, 113, 10).into()));
        assert!(!keys.allows(1, SENDER.into()));
        assert!(keys.allows(2, SENDER.into()));
        let mut v = Validator::new(Some(keys), vec![4], 30_000);
        let bound = message(1, NOW, 1, &SECRET);
        assert_eq!(
            v.check(&bound, &rx(bound.len()), NOW),
            Err(Reject::SenderNotAllowed)
        );
        let free = message(2, NOW, 2, &SECRET);
        assert!(v.check(&free, &rx(free.len()), NOW).is_ok());
    }
}
