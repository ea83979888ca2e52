//! Who serves you: the member side of the identity exchange (`announce --identity-port`) and the
//! client side (`anycast-ctl probe`). Wire format: `anycast_common::identity`
//! (docs/identity-format.md).
//!
//! The responder binds one UDP socket per anycast address it announces, of either family, so
//! every reply leaves from the anycast address the query was sent to (the client's socket sees
//! its peer), and answers each query with this host's unicast address of that family (the
//! member address it advertises over that family) and hostname. It never answers more than [`MAX_REPLIES_PER_SECOND`] a second per address, and a
//! reply is never longer than its query, so it cannot be used to amplify a flood.
//!
//! The prober sends each query from a socket of its own (so from its own source port, which the
//! router hashes into the flow), waits at most the timeout for the reply that carries its nonce
//! from the anycast address, and counts everything else as malformed, with the reason.
use std::{
    collections::BTreeMap,
    hash::{BuildHasher, Hasher},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use anycast_common::identity::{MAX_REPLY_LEN, QUERY_LEN, Reply, Repr};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::UdpSocket, task::JoinHandle};

use crate::{Error, Result};

/// Replies per second and anycast address beyond which queries are ignored.
pub const MAX_REPLIES_PER_SECOND: u32 = 1000;

/// The running responders; dropping it stops them.
pub struct Responder {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Binds `port` on each anycast address of `served` (before the address is on `lo`: IP_FREEBIND
/// or IPV6_FREEBIND) and answers queries to it as its member address, of the same family.
/// Binding is the only step that can fail, and it changes nothing.
pub fn serve(served: &[(IpAddr, IpAddr)], port: u16) -> Result<Responder> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let sockets = served
        .iter()
        .map(|&(anycast, member)| {
            let reply = Reply::new(0, anycast, member, &hostname).ok_or_else(|| {
                Error::Usage(format!("{anycast} and {member} are of different families"))
            })?;
            bind(SocketAddr::new(anycast, port)).map(|s| (reply, s))
        })
        .collect::<Result<Vec<_>>>()?;
    let tasks = sockets
        .into_iter()
        .map(|(reply, socket)| tokio::spawn(async move { answer(socket, reply).await }))
        .collect();
    Ok(Responder { tasks })
}

fn bind(addr: SocketAddr) -> Result<UdpSocket> {
    let io = |e| Error::io(format!("binding the identity port {addr}"), e);
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true).map_err(io)?;
    } else {
        socket.set_only_v6(true).map_err(io)?;
        socket.set_freebind_v6(true).map_err(io)?;
    }
    socket.bind(&addr.into()).map_err(io)?;
    socket.set_nonblocking(true).map_err(io)?;
    UdpSocket::from_std(socket.into()).map_err(io)
}

/// Answers every query on `socket` with `template` (its nonce replaced by the query's).
async fn answer(socket: UdpSocket, template: Reply) {
    let mut buf = [0u8; 2048];
    let mut out = [0u8; MAX_REPLY_LEN];
    let (mut second, mut replies) = (Instant::now(), 0);
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(error = %e, "identity socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let nonce = match Repr::parse(&buf[..len]) {
            Ok(Repr::Query { nonce }) => nonce,
            Ok(Repr::Reply(_)) => continue,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "ignored an identity query");
                continue;
            }
        };
        if second.elapsed() >= Duration::from_secs(1) {
            (second, replies) = (Instant::now(), 0);
        }
        if replies >= MAX_REPLIES_PER_SECOND {
            continue;
        }
        replies += 1;
        let mut reply = template;
        reply.nonce = nonce;
        let reply = Repr::Reply(reply);
        let n = reply.emit(&mut out);
        if let Err(e) = socket.send_to(&out[..n], peer).await {
            tracing::debug!(%peer, error = %e, "sending an identity reply");
        }
    }
}

/// One member as the probe saw it.
#[derive(Debug, Serialize)]
pub struct Answered {
    pub address: IpAddr,
    pub hostname: String,
    pub answers: usize,
    pub rtt_ms_min: f64,
    pub rtt_ms_avg: f64,
    pub rtt_ms_max: f64,
}

/// What `probe` found.
#[derive(Debug, Serialize)]
pub struct Probe {
    pub anycast: IpAddr,
    pub port: u16,
    pub queries: usize,
    pub answered: usize,
    pub timed_out: usize,
    /// Datagrams that were not a valid reply to one of our queries (ignored).
    pub malformed: usize,
    /// Why, for each distinct reason seen.
    pub malformed_reasons: Vec<String>,
    pub members: Vec<Answered>,
}

/// How one query went.
struct Outcome {
    reply: Option<(Reply, Duration)>,
    malformed: Vec<String>,
}

/// Sends `count` queries to `anycast:port`, each from its own source port, all at once, and
/// waits at most `timeout` for each reply.
pub async fn probe(anycast: IpAddr, port: u16, count: usize, timeout: Duration) -> Result<Probe> {
    let target = SocketAddr::new(anycast, port);
    let any: IpAddr = match anycast {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let seed = std::collections::hash_map::RandomState::new();
    let mut queries = Vec::with_capacity(count);
    for i in 0..count {
        let socket = UdpSocket::bind((any, 0))
            .await
            .map_err(|e| Error::io("binding a probe socket", e))?;
        let mut h = seed.build_hasher();
        h.write_usize(i);
        queries.push(query(socket, target, h.finish(), timeout));
    }
    let outcomes = futures::future::join_all(queries)
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(summarise(anycast, port, outcomes))
}

/// Adds the outcomes up by member.
fn summarise(anycast: IpAddr, port: u16, outcomes: Vec<Outcome>) -> Probe {
    let mut probe = Probe {
        anycast,
        port,
        queries: outcomes.len(),
        answered: 0,
        timed_out: 0,
        malformed: 0,
        malformed_reasons: Vec::new(),
        members: Vec::new(),
    };
    let mut by_member: BTreeMap<IpAddr, (String, Vec<f64>)> = BTreeMap::new();
    for outcome in outcomes {
        probe.malformed += outcome.malformed.len();
        for reason in outcome.malformed {
            if !probe.malformed_reasons.contains(&reason) {
                probe.malformed_reasons.push(reason);
            }
        }
        match outcome.reply {
            Some((reply, rtt)) => {
                probe.answered += 1;
                let entry = by_member
                    .entry(reply.member())
                    .or_insert_with(|| (reply.hostname().to_string(), Vec::new()));
                entry.1.push(rtt.as_secs_f64() * 1e3);
            }
            None => probe.timed_out += 1,
        }
    }
    probe.members = by_member
        .into_iter()
        .map(|(address, (hostname, rtts))| Answered {
            address,
            hostname,
            answers: rtts.len(),
            rtt_ms_min: rtts.iter().copied().fold(f64::INFINITY, f64::min),
            rtt_ms_avg: rtts.iter().sum::<f64>() / rtts.len() as f64,
            rtt_ms_max: rtts.iter().copied().fold(0.0, f64::max),
        })
        .collect();
    probe
}

/// One query: send, then read until the reply with `nonce` from `target` or the timeout.
async fn query(
    socket: UdpSocket,
    target: SocketAddr,
    nonce: u64,
    timeout: Duration,
) -> Result<Outcome> {
    let mut buf = [0u8; QUERY_LEN];
    let n = Repr::Query { nonce }.emit(&mut buf);
    let start = Instant::now();
    socket
        .send_to(&buf[..n], target)
        .await
        .map_err(|e| Error::io(format!("sending a query to {target}"), e))?;
    let deadline = tokio::time::Instant::from_std(start + timeout);
    let mut malformed = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let got = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await;
        let Ok(got) = got else {
            return Ok(Outcome {
                reply: None,
                malformed,
            });
        };
        let (len, from) = got.map_err(|e| Error::io("receiving a reply", e))?;
        match check(&buf[..len], from, target, nonce) {
            Ok(reply) => {
                return Ok(Outcome {
                    reply: Some((reply, start.elapsed())),
                    malformed,
                });
            }
            Err(why) => malformed.push(why),
        }
    }
}

/// A datagram is our reply if it comes from the anycast address and port, parses as a reply,
/// carries our nonce and names the anycast address; else why not.
fn check(
    datagram: &[u8],
    from: SocketAddr,
    target: SocketAddr,
    nonce: u64,
) -> Result<Reply, String> {
    if from != target {
        return Err(format!("a reply came from {from}, not from {target}"));
    }
    match Repr::parse(datagram) {
        Ok(Repr::Reply(r)) if r.nonce == nonce && r.anycast() == target.ip() => Ok(r),
        Ok(Repr::Reply(r)) if r.nonce != nonce => {
            Err(format!("a reply from {from} carried another query's nonce"))
        }
        Ok(Repr::Reply(r)) => Err(format!(
            "a reply from {from} names {} as its anycast address",
            r.anycast()
        )),
        Ok(Repr::Query { .. }) => Err(format!("{from} sent a query, not a reply")),
        Err(e) => Err(format!("malformed reply from {from}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_reply_from_the_anycast_address_counts() {
        let anycast = Ipv4Addr::new(198, 51, 100, 53);
        let target = SocketAddr::from((anycast, 5447));
        let member = Ipv4Addr::new(203, 0, 113, 2);
        let emit = |r: Repr| {
            let mut b = vec![0; r.buffer_len()];
            r.emit(&mut b);
            b
        };
        let good = emit(Repr::Reply(Reply::new(7, anycast, member, "m1").unwrap()));
        let from = target;
        assert_eq!(check(&good, from, target, 7).unwrap().member(), member);
        let unicast = SocketAddr::from((member, 5447));
        assert!(
            check(&good, unicast, target, 7)
                .unwrap_err()
                .contains("not from")
        );
        assert!(check(&good, from, target, 8).unwrap_err().contains("nonce"));
        let other = emit(Repr::Reply(Reply::new(7, member, member, "m1").unwrap()));
        assert!(
            check(&other, from, target, 7)
                .unwrap_err()
                .contains("names")
        );
        assert!(
            check(&good[..5], from, target, 7)
                .unwrap_err()
                .contains("truncated")
        );
        let query = emit(Repr::Query { nonce: 7 });
        assert!(
            check(&query, from, target, 7)
                .unwrap_err()
                .contains("query")
        );

        // IPv6: the reply names the IPv6 anycast address; an IPv4 reply from it does not.
        let anycast6: Ipv6Addr = "2001:db8:53::53".parse().unwrap();
        let member6: Ipv6Addr = "2001:db8:203:1::2".parse().unwrap();
        let target6 = SocketAddr::from((anycast6, 5447));
        let good6 = emit(Repr::Reply(Reply::new(9, anycast6, member6, "m1").unwrap()));
        let r = check(&good6, target6, target6, 9).unwrap();
        assert_eq!((r.anycast(), r.member()), (anycast6.into(), member6.into()));
        assert!(
            check(&good, target6, target6, 7)
                .unwrap_err()
                .contains("names 198.51.100.53")
        );
    }
}
