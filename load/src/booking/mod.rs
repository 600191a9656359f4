//! `load booking`: 10,000 users through the box office (Level 5), judged
//! from the database.
//!
//! A ticket rush ([`crate::rush`]) is one request per buyer. A booking is a
//! journey: wait in the virtual queue, get admitted, look at the seat map,
//! hold seats (and lose some races for them), top up the wallet, pay or
//! walk away. Each step has its own race, and the run checks each one:
//!
//! | module | role |
//! | --- | --- |
//! | [`command`] | the command line, the exit code, the output |
//! | [`servers`] | Level 5 servers as child processes |
//! | [`api`] | the HTTP calls, a cap on requests in flight, failover |
//! | [`user`] | one user's journey |
//! | [`seats`] | the show on sale, and how users pick seats (front first) |
//! | [`record`] | what users saw: latency per step, holds, queue sightings, FIFO |
//! | [`probe`] | the servers' own record of the waiting room (max active) |
//! | [`verdict`] | the questions asked of the database |
//! | [`model`] | the report, its verdict and its table |
//! | [`report`] | the booking page of the HTML report |
//! | [`tour`] | the booking row of `load tour` |
//!
//! The contract is `../shared/BOX_OFFICE.md`, "Load: `load booking`".

pub mod api;
pub mod command;
pub mod model;
pub mod probe;
pub mod record;
pub mod report;
pub mod run;
pub mod seats;
pub mod servers;
pub mod tour;
pub mod user;
pub mod verdict;

pub use command::{command, BookingArgs};
pub use model::BookingReport;
pub use run::{booking, BookingOptions, BookingRun};
