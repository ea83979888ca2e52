//! `anycast-ctl load FILE`: many static memberships at once. The file is TOML, one
//! `[[member]]` table per membership:
//!
//! ```toml
//! [[member]]
//! anycast = "198.51.100.53"
//! member = "203.0.113.2"
//! dev = "r1"                  # optional, as `member add --dev`
//! mac = "02:00:5e:10:00:01"   # optional, as `member add --mac`
//! preference = 100            # optional
//! weight = 100                # optional
//! track = "tcp"               # optional, as `member add --track` (one value per address)
//! ```
//!
//! Invariants: everything is checked before anything is written: every value, no membership
//! twice, at most one MAC per member and one `track` per address, and every member located through rtnetlink as
//! `member add` does (each distinct member once). Then [`apply`] writes all memberships as one
//! transaction (under the writers' lock, which the caller holds), so an error means nothing
//! changed.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anycast_common::MAX_MEMBERS;
use serde::Deserialize;

use crate::{
    Error, Result,
    dataplane::Maps,
    mac::MacAddr,
    members::{self, Added, Placement, mode::Track},
    net::Netlink,
    progress::Progress,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    member: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    anycast: String,
    member: String,
    dev: Option<String>,
    mac: Option<String>,
    preference: Option<u16>,
    weight: Option<u16>,
    track: Option<String>,
}

/// One checked membership of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub anycast: IpAddr,
    pub member: IpAddr,
    pub dev: Option<String>,
    pub mac: Option<MacAddr>,
    pub preference: u16,
    pub weight: u16,
    /// The address's `member track` setting, if the entry gives one.
    pub track: Option<Track>,
}

/// Where a member is sent, found once per distinct (member, dev, mac).
type Where = (IpAddr, Option<String>, Option<MacAddr>);

/// What [`apply`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub added: usize,
    pub updated: usize,
    /// Addresses that were in the maps, tracking everything, and now track TCP only: their
    /// UDP entries are to be forgotten (`members::mode::forget_untracked`).
    pub turned_tcp_only: Vec<IpAddr>,
}

/// Parses and checks a file's text; `name` names it in errors.
pub fn parse(name: &str, text: &str) -> Result<Vec<Membership>> {
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| text[..s.start].matches('\n').count() + 1);
        bad(name, format!("line {line}: {}", e.message()))
    })?;
    let mut seen = HashSet::new();
    let mut macs: HashMap<IpAddr, MacAddr> = HashMap::new();
    let mut per_address: HashMap<IpAddr, usize> = HashMap::new();
    let mut tracks: HashMap<IpAddr, Track> = HashMap::new();
    let mut out = Vec::with_capacity(file.member.len());
    for (i, entry) in file.member.into_iter().enumerate() {
        let what = |reason: String| bad(name, format!("[[member]] #{}: {reason}", i + 1));
        let m = check(entry).map_err(what)?;
        if !seen.insert((m.anycast, m.member)) {
            return Err(what(format!(
                "{} of {} is listed twice",
                m.member, m.anycast
            )));
        }
        if let Some(mac) = m.mac
            && let Some(other) = macs.insert(m.member, mac).filter(|o| *o != mac)
        {
            return Err(what(format!(
                "{} is given the MAC {mac} and {other} (a MAC belongs to the host)",
                m.member
            )));
        }
        if let Some(track) = m.track
            && let Some(other) = tracks.insert(m.anycast, track).filter(|o| *o != track)
        {
            return Err(what(format!(
                "{} is given track {} and {} (one setting per address)",
                m.anycast,
                track.name(),
                other.name()
            )));
        }
        let n = per_address.entry(m.anycast).or_default();
        *n += 1;
        if *n > MAX_MEMBERS {
            return Err(what(format!(
                "{} has more than {MAX_MEMBERS} members",
                m.anycast
            )));
        }
        out.push(m);
    }
    Ok(out)
}

fn check(e: Entry) -> std::result::Result<Membership, String> {
    let mac = match e.mac {
        Some(s) => Some(crate::cli::args::unicast_mac(&s)?),
        None => None,
    };
    let anycast = crate::cli::args::anycast_ip(&e.anycast).map_err(|r| format!("anycast: {r}"))?;
    let member = crate::cli::args::unicast_ip(&e.member).map_err(|r| format!("member: {r}"))?;
    members::check_family(anycast, member).map_err(|e| e.to_string())?;
    let track = match e.track.as_deref() {
        None => None,
        Some(word) => {
            Some(Track::parse(word).ok_or(format!("track {word:?} is neither all nor tcp"))?)
        }
    };
    Ok(Membership {
        anycast,
        member,
        dev: e.dev,
        mac,
        preference: e.preference.unwrap_or(members::DEFAULT_PREFERENCE),
        weight: e.weight.unwrap_or(members::DEFAULT_WEIGHT),
        track,
    })
}

fn bad(name: &str, what: String) -> Error {
    Error::Usage(format!("{name}: {what}"))
}

/// Locates every distinct member of `list` as `member add` does (this may wait for ARP: call
/// it before taking the writers' lock).
pub async fn locate_all(
    maps: &Maps,
    nl: &Netlink,
    list: &[Membership],
) -> Result<HashMap<Where, Placement>> {
    let policy = crate::policy::Policy::new(nl).await?;
    let members: std::collections::HashSet<IpAddr> = list.iter().map(|m| m.member).collect();
    for m in list {
        policy.check_anycast(maps, m.anycast)?;
        if members.contains(&m.anycast) {
            return Err(Error::NotAnycast {
                address: m.anycast,
                why: "it is a member's address in the same file".into(),
            });
        }
    }
    let mut placements = HashMap::new();
    for m in list {
        let key = (m.member, m.dev.clone(), m.mac);
        if placements.contains_key(&key) {
            continue;
        }
        let p = members::locate(
            (maps, nl, &policy),
            m.member,
            m.dev.as_deref(),
            m.mac.map_or(members::MacFrom::Neighbour, |mac| {
                members::MacFrom::Operator(mac.0)
            }),
            members::RESOLVE_TIMEOUT,
        )
        .await?;
        placements.insert(key, p);
    }
    Ok(placements)
}

/// Writes every membership of `list` as one transaction: all of them, or on an error none.
/// Shows its progress on a terminal.
pub fn apply(
    maps: &mut Maps,
    list: &[Membership],
    placements: &HashMap<Where, Placement>,
) -> Result<Loaded> {
    let now = members::now_ms();
    let mut progress = Progress::new("memberships", list.len());
    // Addresses already in the maps that now turn from tracking everything to TCP only.
    let mut turned = HashSet::new();
    for m in list.iter() {
        let Some(now) = m.track else { continue };
        let (bucket, word) = maps.bucket_and_word(m.anycast)?;
        if members::mode::leaves_entries(bucket.is_found(), Track::from_word(word), now) {
            turned.insert(m.anycast);
        }
    }
    maps.transaction(|maps| {
        let mut loaded = Loaded {
            turned_tcp_only: turned.iter().copied().collect(),
            ..Loaded::default()
        };
        for (done, m) in list.iter().enumerate() {
            progress.set(done);
            let p = &placements[&(m.member, m.dev.clone(), m.mac)];
            let info = members::static_info(now, m.preference, m.weight);
            match members::add(maps, m.anycast, p, info, None)?.added {
                Added::New => loaded.added += 1,
                Added::Updated => loaded.updated += 1,
            }
            if let Some(track) = m.track {
                members::mode::set_track(maps, m.anycast, track)?;
            }
        }
        Ok(loaded)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[member]]
anycast = "198.51.100.53"
member = "203.0.113.2"

[[member]]
anycast = "198.51.100.53"
member = "203.0.113.6"
dev = "r2"
mac = "02:00:00:00:00:06"
preference = 50
weight = 10
track = "tcp"
"#;

    #[test]
    fn parses_memberships_with_defaults() {
        let list = parse("f", GOOD).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].preference, members::DEFAULT_PREFERENCE);
        assert_eq!(list[0].weight, members::DEFAULT_WEIGHT);
        assert_eq!(list[1].dev.as_deref(), Some("r2"));
        assert_eq!(list[1].mac, Some(MacAddr([2, 0, 0, 0, 0, 6])));
        assert_eq!((list[1].preference, list[1].weight), (50, 10));
        assert_eq!((list[0].track, list[1].track), (None, Some(Track::Tcp)));
        assert!(parse("f", "").unwrap().is_empty());
    }

    #[test]
    fn rejects_each_bad_value_with_one_line() {
        let one = |body: &str| format!("[[member]]\n{body}\n");
        for (text, needle) in [
            (one("anycast = \"1.2.3\"\nmember = \"203.0.113.2\""), "#1"),
            (
                one("anycast = \"198.51.100.1\"\nmember = \"224.0.0.1\""),
                "member",
            ),
            (
                one(
                    "anycast = \"198.51.100.1\"\nmember = \"203.0.113.2\"\nmac = \"ff:ff:ff:ff:ff:ff\"",
                ),
                "broadcast",
            ),
            (
                one("anycast = \"198.51.100.1\"\nmember = \"203.0.113.2\"\nweight = 70000"),
                "line",
            ),
            (
                one("anycast = \"198.51.100.1\"\nmember = \"203.0.113.2\"\ncolour = 1"),
                "colour",
            ),
            (
                format!(
                    "{GOOD}{}",
                    one("anycast = \"198.51.100.53\"\nmember = \"203.0.113.2\"")
                ),
                "twice",
            ),
            (
                format!(
                    "{GOOD}{}",
                    one(
                        "anycast = \"198.51.100.9\"\nmember = \"203.0.113.6\"\nmac = \"02:00:00:00:00:07\""
                    )
                ),
                "belongs to the host",
            ),
            (
                one("anycast = \"198.51.100.1\"\nmember = \"203.0.113.2\"\ntrack = \"udp\""),
                "neither all nor tcp",
            ),
            (
                format!(
                    "{GOOD}{}",
                    one("anycast = \"198.51.100.53\"\nmember = \"203.0.113.10\"\ntrack = \"all\"")
                ),
                "one setting per address",
            ),
        ] {
            let e = parse("f", &text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "not one line: {e}");
        }
    }
}
