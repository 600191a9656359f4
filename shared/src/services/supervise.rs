//! The `sh` supervisor that stops a throwaway server (and deletes its
//! directory) when this process ends, however it ends; and the small file
//! and PATH helpers the servers share.

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::START_TIMEOUT;

/// A server process under an `sh` supervisor that stops it when our end of
/// its stdin pipe closes.
pub(super) struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Supervised {
    pub(super) fn spawn(
        mut command: Command,
        run_as: Option<&nix::unistd::User>,
        dir: &Path,
        logs: &[&str],
    ) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(dir.join("supervisor.log"))
            .context("cannot create the supervisor's log")?;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own process group: a Ctrl-C in the terminal reaches us, and
            // we (through the pipe) decide when the server stops.
            .process_group(0);
        if let Some(user) = run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let mut child = command.spawn().context("cannot run sh")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut process = Self { child, stdin };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => Ok(process),
            Ok(_) => {
                let _ = process.child.wait();
                bail!("the server failed to start:\n{}", tail_logs(dir, logs))
            }
            Err(_) => bail!(
                "the server did not start within {START_TIMEOUT:?}:\n{}",
                tail_logs(dir, logs)
            ),
        }
    }

    pub(super) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Closing the pipe tells the supervisor to stop the server.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds an executable on PATH.
pub(super) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// A new empty directory under the temp dir, owned by `owner` when given.
pub(super) fn make_private_dir(
    kind: &str,
    owner: Option<&nix::unistd::User>,
) -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ticket-rush-{kind}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    ));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(user) = owner {
        nix::unistd::chown(&dir, Some(user.uid), Some(user.gid))
            .with_context(|| format!("cannot hand {} to {}", dir.display(), user.name))?;
    }
    Ok(dir)
}

pub(super) fn tail_logs(dir: &Path, logs: &[&str]) -> String {
    let mut out = String::new();
    for name in logs.iter().chain(std::iter::once(&"supervisor.log")) {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    if out.is_empty() {
        out.push_str("(no log was written)");
    }
    out
}
