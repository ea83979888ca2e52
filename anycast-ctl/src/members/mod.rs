//! Memberships: where one becomes a map entry, and where it goes again.
//!
//! - [`locate`] turns a member IP into where to send to it (egress interface, MACs) using the
//!   router's route and neighbour tables, through rtnetlink; it may wait for ARP, so callers
//!   run it before they take the writers' lock.
//! - [`write`] changes the maps: [`add`], [`del`], [`set_weight`], [`renew`] and
//!   [`follow_neighbour`]. The CLI (`member`, `load`) and the agent both go through it, under
//!   the pin-directory lock, after checking that their maps are the live ones.
//!
//! - [`mode`] is the address's delivery mode (proxy or direct ARP), set by the operator.
//!
//! Each change reports an [`Edge`] when an address gains its first member or loses its last:
//! what a route export follows.

mod locate;
pub mod mode;
mod write;

use std::{net::IpAddr, time::Duration};

use anycast_common::{Host, MemberInfo, MemberKey, SOURCE_STATIC, any_key};

pub use locate::locate;

use crate::{Result, dataplane::Maps, net::Netlink, policy::Policy};

/// What a writer asks for: `member` serving the anycast address `anycast` (of the same family),
/// on `dev` if given, with its MAC from `mac`.
#[derive(Clone, Copy, Debug)]
pub struct Join<'a> {
    pub anycast: IpAddr,
    pub member: IpAddr,
    pub dev: Option<&'a str>,
    pub mac: MacFrom,
}

/// Every writer's first step (`member add`, the agent), outside the writers' lock because it
/// may wait for ARP: checks that the address may be anycast and the member a member
/// ([`Policy`]), and locates the member. The writer then takes the lock, checks that its maps
/// are the live ones, and calls [`add`].
pub async fn prepare(
    (maps, nl, policy): (&Maps, &Netlink, &Policy),
    join: Join<'_>,
    resolve_timeout: Duration,
) -> Result<Placement> {
    check_family(join.anycast, join.member)?;
    policy.check_anycast(maps, join.anycast)?;
    locate(
        (maps, nl, policy),
        join.member,
        join.dev,
        join.mac,
        resolve_timeout,
    )
    .await
}
pub use write::{add, del, follow_neighbour, forget_info, renew, set_weight};

/// How long `member add` waits for the kernel to resolve a member's MAC.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the agent waits: the member has just sent an advertisement, so it is up; a miss
/// is retried on its next advertisement rather than stalling the agent.
pub const AGENT_RESOLVE_TIMEOUT: Duration = Duration::from_millis(300);

/// Where to send to one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub member: IpAddr,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// MAC of the egress interface.
    pub smac: [u8; 6],
    /// The MAC was given by the operator and is not relearned.
    pub static_mac: bool,
    /// The MAC came in the member's signed advertisement; only another one replaces it.
    pub signed_mac: bool,
}

/// Where a member's MAC comes from. Never from a frame the dataplane saw: only from sources
/// as trustworthy as the kernel's neighbour table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacFrom {
    /// The kernel's neighbour table, resolved if needed.
    Neighbour,
    /// The operator (`--mac`).
    Operator([u8; 6]),
    /// The member's signed advertisement.
    Signed([u8; 6]),
}

/// Whether `add` created a member or refreshed an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    New,
    Updated,
}

/// What `add` did, and the host record now stored for the member (its MAC may be an earlier
/// static one rather than the placement's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddOutcome {
    pub added: Added,
    pub host: Host,
    /// Set when this member is the address's first.
    pub edge: Option<Edge>,
}

/// An address's passage between having members and having none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// The address gained its first member.
    FirstMember,
    /// The address lost its last member.
    LastMemberGone,
}

/// The `MEMBER_INFO` key of a membership.
pub fn member_key(address: IpAddr, member: IpAddr) -> MemberKey {
    MemberKey {
        anycast: any_key(address),
        member: any_key(member),
    }
}

/// An anycast address is served by members of its own family: the dataplane rewrites only
/// the Ethernet header, so an IPv4 datagram can only go to a host reached over IPv4.
pub fn check_family(anycast: IpAddr, member: IpAddr) -> Result<()> {
    if anycast.is_ipv4() == member.is_ipv4() {
        return Ok(());
    }
    Err(crate::Error::MixedFamilies { anycast, member })
}

/// Default preference of a member (lower is better).
pub const DEFAULT_PREFERENCE: u16 = 100;
/// Default weight of a member (its share of new flows among equals).
pub const DEFAULT_WEIGHT: u16 = 100;

/// What an operator's `member add` records: static, never expires.
pub fn static_info(now_ms: u64, preference: u16, weight: u16) -> MemberInfo {
    MemberInfo {
        source: SOURCE_STATIC,
        updated_ms: now_ms,
        preference,
        weight,
        ..MemberInfo::default()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
