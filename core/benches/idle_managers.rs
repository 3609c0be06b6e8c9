//! Memory and CPU of idle managers: 100,000 managers holding a token, in one process.
//! Prints RSS per manager, background threads, and CPU used while idle.
//! Run: `cargo bench -p tokenlease --bench idle_managers`

use std::time::Duration;

use tokenlease::{runtime, source_fn, FetchedToken, Manager};

const MANAGERS: usize = 100_000;
/// `cargo test --benches` runs this without `--bench`: a small smoke run then.
const SMOKE_MANAGERS: usize = 1_000;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let count = if measuring { MANAGERS } else { SMOKE_MANAGERS };
    let idle_for = if measuring {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(200)
    };
    // Start the runtime first so its own memory isn't counted per manager.
    let warmup = Manager::builder(source_fn(|| async {
        Ok(FetchedToken::bearer("warm", Duration::from_secs(3600)))
    }))
    .build();
    warmup.token_blocking().unwrap();
    let before = rss_bytes();
    let managers: Vec<Manager> = (0..count)
        .map(|index| {
            Manager::builder(source_fn(move || async move {
                Ok(FetchedToken::bearer(
                    format!("token-{index:08}"),
                    Duration::from_secs(3600),
                ))
            }))
            .key(format!("manager-{index}"))
            .build()
        })
        .collect();
    for manager in &managers {
        manager.token_blocking().unwrap();
    }
    let after = rss_bytes();
    let per_manager = (after.saturating_sub(before)) as f64 / count as f64;
    let idle_start = cpu_time();
    std::thread::sleep(idle_for);
    let idle_cpu = cpu_time() - idle_start;
    println!(
        "idle_managers: {count} managers with a token, RSS +{:.1} MiB = {per_manager:.0} bytes/manager; \
         background threads started: {}; process threads: {}; CPU while idle for {idle_for:?}: {idle_cpu:?}",
        (after - before) as f64 / (1024.0 * 1024.0),
        runtime::background_threads_started(),
        threads(),
    );
    assert_eq!(runtime::background_threads_started(), 1);
    drop(managers);
}
