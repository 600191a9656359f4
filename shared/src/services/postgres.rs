//! A PostgreSQL server: from a URL, or a throwaway one started from the local
//! binaries (as the `postgres` user when this process is root).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Context as _};

#[cfg(feature = "docker")]
use super::docker;
use super::supervise::{make_private_dir, which, Supervised};
use super::{free_port, Durability};

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
        super::from_env_or(Self::external, "DATABASE_URL", Self::throwaway)
    }

    /// One server per process, started on first use: tests call this so that
    /// a test binary pays for one server, and each test then takes a
    /// [`fresh_database`](Self::fresh_database) of its own.
    pub fn shared() -> anyhow::Result<&'static Postgres> {
        static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
        super::once(&SHARED, Self::from_env_or_throwaway)
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
