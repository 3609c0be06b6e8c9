//! Read-path benchmarks: a fresh read, aggregate reads on 2 threads, and reads while a
//! background refresh is in flight. Run: `cargo bench -p tokenlease --bench read_path`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tokenlease::{source_fn, FetchedToken, Manager, Policy};

fn fresh_manager() -> Manager {
    let manager = Manager::builder(source_fn(|| async {
        Ok(FetchedToken::bearer(
            "bench-token",
            Duration::from_secs(3600),
        ))
    }))
    .build();
    manager.token_blocking().expect("token");
    manager
}

fn fresh_read(c: &mut Criterion) {
    let manager = fresh_manager();
    let mut group = c.benchmark_group("fresh_read");
    group.bench_function("1_thread", |b| {
        b.iter(|| {
            let token = manager.cached().expect("fresh");
            black_box(token.value().len());
        })
    });
    // Time per read when two threads read at once (aggregate throughput = 1 / this).
    group.bench_function("2_threads_aggregate", |b| {
        b.iter_custom(|iters| {
            let start_line = Arc::new(std::sync::Barrier::new(2));
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let manager = manager.clone();
                    let start_line = start_line.clone();
                    std::thread::spawn(move || {
                        start_line.wait();
                        let start = Instant::now();
                        for _ in 0..iters {
                            let token = manager.cached().expect("fresh");
                            black_box(token.value().len());
                        }
                        start.elapsed()
                    })
                })
                .collect();
            let longest = workers
                .into_iter()
                .map(|worker| worker.join().unwrap())
                .max()
                .unwrap();
            longest / 2
        })
    });
    group.finish();
}

/// The two halves of a fresh read, timed alone: the lock-free load of the published token
/// and the coarse clock reading.
fn read_components(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_components");
    let published = arc_swap::ArcSwapOption::from_pointee(String::from("bench-token"));
    group.bench_function("arc_swap_load", |b| {
        b.iter(|| {
            let guard = published.load();
            black_box(guard.as_deref().map(String::len));
        })
    });
    let clock = tokenlease::clock::system_clock();
    group.bench_function("coarse_clock_through_the_clock_trait", |b| {
        b.iter(|| black_box(clock.coarse_now()))
    });
    group.finish();
}

/// Reads while a refresh is stuck in flight: the stale token is served without waiting.
fn read_during_refresh(c: &mut Criterion) {
    let release = Arc::new(tokio::sync::Semaphore::new(1));
    let gate = release.clone();
    let manager = Manager::builder(source_fn(move || {
        let gate = gate.clone();
        async move {
            gate.acquire().await.expect("gate").forget();
            Ok(FetchedToken::bearer("bench-token", Duration::from_secs(30)))
        }
    }))
    .policy(
        Policy::builder()
            .advisory_window(0.99, Duration::ZERO, Duration::from_secs(3600))
            .mandatory_window(0.0, Duration::ZERO, Duration::ZERO)
            .jitter_fraction(0.0)
            .build()
            .unwrap(),
    )
    .build();
    manager.token_blocking().expect("token");
    // With a 99% advisory window the token is stale after 0.3 s; the next read starts a
    // refresh that waits on the gate for the rest of the benchmark.
    std::thread::sleep(Duration::from_millis(400));
    let _ = manager.cached();
    while !manager.status().refreshing {
        std::thread::yield_now();
    }
    c.bench_function("stale_read_during_refresh", |b| {
        b.iter(|| {
            let token = manager.cached().expect("stale token served");
            black_box(token.value().len());
        })
    });

    // Tail latency over many reads, printed for docs/benchmarks.md.
    let mut worst = Duration::ZERO;
    let mut samples = Vec::with_capacity(1_000_000);
    let stop = AtomicBool::new(false);
    for _ in 0..1_000_000 {
        let start = Instant::now();
        let token = manager.cached().expect("stale token served");
        black_box(token.value().len());
        let took = start.elapsed();
        worst = worst.max(took);
        samples.push(took);
    }
    stop.store(true, Ordering::Relaxed);
    samples.sort_unstable();
    println!(
        "stale_read_during_refresh tail: p50 {:?} p99 {:?} p99.99 {:?} max {:?} (refresh in flight: {})",
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
        samples[samples.len() * 9999 / 10000],
        worst,
        manager.status().refreshing
    );
    release.add_permits(1);
}

criterion_group!(benches, fresh_read, read_components, read_during_refresh);
criterion_main!(benches);
