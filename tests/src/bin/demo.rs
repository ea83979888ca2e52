//! `cargo xtask demo`: anycast on the DESIGN.md topology, start to finish.
//!
//! Builds a client, a router and three members in network namespaces, attaches the dataplane to
//! the router's interfaces, makes the three members serve 198.51.100.53, sends UDP and TCP from
//! the client, prints what `anycast-ctl` reports, and removes everything again.
use anycast_tests::{
    ANYCAST, Ctl, Topology, TopologyOptions,
    traffic::{TCP_PORT, UDP_PORT, tcp_round, udp_round},
};
use anyhow::Result;

fn main() -> Result<()> {
    anycast_tests::require_root();
    step("building the topology: client c0 -- r0 [router] r1/r2/r3 -- members m1/m2/m3");
    let topo = Topology::new(TopologyOptions::default())?;
    let ctl = Ctl::new(&topo.router);

    let ifaces = topo.router_ifaces();
    let ifaces: Vec<&str> = ifaces.iter().map(String::as_str).collect();
    show(
        "anycast-ctl attach r0 r1 r2 r3",
        &ctl.run(&[&["attach"], &ifaces[..]].concat())?,
    );
    for ip in topo.member_ips() {
        let out = ctl.run(&["member", "add", &ANYCAST.to_string(), &ip.to_string()])?;
        show(&format!("anycast-ctl member add {ANYCAST} {ip}"), &out);
    }
    show("anycast-ctl status", &ctl.run(&["status"])?);
    show("anycast-ctl show", &ctl.run(&["show"])?);

    let members = topo.member_namespaces();
    step("client sends 600 UDP datagrams to 198.51.100.53 from 60 source ports");
    let udp = udp_round(&topo.client, &members, ANYCAST, UDP_PORT, 41000..41060, 10)?;
    for (member, got) in topo.member_ips().iter().zip(udp.counts()) {
        println!("    member {member} received {got} datagrams");
    }
    udp.assert_each_sent_once();
    udp.assert_flows_stick();

    step("client opens 30 TCP connections to 198.51.100.53, 5 messages each");
    let tcp = tcp_round(&topo.client, &members, ANYCAST, TCP_PORT, 30, 5)?;
    tcp.assert_all_ok();
    tcp.assert_each_connection_on_one_server();
    for (member, served) in topo.member_ips().iter().zip(tcp.counts()) {
        println!("    member {member} served {served} connections");
    }

    show("anycast-ctl stats", &ctl.run(&["stats"])?);
    let neigh = topo.client.ip(&["neigh", "show", &ANYCAST.to_string()])?;
    show("client: ip neigh show 198.51.100.53", &neigh);

    println!(
        "What happened:
  - The client resolved 198.51.100.53 by ARP. No member answered: the router's XDP program
    replied with r0's MAC (see `ip neigh` above and the ARP/ND REPLIES counter).
  - Each datagram to 198.51.100.53 was placed in XDP on r0: a new flow by the address's Maglev
    table on its 5-tuple hash, a known one by the connection table. It was sent, with only its
    MACs and TTL rewritten, straight out of r1, r2 or r3 to one member (XDP_REDIRECT). Every
    datagram arrived exactly once, and all datagrams of a source port at the same member.
  - Every TCP connection stayed on one member for its whole life; the members answered the
    client directly (the anycast address is on their loopback), through the router's kernel.
  - The counters above are per address and per member, summed over CPUs.
Cleaning up: namespaces, links and pins are removed."
    );
    drop(ctl);
    drop(topo);
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn show(command: &str, output: &str) {
    println!("\n$ {command}");
    for line in output.lines() {
        println!("  {line}");
    }
}
