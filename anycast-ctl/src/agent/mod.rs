//! `anycast-ctl agent`: the router side of host advertisements.
//!
//! It attaches the dataplane to its interfaces (or adopts an existing attachment), listens for
//! advertisements on them, IPv4 and IPv6 ([`listen`]), and turns the believed ones
//! ([`validate`]) into memberships through the same code as `member add` ([`crate::members`]),
//! recorded as *learned* in `MEMBER_INFO`. Every believed membership goes through one function,
//! `Agent::apply_one`, which hands IPv4 and IPv6 ones alike to the members API.
//! A learned member expires when its hold time passes without a refresh (each member on its own
//! deadline, [`deadlines`]), leaves at once on a hold time of 0, and is removed at once when its
//! interface loses its link. Static members (`member add`) are never touched. No member is
//! judged by its deadline right after the agent was kept from its sockets (a turn that waited
//! for the writers' lock, say): the refreshes that waited meanwhile are read first.
//!
//! A refresh that changes nothing but the deadline touches no map and takes no lock: it moves
//! the member's deadline in memory. Its state survives it all the same: memberships, their
//! refresh times (`MEMBER_INFO`) and each sender's last sequence number (`SENDER_SEQ`) are
//! pinned maps, written at once on every change and, for plain refreshes, every
//! [`COUNTER_FLUSH`]. A restarted agent adopts them, so forwarding never stops and members that
//! stopped advertising still expire (at most one flush interval late); a replayed refresh of
//! the last flush interval may be accepted again after a restart, within the replay window.
pub mod config;
pub mod deadlines;
pub mod listen;
pub mod routers;
pub mod validate;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anycast_common::{
    AGENT_COUNTERS, AgentCounter, MemberInfo, MemberKey, SOURCE_LEARNED,
    advert::{Membership, Repr},
    any_ip,
};
use futures::StreamExt;
use netlink_packet_route::{RouteNetlinkMessage, link::LinkFlags};
use rtnetlink::packet_core::NetlinkPayload;
use tokio::signal::unix::{SignalKind, signal};

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

/// How often counters, refresh times and sequence numbers of plain refreshes are written.
pub const COUNTER_FLUSH: Duration = Duration::from_millis(200);
/// Most advertisements handled before the agent looks at its deadlines again.
const DRAIN_BATCH: usize = 64;
/// A turn of the event loop longer than this (a writer holding the writers' lock, a slow
/// netlink answer) may have left refreshes waiting in the sockets: the deadlines are judged
/// only after the next turn has read them.
const LONG_TURN: Duration = Duration::from_millis(5);
/// How long a member that could not be located is left alone.
const UNPLACEABLE_BACKOFF: Duration = Duration::from_secs(1);

/// A member this agent learned.
#[derive(Clone, Copy, Debug)]
struct Learned {
    deadline: Instant,
    /// When its entry in the schedule comes due (at or before `deadline`).
    armed: Instant,
    ifindex: u32,
    /// The MAC its advertisements carry (none from an announcer that sends none).
    mac: Option<[u8; 6]>,
    /// What its last advertisement said.
    preference: u16,
    weight: u16,
    hold_ms: u32,
    /// Wall-clock time of its last refresh, in ms.
    updated_ms: u64,
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
    deadlines: deadlines::Deadlines<MemberKey>,
    /// Members refreshed in memory only since the last flush.
    refreshed: HashSet<MemberKey>,
    /// Sequence numbers accepted since the last flush and not yet written.
    seqs: HashMap<IpAddr, u64>,
    counters: [u64; AGENT_COUNTERS as usize],
    log_limit: HashMap<Reject, Instant>,
    /// Where the configuration came from, for SIGHUP.
    source: config::Source,
    /// An error that stops the event loop (the dataplane was detached under the agent).
    fatal: Option<Error>,
    /// The single-agent lock on `DIR/agent` (see `PinDir::agent_lock`), held for life.
    agent_lock: Option<std::fs::File>,
    /// Senders that could not be located, and until when they are not tried again.
    unplaceable: HashMap<IpAddr, Instant>,
    /// Addresses whose exported route may be out of date, with the route each had, and the
    /// routes held down (see [`crate::export`]); synced after each event.
    export: crate::export::Pending,
    /// Multicast mode's forwarder election on the agent's interfaces.
    routers: routers::Routers,
    /// Times the writers' lock was taken ([`Agent::locks_taken`]).
    locks: u64,
}

/// Runs the agent until SIGINT or SIGTERM; SIGHUP reloads the configuration and keys.
///
/// Everything that can be checked is checked before the system changes: the configuration
/// and keys (by the caller, through [`config::Source::load`]), the interfaces, the
/// advertisement socket and the single-agent lock; only then is the dataplane attached.
pub async fn run(pin: PinDir, source: config::Source) -> Result<()> {
    let (config, keys) = source.load()?;
    crate::repoint::set_gratuitous(config.repoint_gratuitous);
    let nl = Netlink::new()?;
    let mut ifindexes = Vec::new();
    for name in &config.devs {
        ifindexes.push(nl.link_by_name(name).await?.index);
    }
    let sockets = listen::Listeners::open(&config, &ifindexes)?;
    let metrics = config
        .metrics_listen
        .map(crate::metrics::http::bind)
        .transpose()?;
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
    let veths = attach::native_veths(&attached);
    if !veths.is_empty() {
        tracing::warn!("{}", attach::veth_warning(&veths));
    }
    for (name, what) in attached {
        tracing::info!(iface = %name, ?what, "dataplane attached");
    }
    let mut agent = Agent::new(pin, (config, keys), nl).await?;
    agent.source = source;
    agent.agent_lock = Some(agent_lock);
    if let Some(listener) = metrics {
        crate::metrics::serve_in_thread(listener, agent.pin.clone())?;
    }
    agent.serve(sockets).await
}

impl Agent {
    /// The event loop: advertisements, expiry, link events and signals.
    async fn serve(&mut self, sockets: listen::Listeners) -> Result<()> {
        let (v4, v6) = sockets.register()?;
        let mut links = crate::net::events(
            rtnetlink::constants::RTMGRP_LINK | rtnetlink::constants::RTMGRP_NEIGH,
        )?;
        let signal = |kind, name| signal(kind).map_err(|e| Error::io(name, e));
        let mut sigint = signal(SignalKind::interrupt(), "SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate(), "SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup(), "SIGHUP handler")?;
        let mut flush = tokio::time::interval(COUNTER_FLUSH);
        // Router hellos (multicast mode's election); a day when they are off.
        let hello_every = match self.routers.interval() {
            d if d.is_zero() => Duration::from_secs(86_400),
            d => d,
        };
        let mut hello = tokio::time::interval(hello_every);
        let mut alarm = deadlines::Alarm::new().map_err(|e| Error::io("the expiry timer", e))?;
        let mut buf = vec![0u8; 2048];
        tracing::info!(devs = ?self.config.devs, port = self.config.port, group = %self.config.group, group6 = %self.config.group6, ipv6 = v6.is_some(), "agent running");
        loop {
            let turn = Instant::now();
            tokio::select! {
                // Advertisements first: a refresh waiting in the socket must be seen before the
                // expiry tick judges its member.
                biased;
                ready = v4.readable() => {
                    let mut guard = ready.map_err(|e| Error::io("waiting for advertisements", e))?;
                    self.drain(v4.get_ref(), &mut buf, &mut guard).await;
                }
                (socket, ready) = listen::readable(v6.as_ref()) => {
                    let mut guard = ready.map_err(|e| Error::io("waiting for advertisements", e))?;
                    self.drain(socket.get_ref(), &mut buf, &mut guard).await;
                }
                woke = alarm.until(self.deadlines.next()) => {
                    woke.map_err(|e| Error::io("the expiry timer", e))?;
                }
                _ = flush.tick() => self.flush(),
                _ = hello.tick() => {
                    self.routers.hello();
                    self.routers.elect(&mut self.maps, Instant::now());
                }
                Some(event) = links.next() => self.link_event(event),
                _ = sighup.recv() => {
                    self.reload();
                    self.reconcile_export().await;
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
            // After a long turn, the select (biased towards the sockets) reads what waited
            // first, and an overdue deadline fires at once after it.
            if turn.elapsed() < LONG_TURN {
                self.expire(Instant::now());
            }
            if let Some(e) = self.fatal.take() {
                return Err(e);
            }
            self.sync_export().await;
        }
        self.flush();
        self.routers.clear(&mut self.maps);
        if self.config.detach_on_exit {
            attach::detach(&self.pin, &self.nl, &self.config.devs).await?;
            tracing::info!("dataplane detached");
        } else {
            tracing::info!("exiting; the dataplane stays attached");
        }
        Ok(())
    }

    /// Handles the datagrams waiting in the socket, at most [`DRAIN_BATCH`] (the rest wait for
    /// the next turn, after the deadlines).
    async fn drain(
        &mut self,
        socket: &socket2::Socket,
        buf: &mut [u8],
        guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, socket2::Socket>,
    ) {
        for _ in 0..DRAIN_BATCH {
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
        let fixed = (
            &config.devs,
            (config.group, config.group6),
            config.port,
            config.mode,
            config.metrics_listen,
        );
        if fixed
            != (
                &self.config.devs,
                (self.config.group, self.config.group6),
                self.config.port,
                self.config.mode,
                self.config.metrics_listen,
            )
        {
            tracing::warn!(
                "dev, group, group6, port, mode and metrics_listen changes take effect after a restart"
            );
        }
        self.validator
            .set_policy(keys, config.replay_window.as_millis() as u64);
        self.config.prefixes = config.prefixes;
        self.config.key_file = config.key_file;
        self.config.insecure_no_auth = config.insecure_no_auth;
        self.config.replay_window = config.replay_window;
        self.config.detach_on_exit = config.detach_on_exit;
        self.config.max_hold_ms = config.max_hold_ms;
        self.config.export_hold_down = config.export_hold_down;
        self.export.set_hold_down(config.export_hold_down);
        self.config.repoint_gratuitous = config.repoint_gratuitous;
        crate::repoint::set_gratuitous(config.repoint_gratuitous);
        self.config.track_tcp = config.track_tcp;
        // Members of addresses the new prefixes no longer allow go now, not at their expiry.
        let outside: Vec<MemberKey> = (self.learned.keys())
            .filter(|k| !self.config.allows(any_ip(k.anycast)))
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
        self.locks += 1;
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
        self.deadlines.clear();
        self.refreshed.clear();
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
        let hold_down = config.export_hold_down;
        let signing = keys.as_ref().map(|k| {
            let (id, secret) = k.signing();
            (id, secret.to_vec())
        });
        let hello = (config.router_hello, config.group, config.port);
        let routers = routers::Routers::new(&nl, &devs, hello, signing).await?;
        let mut agent = Agent {
            validator: Validator::new(keys, devs.keys().copied().collect(), window),
            dir_lock: pin.dir_lock()?,
            pin,
            config,
            maps,
            nl,
            devs,
            learned: HashMap::new(),
            deadlines: deadlines::Deadlines::default(),
            refreshed: HashSet::new(),
            seqs: HashMap::new(),
            counters: [0; AGENT_COUNTERS as usize],
            log_limit: HashMap::new(),
            source: config::Source::default(),
            fatal: None,
            agent_lock: None,
            unplaceable: HashMap::new(),
            export: crate::export::Pending::with_hold_down(hold_down),
            routers,
            locks: 0,
        };
        agent.adopt()?;
        // Members adopted on an interface that is down now go at once, as on a link event.
        for index in down {
            agent.drop_interface(index);
        }
        agent.reconcile_export().await;
        Ok(agent)
    }

    /// Brings the whole export table in line (at start and on SIGHUP; routes held down stay).
    async fn reconcile_export(&mut self) {
        let reconciled = match self.lock_live() {
            Ok(_lock) => crate::export::reconcile(&self.maps, &self.nl, &mut self.export).await,
            Err(e) => Err(e),
        };
        match reconciled {
            Ok(c) => tracing::info!(added = c.added, removed = c.removed, "export reconciled"),
            Err(e) => tracing::warn!(error = %e, "reconciling the exported routes"),
        }
    }

    /// Takes over learned members and replay state left in the maps by a previous agent.
    fn adopt(&mut self) -> Result<()> {
        for (sender, seq) in self.maps.sender_seq.iter().filter_map(|r| r.ok()) {
            self.validator.remember(any_ip(sender), seq);
        }
        let recorded: Vec<(MemberKey, MemberInfo)> = self
            .maps
            .member_info
            .iter()
            .filter_map(|r| r.ok())
            .collect();
        for (key, info) in recorded {
            if info.source != SOURCE_LEARNED {
                continue;
            }
            let ifindex = self
                .maps
                .host_ids
                .get(&key.member, 0)
                .and_then(|i| self.maps.hosts.get(&i, 0))
                .map_or(0, |h| h.ifindex);
            // The record lags plain refreshes by up to one flush interval.
            let deadline_ms = info.updated_ms + info.hold_ms as u64;
            let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms())) + COUNTER_FLUSH;
            let learned = Learned {
                deadline: Instant::now() + left,
                armed: Instant::now(),
                ifindex,
                mac: None,
                preference: info.preference,
                weight: info.weight,
                hold_ms: info.hold_ms,
                updated_ms: info.updated_ms,
            };
            self.learn(key, learned);
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
        if routers::is_hello(datagram) {
            if let IpAddr::V4(sender) = repr.sender {
                self.routers
                    .heard(rx.ifindex, sender, repr.link_addr, Instant::now());
                self.routers.elect(&mut self.maps, Instant::now());
            }
            self.seqs.insert(repr.sender, repr.seq);
            return;
        }
        // A sequence number is written with any change it brings; a plain refresh's waits for
        // the next flush.
        if self.apply(&repr, rx.ifindex, now).await {
            self.seqs.remove(&repr.sender);
            self.record_seq(repr.sender, repr.seq);
        } else {
            self.seqs.insert(repr.sender, repr.seq);
        }
    }

    /// Pins a sender's last sequence number (`SENDER_SEQ`), for a restarted agent.
    fn record_seq(&mut self, sender: IpAddr, seq: u64) {
        if let Err(e) = self.maps.record_sender_seq(sender, seq) {
            tracing::warn!(%sender, error = %e, "recording the sequence number");
        }
    }

    /// Applies each membership of an accepted advertisement; a failure on one (a full member
    /// set, say) is logged and does not stop the others. Returns whether the maps changed.
    async fn apply(&mut self, repr: &Repr, ifindex: u32, now: u64) -> bool {
        let mut wrote = false;
        for m in repr.memberships() {
            match self
                .apply_one(repr.sender, m, repr.link_addr, ifindex, now)
                .await
            {
                Ok(w) => wrote |= w,
                Err(e) => {
                    wrote = true;
                    tracing::warn!(sender = %repr.sender, anycast = %m.anycast, error = %e, "applying a membership");
                }
            }
        }
        wrote
    }

    /// Records a learned member and arms its deadline (a member already learned keeps its
    /// armed entry, which re-arms itself when it comes due).
    fn learn(&mut self, key: MemberKey, mut learned: Learned) {
        match self.learned.get(&key) {
            Some(old) => learned.armed = old.armed,
            None => {
                learned.armed = learned.deadline;
                self.deadlines.arm(key, learned.deadline);
            }
        }
        self.learned.insert(key, learned);
    }

    /// Where every believed membership goes, whatever its family: the prefix check, then the
    /// members API. The parser guarantees that `m.anycast` and `sender` share a family.
    async fn apply_one(
        &mut self,
        sender: IpAddr,
        m: &Membership,
        link_addr: Option<[u8; 6]>,
        ifindex: u32,
        now: u64,
    ) -> Result<bool> {
        if !self.config.allows(m.anycast) {
            self.reject(Reject::OutsidePrefix, sender);
            return Ok(false);
        }
        let mut m = *m;
        m.hold_ms = m.hold_ms.min(self.config.max_hold_ms);
        self.apply_member((m.anycast, sender), &m, link_addr, ifindex, now)
            .await
    }

    /// Joins, refreshes or leaves one membership through the members API; whether it wrote a
    /// map.
    async fn apply_member(
        &mut self,
        (anycast, sender): (IpAddr, IpAddr),
        m: &Membership,
        link_addr: Option<[u8; 6]>,
        ifindex: u32,
        now: u64,
    ) -> Result<bool> {
        let key = member_key(anycast, sender);
        if m.is_leave() {
            if self.learned.contains_key(&key) {
                self.remove(key, "left")?;
                self.learned.remove(&key);
                return Ok(true);
            }
            return Ok(false);
        }
        let learned = Learned {
            deadline: Instant::now() + Duration::from_millis(m.hold_ms.into()),
            armed: Instant::now(),
            ifindex,
            mac: link_addr,
            preference: m.preference,
            weight: m.weight,
            hold_ms: m.hold_ms,
            updated_ms: now,
        };
        let current = self.learned.get(&key);
        // Nothing new but the deadline: memory only, no lock, no map write.
        if current.is_some_and(|l| {
            (l.ifindex, l.mac, l.preference, l.weight)
                == (ifindex, link_addr, m.preference, m.weight)
        }) {
            self.learn(key, learned);
            self.refreshed.insert(key);
            return Ok(false);
        }
        // The same interface and the same signed MAC: a refresh with a new preference or
        // weight. Anything else places the member anew, first (which may wait for ARP),
        // outside the lock.
        let refresh = current.is_some_and(|l| l.ifindex == ifindex && l.mac == link_addr);
        let placement = if refresh {
            None
        } else {
            match self.place(sender, anycast, link_addr, ifindex).await {
                Some(p) => Some(p),
                None => return Ok(false),
            }
        };
        if self.store((anycast, sender), m, now, placement)? {
            // The hold runs from now: placing may have taken a good part of a short hold.
            let deadline = Instant::now() + Duration::from_millis(m.hold_ms.into());
            self.learn(
                key,
                Learned {
                    deadline,
                    ..learned
                },
            );
        }
        Ok(true)
    }

    /// Checks the anycast address and locates the advertising member on `ifindex`; `None`,
    /// counted as a rejection, if either fails.
    async fn place(
        &mut self,
        sender: IpAddr,
        anycast: IpAddr,
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
            anycast,
            member: sender,
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
        (anycast, sender): (IpAddr, IpAddr),
        m: &Membership,
        now: u64,
        placement: Option<members::Placement>,
    ) -> Result<bool> {
        let key = member_key(anycast, sender);
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
                if (c.preference, c.weight) != (info.preference, info.weight) {
                    self.export.note(&self.maps, [anycast])?;
                }
                members::renew(&mut self.maps, (anycast, sender), &c, info)?;
            }
            // Gone from the maps under us (`member del`): learn it again next time.
            (None, None) => {
                self.learned.remove(&key);
                return Ok(false);
            }
            (_, Some(placement)) => {
                self.export.note(&self.maps, [anycast])?;
                // Probed only where `track_tcp` may apply: most learned members are not.
                let tracks_tcp = self.config.track_tcp.iter().any(|p| p.contains(&anycast));
                let existed = tracks_tcp && self.maps.bucket(anycast)?.is_found();
                let done = members::add(&mut self.maps, anycast, &placement, info, None)?;
                tracing::info!(anycast = %anycast, member = %sender, edge = ?done.edge, "member learned");
                if tracks_tcp && done.edge == Some(members::Edge::FirstMember) {
                    self.apply_track(anycast, existed);
                }
            }
        }
        Ok(true)
    }

    /// `track_tcp` of the configuration, for an address in its prefixes that just got its
    /// first member (`existed`: it was in the maps before): it tracks TCP only (its UDP
    /// entries forgotten if it tracked everything before). A failure is logged: the
    /// membership itself is in place.
    fn apply_track(&mut self, anycast: IpAddr, existed: bool) {
        use members::mode::{self, Track};
        match mode::set_track(&mut self.maps, anycast, Track::Tcp) {
            Ok(was) if mode::leaves_entries(existed, was, Track::Tcp) => {
                mode::forget_untracked_or_warn(&self.maps, &self.pin, &[anycast]);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(anycast = %anycast, error = %e, "track_tcp not applied");
                return;
            }
        }
        tracing::info!(anycast = %anycast, "tracks TCP only (track_tcp)");
    }

    /// Removes learned members whose deadline has passed; entries of refreshed members are
    /// re-armed at their new deadline.
    pub fn expire(&mut self, now: Instant) {
        while let Some((key, armed)) = self.deadlines.pop_due(now) {
            let Some(learned) = self.learned.get_mut(&key) else {
                continue;
            };
            if learned.armed != armed {
                continue;
            }
            if learned.deadline > now {
                learned.armed = learned.deadline;
                self.deadlines.arm(key, learned.deadline);
                continue;
            }
            // Forgotten only once removed; a failure is retried a little later.
            match self.remove(key, "expired") {
                Ok(()) => {
                    self.learned.remove(&key);
                    self.refreshed.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiring a member");
                    let retry = now + Duration::from_millis(10);
                    if let Some(l) = self.learned.get_mut(&key) {
                        (l.deadline, l.armed) = (retry, retry);
                    }
                    self.deadlines.arm(key, retry);
                }
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
        self.export.note(&self.maps, [anycast])?;
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
        tracing::info!(%anycast, %member, why, ?edge, "member removed");
        Ok(())
    }

    /// Syncs the exported routes of the addresses changed since the last call (and of held
    /// routes whose hold-down is over), under the writers' lock; on a failure they stay due
    /// and are tried again after the next event.
    async fn sync_export(&mut self) {
        if self.export.idle(Instant::now()) {
            return;
        }
        let synced = match self.lock_live() {
            Ok(_lock) => crate::export::sync(&self.maps, &self.nl, &mut self.export).await,
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            tracing::warn!(error = %e, "exporting routes");
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

    fn reject(&mut self, reason: Reject, from: IpAddr) {
        self.counters[reason.index() as usize] += 1;
        let now = Instant::now();
        let last = self.log_limit.get(&reason).copied();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.log_limit.insert(reason, now);
            tracing::warn!(%from, reason = reason.name(), total = self.counters[reason.index() as usize], "advertisement rejected");
        }
    }

    /// The periodic write: counters, and the refresh times and sequence numbers that plain
    /// refreshes kept in memory. A refreshed member whose entry went (`member del`) or became
    /// static is forgotten, to be learned again from its next advertisement.
    pub fn flush(&mut self) {
        self.flush_counters();
        if self.refreshed.is_empty() && self.seqs.is_empty() {
            return;
        }
        let written = self.lock_live().and_then(|_lock| {
            for key in std::mem::take(&mut self.refreshed) {
                let Some(l) = self.learned.get(&key).copied() else {
                    continue;
                };
                match self.maps.member_info.get(&key, 0) {
                    Ok(mut info) if info.source == SOURCE_LEARNED => {
                        (info.updated_ms, info.hold_ms) = (l.updated_ms, l.hold_ms);
                        self.maps.set_info(key, info)?;
                    }
                    _ => {
                        self.learned.remove(&key);
                    }
                }
            }
            for (sender, seq) in std::mem::take(&mut self.seqs) {
                self.maps.record_sender_seq(sender, seq)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "writing refresh times");
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

    /// How many times the agent took the writers' lock: every map write of the agent but its
    /// counters (`AGENT_STATS`, every [`COUNTER_FLUSH`]) is under it, so a refresh that
    /// changes nothing must leave this unchanged (tested).
    pub fn locks_taken(&self) -> u64 {
        self.locks
    }
}
