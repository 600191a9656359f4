//! Servers behind a real load balancer (nginx): buyers use one URL, the
//! lessons hold exactly as on separate ports, and a server that dies
//! mid-rush costs no correctness, because nginx never resends a purchase
//! that reached a server and the buyers retry its 502 with their
//! Idempotency-Key. Each test starts its own nginx in front of its servers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_exactly_sold, fresh_database, servers, stop};
use load::rush::{rush, Report, RushPlan};
use load::scrape::scrape_metrics;
use load::servers::{start_processes, urls, ServerSpec};
use ticket_core::services::{Nginx, NginxSettings};
use ticket_core::Verdict;

/// Level 2's atomic sale pauses this long inside its row lock: 100 sales
/// take at least 5 s, so a server can be killed while buyers wait on it.
const KILL_THINK_TIME_MS: u64 = 50;

/// Starts nginx in front of `servers` (off the async runtime: it blocks
/// until nginx listens).
async fn nginx_in_front(servers: Vec<String>, settings: NginxSettings) -> Nginx {
    tokio::task::spawn_blocking(move || Nginx::start_with(&servers, &settings))
        .await
        .expect("the start did not panic")
        .expect("nginx starts (Debian: apt-get install nginx)")
}

/// The 1000-vs-100 rush, every buyer through `nginx`'s one URL.
fn plan_through(nginx: &Nginx, database: &str) -> RushPlan {
    RushPlan::new(vec![nginx.url().to_owned()], database)
}

/// How many buyers were answered 502 by the balancer and clicked again.
fn gateway_retries(report: &Report) -> u64 {
    report
        .error_kinds
        .get("gateway")
        .map_or(0, |kind| kind.count)
}

/// Level 1 (a lock inside each server), four servers behind nginx: nginx
/// deals the buyers over all four, each lock covers only its own server's
/// buyers, and the ticket is oversold, exactly as on two ports. Judged by
/// identity: every 201 holds an order row and every row was answered 201,
/// so the extra orders are real sales, not miscounted answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level1_oversells_behind_nginx_with_four_servers_as_on_two_ports() {
    let spec = ServerSpec::new(1, "mutex").think_time_ms(level1::RACE_THINK_TIME_MS);
    let (servers, database) = servers(&spec, 4).await;
    let nginx = nginx_in_front(urls(&servers), NginxSettings::default()).await;

    let report = rush(&plan_through(&nginx, &database))
        .await
        .expect("the rush runs");

    assert_eq!(report.verdict, Verdict::Oversold, "{report:#?}");
    assert!(report.db_orders > 100, "{} orders", report.db_orders);
    assert_eq!(report.succeeded as i64, report.db_orders, "201s and rows");
    assert_eq!(report.answered_without_order, 0);
    assert_eq!(report.orders_without_answer, 0);
    assert_eq!((report.errors, report.server_errors), (0, 0));
    for server in &servers {
        let sold = scrape_metrics(&[server.url()]).await;
        let created = sold.get("purchases:created").copied().unwrap_or(0.0);
        assert!(created > 0.0, "nginx sent {} no buyer", server.url());
    }
    drop(nginx);
    stop(servers).await;
}

/// A correct strategy (Level 2's atomic update) behind nginx over four
/// servers: exactly 100 orders, 100 201s, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_strategy_stays_correct_behind_nginx() {
    let spec = ServerSpec::new(2, "atomic").think_time_ms(level2::RACE_THINK_TIME_MS);
    let (servers, database) = servers(&spec, 4).await;
    let nginx = nginx_in_front(urls(&servers), NginxSettings::default()).await;

    let report = rush(&plan_through(&nginx, &database))
        .await
        .expect("the rush runs");

    assert_exactly_sold(&report, 100);
    drop(nginx);
    stop(servers).await;
}

/// Four server processes of Level 2 atomic behind nginx (with `settings`);
/// once sales are under way (every buyer has posted, and a quarter of them
/// wait on the first server), that server is killed with SIGKILL. Returns
/// the rush's report.
async fn rush_and_kill_one_of_four(settings: NginxSettings) -> Report {
    let database = fresh_database().await;
    let spec = ServerSpec::new(2, "atomic").think_time_ms(KILL_THINK_TIME_MS);
    let exe = Path::new(env!("CARGO_BIN_EXE_load"));
    let mut servers = start_processes(exe, &spec, &database, None, 4)
        .await
        .expect("servers start");
    let addresses = servers.iter().map(|s| s.url().to_owned()).collect();
    let nginx = nginx_in_front(addresses, settings).await;
    let plan = plan_through(&nginx, &database);
    let rushing = tokio::spawn(async move { rush(&plan).await });

    wait_for_orders(&database, 10).await;
    servers[0].kill().await.expect("SIGKILL");

    let report = rushing
        .await
        .expect("the rush did not panic")
        .expect("the rush runs");
    drop(nginx);
    for server in servers.into_iter().skip(1) {
        server.stop().await.expect("server stops");
    }
    report
}

/// Waits (the event, not a clock) until `count` orders of ticket 1 exist.
async fn wait_for_orders(database: &str, count: i64) {
    let pool = load::rush::open_database(database).await.expect("database");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let orders: i64 =
            sqlx::query_scalar("SELECT count(*) FROM ticket_orders WHERE ticket_id = 1")
                .fetch_one(&pool)
                .await
                .expect("count orders");
        if orders >= count {
            break;
        }
        assert!(Instant::now() < deadline, "sales never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pool.close().await;
}

/// A server killed behind nginx mid-rush, while buyers wait on it: nginx
/// does not resend their purchases (it cannot know whether the dead server
/// sold), it answers 502; each of those buyers clicks again with the same
/// Idempotency-Key, nginx sends the retry to a live server, and the sale
/// ends exactly right, judged by identity. That some buyers saw the 502 is
/// the proof that nginx itself retried no POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_behind_nginx_mid_rush_costs_no_sale_and_no_double_sale() {
    let report = rush_and_kill_one_of_four(NginxSettings::default()).await;

    assert_exactly_sold(&report, 100);
    assert!(
        gateway_retries(&report) > 0,
        "the dead server's waiting buyers were answered 502 and retried: {report:#?}"
    );
    assert!(
        report.attempts > report.buyers as u64,
        "the retries were sent"
    );
}

/// The broken mode, kept to be seen: told `proxy_next_upstream ...
/// non_idempotent`, nginx resends the dead server's purchases on its own,
/// and no buyer ever sees the crash. Here the dead server's transactions
/// rolled back, so the sale stays right; had one committed before the
/// server died, nginx would have sold it a second time behind the buyer's
/// back (only the Idempotency-Key would save it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_told_to_resend_posts_hides_the_crash_from_buyers() {
    let report = rush_and_kill_one_of_four(NginxSettings {
        retry_non_idempotent: true,
        ..NginxSettings::default()
    })
    .await;

    assert_eq!(gateway_retries(&report), 0, "{report:#?}");
    assert_exactly_sold(&report, 100);
}
