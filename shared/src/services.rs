//! Finding PostgreSQL and Redis: the one module that tests, the load tool and
//! the server binaries all use.
//!
//! In this order:
//! 1. a URL given by flag or environment (`DATABASE_URL`, `REDIS_URL`);
//! 2. otherwise a throwaway server started from the binaries on `PATH`
//!    (`initdb`/`pg_ctl`/`postgres`, `redis-server`) on a free loopback port,
//!    in a temporary directory;
//! 3. otherwise, when built with the `docker` feature and a Docker engine
//!    answers, a container started with testcontainers;
//! 4. otherwise a clear error that says what to install (or to use
//!    `docker compose up`, see the README).
//!
//! A throwaway server is watched by a small `sh` supervisor whose standard
//! input is a pipe from this process. When this process ends *in any way* (a
//! normal exit, a panic, Ctrl-C, even SIGKILL) the pipe closes, the
//! supervisor reads end-of-file, stops the server and deletes its directory.
//! That is what lets a test binary keep one server in a `static` (never
//! dropped) without leaking processes.
//!
//! PostgreSQL refuses to run as root; when this process is root, the server
//! runs as the `postgres` user.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a throwaway server may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How hard a throwaway PostgreSQL works to keep a commit through a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`: a
    /// commit returns before it reaches the disk. Fast, and fine for data
    /// nobody keeps (tests, and the figures labelled "fast").
    #[default]
    Fast,
    /// PostgreSQL's defaults (`fsync`, `synchronous_commit`,
    /// `full_page_writes` on): a commit returns once its WAL is flushed. A
    /// hot row's sales are then capped near 1 / (flush latency).
    Durable,
}

impl Durability {
    /// The `postgres -c` options that select this durability.
    fn postgres_options(self) -> &'static str {
        match self {
            Self::Fast => "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            Self::Durable => "-c fsync=on -c synchronous_commit=on -c full_page_writes=on",
        }
    }
}

/// A PostgreSQL server: one someone else runs (a URL), or a throwaway one
/// that lives as long as this value (or this process).
pub struct Postgres {
    url: String,
    process: Option<Supervised>,
    /// For a throwaway server: what [`Postgres::stop`] and
    /// [`Postgres::start`] need to run `pg_ctl` on its data directory.
    control: Option<PgControl>,
    #[cfg(feature = "docker")]
    _container: Option<docker::Container>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &crate::db::redact(&self.url))
            .field("throwaway", &self.process.is_some())
            .finish()
    }
}

impl Postgres {
    /// A server someone else runs.
    pub fn external(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            process: None,
            control: None,
            #[cfg(feature = "docker")]
            _container: None,
        }
    }

    /// `DATABASE_URL` if set, otherwise a throwaway server.
    pub fn from_env_or_throwaway() -> anyhow::Result<Self> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Ok(Self::external(url)),
            _ => Self::throwaway(),
        }
    }

    /// One server per process, started on first use: tests call this so that
    /// a test binary pays for one server, and each test then takes a
    /// [`fresh_database`](Self::fresh_database) of its own.
    pub fn shared() -> anyhow::Result<&'static Postgres> {
        static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::from_env_or_throwaway().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Starts a throwaway PostgreSQL on a free loopback port. Tuned for speed
    /// (fsync off): it holds nothing worth keeping.
    pub fn throwaway() -> anyhow::Result<Self> {
        Self::throwaway_with(Durability::Fast)
    }

    /// Starts a throwaway PostgreSQL with the given durability: `Fast` for
    /// tests, `Durable` (PostgreSQL's defaults: every commit flushed to
    /// disk) to measure what a production database would do.
    pub fn throwaway_with(durability: Durability) -> anyhow::Result<Self> {
        let Some(bin) = find_postgres_bin() else {
            #[cfg(feature = "docker")]
            let docker_failed = match docker::postgres() {
                Ok((url, container)) => {
                    return Ok(Self {
                        url,
                        process: None,
                        control: None,
                        _container: Some(container),
                    })
                }
                Err(err) => format!("{err:#}"),
            };
            #[cfg(not(feature = "docker"))]
            let docker_failed = "built without `--features ticket-core/docker`".to_owned();
            anyhow::bail!(
                "no PostgreSQL server binaries found (initdb, pg_ctl, postgres), and Docker \
                 was no way out ({docker_failed}). Install them (Debian: apt-get install \
                 postgresql), set DATABASE_URL to a server you run, start one with \
                 `docker compose up -d postgres`, or build with `--features ticket-core/docker` \
                 where a Docker engine runs"
            );
        };
        let run_as = postgres_user()?;
        let dir = make_private_dir("pg", run_as.as_ref())?;
        let port = free_port()?;
        let script = r#"
set -eu
"$PGBIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --no-sync >"$DIR/initdb.log" 2>&1
"$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 -s \
  -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=$MAXCONN $TUNING -c shared_buffers=128MB" \
  start
echo ready
read -r _ || true
"$PGBIN/pg_ctl" -D "$DIR/data" -m immediate -s stop >/dev/null 2>&1 || true
rm -rf "$DIR"
"#;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .env("PGBIN", &bin)
            .env("DIR", &dir)
            .env("PORT", port.to_string())
            .env("MAXCONN", "600")
            .env("TUNING", durability.postgres_options());
        let process = Supervised::spawn(
            command,
            run_as.as_ref(),
            &dir,
            &["initdb.log", "postgres.log"],
        )
        .context("cannot start a throwaway PostgreSQL")?;
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        tracing::info!(%url, dir = %dir.display(), "started a throwaway PostgreSQL");
        Ok(Self {
            url,
            process: Some(process),
            control: Some(PgControl { bin, dir, run_as }),
            #[cfg(feature = "docker")]
            _container: None,
        })
    }

    /// Stops a throwaway server (`pg_ctl stop -m fast`: sessions are cut,
    /// the data stays), so that a test can watch what a database outage
    /// does; [`Postgres::start`] brings it back on the same port with the
    /// same data. Blocking. Fails for a server this value did not start.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "-s", "stop"])
            .context("cannot stop the throwaway PostgreSQL")
    }

    /// Starts a throwaway server stopped by [`Postgres::stop`] again, with
    /// the options it first started with (`pg_ctl restart` reads them back
    /// from `postmaster.opts`). Blocking; returns once it accepts
    /// connections.
    pub fn start(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "-s", "restart"])
            .context("cannot start the throwaway PostgreSQL again")
    }

    /// Runs `pg_ctl` on the throwaway server's data directory, as the user
    /// that owns it.
    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let control = self.control.as_ref().context(
            "only a throwaway PostgreSQL started by this process can be stopped and started",
        )?;
        let mut command = Command::new(control.bin.join("pg_ctl"));
        command
            .arg("-D")
            .arg(control.dir.join("data"))
            .arg("-l")
            .arg(control.dir.join("postgres.log"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(user) = &control.run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let output = command.output().context("cannot run pg_ctl")?;
        if !output.status.success() {
            bail!(
                "pg_ctl {} failed ({}): {}",
                args.last().copied().unwrap_or_default(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// The server's URL (its `postgres` database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this value started the server (and will stop it).
    pub fn is_throwaway(&self) -> bool {
        #[cfg(feature = "docker")]
        if self._container.is_some() {
            return true;
        }
        self.process.is_some()
    }

    /// Creates an empty database with a unique name and returns its URL, so
    /// that tests sharing one server never see each other's rows.
    pub async fn fresh_database(&self) -> anyhow::Result<String> {
        use sqlx::Connection as _;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rush_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut admin = sqlx::PgConnection::connect(&self.url)
            .await
            .with_context(|| format!("cannot connect to {}", crate::db::redact(&self.url)))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .context("cannot create a fresh database")?;
        admin.close().await.ok();
        Ok(with_database(&self.url, &name))
    }
}

/// Where a throwaway PostgreSQL's binaries and data are, and who runs it.
struct PgControl {
    bin: PathBuf,
    dir: PathBuf,
    run_as: Option<nix::unistd::User>,
}

/// Replaces the database name in a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

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
        match std::env::var("REDIS_URL") {
            Ok(url) if !url.trim().is_empty() => Ok(Self::external(url)),
            _ => Self::throwaway(),
        }
    }

    /// One server per process, started on first use (see [`Postgres::shared`]).
    pub fn shared() -> anyhow::Result<&'static Redis> {
        static SHARED: OnceLock<Result<Redis, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::from_env_or_throwaway().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
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

/// The testcontainers path, for machines with Docker and no local binaries.
///
/// Two traps are avoided here. testcontainers' blocking runner drives its
/// own Tokio runtime with `block_on`, which panics when called from inside
/// another runtime (every `#[tokio::test]`): so each call runs on a thread of
/// its own. And a container kept in a `static` is never dropped, so it
/// would outlive the tests: so, like the throwaway servers above, each
/// container gets a small `sh` reaper reading a pipe from this process, which
/// runs `docker rm -f` when the pipe closes, however this process ends.
#[cfg(feature = "docker")]
mod docker {
    use std::process::{Child, Command, Stdio};

    use anyhow::Context as _;
    use testcontainers_modules::testcontainers::runners::SyncRunner as _;
    use testcontainers_modules::testcontainers::ImageExt as _;

    /// A running container, removed when this value is dropped or, for a
    /// value never dropped, when this process ends.
    pub struct Container {
        inner: Option<Box<dyn std::any::Any + Send + Sync>>,
        reaper: Child,
    }

    impl Drop for Container {
        fn drop(&mut self) {
            // The blocking container's own drop calls `block_on`: give it a
            // thread with no runtime, as for the start.
            if let Some(inner) = self.inner.take() {
                let _ = std::thread::spawn(move || drop(inner)).join();
            }
            // Closing the reaper's stdin makes it remove the container (a
            // no-op when the drop above already did).
            drop(self.reaper.stdin.take());
            let _ = self.reaper.wait();
        }
    }

    /// Runs `start` on a thread of its own (no Tokio runtime there), and
    /// attaches a reaper to the container it returns with its id and port.
    fn start_off_runtime<C: Send + Sync + 'static>(
        what: &str,
        start: impl FnOnce() -> anyhow::Result<(C, String, u16)> + Send,
    ) -> anyhow::Result<(u16, Container)> {
        let docker = super::which("docker").with_context(|| {
            format!(
                "cannot use Docker for {what}: the `docker` command is not on PATH (it removes \
                 the container when this process ends)"
            )
        })?;
        let (container, id, port) = std::thread::scope(|scope| {
            scope
                .spawn(start)
                .join()
                .map_err(|_| anyhow::anyhow!("testcontainers panicked while starting {what}"))
        })??;
        let reaper = Command::new("sh")
            .arg("-c")
            .arg(r#"read -r _ || true; "$DOCKER" rm -f -v "$ID" >/dev/null 2>&1 || true"#)
            .env("DOCKER", docker)
            .env("ID", id)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start the reaper of the {what} container"))?;
        Ok((
            port,
            Container {
                inner: Some(Box::new(container)),
                reaper,
            },
        ))
    }

    /// PostgreSQL 15 in a container, as the tests expect it.
    pub fn postgres() -> anyhow::Result<(String, Container)> {
        let (port, container) = start_off_runtime("PostgreSQL", || {
            let container = testcontainers_modules::postgres::Postgres::default()
                .with_host_auth()
                .with_tag("15")
                .with_cmd(["postgres", "-c", "max_connections=600", "-c", "fsync=off"])
                .start()
                .context(
                    "cannot start PostgreSQL with testcontainers (is a Docker engine running?)",
                )?;
            let port = container.get_host_port_ipv4(5432)?;
            Ok((container.id().to_owned(), port)).map(|(id, port)| (container, id, port))
        })?;
        Ok((
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            container,
        ))
    }

    /// Redis 7 in a container.
    pub fn redis() -> anyhow::Result<(String, Container)> {
        let (port, container) = start_off_runtime("Redis", || {
            let container = testcontainers_modules::redis::Redis::default()
                .with_tag("7")
                .start()
                .context("cannot start Redis with testcontainers (is a Docker engine running?)")?;
            let port = container.get_host_port_ipv4(6379)?;
            Ok((container.id().to_owned(), port)).map(|(id, port)| (container, id, port))
        })?;
        Ok((format!("redis://127.0.0.1:{port}/"), container))
    }

    #[cfg(test)]
    mod tests {
        /// Inside a Tokio runtime, as every async test is, a Docker start
        /// that cannot succeed (no engine here) is an error that says why,
        /// never the blocking runner's "runtime within a runtime" panic.
        #[tokio::test]
        async fn docker_unusable_inside_a_runtime_is_an_error_that_says_why() {
            for result in [super::postgres().map(|_| ()), super::redis().map(|_| ())] {
                let err = format!("{:#}", result.expect_err("no Docker engine runs here"));
                assert!(err.contains("Docker") || err.contains("docker"), "{err}");
            }
        }
    }
}

/// A server process under an `sh` supervisor that stops it when our end of
/// its stdin pipe closes.
struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Supervised {
    fn spawn(
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

    fn is_running(&mut self) -> bool {
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

/// Asks the kernel for a free loopback port. Another process could take it
/// before the server binds; the window is tiny and a failed start says so.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Finds an executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The directory holding initdb, pg_ctl and postgres: from PATH, else the
/// newest Debian install under /usr/lib/postgresql.
fn find_postgres_bin() -> Option<PathBuf> {
    if let Some(initdb) = which("initdb") {
        let resolved = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        return resolved.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|path| {
        path.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop()
}

/// PostgreSQL will not run as root: when we are root, run it as `postgres`.
fn postgres_user() -> anyhow::Result<Option<nix::unistd::User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name("postgres")
        .context("cannot look up the postgres user")?
        .context(
            "running as root, and PostgreSQL refuses to run as root, but there is no \
             `postgres` user to run it as: create one (useradd --system postgres) or run \
             as an ordinary user",
        )?;
    Ok(Some(user))
}

/// A new empty directory under the temp dir, owned by `owner` when given.
fn make_private_dir(kind: &str, owner: Option<&nix::unistd::User>) -> anyhow::Result<PathBuf> {
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

fn tail_logs(dir: &Path, logs: &[&str]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_swaps_only_the_database() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/postgres", "rush_1"),
            "postgres://u:p@127.0.0.1:5432/rush_1"
        );
        assert_eq!(
            with_database("postgres://u@localhost:5432/x?sslmode=disable", "y"),
            "postgres://u@localhost:5432/y?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "z"), "postgres://h:1/z");
    }
}
