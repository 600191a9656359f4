//! A real load balancer in front of N servers: Debian's nginx, started like
//! the throwaway PostgreSQL and Redis (a config in a temporary directory, a
//! free loopback port, stopped and deleted when dropped or when this
//! process ends).
//!
//! Buyers then talk to one URL, and nginx deals their requests round-robin
//! over the servers, as in production. What matters for the lessons is what
//! nginx does when a server fails, and the config says it in its comments:
//! it tries another server only when that cannot sell twice (the request
//! never reached the first server, or it was not a POST). A purchase that
//! reached a server which then died is answered 502, and it is the buyer,
//! carrying its `Idempotency-Key`, who decides to click again.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::free_port;
use super::supervise::{make_private_dir, tail_logs, which, Supervised};

/// Where Debian's package puts nginx (often not on a normal user's PATH).
const DEBIAN_NGINX: &str = "/usr/sbin/nginx";

/// How the balancer treats slow and failed servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxSettings {
    /// How long nginx waits for a server's answer (`proxy_read_timeout`).
    /// A buyer queued behind a row lock waits as long as the rush lasts,
    /// so this is the rush's own time limit, not a few seconds.
    pub read_timeout: Duration,
    /// The broken mode, kept to be shown: also resend a POST that already
    /// reached a server which then failed (`proxy_next_upstream ...
    /// non_idempotent`). Off by default, as in nginx itself.
    pub retry_non_idempotent: bool,
}

impl Default for NginxSettings {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(300),
            retry_non_idempotent: false,
        }
    }
}

/// A throwaway nginx balancing over some servers. Dropping it stops nginx
/// and deletes its directory.
pub struct Nginx {
    url: String,
    port: u16,
    config: String,
    _process: Supervised,
}

impl std::fmt::Debug for Nginx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nginx").field("url", &self.url).finish()
    }
}

impl Nginx {
    /// Starts nginx on a free loopback port in front of `servers` (base
    /// URLs such as `http://127.0.0.1:8080`), with the default settings.
    pub fn start(servers: &[String]) -> anyhow::Result<Self> {
        Self::start_with(servers, &NginxSettings::default())
    }

    /// Starts nginx in front of `servers` with `settings`.
    pub fn start_with(servers: &[String], settings: &NginxSettings) -> anyhow::Result<Self> {
        anyhow::ensure!(!servers.is_empty(), "nginx needs at least one server");
        let nginx = find_nginx()?;
        let upstreams = servers
            .iter()
            .map(|url| upstream_address(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dir = make_private_dir("nginx", None)?;
        let port = free_port()?;
        let as_root = nix::unistd::geteuid().is_root();
        let config = config_text(&dir, port, &upstreams, settings, as_root);
        std::fs::write(dir.join("nginx.conf"), &config).context("cannot write nginx.conf")?;
        check_config(&nginx, &dir)?;
        let process = spawn(&nginx, &dir)?;
        wait_for_port(port, &dir).context("the throwaway nginx did not come up")?;
        let url = format!("http://127.0.0.1:{port}");
        tracing::info!(%url, servers = servers.len(), "started a throwaway nginx");
        Ok(Self {
            url,
            port,
            config,
            _process: process,
        })
    }

    /// The one URL buyers use (`http://127.0.0.1:PORT`, no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The configuration it runs with, to be read.
    pub fn config(&self) -> &str {
        &self.config
    }
}

/// nginx on PATH, else where Debian installs it, else a clear error.
fn find_nginx() -> anyhow::Result<PathBuf> {
    find_nginx_in(which("nginx"), Path::new(DEBIAN_NGINX))
}

/// `on_path`, else `fallback` if it exists, else the error that says what
/// to install.
fn find_nginx_in(on_path: Option<PathBuf>, fallback: &Path) -> anyhow::Result<PathBuf> {
    on_path
        .or_else(|| Some(fallback.to_owned()).filter(|p| p.is_file()))
        .context(
            "no nginx found (on PATH or at /usr/sbin/nginx); the load balancer needs it. \
             Install it (Debian: apt-get install nginx), or run without --balancer",
        )
}

/// `host:port` of a server's base URL (`http://host:port`, no path).
fn upstream_address(url: &str) -> anyhow::Result<String> {
    let address = url
        .trim()
        .strip_prefix("http://")
        .with_context(|| format!("nginx balances http:// servers, not {url:?}"))?
        .trim_end_matches('/');
    if address.is_empty() || address.contains('/') || !address.contains(':') {
        bail!("{url:?} is not a server's base URL (http://HOST:PORT)");
    }
    Ok(address.to_owned())
}

/// The whole nginx.conf: everything nginx writes goes to `dir`; it listens
/// on loopback `port` and deals requests over `upstreams`.
fn config_text(
    dir: &Path,
    port: u16,
    upstreams: &[String],
    settings: &NginxSettings,
    as_root: bool,
) -> String {
    let dir = dir.display();
    let servers = server_lines(upstreams);
    let user = if as_root {
        // Run as root, the master would hand the workers to `nobody`,
        // who may not be able to reach this directory; the workers only
        // forward loopback traffic of a throwaway run, so they keep the
        // user who started it. Not root: nginx keeps that user anyway.
        "user root;\n"
    } else {
        ""
    };
    let next_upstream = next_upstream_lines(settings);
    let read_timeout = settings.read_timeout.as_secs().max(1);
    let tries = upstreams.len();
    format!(
        "# A throwaway load balancer for ticket-rush, written by ticket_core::services::Nginx.
{user}daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    # Every buyer holds a connection, and so does each request to a server.
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream ticket_rush {{
        # Round-robin, the default: request k goes to server k mod N.
{servers}        # Idle connections kept open to the servers, so a purchase does
        # not pay for a new TCP connection.
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            proxy_pass http://ticket_rush;
            # HTTP/1.1 with no `Connection: close`: what keepalive needs.
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            # Loopback: a server that does not accept within 2 s is down.
            proxy_connect_timeout 2s;
            proxy_send_timeout 60s;
            # A buyer may wait in a lock queue as long as the rush lasts.
            proxy_read_timeout {read_timeout}s;
{next_upstream}            proxy_next_upstream_tries {tries};
        }}
    }}
}}
"
    )
}

/// The upstream's `server` lines. One failed connection takes a server out
/// of the rotation for 10 s, so buyers stop being sent to a dead one.
fn server_lines(upstreams: &[String]) -> String {
    let mut servers = String::new();
    for address in upstreams {
        let _ = writeln!(
            servers,
            "        server {address} max_fails=1 fail_timeout=10s;"
        );
    }
    servers
}

/// Which failures send a request on to the next server: the lesson's rule,
/// or the broken version that resends POSTs.
fn next_upstream_lines(settings: &NginxSettings) -> &'static str {
    if settings.retry_non_idempotent {
        "        # BROKEN ON PURPOSE: `non_idempotent` also resends a POST that\n        \
     # already reached a server, which may have sold before it failed.\n        \
     proxy_next_upstream error timeout non_idempotent;\n"
    } else {
        "        # Try the next server on a connection error or a timeout, but\n        \
     # never resend a POST that reached a server: without\n        \
     # `non_idempotent` nginx answers 502 instead, and the buyer retries\n        \
     # with its Idempotency-Key. Do not add `non_idempotent` here.\n        \
     proxy_next_upstream error timeout;\n"
    }
}

/// `nginx -t`: a bad config is one clear error, before anything starts.
fn check_config(nginx: &Path, dir: &Path) -> anyhow::Result<()> {
    let output = Command::new(nginx)
        .args(nginx_args(dir))
        .arg("-t")
        .output()
        .with_context(|| format!("cannot run {}", nginx.display()))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        let _ = std::fs::remove_dir_all(dir);
        bail!("nginx refused its config:\n{said}");
    }
    Ok(())
}

/// `-p DIR/ -c DIR/nginx.conf -e DIR/error.log`: nothing outside `dir`,
/// not even the log nginx opens before it reads its config.
fn nginx_args(dir: &Path) -> Vec<String> {
    let dir = dir.display();
    vec![
        "-p".into(),
        format!("{dir}/"),
        "-c".into(),
        format!("{dir}/nginx.conf"),
        "-e".into(),
        format!("{dir}/error.log"),
    ]
}

/// nginx under the `sh` supervisor: TERM (nginx's fast shutdown) when our
/// pipe closes, then the directory goes.
fn spawn(nginx: &Path, dir: &Path) -> anyhow::Result<Supervised> {
    let script = r#"
set -eu
"$NGINX_BINARY" "$@" &
pid=$!
echo ready
read -r _ || true
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
rm -rf "$DIR"
"#;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg("nginx-supervisor")
        .args(nginx_args(dir))
        // nginx reads `NGINX` as a list of sockets to inherit: never pass one.
        .env_remove("NGINX")
        .env("NGINX_BINARY", nginx)
        .env("DIR", dir);
    Supervised::spawn(command, None, dir, &["error.log"]).context("cannot start nginx")
}

/// Waits until nginx accepts on `port`; a fatal line in its log ends the
/// wait at once.
fn wait_for_port(port: u16, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(());
        }
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        if log.contains("[emerg]") {
            bail!("nginx failed:\n{}", tail_logs(dir, &["error.log"]));
        }
        if Instant::now() > deadline {
            bail!(
                "nginx did not listen on port {port} within 20 s:\n{}",
                tail_logs(dir, &["error.log"])
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(settings: &NginxSettings) -> String {
        let upstreams = vec!["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        config_text(Path::new("/tmp/x"), 9, &upstreams, settings, false)
    }

    #[test]
    fn the_config_never_resends_a_post_unless_broken_on_purpose() {
        let directive = |text: &str| {
            text.lines()
                .map(str::trim)
                .find(|line| line.starts_with("proxy_next_upstream "))
                .map(str::to_owned)
        };
        let safe = config(&NginxSettings::default());
        assert_eq!(
            directive(&safe).as_deref(),
            Some("proxy_next_upstream error timeout;")
        );
        let broken = config(&NginxSettings {
            retry_non_idempotent: true,
            ..NginxSettings::default()
        });
        assert!(directive(&broken).unwrap().contains("non_idempotent"));
    }

    #[test]
    fn the_config_lists_every_server_and_keeps_connections_to_them() {
        let text = config(&NginxSettings::default());
        assert!(text.contains("server 127.0.0.1:1 max_fails=1"));
        assert!(text.contains("server 127.0.0.1:2 max_fails=1"));
        assert!(text.contains("listen 127.0.0.1:9;"));
        assert!(text.contains("proxy_http_version 1.1;"));
        assert!(text.contains("keepalive 64;"));
        assert!(text.contains("proxy_read_timeout 300s;"));
        assert!(!text.contains("user root"));
        assert!(
            config_text(Path::new("/d"), 9, &[], &NginxSettings::default(), true)
                .starts_with("# A throwaway load balancer")
        );
    }

    #[test]
    fn a_missing_nginx_says_what_to_install() {
        let err = find_nginx_in(None, Path::new("/nonexistent/nginx")).unwrap_err();
        assert!(err.to_string().contains("apt-get install nginx"), "{err}");
        let found = find_nginx_in(Some("/bin/nginx".into()), Path::new("/x")).unwrap();
        assert_eq!(found, PathBuf::from("/bin/nginx"));
    }

    #[test]
    fn servers_are_given_as_base_urls() {
        assert_eq!(
            upstream_address("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080"
        );
        assert!(upstream_address("https://127.0.0.1:8080").is_err());
        assert!(upstream_address("http://127.0.0.1:8080/api").is_err());
        assert!(upstream_address("http://127.0.0.1").is_err());
    }
}
