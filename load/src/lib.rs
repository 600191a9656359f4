//! # load: 1000 buyers, 100 tickets, and the database's verdict
//!
//! The load tool is how every lesson in ticket-rush is *shown*. It starts
//! one or two servers of any level (or uses servers you started), puts a
//! ticket on sale, releases every buyer at the same instant, and then asks
//! the database, not the HTTP answers, what really happened.
//!
//! | module | role |
//! | --- | --- |
//! | [`levels`] | the levels and strategies it knows, and what each should show |
//! | [`servers`] | starting servers in this process (tests) or as child processes (runs, tour) |
//! | [`balancer`] | `--balancer nginx`: the servers behind one URL |
//! | [`exercise`] | `load exercise`: workshop exercises checked by a rush |
//! | [`expect`] | `--expect` and thresholds, and the exit codes they give |
//! | [`failures`] | failed answers by kind (refused, timeout, 4xx, 5xx), one sample each |
//! | [`model`] | the report a run produces: counts, verdict, latency, ceilings |
//! | [`client`] | a buyer's HTTP client, the database pool |
//! | [`scrape`] | the servers' `/metrics` counters, before and after |
//! | [`rush`] | the buyers, the start barrier, retries on 503, the judgement |
//! | [`split`] | each buyer's latency split into connect, queue and server time |
//! | [`reset`] | putting the ticket on sale afresh, by the level's own path |
//! | [`run`] | `load run`: services, servers, rounds |
//! | [`tour`] | `load tour`: every level and strategy, judged against its promise |
//! | [`output`] | the text tables |
//! | [`sustain`] | sustained throughput runs and the ceilings they are measured against |
//! | [`cpu`] | CPU time per sale by process, from `/proc`, and each strategy's floor |
//! | [`units`] | durations (`30s`, `2m`) and rates as typed on the command line |
//! | [`machine`] | the machine and services a run measured on |
//! | [`report`] | the HTML report with plots, and the JSON behind it |
//! | [`booking`] | `load booking`: users through Level 5's box office |
//!
//! The verdict rules live in [`ticket_core::verify`], so that tests and the
//! tool judge the same way.

pub mod balancer;
pub mod booking;
pub mod client;
pub mod cpu;
pub mod exercise;
pub mod expect;
pub mod failures;
pub mod levels;
pub mod machine;
pub mod model;
pub mod output;
pub mod report;
pub mod reset;
pub mod run;
pub mod rush;
pub mod scrape;
pub mod servers;
pub mod services;
pub mod split;
pub mod sustain;
pub mod tour;
pub mod units;
