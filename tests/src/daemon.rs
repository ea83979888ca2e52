//! Long-running `anycast-ctl` processes (the agent, announcers) inside a namespace, as guards:
//! dropping one kills it (SIGKILL) and reaps it, so no test leaves a daemon behind. [`KeyFile`]
//! is the advertisement key file they share, removed when dropped.
use std::{
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// `anycast-ctl agent`'s command line on the pin directory `pin`: `--dev` for each of `devs`,
/// `--anycast-prefix` for each of `prefixes`, then `rest` (its key file, say). Written once
/// for every test and bench that starts an agent.
pub fn agent_args<'a>(
    pin: &'a str,
    devs: &[&'a str],
    prefixes: &[&'a str],
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["--pin-dir", pin, "agent"];
    for dev in devs {
        args.extend(["--dev", dev]);
    }
    for prefix in prefixes {
        args.extend(["--anycast-prefix", prefix]);
    }
    args.extend_from_slice(rest);
    args
}

/// A thread appending everything `pipe` yields to `log`, until it closes.
fn drain(mut pipe: impl Read + Send + 'static, log: &Arc<Mutex<String>>) -> JoinHandle<()> {
    let log = Arc::clone(log);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            log.lock()
                .expect("log lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

pub struct Daemon {
    name: String,
    child: Option<Child>,
    /// Everything it wrote to stderr and stdout so far (drained continuously so it never
    /// blocks).
    log: Arc<Mutex<String>>,
    drains: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Starts `anycast-ctl ARGS...` in `ns` (via nsenter, so bpffs stays visible).
    pub fn spawn(ns: &Netns, name: &str, args: &[&str]) -> Result<Self> {
        let net = format!("--net={}", ns.path().display());
        let child = Command::new("nsenter")
            .arg(net)
            .arg("--")
            .arg(crate::ctl::binary())
            .args(args)
            .env(
                "ANYCAST_LOG",
                std::env::var("ANYCAST_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut child = child;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("stderr")?;
        let stdout = child.stdout.take().context("stdout")?;
        let drains = vec![drain(stderr, &log), drain(stdout, &log)];
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
            drains,
        })
    }

    /// Starts `anycast-ctl agent ARGS...` in `ns` and waits until it logs "agent running"
    /// (its sockets bound and joined): a test that sends one message right after this is heard.
    /// A loaded machine can take seconds to get there, so the bound is loose.
    pub fn spawn_agent(ns: &Netns, name: &str, args: &[&str]) -> Result<Self> {
        const START: Duration = Duration::from_secs(30);
        let mut agent = Self::spawn(ns, name, args)?;
        crate::wait_until(START, || {
            agent.log().contains("agent running") || !agent.running()
        });
        if !agent.log().contains("agent running") {
            bail!("{name} not running after {START:?}:\n{}", agent.log());
        }
        Ok(agent)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// The pid of anycast-ctl itself (nsenter execs it, so it is the child's pid).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `timeout` for it to exit; its exit status and stderr.
    pub fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().context("already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                for drain in self.drains.drain(..) {
                    let _ = drain.join();
                }
                return Ok((status, self.log()));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for drain in self.drains.drain(..) {
            let _ = drain.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An agent's key file (mode 0600, one key), removed when dropped.
#[derive(Debug)]
pub struct KeyFile(PathBuf);

impl KeyFile {
    /// Writes key `id` with `secret` into a fresh file named after `tag`.
    pub fn new(tag: &str, id: u32, secret: &[u8; 32]) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("anycast-key-{}-{tag}", std::process::id()));
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        // Created with mode 0600 (the agent refuses a key file others can read).
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let file = KeyFile(path);
        write!(out, "[[key]]\nid = {id}\nsecret = \"{hex}\"\n")?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path, as an argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
