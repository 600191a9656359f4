//! `--balancer nginx`: the servers a run uses, behind one URL.
//!
//! Without a balancer the buyers are dealt round-robin over the servers'
//! own ports, as in a two-terminal workshop demo. With one, every buyer
//! talks to nginx, which deals the requests over the servers, as a real
//! deployment does. The lessons must not change: a process-local lock
//! still oversells (nginx does not pin a ticket to a server), and a
//! correct strategy stays correct, even when a server dies mid-rush (nginx
//! answers 502 for a purchase that reached it, and the buyer clicks again
//! with its `Idempotency-Key`; see [`ticket_core::services::Nginx`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use ticket_core::services::{Nginx, NginxSettings};

use crate::model::Report;
use crate::scrape::{metrics_delta, scrape_metrics};

/// Which load balancer to put in front of the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Debian's nginx, round-robin, started from `/usr/sbin/nginx` with a
    /// throwaway config on a loopback port.
    Nginx,
}

impl Balancer {
    /// Its name, as `--balancer` and the report spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
        }
    }
}

/// A running balancer and the servers behind it.
pub struct Front {
    balancer: Balancer,
    nginx: Nginx,
    servers: Vec<String>,
}

impl Front {
    /// Starts `balancer` in front of `servers` (base URLs). `timeout` is
    /// how long one answer may take, the rush's own limit: a buyer queued
    /// behind a lock is slow, not failed.
    pub async fn start(
        balancer: Balancer,
        servers: Vec<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let settings = NginxSettings {
            read_timeout: timeout,
            ..NginxSettings::default()
        };
        let behind = servers.clone();
        let nginx =
            tokio::task::spawn_blocking(move || Nginx::start_with(&behind, &settings)).await??;
        Ok(Self {
            balancer,
            nginx,
            servers,
        })
    }

    /// The one URL the buyers use.
    pub fn url(&self) -> &str {
        self.nginx.url()
    }

    /// The servers behind it, whose own counters the report reads.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Reads the servers' counters now, before a round, to be passed to
    /// [`Front::label`] after it.
    pub async fn counters(&self) -> std::collections::BTreeMap<String, f64> {
        scrape_metrics(&self.servers).await
    }

    /// Marks a report as measured through the balancer: the servers behind
    /// it (not the one URL), the balancer's name, and the servers' own
    /// counters over the round (`before` from [`Front::counters`]; a
    /// scrape through the balancer would read one server at random).
    pub async fn label(
        &self,
        report: &mut Report,
        before: &std::collections::BTreeMap<String, f64>,
    ) {
        report.servers = self.servers.len();
        report.balancer = Some(self.balancer.as_str().to_owned());
        report.server_metrics = metrics_delta(before, &self.counters().await);
    }
}
