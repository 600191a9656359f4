//! The `/proc` parsing and the floor arithmetic, without any service.

use super::*;
use crate::model::Latency;

/// A real line's shape: the name holds a space and a `)`.
const STAT: &str = "4242 (tokio (rt) x) S 4200 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 269 17 3 20 0 9 0 123456 1000000 2000 18446744073709551615";

#[test]
fn a_stat_line_is_read_from_after_the_last_parenthesis() {
    let stat = ProcStat::parse(STAT).expect("parses");
    assert_eq!(stat.comm, "tokio (rt) x");
    assert_eq!(stat.ppid, 4200);
    assert_eq!((stat.utime, stat.stime), (731, 269));
    assert_eq!((stat.cutime, stat.cstime), (17, 3));
    assert_eq!(stat.own_ticks(), 1000);
    assert_eq!(stat.with_children_ticks(), 1020);
}

#[test]
fn a_truncated_or_garbled_stat_line_is_refused() {
    assert_eq!(ProcStat::parse("4242 (load) S 1 2 3"), None);
    assert_eq!(ProcStat::parse("no parentheses here"), None);
    assert_eq!(ProcStat::parse(&STAT.replace(" 731 ", " x ")), None);
}

#[test]
fn this_process_reads_its_own_stat() {
    let stat = ProcStat::read(None).expect("/proc/self/stat");
    assert_eq!(stat.ppid, std::os::unix::process::parent_id());
}

#[test]
fn the_pid_is_read_from_info_server() {
    let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:5150\r\ntcp_port:6379\r\n";
    assert_eq!(info_process_id(info), Some(5150));
    assert_eq!(info_process_id("# Server\r\n"), None);
}

fn process(name: &str, role: Role, us: Option<f64>) -> ProcessCpu {
    ProcessCpu {
        name: name.to_owned(),
        role,
        cpu_ms: us.map(|u| u * 10.0 / 1000.0),
        us_per_op: us,
    }
}

fn cost(processes: Vec<ProcessCpu>) -> CpuCost {
    CpuCost {
        operations: 10,
        processes,
    }
}

fn ceiling(name: &str, us: Option<f64>) -> Ceiling {
    Ceiling {
        name: name.to_owned(),
        concurrency: 64,
        servers: 0,
        ops_per_sec: 1000.0,
        operations: 10_000,
        errors: 0,
        latency_ms: Latency::default(),
        cpu: us.map(|us| cost(vec![process("load", Role::Load, Some(us))])),
    }
}

#[test]
fn ticks_become_microseconds_per_operation() {
    let watched = Watched {
        name: "server 1".to_owned(),
        role: Role::Server,
        how: How::Process(1),
    };
    // 250 ticks = 2.5 s of CPU over 1000 sales = 2500 µs a sale.
    let spent = ProcessCpu::of(&watched, Some(250), 1000);
    assert_eq!(spent.cpu_ms, Some(2500.0));
    assert_eq!(spent.us_per_op, Some(2500.0));
    assert_eq!(ProcessCpu::of(&watched, Some(250), 0).us_per_op, None);
    assert_eq!(ProcessCpu::of(&watched, None, 1000).cpu_ms, None);
}

#[test]
fn the_total_is_not_measured_when_one_process_was_not() {
    let both = cost(vec![
        process("load", Role::Load, Some(40.0)),
        process("server 1", Role::Server, Some(30.0)),
        process("server 2", Role::Server, Some(20.0)),
    ]);
    assert_eq!(both.total_us(), Some(90.0));
    assert_eq!(both.role_us(Role::Server), Some(50.0));
    assert_eq!(both.role_us(Role::Redis), None);
    let external = cost(vec![
        process("load", Role::Load, Some(40.0)),
        process("postgres", Role::Postgres, None),
    ]);
    assert_eq!(external.total_us(), None);
    assert_eq!(external.role_us(Role::Postgres), None);
}

#[test]
fn level_4s_floor_is_one_request_one_lua_call_and_one_batched_row() {
    let ceilings = [
        ceiling("postgres_purchase", Some(200.0)),
        ceiling("http_noop", Some(50.0)),
        ceiling("postgres_batch_insert", Some(15.0)),
        ceiling("redis_lua", Some(20.0)),
    ];
    let measured = cost(vec![process("load", Role::Load, Some(170.0))]);
    let floor = floor(4, &ceilings, Some(&measured)).expect("a floor");
    assert_eq!(floor.total_us, 50.0 + 20.0 + 15.0);
    assert_eq!(floor.ratio, Some(2.0));
    let names: Vec<&str> = floor.parts.iter().map(|p| p.ceiling.as_str()).collect();
    assert_eq!(names, ["http_noop", "redis_lua", "postgres_batch_insert"]);
}

#[test]
fn level_2s_floor_is_one_request_and_one_purchase_transaction() {
    let ceilings = [
        ceiling("postgres_purchase", Some(200.0)),
        ceiling("http_noop", Some(50.0)),
    ];
    let floor = floor(2, &ceilings, None).expect("a floor");
    assert_eq!(floor.total_us, 250.0);
    assert_eq!(floor.ratio, None, "no measured cost, no ratio");
}

#[test]
fn level_3s_floor_counts_the_lock_as_two_redis_calls() {
    let ceilings = [
        ceiling("postgres_purchase", Some(200.0)),
        ceiling("http_noop", Some(50.0)),
        ceiling("redis_lua", Some(20.0)),
    ];
    assert_eq!(floor(3, &ceilings, None).map(|f| f.total_us), Some(290.0));
}

#[test]
fn no_floor_without_every_ceiling_it_needs_measured() {
    let unmeasured = [
        ceiling("postgres_purchase", None),
        ceiling("http_noop", Some(50.0)),
    ];
    assert_eq!(floor(2, &unmeasured, None), None);
    assert_eq!(floor(4, &[ceiling("http_noop", Some(50.0))], None), None);
    assert_eq!(floor(5, &unmeasured, None), None);
}

#[test]
fn a_watch_puts_servers_after_the_load_generator_and_keeps_unknown_ones() {
    let watch = Watch::services(Some(Some(10)), Some(None)).with_servers([Some(7), None]);
    let names: Vec<&str> = watch.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["load", "server 1", "server 2", "postgres", "redis"]);
    assert_eq!(watch.processes[2].how, How::Unknown);
    assert_eq!(watch.processes[3].how, How::ProcessTree(10));
    assert_eq!(watch.processes[4].how, How::Unknown, "Redis given by URL");
    let only = watch.only(&[Role::Load, Role::Postgres]);
    assert_eq!(only.processes.len(), 2);
}
