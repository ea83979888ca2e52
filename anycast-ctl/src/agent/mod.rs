//! `anycast-ctl agent`: the router side of host advertisements.
//!
//! It attaches the dataplane to its interfaces (or adopts an existing attachment), listens for
//! advertisements on them, and turns the believed ones ([`validate`]) into memberships through
//! the same code as `member add` ([`crate::members`]), recorded as *learned* in `MEMBER_INFO`.
//! A learned member expires when its hold time passes without a refresh, leaves at once on a
//! hold time of 0, and is removed at once when its interface loses its link. Static members
//! (`member add`) are never touched.
//!
//! Its state survives it: memberships, their deadlines (`MEMBER_INFO`) and each sender's last
//! sequence number (`SENDER_SEQ`) are pinned maps. A restarted agent adopts them, so forwarding
//! never stops and members that stopped advertising still expire on time.
pub mod config;
pub mod validate;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anycast_common::{
    AGENT_ACCEPTED, AGENT_COUNTERS, MemberInfo, MemberKey, SOURCE_LEARNED, advert::Repr, ip_octets,
};
use futures::StreamExt;
use netlink_packet_route::{RouteNetlinkMessage, link::LinkFlags};
use rtnetlink::packet_core::NetlinkPayload;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    Error, Result, advert_auth, attach,
    dataplane::Maps,
    members::{self, member_key, now_ms},
    net::Netlink,
    pin::PinDir,
    sys,
};
use config::Config;
use validate::{Reject, Validator};

/// How often expiries are checked and counters flushed.
const TICK: Duration = Duration::from_millis(10);
const COUNTER_FLUSH: Duration = Duration::from_millis(200);

/// A member this agent learned.
#[derive(Clone, Copy, Debug)]
struct Learned {
    deadline_ms: u64,
    ifindex: u32,
}

pub struct Agent {
    pin: PinDir,
    /// Writers' lock on the pin directory, shared with `anycast-ctl member ...`.
    dir_lock: crate::pin::DirLock,
    config: Config,
    maps: Maps,
    nl: Netlink,
    validator: Validator,
    /// ifindex -> name of the agent's interfaces.
    devs: HashMap<u32, String>,
    learned: HashMap<MemberKey, Learned>,
    counters: [u64; AGENT_COUNTERS as usize],
    log_limit: HashMap<Reject, Instant>,
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(pin: PinDir, config: Config) -> Result<()> {
    let nl = Netlink::new()?;
    for (name, what) in attach::attach(&pin, &nl, &config.devs, config.mode, None).await? {
        tracing::info!(iface = %name, ?what, "dataplane attached");
    }
    let mut agent = Agent::new(pin, config, nl).await?;
    let ifindexes: Vec<u32> = agent.devs.keys().copied().collect();
    let socket = sys::listener(agent.config.port, agent.config.group, &ifindexes)
        .map_err(|e| Error::io("opening the advertisement socket", e))?;
    // SAFETY: the Socket owns its fd and the AsyncFd owns the Socket, so the fd stays open and
    // is not registered elsewhere until the AsyncFd is dropped.
    let socket = unsafe { AsyncFd::register(socket) }.map_err(|e| {
        Error::io(
            "registering the socket",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let mut links = link_events()?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut tick = tokio::time::interval(TICK);
    let mut flush = tokio::time::interval(COUNTER_FLUSH);
    let mut buf = vec![0u8; 2048];
    tracing::info!(devs = ?agent.config.devs, port = agent.config.port, group = %agent.config.group, "agent running");
    loop {
        tokio::select! {
            // Advertisements first: a refresh waiting in the socket must be seen before the
            // expiry tick judges its member.
            biased;
            ready = socket.readable() => {
                let mut guard = ready.map_err(|e| Error::io("waiting for advertisements", e))?;
                loop {
                    match sys::recv(socket.get_ref(), &mut buf) {
                        Ok(rx) => {
                            let len = rx.len.min(buf.len());
                            agent.handle(&buf[..len], &rx).await;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "receiving an advertisement");
                            break;
                        }
                    }
                }
            }
            _ = tick.tick() => agent.expire(now_ms()),
            _ = flush.tick() => agent.flush_counters(),
            Some(event) = links.next() => agent.link_event(event),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    agent.flush_counters();
    if agent.config.detach_on_exit {
        attach::detach(&agent.pin, &agent.nl, &agent.config.devs).await?;
        tracing::info!("dataplane detached");
    } else {
        tracing::info!("exiting; the dataplane stays attached");
    }
    Ok(())
}

impl Agent {
    /// Builds the agent and adopts the learned state of a previous run.
    pub async fn new(pin: PinDir, config: Config, nl: Netlink) -> Result<Self> {
        let keys = match &config.key_file {
            Some(path) => Some(advert_auth::Keys::load(path)?),
            None => None,
        };
        let mut devs = HashMap::new();
        let mut down = Vec::new();
        for name in &config.devs {
            let link = nl.link_by_name(name).await?;
            if !link.up {
                down.push(link.index);
            }
            devs.insert(link.index, name.clone());
        }
        let maps = Maps::open(&pin)?;
        let window = config.replay_window.as_millis() as u64;
        let mut agent = Agent {
            validator: Validator::new(keys, devs.keys().copied().collect(), window),
            dir_lock: pin.dir_lock()?,
            pin,
            config,
            maps,
            nl,
            devs,
            learned: HashMap::new(),
            counters: [0; AGENT_COUNTERS as usize],
            log_limit: HashMap::new(),
        };
        agent.adopt()?;
        // Members adopted on an interface that is down now go at once, as on a link event.
        for index in down {
            agent.drop_interface(index);
        }
        Ok(agent)
    }

    /// Takes over learned members and replay state left in the maps by a previous agent.
    fn adopt(&mut self) -> Result<()> {
        for (sender, seq) in self.maps.sender_seq.iter().filter_map(|r| r.ok()) {
            self.validator
                .remember(Ipv4Addr::from(ip_octets(sender)), seq);
        }
        for (key, info) in self.maps.member_info.iter().filter_map(|r| r.ok()) {
            if info.source != SOURCE_LEARNED {
                continue;
            }
            let ifindex = self
                .maps
                .host_ids
                .get(&key.member, 0)
                .and_then(|i| self.maps.hosts.get(&i, 0))
                .map_or(0, |h| h.ifindex);
            self.learned.insert(
                key,
                Learned {
                    deadline_ms: info.updated_ms + info.hold_ms as u64,
                    ifindex,
                },
            );
        }
        for (index, value) in self.counters.iter_mut().enumerate() {
            *value = self.maps.agent_stats.get(&(index as u32), 0).unwrap_or(0);
        }
        if !self.learned.is_empty() {
            tracing::info!(members = self.learned.len(), "adopted learned members");
        }
        Ok(())
    }

    /// Handles one received datagram.
    pub async fn handle(&mut self, datagram: &[u8], rx: &sys::Received) {
        let now = now_ms();
        let repr = match self.validator.check(datagram, rx, now) {
            Ok(repr) => repr,
            Err(reject) => return self.reject(reject, rx.src),
        };
        self.counters[AGENT_ACCEPTED as usize] += 1;
        let _ =
            self.maps
                .sender_seq
                .insert(anycast_common::ip_key(repr.sender.octets()), repr.seq, 0);
        if let Err(e) = self.apply(&repr, rx.ifindex, now).await {
            tracing::warn!(sender = %repr.sender, error = %e, "applying an advertisement");
        }
    }

    /// Applies each membership of an accepted advertisement; a failure on one (a full member
    /// set, say) is logged and does not stop the others.
    async fn apply(&mut self, repr: &Repr, ifindex: u32, now: u64) -> Result<()> {
        for m in repr.memberships() {
            if let Err(e) = self.apply_one(repr.sender, m, ifindex, now).await {
                tracing::warn!(sender = %repr.sender, anycast = %m.anycast, error = %e, "applying a membership");
            }
        }
        Ok(())
    }

    async fn apply_one(
        &mut self,
        sender: Ipv4Addr,
        m: &anycast_common::advert::Membership,
        ifindex: u32,
        now: u64,
    ) -> Result<()> {
        if !self.config.allows(m.anycast) {
            self.reject(Reject::OutsidePrefix, sender);
            return Ok(());
        }
        let key = member_key(m.anycast, sender);
        if m.is_leave() {
            if self.learned.contains_key(&key) {
                self.remove(key, "left")?;
                self.learned.remove(&key);
            }
            return Ok(());
        }
        let learned = Learned {
            deadline_ms: now + m.hold_ms as u64,
            ifindex,
        };
        let info = MemberInfo {
            source: SOURCE_LEARNED,
            hold_ms: m.hold_ms,
            updated_ms: now,
            preference: m.preference,
            weight: m.weight,
            _pad: 0,
        };
        let refresh = self.learned.get(&key).is_some_and(|l| l.ifindex == ifindex);
        // A new member is located first (which may wait for ARP), outside the lock.
        let placement = if refresh {
            None
        } else {
            let dev = self.devs.get(&ifindex).cloned();
            match members::locate(
                &self.maps,
                &self.nl,
                sender,
                dev.as_deref(),
                None,
                members::AGENT_RESOLVE_TIMEOUT,
            )
            .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    self.reject(Reject::NotOnLink, sender);
                    tracing::debug!(error = %e, "locating a member");
                    return Ok(());
                }
            }
        };
        let _lock = self.dir_lock.lock()?;
        let current = self.maps.member_info.get(&key, 0).ok();
        match (current, placement) {
            // An operator's static member wins; the advertisement changes nothing.
            (Some(c), _) if c.source != SOURCE_LEARNED => return Ok(()),
            // A refresh of a member already in place on the same interface.
            (Some(c), None) => {
                self.maps
                    .member_info
                    .insert(key, info, 0)
                    .map_err(|e| Error::map("MEMBER_INFO", e))?;
                if (c.preference, c.weight) != (m.preference, m.weight) {
                    members::set_weight(&mut self.maps, m.anycast, sender, m.preference, m.weight)?;
                }
            }
            // Gone from the maps under us (`member del`): learn it again next time.
            (None, None) => {
                self.learned.remove(&key);
                return Ok(());
            }
            (_, Some(placement)) => {
                members::add(&mut self.maps, m.anycast, &placement, info)?;
                tracing::info!(anycast = %m.anycast, member = %sender, "member learned");
            }
        }
        self.learned.insert(key, learned);
        Ok(())
    }

    /// Removes learned members whose hold time has passed.
    pub fn expire(&mut self, now: u64) {
        let due: Vec<MemberKey> = self
            .learned
            .iter()
            .filter(|(_, l)| l.deadline_ms <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            // Forgotten only once removed, so a failure is retried on the next tick.
            match self.remove(key, "expired") {
                Ok(()) => {
                    self.learned.remove(&key);
                }
                Err(e) => tracing::warn!(error = %e, "expiring a member"),
            }
        }
    }

    /// Removes every member learned on `ifindex`.
    fn drop_interface(&mut self, ifindex: u32) {
        let gone: Vec<MemberKey> = self
            .learned
            .iter()
            .filter(|(_, l)| l.ifindex == ifindex)
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            match self.remove(key, "link down") {
                Ok(()) => {
                    self.learned.remove(&key);
                }
                Err(e) => tracing::warn!(error = %e, "removing a member"),
            }
        }
    }

    /// Deletes a learned membership from the maps (never a static one).
    fn remove(&mut self, key: MemberKey, why: &str) -> Result<()> {
        let _lock = self.dir_lock.lock()?;
        let info = self.maps.member_info.get(&key, 0).ok();
        if info.is_none_or(|i| i.source != SOURCE_LEARNED) {
            return Ok(());
        }
        let anycast = Ipv4Addr::from(ip_octets(key.anycast));
        let member = Ipv4Addr::from(ip_octets(key.member));
        members::del(&mut self.maps, anycast, member)?;
        tracing::info!(%anycast, %member, why, "member removed");
        Ok(())
    }

    fn link_event(&mut self, msg: LinkMessage) {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload else {
            return;
        };
        let index = link.header.index;
        if !self.devs.contains_key(&index) {
            return;
        }
        let flags = link.header.flags;
        if !(flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp)) {
            self.drop_interface(index);
        }
    }

    fn reject(&mut self, reason: Reject, from: Ipv4Addr) {
        self.counters[reason.index() as usize] += 1;
        let now = Instant::now();
        let last = self.log_limit.get(&reason).copied();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.log_limit.insert(reason, now);
            tracing::warn!(%from, reason = reason.name(), total = self.counters[reason.index() as usize], "advertisement rejected");
        }
    }

    /// Writes the counters to `AGENT_STATS` for `status` to read.
    pub fn flush_counters(&mut self) {
        for (index, value) in self.counters.iter().enumerate() {
            let _ = self.maps.agent_stats.set(index as u32, value, 0);
        }
    }

    pub fn counters(&self) -> &[u64] {
        &self.counters
    }
}

type LinkMessage = rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>;

/// A stream of rtnetlink link notifications (RTMGRP_LINK).
fn link_events() -> Result<impl futures::Stream<Item = LinkMessage> + Unpin> {
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let (mut connection, _, messages) =
        rtnetlink::new_connection().map_err(|e| Error::io("opening rtnetlink", e))?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .map_err(|e| Error::io("subscribing to link events", e))?;
    tokio::spawn(connection);
    Ok(messages.map(|(message, _)| message))
}
