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
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anycast_common::{
    AGENT_COUNTERS, AgentCounter, MemberInfo, MemberKey, SOURCE_LEARNED, advert::Repr, any_ip,
};
use futures::StreamExt;
use netlink_packet_route::{RouteNetlinkMessage, link::LinkFlags};
use rtnetlink::packet_core::NetlinkPayload;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    Error, Result, advert_auth, attach, dataplane,
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
/// How long a member that could not be located is left alone.
const UNPLACEABLE_BACKOFF: Duration = Duration::from_secs(1);

/// A member this agent learned.
#[derive(Clone, Copy, Debug)]
struct Learned {
    deadline_ms: u64,
    ifindex: u32,
    /// The MAC its advertisements carry (none from an announcer that sends none).
    mac: Option<[u8; 6]>,
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
    /// Where the configuration came from, for SIGHUP.
    source: config::Source,
    /// An error that stops the event loop (the dataplane was detached under the agent).
    fatal: Option<Error>,
    /// The single-agent lock on `DIR/agent` (see `PinDir::agent_lock`), held for life.
    agent_lock: Option<std::fs::File>,
    /// Senders that could not be located, and until when they are not tried again.
    unplaceable: HashMap<Ipv4Addr, Instant>,
    /// Addresses whose exported route may be out of date (see [`crate::export`]), synced after
    /// each event.
    export_dirty: BTreeSet<IpAddr>,
}

/// Runs the agent until SIGINT or SIGTERM; SIGHUP reloads the configuration and keys.
///
/// Everything that can be checked is checked before the system changes: the configuration
/// and keys (by the caller, through [`config::Source::load`]), the interfaces, the
/// advertisement socket and the single-agent lock; only then is the dataplane attached.
pub async fn run(pin: PinDir, source: config::Source) -> Result<()> {
    let (config, keys) = source.load()?;
    let nl = Netlink::new()?;
    let mut ifindexes = Vec::new();
    for name in &config.devs {
        ifindexes.push(nl.link_by_name(name).await?.index);
    }
    let socket = sys::listener(config.port, config.group, &ifindexes)
        .map_err(|e| Error::io("opening the advertisement socket", e))?;
    let existed = pin.path().exists();
    let agent_lock = pin.agent_lock()?;
    let attached = attach::attach(&pin, &nl, &config.devs, config.mode, None).await;
    let attached = match attached {
        Ok(done) => done,
        Err(e) => {
            drop(agent_lock);
            if !existed {
                let _ = pin.remove();
            }
            return Err(e);
        }
    };
    for (name, what) in attached {
        tracing::info!(iface = %name, ?what, "dataplane attached");
    }
    let mut agent = Agent::new(pin, (config, keys), nl).await?;
    agent.source = source;
    agent.agent_lock = Some(agent_lock);
    agent.serve(socket).await
}

impl Agent {
    /// The event loop: advertisements, expiry, link events and signals.
    async fn serve(&mut self, socket: socket2::Socket) -> Result<()> {
        // SAFETY: the Socket owns its fd and the AsyncFd owns the Socket, so the fd stays open
        // and is not registered elsewhere until the AsyncFd is dropped.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(|e| {
            Error::io(
                "registering the socket",
                std::io::Error::other(e.to_string()),
            )
        })?;
        let mut links = crate::net::events(
            rtnetlink::constants::RTMGRP_LINK | rtnetlink::constants::RTMGRP_NEIGH,
        )?;
        let signal = |kind, name| signal(kind).map_err(|e| Error::io(name, e));
        let mut sigint = signal(SignalKind::interrupt(), "SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate(), "SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup(), "SIGHUP handler")?;
        let mut tick = tokio::time::interval(TICK);
        let mut flush = tokio::time::interval(COUNTER_FLUSH);
        let mut buf = vec![0u8; 2048];
        tracing::info!(devs = ?self.config.devs, port = self.config.port, group = %self.config.group, "agent running");
        loop {
            tokio::select! {
                // Advertisements first: a refresh waiting in the socket must be seen before the
                // expiry tick judges its member.
                biased;
                ready = socket.readable() => {
                    let mut guard = ready.map_err(|e| Error::io("waiting for advertisements", e))?;
                    self.drain(socket.get_ref(), &mut buf, &mut guard).await;
                }
                _ = tick.tick() => self.expire(now_ms()),
                _ = flush.tick() => self.flush_counters(),
                Some(event) = links.next() => self.link_event(event),
                _ = sighup.recv() => self.reload(),
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
            self.sync_export().await;
        }
        self.flush_counters();
        if self.config.detach_on_exit {
            attach::detach(&self.pin, &self.nl, &self.config.devs).await?;
            tracing::info!("dataplane detached");
        } else {
            tracing::info!("exiting; the dataplane stays attached");
        }
        Ok(())
    }

    /// Handles every datagram waiting in the socket.
    async fn drain(
        &mut self,
        socket: &socket2::Socket,
        buf: &mut [u8],
        guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, socket2::Socket>,
    ) {
        loop {
            match sys::recv(socket, buf) {
                Ok(rx) => {
                    let len = rx.len.min(buf.len());
                    let datagram = buf[..len].to_vec();
                    self.handle(&datagram, &rx).await;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receiving an advertisement");
                    return;
                }
            }
        }
    }

    /// SIGHUP: reads the configuration and key files again. Keys, prefixes and the replay
    /// window take effect at once, learned members stay; interfaces, group, port and mode need
    /// a restart. A reload that fails keeps the running configuration.
    fn reload(&mut self) {
        let (config, keys) = match self.source.load() {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the running configuration");
                return;
            }
        };
        let fixed = (&config.devs, config.group, config.port, config.mode);
        if fixed
            != (
                &self.config.devs,
                self.config.group,
                self.config.port,
                self.config.mode,
            )
        {
            tracing::warn!("dev, group, port and mode changes take effect after a restart");
        }
        self.validator
            .set_policy(keys, config.replay_window.as_millis() as u64);
        self.config.prefixes = config.prefixes;
        self.config.key_file = config.key_file;
        self.config.insecure_no_auth = config.insecure_no_auth;
        self.config.replay_window = config.replay_window;
        self.config.detach_on_exit = config.detach_on_exit;
        self.config.max_hold_ms = config.max_hold_ms;
        // Members of addresses the new prefixes no longer allow go now, not at their expiry.
        let outside: Vec<MemberKey> = (self.learned.keys())
            .filter(|k| match any_ip(k.anycast) {
                IpAddr::V4(anycast) => !self.config.allows(anycast),
                IpAddr::V6(_) => false,
            })
            .copied()
            .collect();
        for key in outside {
            match self.remove(key, "prefix withdrawn") {
                Ok(()) => {
                    self.learned.remove(&key);
                }
                Err(e) => tracing::warn!(error = %e, "removing a member"),
            }
        }
        tracing::info!("configuration reloaded");
    }

    /// Takes the writers' lock and makes sure the maps held are the pinned ones. After a
    /// detach and re-attach under the agent, it adopts the new state (its learned members
    /// come back with their next advertisements); with nothing attached any more, it stops.
    fn lock_live(&mut self) -> Result<crate::pin::DirLockGuard> {
        let guard = self.dir_lock.lock()?;
        // One fstatat of the `ADDRS` pin in the locked directory: a detach and re-attach (or a
        // deleted pin) replaces it, whatever else is left in the directory.
        if guard.pin_id(anycast_common::names::ADDRS) == Some(self.maps.pinned_id()) {
            return Ok(guard);
        }
        drop(guard);
        let replaced = Error::StateReplaced {
            path: self.pin.path().to_path_buf(),
        };
        if !matches!(
            dataplane::check_pins(&self.pin),
            Ok(dataplane::Pins::Complete { .. })
        ) {
            self.fatal = Some(Error::Usage(format!(
                "the dataplane under {} was detached while the agent ran; stopping",
                self.pin.path().display()
            )));
            return Err(replaced);
        }
        // The single-agent lock went with the old directory: take it in the new one, or stop
        // if another agent already has it.
        match self.pin.agent_lock() {
            Ok(lock) => self.agent_lock = Some(lock),
            Err(e) => {
                self.fatal = Some(e);
                return Err(replaced);
            }
        }
        tracing::warn!("the dataplane was replaced under the agent; adopting the new state");
        self.dir_lock = self.pin.dir_lock()?;
        self.maps = Maps::open(&self.pin)?;
        self.learned.clear();
        self.adopt()?;
        Err(replaced)
    }

    /// Builds the agent and adopts the learned state of a previous run.
    pub async fn new(
        pin: PinDir,
        (config, keys): (Config, Option<advert_auth::Keys>),
        nl: Netlink,
    ) -> Result<Self> {
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
            source: config::Source::default(),
            fatal: None,
            agent_lock: None,
            unplaceable: HashMap::new(),
            export_dirty: BTreeSet::new(),
        };
        agent.adopt()?;
        // Members adopted on an interface that is down now go at once, as on a link event.
        for index in down {
            agent.drop_interface(index);
        }
        agent.export_dirty.clear();
        let reconciled = match agent.lock_live() {
            Ok(_lock) => crate::export::reconcile(&agent.maps, &agent.nl).await,
            Err(e) => Err(e),
        };
        match reconciled {
            Ok(c) => tracing::info!(added = c.added, removed = c.removed, "export reconciled"),
            Err(e) => tracing::warn!(error = %e, "reconciling the exported routes"),
        }
        Ok(agent)
    }

    /// Takes over learned members and replay state left in the maps by a previous agent.
    fn adopt(&mut self) -> Result<()> {
        for (sender, seq) in self.maps.sender_seq.iter().filter_map(|r| r.ok()) {
            self.validator
                .remember(Ipv4Addr::from(anycast_common::ip_octets(sender)), seq);
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
                    mac: None,
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
        self.counters[AgentCounter::Accepted.index() as usize] += 1;
        if let Err(e) = self.maps.record_sender_seq(repr.sender, repr.seq) {
            tracing::warn!(sender = %repr.sender, error = %e, "recording the sequence number");
        }
        if let Err(e) = self.apply(&repr, rx.ifindex, now).await {
            tracing::warn!(sender = %repr.sender, error = %e, "applying an advertisement");
        }
    }

    /// Applies each membership of an accepted advertisement; a failure on one (a full member
    /// set, say) is logged and does not stop the others.
    async fn apply(&mut self, repr: &Repr, ifindex: u32, now: u64) -> Result<()> {
        for m in repr.memberships() {
            if let Err(e) = self
                .apply_one(repr.sender, m, repr.link_addr, ifindex, now)
                .await
            {
                tracing::warn!(sender = %repr.sender, anycast = %m.anycast, error = %e, "applying a membership");
            }
        }
        Ok(())
    }

    async fn apply_one(
        &mut self,
        sender: Ipv4Addr,
        m: &anycast_common::advert::Membership,
        link_addr: Option<[u8; 6]>,
        ifindex: u32,
        now: u64,
    ) -> Result<()> {
        if !self.config.allows(m.anycast) {
            self.reject(Reject::OutsidePrefix, sender);
            return Ok(());
        }
        let mut m = *m;
        m.hold_ms = m.hold_ms.min(self.config.max_hold_ms);
        let m = &m;
        let key = member_key(m.anycast.into(), sender.into());
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
            mac: link_addr,
        };
        // The same interface and the same signed MAC: a refresh. Anything else places the
        // member anew, first (which may wait for ARP), outside the lock.
        let refresh = self
            .learned
            .get(&key)
            .is_some_and(|l| l.ifindex == ifindex && l.mac == link_addr);
        let placement = if refresh {
            None
        } else {
            match self.place(sender, m.anycast, link_addr, ifindex).await {
                Some(p) => Some(p),
                None => return Ok(()),
            }
        };
        if self.store(sender, m, now, placement)? {
            self.learned.insert(key, learned);
        }
        Ok(())
    }

    /// Checks the anycast address and locates the advertising member on `ifindex`; `None`,
    /// counted as a rejection, if either fails.
    async fn place(
        &mut self,
        sender: Ipv4Addr,
        anycast: Ipv4Addr,
        link_addr: Option<[u8; 6]>,
        ifindex: u32,
    ) -> Option<members::Placement> {
        // A member that could not be located is not tried again for a while: each try may wait
        // for ARP, and an advertisement of many addresses would stall the agent.
        let now = Instant::now();
        if self.unplaceable.get(&sender).is_some_and(|t| *t > now) {
            self.reject(Reject::NotOnLink, sender);
            return None;
        }
        let join = members::Join {
            anycast: anycast.into(),
            member: sender.into(),
            dev: self.devs.get(&ifindex).map(String::as_str),
            mac: link_addr.map_or(members::MacFrom::Neighbour, members::MacFrom::Signed),
        };
        let prepared = match crate::policy::Policy::new(&self.nl).await {
            Ok(policy) => {
                let ctx = (&self.maps, &self.nl, &policy);
                members::prepare(ctx, join, members::AGENT_RESOLVE_TIMEOUT).await
            }
            Err(e) => Err(e),
        };
        match prepared {
            Ok(p) => Some(p),
            Err(e) => {
                let reason = match e {
                    Error::NotAnycast { .. } => Reject::NotAnycast,
                    _ => {
                        if self.unplaceable.len() >= 4096 {
                            self.unplaceable.retain(|_, until| *until > now);
                        }
                        self.unplaceable.insert(sender, now + UNPLACEABLE_BACKOFF);
                        Reject::NotOnLink
                    }
                };
                self.reject(reason, sender);
                tracing::debug!(error = %e, "placing a member");
                None
            }
        }
    }

    /// Writes a checked membership under the writers' lock: a new placement, or a refresh of
    /// the member in place (`placement` None). Returns whether the member is learned: not if
    /// the operator has it as a static member, nor if it was deleted under us.
    fn store(
        &mut self,
        sender: Ipv4Addr,
        m: &anycast_common::advert::Membership,
        now: u64,
        placement: Option<members::Placement>,
    ) -> Result<bool> {
        let key = member_key(m.anycast.into(), sender.into());
        let info = MemberInfo {
            source: SOURCE_LEARNED,
            hold_ms: m.hold_ms,
            updated_ms: now,
            preference: m.preference,
            weight: m.weight,
            _pad: 0,
        };
        let _lock = self.lock_live()?;
        let current = self.maps.member_info.get(&key, 0).ok();
        match (current, placement) {
            // An operator's static member wins; the advertisement changes nothing.
            (Some(c), _) if c.source != SOURCE_LEARNED => return Ok(false),
            // A refresh of a member already in place on the same interface.
            (Some(c), None) => {
                members::renew(&mut self.maps, (m.anycast.into(), sender.into()), &c, info)?;
                if (c.preference, c.weight) != (info.preference, info.weight) {
                    self.export_dirty.insert(m.anycast.into());
                }
            }
            // Gone from the maps under us (`member del`): learn it again next time.
            (None, None) => {
                self.learned.remove(&key);
                return Ok(false);
            }
            (_, Some(placement)) => {
                let done = members::add(&mut self.maps, m.anycast.into(), &placement, info, None)?;
                self.export_dirty.insert(m.anycast.into());
                tracing::info!(anycast = %m.anycast, member = %sender, edge = ?done.edge, "member learned");
            }
        }
        Ok(true)
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
        let _lock = self.lock_live()?;
        let info = self.maps.member_info.get(&key, 0).ok();
        if info.is_none_or(|i| i.source != SOURCE_LEARNED) {
            return Ok(());
        }
        let anycast = any_ip(key.anycast);
        let member = any_ip(key.member);
        let edge = match members::del(&mut self.maps, anycast, member) {
            Ok(edge) => edge,
            // Its info outlived it (a writer killed mid-change): forget that, or it is retried
            // on every tick.
            Err(Error::NotMember { .. } | Error::NoSuchAddress { .. }) => {
                members::forget_info(&mut self.maps, (anycast, member))?;
                None
            }
            Err(e) => return Err(e),
        };
        self.export_dirty.insert(anycast);
        tracing::info!(%anycast, %member, why, ?edge, "member removed");
        Ok(())
    }

    /// Syncs the exported routes of the addresses changed since the last call, under the
    /// writers' lock; on a failure they stay due and are tried again after the next event.
    async fn sync_export(&mut self) {
        if self.export_dirty.is_empty() {
            return;
        }
        let addresses: Vec<IpAddr> = self.export_dirty.iter().copied().collect();
        let synced = match self.lock_live() {
            Ok(_lock) => crate::export::sync(&self.maps, &self.nl, &addresses).await,
            Err(e) => Err(e),
        };
        match synced {
            Ok(()) => self.export_dirty.clear(),
            Err(e) => tracing::warn!(error = %e, "exporting routes"),
        }
    }

    /// A link or neighbour notification: a link that goes down drops its members; a member's
    /// new MAC in the kernel's neighbour table is followed (unless the member's MAC came from
    /// the operator or from signed advertisements).
    fn link_event(&mut self, msg: crate::net::Event) {
        let link = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => link,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                return self.neighbour_event(n);
            }
            _ => return,
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

    fn neighbour_event(&mut self, n: netlink_packet_route::neighbour::NeighbourMessage) {
        let Some((ip, mac)) = crate::net::neighbour_entry(&n) else {
            return;
        };
        let changed = self
            .lock_live()
            .and_then(|_lock| members::follow_neighbour(&mut self.maps, ip, n.header.ifindex, mac));
        match changed {
            Ok(true) => {
                tracing::info!(member = %ip, mac = %crate::mac::MacAddr(mac), "member MAC followed from the neighbour table")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "following a neighbour"),
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
        if let Err(e) = self.maps.store_agent_counters(&self.counters) {
            tracing::warn!(error = %e, "publishing the counters");
        }
    }

    pub fn counters(&self) -> &[u64] {
        &self.counters
    }
}
