//! Persistent mode's completer rests while every request in flight has a waiter spinning on it:
//! the waiter finishes its own request, and a completer spinning beside it only slows the host
//! (`QUEUE.md`, host completion). Measured as the completer thread's CPU time during one long
//! request (Linux: `/proc/self/task`). Its own test process: the spin window is read once per
//! process, and here waiters spin for up to a second.

mod common;

use std::time::{Duration, Instant};

use common::say;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tilemux::Backend;
use tilemux::reference::Case;
use tilemux::runtime::{Mode, PersistentConfig, Runtime, RuntimeConfig, TenantSpec};

/// The completer thread's CPU time so far (user and system), or `None` where `/proc` does not
/// say (not Linux, or the thread not found).
fn completer_cpu() -> Option<Duration> {
    // Thread names are cut to 15 bytes: "tilemux-ring-completer" reads "tilemux-ring-co".
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "tilemux-ring-co" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // The kernel's clock ticks are 100 per second on every Linux this runs on (USER_HZ).
        return Some(Duration::from_millis(ticks * 10));
    }
    None
}

#[test]
fn the_completer_rests_while_a_waiter_spins() {
    // SAFETY: set before any thread of this process reads the environment (one test here).
    unsafe { std::env::set_var("TILEMUX_SPIN_US", "1000000") };
    let rt = Runtime::new(RuntimeConfig {
        backend: Backend::Cpu,
        memory_budget: 128 << 20,
        calibrate: false,
        mode: Mode::Persistent(PersistentConfig::default()),
        ..Default::default()
    })
    .unwrap();
    let t = rt.add_tenant(TenantSpec::new("long").quota(96 << 20)).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    // About 17 GFLOP: a few hundred ms on the CPU backend, long enough for the completer's CPU
    // time (10 ms ticks) to tell.
    let case = Case::plain(&mut rng, (4096, 1024, 2048));
    let bufs = case.alloc(&t).unwrap();
    case.upload(&bufs).unwrap();
    let Some(before) = completer_cpu() else {
        return say("the_completer_rests_while_a_waiter_spins: skipped, no /proc/self/task (not Linux)");
    };
    let start = Instant::now();
    rt.submit(&t, case.op(&bufs)).unwrap().wait().unwrap();
    let (wall, cpu) = (start.elapsed(), completer_cpu().unwrap() - before);
    let e = case.error(&bufs.c.read().unwrap(), &case.reference());
    assert!(e < 1e-4, "relative error {e:e}");
    // A spinning completer runs for the whole wait, as far as the cores allow (a third of it and
    // more on two cores, where it shares them with the waiter and the CPU backend's workers);
    // resting, it wakes every 20 µs or so for a look. Ticks are 10 ms: allow two.
    assert!(
        cpu <= wall / 10 + Duration::from_millis(20),
        "the completer ran {cpu:?} of the {wall:?} its request's waiter spun"
    );
    say(&format!("completer CPU time {cpu:?} during a {wall:?} wait with a spinning waiter"));
}
