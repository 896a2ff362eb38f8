//! Persistent mode's waiter hand-off: a request's own spinning waiter finishes it, the completer
//! leaves it alone meanwhile and takes over when the waiter stops spinning, sleeps, or never
//! spins (a future, a timed wait), and rests while waiters spin on all it holds. Its own test process: the spin window is read once per process, and here
//! it is forced on (machines with few cores do not spin by default).

mod common;

use std::time::Duration;

use common::say;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tilemux::Backend;
use tilemux::reference::Case;
use tilemux::runtime::{Mode, PersistentConfig, Runtime, RuntimeConfig, TenantSpec};

fn check(backend: Backend, big: (u32, u32, u32), quota: u64) {
    let rt = match Runtime::new(RuntimeConfig {
        backend,
        memory_budget: quota as usize + (8 << 20),
        calibrate: false,
        mode: Mode::Persistent(PersistentConfig::default()),
        ..Default::default()
    }) {
        Ok(rt) => rt,
        Err(e) => return say(&format!("skipped on {backend:?}: {e}")),
    };
    let t = rt.add_tenant(TenantSpec::new("waiter").quota(quota)).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let cases: Vec<Case> = [(256, 1, 256), (512, 1, 384), (96, 64, 80)].map(|s| Case::plain(&mut rng, s)).to_vec();
    let bufs: Vec<_> = cases.iter().map(|c| c.alloc(&t).unwrap()).collect();
    // Load that outlasts a waiter's spin window (not checked: only its duration matters).
    let big_case = Case::plain(&mut rng, big);
    let big = big_case.alloc(&t).unwrap();
    big_case.upload(&big).unwrap();
    let rounds = 40;
    for i in 0..rounds {
        // Fresh inputs and a poisoned output each time.
        let j = i % cases.len();
        let case = Case::plain(&mut rng, (cases[j].m, cases[j].n, cases[j].k));
        case.upload(&bufs[j]).unwrap();
        // Every fifth request queues behind a long problem on the device.
        let load = (i % 5 == 4).then(|| rt.submit(&t, big_case.op(&big)).unwrap());
        let mut ticket = rt.submit(&t, case.op(&bufs[j])).unwrap();
        let done = match i % 5 {
            // The waiter spins from the start and finishes the request itself.
            0 => ticket.wait().unwrap(),
            // Nobody spins while it completes: the completer finishes it.
            1 => {
                std::thread::sleep(Duration::from_millis(3));
                ticket.wait().unwrap()
            }
            // A future: no hook, the completer resolves it.
            2 => pollster::block_on(ticket).unwrap(),
            // A wait with a timeout does not spin either: the completer resolves it.
            3 => ticket.wait_timeout(Duration::from_secs(10)).unwrap(),
            // Behind the load, the waiter's spin window ends first: it hands the request back
            // to the completer and blocks.
            _ => ticket.wait().unwrap(),
        };
        assert_eq!(done.round, 0, "persistent mode has no rounds");
        if let Some(load) = load {
            load.wait().unwrap();
        }
        let e = case.error(&bufs[j].c.read().unwrap(), &case.reference());
        assert!(e < 1e-4, "{backend:?} request {i}: relative error {e:e}");
    }
    // The completer rests while a waiter spins on every request in flight: one thread spins on a
    // long problem while this one waits for others without spinning (futures, timed waits), which
    // must wake it.
    let others = 6;
    std::thread::scope(|sc| {
        let spinner = sc.spawn(|| rt.submit(&t, big_case.op(&big)).unwrap().wait().unwrap());
        for i in 0..others {
            let j = i % cases.len();
            let case = Case::plain(&mut rng, (cases[j].m, cases[j].n, cases[j].k));
            case.upload(&bufs[j]).unwrap();
            let mut ticket = rt.submit(&t, case.op(&bufs[j])).unwrap();
            if i % 2 == 0 {
                pollster::block_on(ticket).unwrap();
            } else {
                ticket.wait_timeout(Duration::from_secs(10)).unwrap();
            }
            let e = case.error(&bufs[j].c.read().unwrap(), &case.reference());
            assert!(e < 1e-4, "{backend:?} request {i} beside a spinning waiter: relative error {e:e}");
        }
        spinner.join().unwrap();
    });
    let s = rt.remove_tenant(&t).unwrap();
    let all = (rounds + rounds / 5 + others + 1) as u64;
    assert_eq!((s.submitted, s.completed, s.failed), (all, all, 0), "{backend:?}");
    say(&format!("{:?}: {rounds} requests through the waiter hand-off, all correct", rt.backend()));
}

#[test]
fn waiters_and_the_completer_share_the_work() {
    // SAFETY: set before any thread of this process reads the environment (one test here).
    unsafe { std::env::set_var("TILEMUX_SPIN_US", "300") };
    check(Backend::Cpu, (256, 256, 256), 16 << 20);
    check(Backend::Cuda, (4096, 4096, 1024), 160 << 20);
}
