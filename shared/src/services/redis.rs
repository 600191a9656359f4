//! A Redis server: from a URL, or a throwaway `redis-server`.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

#[cfg(feature = "docker")]
use super::docker;
use super::free_port;
use super::supervise::{make_private_dir, which, Supervised};

/// A Redis server: one someone else runs (a URL), or a throwaway one.
pub struct Redis {
    url: String,
    port: Option<u16>,
    process: Option<Supervised>,
    #[cfg(feature = "docker")]
    _container: Option<docker::Container>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url)
            .field("throwaway", &self.process.is_some())
            .finish()
    }
}

impl Redis {
    /// A server someone else runs.
    pub fn external(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            port: None,
            process: None,
            #[cfg(feature = "docker")]
            _container: None,
        }
    }

    /// `REDIS_URL` if set, otherwise a throwaway server.
    pub fn from_env_or_throwaway() -> anyhow::Result<Self> {
        super::from_env_or(Self::external, "REDIS_URL", Self::throwaway)
    }

    /// One server per process, started on first use (see [`Postgres::shared`](super::Postgres::shared)).
    pub fn shared() -> anyhow::Result<&'static Redis> {
        static SHARED: OnceLock<Result<Redis, String>> = OnceLock::new();
        super::once(&SHARED, Self::from_env_or_throwaway)
    }

    /// Starts a throwaway Redis on a free loopback port, without persistence.
    pub fn throwaway() -> anyhow::Result<Self> {
        #[cfg(feature = "docker")]
        if which("redis-server").is_none() {
            return match docker::redis() {
                Ok((url, container)) => Ok(Self {
                    url,
                    port: None,
                    process: None,
                    _container: Some(container),
                }),
                Err(err) => Err(err.context(
                    "no redis-server found on PATH, and Docker could not start Redis either. \
                     Install it (Debian: apt-get install redis-server) or set REDIS_URL to a \
                     server you run",
                )),
            };
        }
        Self::throwaway_on(free_port()?, &[])
    }

    /// Starts a throwaway Redis on `port` with extra `redis-server` arguments
    /// (for instance `["--appendonly", "yes"]`). Tests that stop and restart
    /// Redis use the same port again.
    pub fn throwaway_on(port: u16, extra_args: &[&str]) -> anyhow::Result<Self> {
        let server = which("redis-server").context(
            "no redis-server found on PATH. Install it (Debian: apt-get install redis-server), \
             set REDIS_URL to a server you run, start one with `docker compose up -d redis`, \
             or build with `--features ticket-core/docker` to have testcontainers start one",
        )?;
        let dir = make_private_dir("redis", None)?;
        let script = r#"
set -eu
"$REDIS_SERVER" --port "$PORT" --bind 127.0.0.1 --dir "$DIR" --save '' --appendonly no \
  --logfile "$DIR/redis.log" "$@" &
pid=$!
echo ready
read -r _ || true
kill "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
rm -rf "$DIR"
"#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg("redis-supervisor")
            .args(extra_args)
            .env("REDIS_SERVER", &server)
            .env("DIR", &dir)
            .env("PORT", port.to_string());
        let process = Supervised::spawn(command, None, &dir, &["redis.log"])
            .context("cannot start a throwaway Redis")?;
        wait_for_redis(port, &process).context("the throwaway Redis did not come up")?;
        let url = format!("redis://127.0.0.1:{port}/");
        tracing::info!(%url, "started a throwaway Redis");
        Ok(Self {
            url,
            port: Some(port),
            process: Some(process),
            #[cfg(feature = "docker")]
            _container: None,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port of a throwaway server.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

fn wait_for_redis(port: u16, process: &Supervised) -> anyhow::Result<()> {
    let _ = process;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            stream.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 16];
            let n = stream.read(&mut buf)?;
            Ok(buf[..n].starts_with(b"+PONG"))
        });
        if let Ok(true) = answer {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no PONG on port {port} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
