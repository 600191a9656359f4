//! `level6`: serves the ticket API with every sale decided by the single
//! owner of the ticket's partition.
//!
//! Run with (two terminals, one shared database and one shared Redis):
//!
//! ```text
//! cargo run --release -p level6 -- --port 8080 --strategy partitioned
//! cargo run --release -p level6 -- --port 8081 --strategy partitioned
//! ```

use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    ticket_core::server::init_tracing();
    level6::Cli::parse().run().await
}
