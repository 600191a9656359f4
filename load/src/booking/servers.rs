//! Level 5 servers as child processes (`load serve level5 ...`), the way
//! `load run` starts the other levels: each is its own operating-system
//! process, sharing only PostgreSQL and Redis with the others, so killing one
//! is a real crash.
//!
//! Level 5's server is a [`level5::BoxOffice`], not ticket-core's
//! `RunningServer`, so it is started here rather than through
//! [`crate::levels`]; the rest (free ports, `/health`, the parent-gone pipe)
//! is the same machinery.

use std::path::Path;

use clap::Parser as _;

/// The binary name `load serve` knows Level 5 by.
pub const BINARY: &str = "level5";

/// A Level 5 server running as a child process: the same
/// [`crate::servers::ServerProcess`] as every level's.
pub type BoxOfficeProcess = crate::servers::ServerProcess;

/// Starts `count` Level 5 servers from `exe` (the `load` binary), each with
/// `serve level5 --port P` followed by `args`, and waits until each answers
/// `/health`. The admin token travels in the environment (`ADMIN_TOKEN`),
/// not on the command line, where any user of the machine could read it.
pub async fn start(
    exe: &Path,
    args: &[String],
    admin_token: &str,
    count: usize,
) -> anyhow::Result<Vec<BoxOfficeProcess>> {
    crate::servers::spawn_processes(
        exe,
        BINARY,
        count,
        &[("ADMIN_TOKEN", admin_token)],
        |port| {
            let mut line = vec![BINARY.to_owned(), "--port".to_owned(), port.to_string()];
            line.extend_from_slice(args);
            Ok(line)
        },
    )
    .await
}

/// Stops every server, logging (not failing on) one that will not stop.
pub async fn stop_all(servers: Vec<BoxOfficeProcess>) {
    for server in servers {
        if let Err(err) = server.stop().await {
            tracing::warn!("stopping a Level 5 server: {err:#}");
        }
    }
}

/// `load serve level5 ...`: runs one Level 5 server in this process until
/// Ctrl-C, SIGTERM, or the parent that started it is gone.
pub async fn serve(args: Vec<String>) -> anyhow::Result<()> {
    let cli = level5::Cli::try_parse_from(args)?;
    let server = cli.start().await?;
    tokio::select! {
        () = ticket_core::server::shutdown_signal() => {},
        () = crate::servers::parent_gone() => {},
    }
    server.stop().await
}
