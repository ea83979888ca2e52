//! Runs external commands (`ip`, `nsenter`, `ethtool`, `anycast-ctl`) with a deadline.
//!
//! Every command is killed if it outlives its timeout, so a hung tool fails the test instead of
//! hanging it. Errors carry the command line, the exit status and stderr.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Default bound on one external command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command line, for messages.
    pub line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Stdout if the command exited with 0, else an error naming the command and its stderr.
    pub fn ok(self) -> Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            bail!(
                "`{}` failed ({}): {}",
                self.line,
                self.status,
                self.stderr.trim()
            )
        }
    }
}

/// Runs `program args...` to completion (at most `timeout`), capturing stdout and stderr.
pub fn run_with_timeout(program: &str, args: &[&str], timeout: Duration) -> Result<Outcome> {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // Only the child this function started is killed.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    Ok(Outcome {
        line,
        status,
        stdout,
        stderr,
    })
}

/// Runs a command with [`COMMAND_TIMEOUT`]; stdout on success, an error with stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_timeout(program, args, COMMAND_TIMEOUT)?.ok()
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
