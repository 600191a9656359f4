//! CPU time per sale, by process, and the floor it is held against.
//!
//! On a small machine the load generator, the servers, PostgreSQL and Redis
//! share the same cores, so sales per second mostly measure who got the CPU.
//! What carries over between machines is the *cost* of a sale: how much CPU
//! time each process spent for it. This module reads that cost from
//! `/proc/<pid>/stat` (user + system time) before and after a run, and
//! divides by the successful sales (or, for a ceiling, its operations).
//!
//! Which processes, and how:
//!
//! - the load generator: this process (its own time only; the servers it
//!   started are measured on their own);
//! - each server: its process (servers run as child processes in the tour
//!   and in `load run`; servers given by `--target` are not measured);
//! - PostgreSQL: the postmaster plus every child of it (the backends, the
//!   checkpointer, ...), and the children that exited during the run (the
//!   postmaster reaps them, so their time is in its `cutime`/`cstime`);
//! - Redis: the `redis-server` process (and any child it forked to save).
//!
//! Only throwaway services started by this run are measured: a service given
//! by URL may be anywhere, so its cost is reported as not measured, never
//! guessed.
//!
//! The *floor* of a strategy ([`floor_recipe`]) is the sum of the ceilings'
//! per-operation costs that the strategy cannot avoid: a sale that is one
//! HTTP request and one purchase transaction can never cost less than the
//! bare HTTP request plus the bare transaction, measured in the same run.

use crate::model::{Ceiling, Report};
pub use crate::model::{CpuCost, Floor, FloorPart, ProcessCpu, Role};

/// Ticks per second of the times in `/proc/<pid>/stat`: the kernel reports
/// them in `USER_HZ`, which Linux fixes at 100 for user space on every
/// architecture (what `sysconf(_SC_CLK_TCK)` returns).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of one `/proc/<pid>/stat` line that CPU accounting needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// The executable's name (truncated to 15 bytes by the kernel).
    pub comm: String,
    /// The parent's process id.
    pub ppid: u32,
    /// Time in user mode, in ticks.
    pub utime: u64,
    /// Time in kernel mode, in ticks.
    pub stime: u64,
    /// User time of the children it has waited for, in ticks.
    pub cutime: u64,
    /// Kernel time of the children it has waited for, in ticks.
    pub cstime: u64,
}

impl ProcStat {
    /// Parses a `/proc/<pid>/stat` line. The name sits in parentheses and
    /// may itself hold spaces and `)`, so the fields are counted from the
    /// *last* `)`: after it come state (field 3), ppid (4), ... utime (14),
    /// stime (15), cutime (16), cstime (17).
    pub fn parse(line: &str) -> Option<Self> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let comm = line.get(open + 1..close)?.to_owned();
        let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
        // fields[0] is field 3, so field n is fields[n - 3].
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            comm,
            ppid: u32::try_from(field(4)?).ok()?,
            utime: field(14)?,
            stime: field(15)?,
            cutime: field(16)?,
            cstime: field(17)?,
        })
    }

    /// Reads a process's line (`None`: this process).
    pub fn read(pid: Option<u32>) -> Option<Self> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".to_owned(),
        };
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Its own user + system time, in ticks.
    pub fn own_ticks(&self) -> u64 {
        self.utime + self.stime
    }

    /// Its own time plus that of the children it has reaped, in ticks.
    pub fn with_children_ticks(&self) -> u64 {
        self.own_ticks() + self.cutime + self.cstime
    }
}

impl Role {
    /// Every role, in the order tables and plots show them.
    pub const ALL: [Role; 4] = [Role::Load, Role::Server, Role::Postgres, Role::Redis];

    /// A column heading.
    pub fn label(self) -> &'static str {
        match self {
            Role::Load => "load",
            Role::Server => "servers",
            Role::Postgres => "postgres",
            Role::Redis => "redis",
        }
    }
}

/// How a process's CPU time is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// This process, its own time only (the servers it started as children
    /// are measured as themselves).
    ThisProcess,
    /// One process and the children it reaps.
    Process(u32),
    /// A process, every live child of it, and the children it reaped
    /// (PostgreSQL's postmaster and its backends).
    ProcessTree(u32),
    /// Not ours to measure (a service given by URL, a server given by
    /// `--target`): reported as not measured.
    Unknown,
}

/// One process to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Its name in tables (`load`, `server 1`, `postgres`, `redis`).
    pub name: String,
    /// Its part.
    pub role: Role,
    /// How to read it.
    pub how: How,
}

/// The processes whose CPU time a run measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// In table order.
    pub processes: Vec<Watched>,
}

impl Default for Watch {
    /// The load generator alone.
    fn default() -> Self {
        Self {
            processes: vec![Watched {
                name: "load".to_owned(),
                role: Role::Load,
                how: How::ThisProcess,
            }],
        }
    }
}

impl Watch {
    /// The load generator, PostgreSQL and Redis (`None`: not used; `Some(None)`:
    /// used but not ours to measure), and no server yet.
    pub fn services(postgres: Option<Option<u32>>, redis: Option<Option<u32>>) -> Self {
        let mut watch = Self::default();
        if let Some(pid) = postgres {
            watch.processes.push(Watched {
                name: "postgres".to_owned(),
                role: Role::Postgres,
                how: pid.map_or(How::Unknown, How::ProcessTree),
            });
        }
        if let Some(pid) = redis {
            watch.processes.push(Watched {
                name: "redis".to_owned(),
                role: Role::Redis,
                how: pid.map_or(How::Unknown, How::Process),
            });
        }
        watch
    }

    /// The same services with these servers (a pid each; `None`: a server
    /// not started here), replacing any servers already in it.
    pub fn with_servers(&self, pids: impl IntoIterator<Item = Option<u32>>) -> Self {
        let mut processes: Vec<Watched> = self
            .processes
            .iter()
            .filter(|p| p.role != Role::Server)
            .cloned()
            .collect();
        let servers = pids.into_iter().enumerate().map(|(i, pid)| Watched {
            name: format!("server {}", i + 1),
            role: Role::Server,
            how: pid.map_or(How::Unknown, How::Process),
        });
        // Servers go right after the load generator.
        let at = usize::from(!processes.is_empty());
        processes.splice(at..at, servers);
        Self { processes }
    }

    /// Only the processes playing one of `roles` (a ceiling measures the
    /// processes it exercises, not the idle rest).
    pub fn only(&self, roles: &[Role]) -> Self {
        Self {
            processes: self
                .processes
                .iter()
                .filter(|p| roles.contains(&p.role))
                .cloned()
                .collect(),
        }
    }

    /// Reads every process's CPU time now; [`Stopwatch::per_operation`]
    /// reads it again and divides.
    pub fn start(&self) -> Stopwatch {
        Stopwatch {
            ticks: self.processes.iter().map(|p| ticks(p.how)).collect(),
            watch: self.clone(),
        }
    }
}

/// A process's CPU time so far, in ticks, or `None` when it cannot be read.
fn ticks(how: How) -> Option<u64> {
    match how {
        How::ThisProcess => ProcStat::read(None).map(|s| s.own_ticks()),
        How::Process(pid) => ProcStat::read(Some(pid)).map(|s| s.with_children_ticks()),
        How::ProcessTree(pid) => tree_ticks(pid),
        How::Unknown => None,
    }
}

/// A process's time plus that of all its live children (each with the
/// children they reaped) and of the children it reaped.
fn tree_ticks(root: u32) -> Option<u64> {
    let own = ProcStat::read(Some(root))?.with_children_ticks();
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| ProcStat::read(Some(pid)))
        .filter(|stat| stat.ppid == root)
        .map(|stat| stat.with_children_ticks())
        .sum();
    Some(own + children)
}

/// CPU times read at the start of a run.
#[derive(Debug, Clone)]
pub struct Stopwatch {
    watch: Watch,
    ticks: Vec<Option<u64>>,
}

impl Stopwatch {
    /// Reads the times again and divides what each process spent since the
    /// start by `operations`.
    pub fn per_operation(&self, operations: u64) -> CpuCost {
        let processes = self
            .watch
            .processes
            .iter()
            .zip(&self.ticks)
            .map(|(process, before)| {
                let spent = match (before, ticks(process.how)) {
                    (Some(before), Some(after)) => Some(after.saturating_sub(*before)),
                    _ => None,
                };
                ProcessCpu::of(process, spent, operations)
            })
            .collect();
        CpuCost {
            operations,
            processes,
        }
    }
}

impl ProcessCpu {
    fn of(process: &Watched, ticks: Option<u64>, operations: u64) -> Self {
        let cpu_ms = ticks.map(|t| t as f64 * 1000.0 / TICKS_PER_SECOND);
        Self {
            name: process.name.clone(),
            role: process.role,
            cpu_ms,
            us_per_op: cpu_ms
                .filter(|_| operations > 0)
                .map(|ms| ms * 1000.0 / operations as f64),
        }
    }
}

impl CpuCost {
    /// µs per operation of every process playing `role`, summed; `None`
    /// when none plays it or one of them was not measured.
    pub fn role_us(&self, role: Role) -> Option<f64> {
        let mut of_role = self.processes.iter().filter(|p| p.role == role).peekable();
        of_role.peek()?;
        of_role.map(|p| p.us_per_op).sum()
    }

    /// µs per operation, all processes together; `None` when one of them
    /// was not measured (a partial sum would look like a real one).
    pub fn total_us(&self) -> Option<f64> {
        if self.processes.is_empty() {
            return None;
        }
        self.processes.iter().map(|p| p.us_per_op).sum()
    }
}

/// The ceilings a strategy cannot avoid, with how many of each one sale
/// needs. This is the one place where each level's floor is defined:
///
/// | level | a sale is at least | floor |
/// | --- | --- | --- |
/// | 0, 1, 2 | one HTTP request and one purchase transaction (read and write stock, insert the order) | `http_noop` + `postgres_purchase` |
/// | 3 | the same, inside a Redis lock taken and given back (two Redis calls) | `http_noop` + `postgres_purchase` + 2 × `redis_lua` |
/// | 4 | one HTTP request, the Lua call that decides, its row in a batched INSERT | `http_noop` + `redis_lua` + `postgres_batch_insert` |
/// | 6 | one HTTP request, one append to the partition's log (a Redis call), its row in a batched INSERT | `http_noop` + `redis_lua` + `postgres_batch_insert` |
///
/// `postgres_batch_insert` is per row (a batch of
/// [`crate::sustain::BATCH_ROWS`] orders in one transaction), so it is a
/// sale's share of the batch. `None` for a level with no floor here.
pub fn floor_recipe(level: u8) -> Option<&'static [(&'static str, f64)]> {
    const DATABASE: &[(&str, f64)] = &[("http_noop", 1.0), ("postgres_purchase", 1.0)];
    const LOCKED: &[(&str, f64)] = &[
        ("http_noop", 1.0),
        ("postgres_purchase", 1.0),
        ("redis_lua", 2.0),
    ];
    const REDIS_THEN_BATCH: &[(&str, f64)] = &[
        ("http_noop", 1.0),
        ("redis_lua", 1.0),
        ("postgres_batch_insert", 1.0),
    ];
    match level {
        0..=2 => Some(DATABASE),
        3 => Some(LOCKED),
        4 | 6 => Some(REDIS_THEN_BATCH),
        _ => None,
    }
}

/// The floor of `level` from `ceilings`, and `cost`'s ratio to it; `None`
/// when the level has no recipe or a ceiling it needs has no measured cost.
pub fn floor(level: u8, ceilings: &[Ceiling], cost: Option<&CpuCost>) -> Option<Floor> {
    let parts = floor_recipe(level)?
        .iter()
        .map(|&(name, times)| {
            let measured = ceilings.iter().find(|c| c.name == name)?;
            Some(FloorPart {
                ceiling: name.to_owned(),
                times,
                us_per_op: measured.cpu.as_ref()?.total_us()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let total_us: f64 = parts.iter().map(|p| p.times * p.us_per_op).sum();
    let ratio = cost
        .and_then(CpuCost::total_us)
        .filter(|_| total_us > 0.0)
        .map(|measured| measured / total_us);
    Some(Floor {
        parts,
        total_us,
        ratio,
    })
}

/// Sets a sustained report's floor from its level and ceilings (after the
/// caller has filled those in).
pub fn attach_floor(report: &mut Report) {
    if let Some(level) = report.level {
        report.cpu_floor = floor(level, &report.ceilings, report.cpu.as_ref());
    }
}

/// The postmaster of the PostgreSQL at `url`: the parent of the backend
/// that serves a fresh connection, checked to be a `postgres` process on
/// this machine. Only call it for a throwaway server this run started.
pub async fn postmaster_pid(url: &str) -> Option<u32> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    let backend = ProcStat::read(Some(u32::try_from(backend).ok()?));
    let _ = conn.close().await;
    let postmaster = backend.filter(|b| b.comm == "postgres")?.ppid;
    ProcStat::read(Some(postmaster))
        .filter(|p| p.comm == "postgres")
        .map(|_| postmaster)
}

/// The `redis-server` process of the Redis at `url` (its `process_id` in
/// `INFO server`, checked to be a `redis-server` on this machine). Only
/// call it for a throwaway server this run started.
pub async fn redis_pid(url: &str) -> Option<u32> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    let pid = info_process_id(&info)?;
    ProcStat::read(Some(pid))
        .filter(|p| p.comm.starts_with("redis-server"))
        .map(|_| pid)
}

/// The `process_id` field of an `INFO server` answer.
pub fn info_process_id(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix("process_id:"))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;
