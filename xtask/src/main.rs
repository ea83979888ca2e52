//! `cargo xtask`: developer tasks of the anycast workspace (and its Debian package).
//!
//! Every task but `fuzz` first runs [`setup::setup`], which installs what a
//! fresh Debian 12 machine lacks (eBPF toolchain, Debian packages, bpffs), so
//! a single `cargo xtask test` works from a clean checkout.

mod cmd;
mod dist;
mod fuzz;
mod setup;
mod tasks;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks of the anycast workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build, tests and demo need (idempotent; must run as root).
    Setup,
    /// Build anycast-ctl, which embeds the eBPF object.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Run the workspace tests serially (`cargo xtask test -- ARGS` passes ARGS to cargo test).
    Test {
        /// Extra arguments for `cargo test`; arguments after a second `--` go to the test harness.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the Debian package target/debian/anycast-ctl_VERSION_ARCH.deb (release build).
    Dist,
    /// Run the demo binary of anycast-tests.
    Demo,
    /// Run the benchmark binary of anycast-tests (writes target/bench/report.json);
    /// `cargo xtask bench -- PART` runs one part (`--dataplane-only`, `e2e`, `failover`, ...).
    Bench {
        /// Arguments for the bench binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the advertisement parser for a bounded time (cargo-fuzz on nightly; not part of test).
    Fuzz {
        /// How long to fuzz, in seconds.
        #[arg(long, value_name = "N", default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build { release } => tasks::build(release),
        Command::Test { args } => tasks::test(&args),
        Command::Dist => dist::dist(),
        Command::Demo => tasks::demo(),
        Command::Bench { args } => tasks::bench(&args),
        Command::Fuzz { seconds } => fuzz::fuzz(seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_args_keep_a_second_separator() {
        let cli = Cli::parse_from([
            "xtask",
            "test",
            "--",
            "-p",
            "anycast-tests",
            "--",
            "--nocapture",
        ]);
        let Command::Test { args } = cli.command else {
            panic!("expected the test command");
        };
        assert_eq!(args, ["-p", "anycast-tests", "--", "--nocapture"]);
    }

    #[test]
    fn bench_passes_its_part_to_the_bench_binary() {
        let cli = Cli::parse_from(["xtask", "bench", "--", "--dataplane-only"]);
        let Command::Bench { args } = cli.command else {
            panic!("expected the bench command");
        };
        assert_eq!(args, ["--dataplane-only"]);
        let cli = Cli::parse_from(["xtask", "bench"]);
        assert!(matches!(cli.command, Command::Bench { args } if args.is_empty()));
    }

    #[test]
    fn fuzz_seconds_default_and_override() {
        let seconds = |argv: &[&str]| match Cli::parse_from(argv).command {
            Command::Fuzz { seconds } => seconds,
            _ => panic!("expected the fuzz command"),
        };
        assert_eq!(seconds(&["xtask", "fuzz"]), fuzz::DEFAULT_SECONDS);
        assert_eq!(seconds(&["xtask", "fuzz", "--seconds", "5"]), 5);
    }
}
