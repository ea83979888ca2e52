//! Frames built byte by byte, and a BPF_PROG_TEST_RUN bed: the real dataplane object loaded in
//! a private network namespace, with its maps filled through anycast-ctl's own code paths.
//!
//! The builders compute every checksum from scratch (RFC 1071), independently of the
//! dataplane's incremental update, so a fixture's expected frame checks the dataplane's math.
use std::{
    collections::BTreeMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anycast_common::{
    FLOW_UNUSED, FlowSet, HOST_MAC_KNOWN, Host, Iface, MODE_NATIVE, any_key, bench, names, programs,
};
use anycast_ctl::{
    dataplane::{self, Maps},
    members::{self, Placement},
    pin::PinDir,
};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
};

/// EtherTypes, IP protocols, TCP flags, ARP fields and verdicts, as the dataplane names them.
pub use anycast_common::proto::*;

/// Deterministic bytes for tests over varied inputs: SHA-256 of `label` and `n`, so a failing
/// case is named by its `n` and comes out the same on every run.
pub fn varied(label: &str, n: u32) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(label.as_bytes());
    h.update(n.to_le_bytes());
    h.finalize().into()
}

/// RFC 1071 Internet checksum.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 datagram to build.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset, as on the wire (0x2000 = more fragments).
    pub frag: u16,
    /// IP options (a multiple of 4 bytes).
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Ipv4 {
    pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Self {
        let mut payload = Vec::new();
        payload.extend_from_slice(&sport.to_be_bytes());
        payload.extend_from_slice(&dport.to_be_bytes());
        payload.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        payload.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        payload.extend_from_slice(data);
        Self::new(src, dst, IPPROTO_UDP, payload)
    }

    pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Self {
        let mut payload = Vec::new();
        payload.extend_from_slice(&sport.to_be_bytes());
        payload.extend_from_slice(&dport.to_be_bytes());
        payload.extend_from_slice(&1u32.to_be_bytes()); // seq
        payload.extend_from_slice(&0u32.to_be_bytes()); // ack
        payload.extend_from_slice(&[0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]); // doff 5
        Self::new(src, dst, IPPROTO_TCP, payload)
    }

    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        let mut payload = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let c = checksum(&payload);
        payload[2..4].copy_from_slice(&c.to_be_bytes());
        Self::new(src, dst, IPPROTO_ICMP, payload)
    }

    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x1c46,
            frag: 0x4000, // DF
            options: Vec::new(),
            payload,
        }
    }

    /// The IP header and payload, with a freshly computed header checksum.
    pub fn bytes(&self) -> Vec<u8> {
        let ihl = (20 + self.options.len()) / 4;
        let total = ihl * 4 + self.payload.len();
        let mut h = vec![0x40 | ihl as u8, 0];
        h.extend_from_slice(&(total as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&self.payload);
        h
    }
}

/// An IPv6 datagram to build: the fixed header, then `payload` as given (extension headers
/// included); `next_header` is the fixed header's.
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub next_header: u8,
    pub hop_limit: u8,
    pub flow_label: u32,
    pub payload: Vec<u8>,
}

/// The RFC 1071 checksum of an upper-layer message over IPv6 (RFC 8200 8.1): the
/// pseudo-header of source, destination, length and next header, then the message.
pub fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, message: &[u8]) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(message.len() as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, next_header]);
    p.extend_from_slice(message);
    checksum(&p)
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: Vec<u8>) -> Self {
        Self {
            src,
            dst,
            next_header,
            hop_limit: 64,
            flow_label: 0,
            payload,
        }
    }

    /// UDP with its checksum (mandatory over IPv6).
    pub fn udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Self {
        Self::new(src, dst, IPPROTO_UDP, udp6(src, dst, sport, dport, data))
    }

    /// A TCP SYN (checksum left 0: the dataplane does not read it).
    pub fn tcp_syn(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Self {
        let mut payload = Vec::new();
        payload.extend_from_slice(&sport.to_be_bytes());
        payload.extend_from_slice(&dport.to_be_bytes());
        payload.extend_from_slice(&1u32.to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.extend_from_slice(&[0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
        Self::new(src, dst, IPPROTO_TCP, payload)
    }

    /// The fixed header and payload.
    pub fn bytes(&self) -> Vec<u8> {
        let first = 0x6000_0000u32 | (self.flow_label & 0xf_ffff);
        let mut h = first.to_be_bytes().to_vec();
        h.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[self.next_header, self.hop_limit]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.payload);
        h
    }
}

/// A UDP header and data over IPv6, with the checksum over the pseudo-header.
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    let c = checksum6(src, dst, IPPROTO_UDP, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

pub fn ipv6_frame(dst: [u8; 6], src: [u8; 6], ip: &Ipv6) -> Vec<u8> {
    ethernet(dst, src, ETH_P_IPV6, &ip.bytes())
}

/// The solicited-node multicast address of `target` (ff02::1:ffXX:XXXX) and its MAC.
pub fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let t = target.octets();
    let mut a = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    a[13..].copy_from_slice(&t[13..]);
    (Ipv6Addr::from(a), [0x33, 0x33, 0xff, t[13], t[14], t[15]])
}

/// A neighbour solicitation message (ICMPv6, checksum computed) for `target`, with a source
/// link-layer address option if `source_ll` is given, and `extra` options after it.
pub fn ns_message(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    source_ll: Option<[u8; 6]>,
    extra: &[u8],
) -> Vec<u8> {
    let mut m = vec![ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if let Some(mac) = source_ll {
        m.extend_from_slice(&[ND_OPT_SOURCE_LL, 1]);
        m.extend_from_slice(&mac);
    }
    m.extend_from_slice(extra);
    let c = checksum6(src, dst, IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn ipv4_frame(dst: [u8; 6], src: [u8; 6], ip: &Ipv4) -> Vec<u8> {
    ethernet(dst, src, ETH_P_IP, &ip.bytes())
}

/// An ARP frame (Ethernet/IPv4).
pub fn arp_frame(
    eth_dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&ARPHRD_ETHER.to_be_bytes());
    a.extend_from_slice(&ETH_P_IP.to_be_bytes());
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    ethernet(eth_dst, sha, ETH_P_ARP, &a)
}

/// Outcome counters that changed, by name, with how much.
pub type Changed = Vec<(String, u64)>;

/// Live entries of IP protocol `proto` in the connection table pinned under `pin_dir`.
pub fn tracked_flows(pin_dir: &std::path::Path, proto: u8) -> usize {
    let flows: Array<MapData, FlowSet> = MapData::from_pin(pin_dir.join(names::FLOWS))
        .map(Map::Array)
        .and_then(Array::try_from)
        .expect("the pinned connection table");
    (flows.iter().flat_map(|set| set.expect("a set").ways))
        .filter(|e| e.key != FLOW_UNUSED && e.key != 0 && e.key as u8 == proto)
        .count()
}

/// One interface of the bed.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

static BEDS: AtomicU32 = AtomicU32::new(0);

/// The dataplane loaded (not attached) in a private namespace with two veth ports, `p0` and
/// `p1`, both registered as attached interfaces. The calling thread runs inside that namespace
/// while the bed lives; dropping it returns the thread, deletes the namespace and the pins.
pub struct Bed {
    ns: String,
    home: File,
    pin: PinDir,
    ebpf: Ebpf,
    /// The benchmark object, for reference programs run on the same frames.
    bench: Ebpf,
    pub maps: Maps,
    pub ports: Vec<Port>,
}

impl Bed {
    pub fn new() -> Result<Self> {
        Self::with_flows(None)
    }

    /// A bed whose connection table holds `flows` flows (default: the product default).
    pub fn with_flows(flows: Option<u32>) -> Result<Self> {
        crate::require_root();
        let n = BEDS.fetch_add(1, Ordering::Relaxed);
        let ns = format!("acfx-{}-{n}", std::process::id());
        let pin = PinDir::new(format!("/sys/fs/bpf/anycast-fx-{}-{n}", std::process::id()));
        let home = File::open("/proc/thread-self/ns/net").context("opening our netns")?;
        crate::cmd::run("ip", &["netns", "add", &ns])?;
        let mut bed = Self::setup(ns.clone(), home, pin.clone(), flows);
        if let Err(e) = &mut bed {
            let _ = crate::cmd::run("ip", &["netns", "del", &ns]);
            let _ = std::fs::remove_dir_all(pin.path());
            bail!("building the TEST_RUN bed: {e:#}");
        }
        bed
    }

    fn setup(ns: String, home: File, pin: PinDir, flows: Option<u32>) -> Result<Self> {
        for (a, b) in [("p0", "p0peer"), ("p1", "p1peer")] {
            crate::cmd::run(
                "ip",
                &[
                    "-n", &ns, "link", "add", a, "type", "veth", "peer", "name", b,
                ],
            )?;
            crate::cmd::run("ip", &["-n", &ns, "link", "set", a, "up"])?;
            crate::cmd::run("ip", &["-n", &ns, "link", "set", b, "up"])?;
        }
        let target = File::open(format!("/run/netns/{ns}"))?;
        // SAFETY: setns on this thread only; both fds are valid namespace files.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        pin.check()?;
        std::fs::create_dir_all(pin.links())?;
        let mut ebpf = dataplane::load(&pin, flows)?;
        let mut bench = crate::xdp::load_object()?;
        for (ebpf, names) in [
            (&mut ebpf, &programs::ALL[..]),
            (&mut bench, &bench::programs::ALL[..]),
        ] {
            for name in names {
                let p: &mut Xdp = ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name}"))?
                    .try_into()?;
                p.load()?;
            }
        }
        let mut maps = Maps::open(&pin)?;
        let mut ports = Vec::new();
        for name in ["p0", "p1"] {
            let (ifindex, mac) = link_info(name)?;
            maps.set_iface(Iface {
                ifindex,
                mac,
                _pad: [0; 2],
                mode: MODE_NATIVE,
            })?;
            maps.tx_ports.insert(ifindex, ifindex, None, 0)?;
            ports.push(Port {
                name: name.into(),
                ifindex,
                mac,
            });
        }
        Ok(Self {
            ns,
            home,
            pin,
            ebpf,
            bench,
            maps,
            ports,
        })
    }

    /// Gives port `port` the IPv4 address `cidr` (e.g. `198.18.0.1/23`), in the bed's namespace.
    pub fn add_address(&self, port: usize, cidr: &str) -> Result<()> {
        let dev = &self.ports[port].name;
        crate::cmd::run("ip", &["-n", &self.ns, "addr", "add", cidr, "dev", dev])?;
        Ok(())
    }

    /// The pin directory of the bed's maps.
    pub fn pin(&self) -> &PinDir {
        &self.pin
    }

    /// Adds a member through the same code path as `anycast-ctl member add`.
    pub fn add_member(
        &mut self,
        anycast: impl Into<IpAddr>,
        member: impl Into<IpAddr>,
        port: usize,
        mac: [u8; 6],
    ) -> Result<()> {
        let anycast = anycast.into();
        let p = Placement {
            member: member.into(),
            ifindex: self.ports[port].ifindex,
            mac,
            smac: self.ports[port].mac,
            static_mac: false,
            signed_mac: false,
        };
        members::add(
            &mut self.maps,
            anycast,
            &p,
            members::static_info(
                members::now_ms(),
                members::DEFAULT_PREFERENCE,
                members::DEFAULT_WEIGHT,
            ),
            None,
        )?;
        Ok(())
    }

    /// Sets a member's preference and weight, as `anycast-ctl member set` does.
    pub fn set_weight(
        &mut self,
        anycast: impl Into<IpAddr>,
        member: impl Into<IpAddr>,
        preference: u16,
        weight: u16,
    ) -> Result<()> {
        Ok(members::set_weight(
            &mut self.maps,
            (anycast.into(), member.into()),
            preference,
            weight,
            None,
        )?)
    }

    pub fn del_member(
        &mut self,
        anycast: impl Into<IpAddr>,
        member: impl Into<IpAddr>,
    ) -> Result<()> {
        members::del(&mut self.maps, anycast.into(), member.into())?;
        Ok(())
    }

    /// Marks a member host's MAC as unknown, as if never resolved.
    pub fn forget_mac(&mut self, member: impl Into<IpAddr>) -> Result<()> {
        let index = self.maps.host_ids.get(&any_key(member.into()), 0)?;
        let host: Host = self.maps.hosts.get(&index, 0)?;
        self.maps.hosts.set(
            index,
            Host {
                flags: host.flags & !HOST_MAC_KNOWN,
                ..host
            },
            0,
        )?;
        Ok(())
    }

    pub fn host(&self, member: impl Into<IpAddr>) -> Result<Host> {
        let index = self.maps.host_ids.get(&any_key(member.into()), 0)?;
        Ok(self.maps.hosts.get(&index, 0)?)
    }

    /// Live connection-table entries of IP protocol `proto`, of any address.
    pub fn tracked_flows(&self, proto: u8) -> usize {
        tracked_flows(self.pin.path(), proto)
    }

    /// The live member set of `anycast` by position: each position's member, `None` for a hole.
    pub fn positions(&self, anycast: Ipv4Addr) -> Result<Vec<Option<Ipv4Addr>>> {
        let dataplane::Bucket::Found { entry, .. } = self.maps.bucket(anycast.into())? else {
            bail!("{anycast} is not in ADDRS");
        };
        let set = self.maps.member_set(&entry)?;
        let host = |m: &anycast_common::MemberRef| -> Result<Option<Ipv4Addr>> {
            if m.host == anycast_common::NO_HOST {
                return Ok(None);
            }
            let h: Host = self.maps.hosts.get(&m.host, 0)?;
            match anycast_common::any_ip(h.ip) {
                IpAddr::V4(v4) => Ok(Some(v4)),
                IpAddr::V6(v6) => bail!("IPv6 member {v6} of {anycast}"),
            }
        };
        set.positions().iter().map(host).collect()
    }

    /// Every outcome counter: `ADDRESS/forwarded`, `ADDRESS/arp_replies`,
    /// `ADDRESS/nd_replies`, `ADDRESS/passed.REASON` and `global/NAME` (the `rx_*` counters,
    /// which every frame to an address bumps, left out).
    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        let all = anycast_ctl::report::stats(&self.maps, None).expect("reading the counters");
        let mut out = BTreeMap::new();
        for a in &all.addresses {
            out.insert(format!("{}/forwarded", a.address), a.forwarded_packets);
            out.insert(format!("{}/arp_replies", a.address), a.arp_replies);
            out.insert(format!("{}/nd_replies", a.address), a.nd_replies);
            for (reason, n) in &a.passed {
                out.insert(format!("{}/passed.{reason}", a.address), *n);
            }
        }
        for (name, n) in &all.global {
            out.insert(format!("global/{name}"), *n);
        }
        out
    }

    /// The outcome counters that changed since `before` (an [`Bed::outcomes`]), with how much.
    pub fn changed_since(&self, before: &BTreeMap<String, u64>) -> Changed {
        self.outcomes()
            .into_iter()
            .filter(|(k, v)| before.get(k) != Some(v))
            .map(|(k, v)| {
                let was = before.get(&k).copied().unwrap_or(0);
                (k, v - was)
            })
            .collect()
    }

    /// Runs `frame` through `program` on port `ingress`: the verdict, the output frame, and
    /// the outcome counters that changed, with how much.
    pub fn run_counted(
        &self,
        program: &str,
        ingress: usize,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>, Changed)> {
        let before = self.outcomes();
        let (verdict, out) = self.run(program, ingress, frame)?;
        let changed = self.changed_since(&before);
        Ok((verdict, out, changed))
    }

    /// Runs `frame` in on port `ingress` and requires XDP_PASS, the frame untouched, and
    /// exactly one counter, `counter`, up by one.
    pub fn assert_passed_as(&self, what: &str, ingress: usize, frame: &[u8], counter: &str) {
        let (verdict, out, changed) = self.run_counted(programs::ANYCAST, ingress, frame).unwrap();
        assert_eq!(verdict, XDP_PASS, "{what}: verdict");
        assert_eq!(out, frame, "{what}: frame must pass untouched");
        assert_eq!(changed, [(counter.to_string(), 1)], "{what}: counters");
    }

    /// Program `name` of the dataplane or of the benchmark object.
    fn program(&self, name: &str) -> Result<&Xdp> {
        let prog = self.ebpf.program(name).or_else(|| self.bench.program(name));
        Ok(prog
            .with_context(|| format!("program {name}"))?
            .try_into()?)
    }

    /// Runs `program` once on `frame` arriving on port `ingress`: the verdict and the frame
    /// as the program left it.
    pub fn run(&self, program: &str, ingress: usize, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.run_repeated(program, ingress, frame, 1)
    }

    /// Runs `program` `repeat` times on `frame` arriving on port `ingress`, as TEST_RUN does:
    /// each repeat on the frame the previous one left. The last verdict and frame.
    pub fn run_repeated(
        &self,
        program: &str,
        ingress: usize,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = xdp_md(frame.len(), self.ports[ingress].ifindex);
        let mut ctx_out = [0u8; 24];
        let prog = self.program(program)?;
        let r = prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs `program` `repeat` times in the kernel on `frame` arriving on port `ingress`, each
    /// run on `frame` as given: `bench_replay` restores it and tail-calls `program` (TEST_RUN
    /// runs every repeat on what the previous one left, so a forward would meet its own
    /// output). The mean time per run, the replay's included, and the last run's verdict and
    /// frame.
    pub fn time(
        &mut self,
        program: &str,
        ingress: usize,
        frame: &[u8],
        repeat: u32,
    ) -> Result<Timed> {
        let template = bench::BenchFrame::replay(frame).context("frame too long to replay")?;
        let target = self
            .ebpf
            .program(program)
            .or_else(|| self.bench.program(program))
            .with_context(|| format!("program {program}"))?;
        let target: &Xdp = target.try_into()?;
        let target = target.fd()?.try_clone()?;
        let mut targets = ProgramArray::try_from(
            self.bench
                .map_mut(bench::names::BENCH_TARGET)
                .context("map BENCH_TARGET")?,
        )?;
        targets.set(0, &target, 0).context("BENCH_TARGET[0]")?;
        let mut frames: Array<_, bench::BenchFrame> = Array::try_from(
            self.bench
                .map_mut(bench::names::BENCH_FRAME)
                .context("map BENCH_FRAME")?,
        )?;
        frames.set(0, template, 0).context("BENCH_FRAME[0]")?;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = xdp_md(frame.len(), self.ports[ingress].ifindex);
        let r = self
            .program(bench::programs::BENCH_REPLAY)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..Default::default()
            })?;
        out.truncate(r.data_size_out as usize);
        Ok(Timed {
            per_run: r.duration,
            verdict: r.return_value,
            frame: out,
        })
    }
}

/// What [`Bed::time`] measured.
#[derive(Debug)]
pub struct Timed {
    /// The mean time per run.
    pub per_run: Duration,
    /// The last run's verdict.
    pub verdict: u32,
    /// The frame as the last run left it.
    pub frame: Vec<u8>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // SAFETY: `home` is this thread's original namespace, opened at creation.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = crate::cmd::run("ip", &["netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(self.pin.path());
    }
}

/// `struct xdp_md` for TEST_RUN: data 0, data_end = len, the ingress ifindex, rx queue 0.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Index and MAC of an interface in the current thread's namespace (ioctl, not sysfs: sysfs
/// shows the namespace it was mounted in).
fn link_info(name: &str) -> Result<(u32, [u8; 6])> {
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {name}");
    }
    // SAFETY: a plain datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; zero is a valid initial value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of a valid ifreq.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        bail!("SIOCGIFHWADDR {name}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl filled ifr_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d as u8;
    }
    Ok((ifindex, mac))
}
