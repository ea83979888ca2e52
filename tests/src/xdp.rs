//! A two-instruction XDP_PASS program for veth peers that must receive XDP_TX frames.
//!
//! Measured on this kernel (6.18): a frame the router bounces back with XDP_TX (the ARP reply
//! out of r0) never reaches the veth peer c0 when c0 only has GRO on — veth's XDP_TX flush wakes
//! the peer only if the peer runs XDP. XDP_REDIRECT into a veth does work with GRO on the peer.
//! So the client's c0 gets this do-nothing program. It is loaded with bpf(2) and attached with
//! one rtnetlink request sent from inside the namespace: no toolchain, no object file, nothing
//! pinned. The attachment lives until the interface goes away with its namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `r0 = XDP_PASS (2)`: BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 2.
const MOV_R0_XDP_PASS: u64 = 0xb7 | (2 << 32);
/// BPF_JMP | BPF_EXIT.
const EXIT: u64 = 0x95;

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const NLA_F_NESTED: u16 = 1 << 15;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Attaches an XDP_PASS program in native mode to `ifname` in `ns`.
pub fn attach_pass(ns: &Netns, ifname: &str) -> Result<()> {
    let ifindex = ns.ifindex(ifname)?;
    let prog = load_pass()?;
    let request = setlink_xdp(ifindex, prog.as_raw_fd());
    ns.in_ns(|| rtnetlink(&request))
        .with_context(|| format!("attach XDP_PASS to {ifname} in {}", ns.name()))
}

fn load_pass() -> Result<OwnedFd> {
    let insns = [MOV_R0_XDP_PASS, EXIT];
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    attr.prog_name[..7].copy_from_slice(b"ac_pass");
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for BPF_PROG_LOAD, alive for the
    // call, and its pointers refer to `insns` and `license`, which outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!(
            "load the XDP_PASS program: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a successful BPF_PROG_LOAD returns a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// RTM_SETLINK for `ifindex` with IFLA_XDP { FD = prog_fd, FLAGS = DRV_MODE }, asking for an ACK.
fn setlink_xdp(ifindex: u32, prog_fd: i32) -> Vec<u8> {
    let attr = |kind: u16, value: &[u8]| {
        let mut a = Vec::new();
        a.extend_from_slice(&(4 + value.len() as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a
    };
    let mut nested = attr(IFLA_XDP_FD, &prog_fd.to_ne_bytes());
    nested.extend(attr(IFLA_XDP_FLAGS, &XDP_FLAGS_DRV_MODE.to_ne_bytes()));
    let xdp = attr(IFLA_XDP | NLA_F_NESTED, &nested);

    let mut ifinfo = vec![0u8; 16]; // struct ifinfomsg, AF_UNSPEC
    ifinfo[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let len = 16 + ifinfo.len() + xdp.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.extend(ifinfo);
    msg.extend(xdp);
    msg
}

/// Sends one request on a NETLINK_ROUTE socket of the calling thread's namespace and checks
/// the kernel's ACK.
fn rtnetlink(request: &[u8]) -> Result<()> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    ensure!(
        fd >= 0,
        "netlink socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: the option value is a timeval that lives across the call, and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: `request` is valid for its length; the socket is connected to nothing, and a
    // NETLINK_ROUTE socket's default destination is the kernel.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    ensure!(
        sent == request.len() as isize,
        "netlink send: {}",
        std::io::Error::last_os_error()
    );
    let mut reply = [0u8; 4096];
    // SAFETY: `reply` is writable for its length.
    let got = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            0,
        )
    };
    ensure!(
        got >= 20,
        "netlink reply: {}",
        std::io::Error::last_os_error()
    );
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    ensure!(
        kind == libc::NLMSG_ERROR as u16,
        "unexpected netlink reply type {kind}"
    );
    let errno = -i32::from_ne_bytes(reply[16..20].try_into().unwrap());
    if errno != 0 {
        bail!("RTM_SETLINK: {}", std::io::Error::from_raw_os_error(errno));
    }
    Ok(())
}
