//! Real traffic through the topology, with std sockets created inside the namespaces.
//!
//! UDP: [`send_udp`] sends datagrams whose payload is an 8-byte big-endian sequence number
//! (unique within the test process) from explicitly bound client source ports; a [`UdpSink`] on
//! each member records every datagram it receives with the sender's port. TCP: a [`TcpEcho`] on
//! each member echoes and records whom it served; [`tcp_sessions`] opens connections from the
//! client and checks every echo. Both families: an IPv6 destination is sent to from the
//! client's IPv6 address ([`client_source`]). Every loop is bounded in count and in time, so a
//! broken dataplane fails a test instead of hanging it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::Netns;
use crate::topology::{CLIENT_IP, CLIENT_IP6};

/// Port the UDP sinks listen on.
pub const UDP_PORT: u16 = 7000;
/// Port the TCP echo servers listen on.
pub const TCP_PORT: u16 = 7100;
/// How long a round waits for its datagrams to arrive.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one burst of client traffic.
pub const TRAFFIC_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on the life of one server thread.
const SERVER_LIFETIME: Duration = Duration::from_secs(120);
/// Bound on the datagrams one [`send_udp`] call may send.
const MAX_DATAGRAMS: usize = 100_000;
/// Poll interval of server threads (how fast they notice `stop`).
const POLL: Duration = Duration::from_millis(20);
/// Socket timeouts of TCP clients and server connections.
const TCP_TIMEOUT: Duration = Duration::from_secs(3);

static SEQ: AtomicU64 = AtomicU64::new(1);

/// One datagram as a sink saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    pub peer: SocketAddr,
    /// The sequence number, `None` if the payload was not 8 bytes.
    pub seq: Option<u64>,
}

/// One datagram as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub src_port: u16,
    pub seq: u64,
}

/// A datagram sent, and when (just before the send).
pub type SentAt = (Sent, Instant);

/// A UDP receiver bound in a namespace, recording until stopped.
#[derive(Debug)]
pub struct UdpSink {
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Datagram>>>,
}

impl UdpSink {
    /// Binds `addr:port` inside `ns` and starts recording.
    pub fn start(ns: &Netns, addr: impl Into<IpAddr>, port: u16) -> Result<Self> {
        let addr = addr.into();
        let socket = ns
            .in_ns(|| UdpSocket::bind((addr, port)))
            .with_context(|| format!("bind UDP {addr}:{port} in {}", ns.name()))?;
        // Room for every datagram of a test, even if this thread is not scheduled for a while.
        force_rcvbuf(&socket, 8 << 20)?;
        socket.set_read_timeout(Some(POLL))?;
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (count, stop) = (count.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("udp-sink-{}", ns.name()))
                .spawn(move || receive(&socket, &count, &stop))?
        };
        Ok(UdpSink {
            count,
            stop,
            handle: Some(handle),
        })
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops recording and returns everything received.
    pub fn stop(mut self) -> Vec<Datagram> {
        self.finish()
    }

    fn finish(&mut self) -> Vec<Datagram> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("UDP sink thread panicked"))
            .unwrap_or_default()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.finish();
    }
}

fn receive(socket: &UdpSocket, count: &AtomicUsize, stop: &AtomicBool) -> Vec<Datagram> {
    let deadline = Instant::now() + SERVER_LIFETIME;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((len, peer)) => {
                let seq = (len == 8).then(|| u64::from_be_bytes(buf[..8].try_into().unwrap()));
                got.push(Datagram { peer, seq });
                count.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("UDP sink receive failed: {e}"),
        }
    }
    got
}

/// Waits until the sinks together hold at least `expected` datagrams (or `timeout` passes),
/// then a little longer so late duplicates show up; returns the total seen.
pub fn wait_for_datagrams(sinks: &[UdpSink], expected: usize, timeout: Duration) -> usize {
    let total = || sinks.iter().map(UdpSink::received).sum::<usize>();
    crate::wait_until(timeout, || total() >= expected);
    thread::sleep(Duration::from_millis(200));
    total()
}

/// The client's address of `dst`'s family: 192.0.2.10 or 2001:db8:192::10.
pub fn client_source(dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => CLIENT_IP.into(),
        IpAddr::V6(_) => CLIENT_IP6.into(),
    }
}

/// Sends `per_port` datagrams from each client source port in `src_ports` (bound explicitly on
/// [`client_source`]) to `dst:dst_port`; returns what was sent, with unique sequence numbers.
pub fn send_udp(
    client: &Netns,
    dst: impl Into<IpAddr>,
    dst_port: u16,
    src_ports: Range<u16>,
    per_port: usize,
) -> Result<Vec<Sent>> {
    let dst = dst.into();
    let source = client_source(dst);
    let total = src_ports.len() * per_port;
    ensure!(
        total <= MAX_DATAGRAMS,
        "{total} datagrams is more than {MAX_DATAGRAMS}"
    );
    client.in_ns(|| {
        let deadline = Instant::now() + TRAFFIC_DEADLINE;
        let mut sent = Vec::with_capacity(total);
        for src_port in src_ports {
            let socket = UdpSocket::bind((source, src_port))
                .with_context(|| format!("bind UDP {source} port {src_port}"))?;
            for _ in 0..per_port {
                if Instant::now() > deadline {
                    bail!("sending {total} datagrams took longer than {TRAFFIC_DEADLINE:?}");
                }
                let seq = SEQ.fetch_add(1, Ordering::Relaxed);
                socket
                    .send_to(&seq.to_be_bytes(), (dst, dst_port))
                    .with_context(|| format!("send from port {src_port} to {dst}:{dst_port}"))?;
                sent.push(Sent { src_port, seq });
                // Pacing: let the receivers drain veth rings and socket buffers.
                if sent.len() % 32 == 0 {
                    thread::sleep(Duration::from_micros(200));
                }
            }
        }
        Ok(sent)
    })
}

/// One connection a [`TcpEcho`] served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub peer: SocketAddr,
    pub bytes_echoed: u64,
}

/// A TCP echo server bound in a namespace, recording every connection it served.
#[derive(Debug)]
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<Served>>>,
}

impl TcpEcho {
    /// Binds `addr:port` inside `ns` and starts serving.
    pub fn start(ns: &Netns, addr: impl Into<IpAddr>, port: u16) -> Result<Self> {
        let addr = addr.into();
        let listener = ns
            .in_ns(|| TcpListener::bind((addr, port)))
            .with_context(|| format!("bind TCP {addr}:{port} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("tcp-echo-{}", ns.name()))
                .spawn(move || serve(&listener, &stop))?
        };
        Ok(TcpEcho {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops accepting, waits for open connections, and returns every connection served.
    pub fn stop(mut self) -> Vec<Served> {
        self.finish()
    }

    fn finish(&mut self) -> Vec<Served> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("TCP echo thread panicked"))
            .unwrap_or_default()
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.finish();
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) -> Vec<Served> {
    let deadline = Instant::now() + SERVER_LIFETIME;
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut handlers = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, peer)) => {
                let served = served.clone();
                handlers.push(thread::spawn(move || {
                    let bytes_echoed = echo(stream).unwrap_or(0);
                    served.lock().unwrap().push(Served { peer, bytes_echoed });
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("TCP accept failed: {e}"),
        }
        // Keep the handler list short on long runs.
        handlers.retain(|h| !h.is_finished());
    }
    for handler in handlers {
        handler.join().expect("TCP echo handler panicked");
    }
    Arc::try_unwrap(served)
        .expect("handlers joined")
        .into_inner()
        .unwrap()
}

/// Echoes until EOF, error, timeout or the traffic deadline; returns the bytes echoed.
fn echo(mut stream: TcpStream) -> std::io::Result<u64> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
    stream.set_write_timeout(Some(TCP_TIMEOUT))?;
    let deadline = Instant::now() + TRAFFIC_DEADLINE;
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while Instant::now() < deadline {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}

/// How one client connection went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSession {
    /// The client's ephemeral port (0 if the connection never got one).
    pub local_port: u16,
    /// `None` if every message came back intact.
    pub error: Option<String>,
}

impl TcpSession {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Opens `n_conns` connections one after another from the client to `dst:port`; each sends
/// `msgs_per_conn` 16-byte messages and checks the echo.
pub fn tcp_sessions(
    client: &Netns,
    dst: impl Into<IpAddr>,
    port: u16,
    n_conns: usize,
    msgs_per_conn: usize,
) -> Vec<TcpSession> {
    let target = SocketAddr::from((dst.into(), port));
    client.in_ns(|| {
        let deadline = Instant::now() + TRAFFIC_DEADLINE;
        (0..n_conns)
            .map(|conn| {
                if Instant::now() > deadline {
                    return TcpSession {
                        local_port: 0,
                        error: Some(format!("not tried: {TRAFFIC_DEADLINE:?} passed")),
                    };
                }
                let mut local_port = 0;
                let error = session(target, conn, msgs_per_conn, &mut local_port)
                    .err()
                    .map(|e| format!("{e:#}"));
                TcpSession { local_port, error }
            })
            .collect()
    })
}

fn session(target: SocketAddr, conn: usize, msgs: usize, local_port: &mut u16) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, TCP_TIMEOUT)
        .with_context(|| format!("connect to {target}"))?;
    *local_port = stream.local_addr()?.port();
    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
    stream.set_write_timeout(Some(TCP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    for msg in 0..msgs {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&(conn as u64).to_be_bytes());
        out[8..].copy_from_slice(&(msg as u64).to_be_bytes());
        stream
            .write_all(&out)
            .with_context(|| format!("write message {msg}"))?;
        let mut back = [0u8; 16];
        stream
            .read_exact(&mut back)
            .with_context(|| format!("read echo of message {msg}"))?;
        ensure!(back == out, "message {msg} came back as {back:?}");
    }
    Ok(())
}

/// Long-lived TCP connections from the client, each exchanging one message per
/// [`TcpConns::round`], for tests that change things while connections stay open.
pub struct TcpConns {
    streams: Vec<TcpStream>,
}

impl TcpConns {
    /// Opens `n` connections from the client to `dst:port`, one after another.
    pub fn open(client: &Netns, dst: impl Into<IpAddr>, port: u16, n: usize) -> Result<Self> {
        let target = SocketAddr::from((dst.into(), port));
        let streams = client.in_ns(|| {
            (0..n)
                .map(|i| {
                    let s = TcpStream::connect_timeout(&target, TCP_TIMEOUT)
                        .with_context(|| format!("connection {i} to {target}"))?;
                    s.set_read_timeout(Some(TCP_TIMEOUT))?;
                    s.set_write_timeout(Some(TCP_TIMEOUT))?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(TcpConns { streams })
    }

    /// One message on every connection, echoed back (each bounded by the socket timeouts);
    /// which connections came back intact.
    pub fn round(&mut self, round: usize) -> Vec<bool> {
        (self.streams.iter_mut().enumerate())
            .map(|(i, s)| {
                let msg = format!("round {round} conn {i:03}\n");
                let mut back = vec![0u8; msg.len()];
                s.write_all(msg.as_bytes()).is_ok()
                    && s.read_exact(&mut back).is_ok()
                    && back == msg.as_bytes()
            })
            .collect()
    }

    /// The client's port of each connection.
    pub fn local_ports(&self) -> Vec<u16> {
        (self.streams.iter())
            .map(|s| s.local_addr().map_or(0, |a| a.port()))
            .collect()
    }
}

/// Runs rounds on every set of `conns`, back to back on another thread, while `change` runs on
/// this one, and one more round once it has returned. Returns how many rounds ran and which
/// connections (set, index) broke, each once. Bounded by [`TRAFFIC_DEADLINE`].
pub fn rounds_while(
    conns: &mut [TcpConns],
    first_round: usize,
    change: impl FnOnce(),
) -> (usize, Vec<(usize, usize)>) {
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let talker = s.spawn(|| {
            let deadline = Instant::now() + TRAFFIC_DEADLINE;
            let mut broke = BTreeSet::new();
            let mut rounds = 0;
            loop {
                let last = done.load(Ordering::Acquire);
                for (set, c) in conns.iter_mut().enumerate() {
                    let ok = c.round(first_round + rounds);
                    broke.extend((0..ok.len()).filter(|&i| !ok[i]).map(|i| (set, i)));
                }
                rounds += 1;
                if last || Instant::now() > deadline {
                    return (rounds, broke.into_iter().collect());
                }
            }
        });
        change();
        done.store(true, Ordering::Release);
        talker.join().expect("talker thread panicked")
    })
}

/// Stops the echo servers and tells which of them (by index) served each client port.
pub fn served_by(echoes: Vec<TcpEcho>) -> BTreeMap<u16, Vec<usize>> {
    let mut by: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (server, echo) in echoes.into_iter().enumerate() {
        for s in echo.stop() {
            by.entry(s.peer.port()).or_default().push(server);
        }
    }
    by
}

/// Sets SO_RCVBUF beyond `net.core.rmem_max` (needs CAP_NET_ADMIN, which tests have as root).
fn force_rcvbuf(socket: &UdpSocket, bytes: libc::c_int) -> Result<()> {
    // SAFETY: the option value is a c_int that lives across the call, and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One UDP round: what the client sent and what each receiver got, in receiver order.
#[derive(Debug)]
pub struct UdpRun {
    pub sent: Vec<Sent>,
    pub received: Vec<Vec<Datagram>>,
}

/// Starts a [`UdpSink`] on `dst:port` in each receiver, sends `per_port` datagrams from each
/// client port in `src_ports`, waits for them (at most [`DELIVERY_TIMEOUT`]) and stops the sinks.
pub fn udp_round(
    client: &Netns,
    receivers: &[&Netns],
    dst: impl Into<IpAddr>,
    port: u16,
    src_ports: Range<u16>,
    per_port: usize,
) -> Result<UdpRun> {
    let dst = dst.into();
    let sinks = receivers
        .iter()
        .map(|ns| UdpSink::start(ns, dst, port))
        .collect::<Result<Vec<_>>>()?;
    let sent = send_udp(client, dst, port, src_ports, per_port)?;
    wait_for_datagrams(&sinks, sent.len(), DELIVERY_TIMEOUT);
    let received = sinks.into_iter().map(UdpSink::stop).collect();
    Ok(UdpRun { sent, received })
}

impl UdpRun {
    /// Datagrams each receiver got.
    pub fn counts(&self) -> Vec<usize> {
        self.received.iter().map(Vec::len).collect()
    }

    pub fn total_received(&self) -> usize {
        self.received.iter().map(Vec::len).sum()
    }

    /// Every datagram sent arrived exactly once, at one receiver, and nothing else arrived.
    pub fn assert_each_sent_once(&self) {
        let mut seen: BTreeMap<Option<u64>, usize> = BTreeMap::new();
        for datagram in self.received.iter().flatten() {
            *seen.entry(datagram.seq).or_default() += 1;
        }
        let missing: Vec<u64> = (self.sent.iter())
            .map(|s| s.seq)
            .filter(|seq| !seen.contains_key(&Some(*seq)))
            .collect();
        let sent: BTreeSet<u64> = self.sent.iter().map(|s| s.seq).collect();
        let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        let unexpected: Vec<_> = (seen.keys())
            .filter(|seq| !seq.is_some_and(|s| sent.contains(&s)))
            .collect();
        assert!(
            missing.is_empty() && duplicated.is_empty() && unexpected.is_empty(),
            "sent {}, received {} (per receiver {:?}); missing {} (first {:?}), \
             duplicated {} (first {:?}), unexpected {:?}",
            self.sent.len(),
            self.total_received(),
            self.counts(),
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            duplicated.len(),
            duplicated.iter().take(5).collect::<Vec<_>>(),
            unexpected.iter().take(5).collect::<Vec<_>>(),
        );
    }

    /// The client source ports each receiver saw.
    pub fn ports_per_receiver(&self) -> Vec<BTreeSet<u16>> {
        (self.received.iter())
            .map(|got| got.iter().map(|d| d.peer.port()).collect())
            .collect()
    }

    /// All datagrams of one client source port went to the same receiver.
    pub fn assert_flows_stick(&self) {
        let mut homes: BTreeMap<u16, BTreeSet<usize>> = BTreeMap::new();
        for (receiver, ports) in self.ports_per_receiver().iter().enumerate() {
            for port in ports {
                homes.entry(*port).or_default().insert(receiver);
            }
        }
        let split: Vec<_> = homes.iter().filter(|(_, r)| r.len() > 1).collect();
        assert!(
            split.is_empty(),
            "{} of {} flows were split across receivers (source port -> receiver indexes): {:?}",
            split.len(),
            homes.len(),
            split.iter().take(10).collect::<Vec<_>>()
        );
    }
}

/// One TCP round: the client's sessions and what each server served, in server order.
#[derive(Debug)]
pub struct TcpRun {
    pub sessions: Vec<TcpSession>,
    pub served: Vec<Vec<Served>>,
}

/// Starts a [`TcpEcho`] on `dst:port` in each server, runs [`tcp_sessions`] from the client,
/// and stops the servers.
pub fn tcp_round(
    client: &Netns,
    servers: &[&Netns],
    dst: impl Into<IpAddr>,
    port: u16,
    n_conns: usize,
    msgs_per_conn: usize,
) -> Result<TcpRun> {
    let dst = dst.into();
    let echoes = servers
        .iter()
        .map(|ns| TcpEcho::start(ns, dst, port))
        .collect::<Result<Vec<_>>>()?;
    let sessions = tcp_sessions(client, dst, port, n_conns, msgs_per_conn);
    let served = echoes.into_iter().map(TcpEcho::stop).collect();
    Ok(TcpRun { sessions, served })
}

impl TcpRun {
    /// Every connection exchanged all its messages.
    pub fn assert_all_ok(&self) {
        let failed: Vec<_> = self.sessions.iter().filter(|s| !s.ok()).collect();
        assert!(
            failed.is_empty(),
            "{} of {} connections failed: {:?}",
            failed.len(),
            self.sessions.len(),
            failed.iter().take(5).collect::<Vec<_>>()
        );
    }

    /// Connections each server accepted.
    pub fn counts(&self) -> Vec<usize> {
        self.served.iter().map(Vec::len).collect()
    }

    /// Each client connection was accepted by exactly one server, and no other was accepted.
    pub fn assert_each_connection_on_one_server(&self) {
        for session in &self.sessions {
            let homes: Vec<usize> = (self.served.iter().enumerate())
                .filter(|(_, served)| served.iter().any(|s| s.peer.port() == session.local_port))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(
                homes.len(),
                1,
                "client port {} was served by servers {homes:?} (counts {:?})",
                session.local_port,
                self.counts()
            );
        }
        assert_eq!(
            self.served.iter().map(Vec::len).sum::<usize>(),
            self.sessions.len(),
            "servers accepted connections the client did not open: {:?}",
            self.served
        );
    }
}

/// Bound on the life of one [`UdpStream`].
const STREAM_LIFETIME: Duration = Duration::from_secs(60);

/// A paced UDP stream from the client in the background: one datagram with a fresh sequence
/// number every `interval` from one source port, until stopped (or [`STREAM_LIFETIME`]).
/// It records when it sent each sequence number, so a receiver's first datagram can be dated.
pub struct UdpStream {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<Stamped>>>>,
}

/// A sequence number and when it was sent.
pub type Stamped = (u64, Instant);

impl UdpStream {
    pub fn start(
        client: &Netns,
        dst: impl Into<SocketAddr>,
        src_port: u16,
        interval: Duration,
    ) -> Result<Self> {
        let dst = dst.into();
        let source = client_source(dst.ip());
        let socket = client
            .in_ns(|| UdpSocket::bind((source, src_port)))
            .with_context(|| format!("bind UDP {source} port {src_port}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::Builder::new()
            .name("udp-stream".into())
            .spawn(move || {
                let deadline = Instant::now() + STREAM_LIFETIME;
                let mut sent = Vec::new();
                while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
                    // A send error (no route for a moment) is a lost datagram, as on a wire.
                    let _ = socket.send_to(&seq.to_be_bytes(), dst);
                    sent.push((seq, Instant::now()));
                    thread::sleep(interval);
                }
                Ok(sent)
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops sending; every sequence number sent, with when.
    pub fn stop(mut self) -> Result<Vec<Stamped>> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<Stamped>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h.join().expect("UDP stream thread panicked"),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for UdpStream {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A steady UDP stream from the client: one datagram (a [`send_udp`]-style sequence number)
/// every `gap`, cycling over the source ports, until stopped. Bounded by [`TRAFFIC_DEADLINE`]
/// and the datagram limit of [`send_udp`].
pub struct SpreadStream {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Result<Vec<SentAt>>>>,
}

impl SpreadStream {
    pub fn start(
        client: &Netns,
        dst: impl Into<IpAddr>,
        port: u16,
        src_ports: Range<u16>,
        gap: Duration,
    ) -> Result<Self> {
        let dst = dst.into();
        let source = client_source(dst);
        let sockets = client.in_ns(|| {
            src_ports
                .clone()
                .map(|p| Ok((p, UdpSocket::bind((source, p))?)))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (stop2, count2) = (stop.clone(), count.clone());
        let handle = thread::Builder::new()
            .name("udp-stream".into())
            .spawn(move || stream(&sockets, (dst, port), gap, &stop2, &count2))?;
        Ok(SpreadStream {
            stop,
            count,
            handle: Some(handle),
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops sending and returns what was sent; an error if a send failed or a bound was hit.
    pub fn stop(self) -> Result<Vec<Sent>> {
        Ok(self.stop_stamped()?.into_iter().map(|(s, _)| s).collect())
    }

    /// [`SpreadStream::stop`], with when each datagram was sent (taken just before the send,
    /// so the dataplane saw it later).
    pub fn stop_stamped(mut self) -> Result<Vec<SentAt>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("stream running")
            .join()
            .expect("UDP stream thread panicked")
    }
}

impl Drop for SpreadStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn stream(
    sockets: &[(u16, UdpSocket)],
    dst: (IpAddr, u16),
    gap: Duration,
    stop: &AtomicBool,
    count: &AtomicUsize,
) -> Result<Vec<SentAt>> {
    let deadline = Instant::now() + TRAFFIC_DEADLINE;
    let mut sent = Vec::new();
    for (src_port, socket) in sockets.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            return Ok(sent);
        }
        ensure!(
            Instant::now() < deadline && sent.len() < MAX_DATAGRAMS,
            "the UDP stream ran past its bounds ({} datagrams)",
            sent.len()
        );
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now();
        socket
            .send_to(&seq.to_be_bytes(), dst)
            .with_context(|| format!("send from port {src_port}"))?;
        sent.push((
            Sent {
                src_port: *src_port,
                seq,
            },
            at,
        ));
        count.fetch_add(1, Ordering::Relaxed);
        thread::sleep(gap);
    }
    Ok(sent)
}
