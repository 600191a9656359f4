//! `level4`: serves the ticket API with every sale decided in Redis, runs a
//! persistence worker on its own (`persist`), or compares the two stores
//! (`reconcile`).
//!
//! Run with (three terminals, one shared database and one shared Redis):
//!
//! ```text
//! cargo run --release -p level4 -- --port 8080 --no-persist
//! cargo run --release -p level4 -- --port 8081 --no-persist
//! cargo run --release -p level4 -- persist
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    ticket_core::server::init_tracing();
    level4::Cli::parse().run().await
}
