//! anycast-ctl: user space of the anycast router.
//!
//! - [`pin`]: the pin directory on bpffs, and the lock that serialises writers.
//! - [`dataplane`]: loading the embedded eBPF object and typed access to its pinned maps.
//! - [`attach`]: attaching the dataplane to interfaces, detaching it, and its status.
//! - [`members`]: where a membership becomes a map entry (used by the CLI and the agent).
//! - [`policy`]: what may be an anycast address or a member.
//! - [`alloc`], [`journal`]: index allocators and transactions over the maps, for `members`.
//! - [`load`]: many memberships from a file, all checked first, then applied as one transaction.
//! - [`upgrade`]: replacing the program on every attached interface, keeping the pinned maps.
//! - [`repoint`]: direct mode: telling the clients of a member that went where to go instead.
//! - [`report`]: reading addresses, members and counters back out of the maps.
//! - [`metrics`]: the same figures for Prometheus, and the small HTTP server of `/metrics`.
//! - [`net`]: rtnetlink look-ups: links, routes, neighbours.
//! - [`mcast`]: the solicited-node groups attached interfaces join for IPv6 anycast addresses.
//! - [`agent`]: the router's daemon that learns members from host advertisements.
//! - [`announce`]: the member host's side: join anycast addresses and advertise them.
//! - [`health`]: whether the member still serves (addresses on lo, health checks).
//! - [`identity`]: who serves you: the member's identity responder and the client's probe.
//! - [`advert_auth`]: keys and HMAC of advertisements (wire format: `anycast_common::advert`).
//! - [`sys`]: raw socket calls for advertisements.
//! - [`mapped`]: arrays written in place through mmap (`SLOT_STATE`, Maglev tables).
//! - [`batch`]: bulk reads of maps, many elements per syscall, for `report`.
//! - [`textfile`]: bounded reads of the operator's files.
//! - [`progress`]: the progress line of long operations, on a terminal only.
//! - [`cli`]: the command line, one module per verb.
//!
//! docs/architecture.md has the data flow and, for every map, which module writes and reads it.

pub mod advert_auth;
pub mod agent;
pub mod alloc;
pub mod announce;
pub mod attach;
pub mod batch;
pub mod cli;
pub mod dataplane;
pub mod error;
pub mod export;
pub mod frame;
pub mod health;
pub mod identity;
pub mod journal;
pub mod load;
pub mod mac;
pub mod maglev;
pub mod mapped;
pub mod mcast;
pub mod members;
pub mod metrics;
pub mod net;
pub mod pin;
pub mod policy;
pub mod progress;
pub mod repoint;
pub mod report;
pub mod sys;
pub mod textfile;
pub mod upgrade;

pub use error::{Error, Result};

/// The dataplane's eBPF object, built by build.rs and embedded so that the tool is a single
/// file.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anycast"));

/// The benchmark object (`anycast_common::bench`), built beside the dataplane by build.rs. The
/// tool never loads it: it is here for the tests and benchmarks, and a binary that does not
/// name it does not carry it.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anycast-bench"));
