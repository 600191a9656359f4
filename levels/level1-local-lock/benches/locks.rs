#![allow(missing_docs)] // criterion_group! generates an undocumented public function.

//! What the in-process locks of Level 1 cost, with no database in the way.
//!
//! Eight tasks on a two-thread Tokio runtime each take a lock 1,000 times
//! and touch the value it protects. Compared in one run:
//!
//! - `tokio::sync::Mutex` (Level 1's `mutex`: may be held across `.await`);
//! - `parking_lot::Mutex` and `std::sync::Mutex` (blocking locks: fine when the
//!   critical section never awaits, as in `per_ticket`'s map);
//! - `tokio::sync::RwLock`, read-heavy (9 reads to 1 write) and write-heavy
//!   (1 read to 9 writes).
//!
//! Run with: `cargo bench -p level1 --bench locks`. Criterion prints the time
//! per batch of 8,000 acquisitions; docs/01-local-locks.md reports each as a
//! ratio to `tokio_mutex` measured in the same run.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

const TASKS: usize = 8;
const ROUNDS: usize = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a runtime")
}

/// Runs `TASKS` tasks of `ROUNDS` calls to `step` each, and waits for all.
async fn contend<S, F>(shared: Arc<S>, step: F)
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync
        + Copy
        + 'static,
{
    let mut tasks = Vec::with_capacity(TASKS);
    for _ in 0..TASKS {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                step(shared.clone(), round).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
}

fn locks(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("8 tasks x 1000 acquisitions");

    group.bench_function("tokio_mutex", |b| {
        b.to_async(&rt).iter(|| {
            contend(Arc::new(tokio::sync::Mutex::new(0u64)), |m, _| {
                Box::pin(async move {
                    *m.lock().await += 1;
                })
            })
        })
    });
    group.bench_function("parking_lot_mutex", |b| {
        b.to_async(&rt).iter(|| {
            contend(Arc::new(parking_lot::Mutex::new(0u64)), |m, _| {
                Box::pin(async move {
                    *m.lock() += 1;
                })
            })
        })
    });
    group.bench_function("std_mutex", |b| {
        b.to_async(&rt).iter(|| {
            contend(Arc::new(std::sync::Mutex::new(0u64)), |m, _| {
                Box::pin(async move {
                    *m.lock().expect("not poisoned") += 1;
                })
            })
        })
    });
    group.bench_function("tokio_rwlock_read_heavy", |b| {
        b.to_async(&rt).iter(|| {
            contend(Arc::new(tokio::sync::RwLock::new(0u64)), |l, round| {
                Box::pin(async move {
                    if round % 10 == 0 {
                        *l.write().await += 1;
                    } else {
                        std::hint::black_box(*l.read().await);
                    }
                })
            })
        })
    });
    group.bench_function("tokio_rwlock_write_heavy", |b| {
        b.to_async(&rt).iter(|| {
            contend(Arc::new(tokio::sync::RwLock::new(0u64)), |l, round| {
                Box::pin(async move {
                    if round % 10 == 0 {
                        std::hint::black_box(*l.read().await);
                    } else {
                        *l.write().await += 1;
                    }
                })
            })
        })
    });
    group.finish();
}

criterion_group!(benches, locks);
criterion_main!(benches);
