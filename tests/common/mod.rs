//! Helpers shared by the integration tests: run one test body on every device, check cases.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::Rng;
use rand::seq::IndexedRandom;
use tilemux::abi::TileKind;
use tilemux::cuda::{CudaConfig, CudaDevice};
use tilemux::memory::Arena;
use tilemux::reference::{Case, Staged};
use tilemux::round::{CostModel, Plan, Round, TileChooser, max_splits};
use tilemux::{Device, Error};

/// Prints past libtest's output capture, so skips are visible in a plain `cargo test`.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// The GPU, once per test process, with a lock that serialises the tests using it (each stages
/// its cases over the whole pool); `None` (with a printed reason) without driver or device.
pub fn gpu() -> Option<(MutexGuard<'static, ()>, Arc<CudaDevice>)> {
    static GPU: OnceLock<Option<Arc<CudaDevice>>> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let dev = GPU
        .get_or_init(|| match CudaDevice::new(&CudaConfig { pool_bytes: 3 << 30, ..Default::default() }) {
            Ok(d) => {
                say(&format!(
                    "GPU: {} ({} registers/thread, {} B local, grid {} = {} CTAs/SM)",
                    d.name(),
                    d.kernel().registers,
                    d.kernel().local_bytes,
                    d.kernel().grid,
                    d.kernel().ctas_per_sm
                ));
                Some(Arc::new(d))
            }
            Err(e @ (Error::NoCudaDriver(_) | Error::NoCudaDevice)) => {
                say(&format!("no CUDA device ({e})"));
                None
            }
            Err(e) => panic!("a CUDA driver is present but the device is unusable: {e}"),
        })
        .clone()?;
    Some((LOCK.lock().unwrap_or_else(|e| e.into_inner()), dev))
}

/// An arena over all of `device`'s pool (callers hold the device exclusively).
pub fn arena(device: &dyn Device) -> Arena {
    let p = device.pool();
    Arena::new(p.start, p.end - p.start)
}

/// A CPU device with a pool of `bytes`.
pub fn cpu(bytes: usize) -> Arc<dyn Device> {
    Arc::new(tilemux::cpu::CpuDevice::new(bytes).unwrap())
}

/// Defines a module `<name>` with tests `cpu` and `gpu`, each running `body(device, max_dim)`;
/// the GPU variant says `skipped: no CUDA device` when it cannot run.
#[macro_export]
macro_rules! device_test {
    ($name:ident, $cpu_max:expr, $gpu_max:expr, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn cpu() {
                let d = common::cpu(1 << 30);
                ($body)(&*d, $cpu_max);
            }
            #[test]
            fn gpu() {
                match common::gpu() {
                    Some((_lock, d)) => ($body)(&*d as &dyn tilemux::Device, $gpu_max),
                    None => common::say(concat!(stringify!($name), "::gpu: skipped: no CUDA device")),
                }
            }
        }
    };
}

/// How each problem's tile kind and k-splits are picked.
#[derive(Clone, Copy, Debug)]
pub enum Kinds {
    /// The runtime's chooser.
    Auto,
    /// A random kind among those that support the problem, and half the time a random split-K.
    Random,
    /// This kind wherever it is supported (else the chooser), with this many k-splits at most.
    Only(TileKind, u32),
    /// This kind unsplit wherever it is supported, then stream-K balanced for this many CTA
    /// slots (counted in [`RECUT`] when that recuts the round).
    Balanced(TileKind, usize),
}

thread_local! {
    /// Rounds that [`Kinds::Balanced`] recut on this thread.
    pub static RECUT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Builds the round for `cases` staged at `staged`.
pub fn round_for(device: &dyn Device, staged: &Staged, cases: &[Case], kinds: Kinds, rng: &mut impl Rng) -> Round {
    let descs = staged.descs(cases);
    let overrides: Vec<Option<Plan>> = descs
        .iter()
        .map(|p| {
            let ok: Vec<TileKind> = TileKind::ALL.into_iter().filter(|k| k.supports(p.n, p.flags)).collect();
            match kinds {
                Kinds::Auto => None,
                Kinds::Random => ok.choose(rng).map(|&kind| {
                    let max = max_splits(kind, p);
                    let k_splits = if rng.random_bool(0.5) { 1 } else { rng.random_range(1..=max) };
                    Plan { kind, k_splits }
                }),
                Kinds::Only(k, s) => ok.contains(&k).then(|| Plan { kind: k, k_splits: s.min(max_splits(k, p)) }),
                Kinds::Balanced(k, _) => ok.contains(&k).then(|| Plan::new(k)),
            }
        })
        .collect();
    let cost = CostModel::default();
    if let Kinds::Balanced(kind, slots) = kinds {
        let mut round =
            TileChooser { no_balance: true, ..TileChooser::default() }.build(&descs, &overrides, &cost, slots);
        if round.balance(&cost, slots) {
            RECUT.with(|r| r.set(r.get() + 1));
        } else {
            say(&format!("{} round of {} tiles left as it was for {slots} slots", kind.name(), round.tiles.len()));
        }
        return round;
    }
    TileChooser::default().build(&descs, &overrides, &cost, device.slots())
}

/// Runs `cases` as one round `runs` times, with fresh inputs and poisoned outputs each time, and
/// asserts every result within `bound` of the f64 reference. Returns the worst error.
pub fn check_cases(device: &dyn Device, cases: &mut [Case], kinds: Kinds, runs: usize, rng: &mut impl Rng) -> f64 {
    let bound = 1e-4;
    let staged = Staged::new(device, &mut arena(device), cases).expect("staging");
    let mut worst = 0.0f64;
    for run in 0..runs {
        if run > 0 {
            cases.iter_mut().for_each(|c| c.refresh(rng));
            staged.upload_inputs(device, cases).unwrap();
        }
        staged.poison(device, cases).unwrap();
        let round = round_for(device, &staged, cases, kinds, rng);
        device.run(&round).unwrap_or_else(|e| panic!("run {run} failed: {e}"));
        let got = staged.read_c(device, cases).unwrap();
        let references: Vec<tilemux::reference::Expected> = {
            use rayon::prelude::*;
            cases.par_iter().map(Case::reference).collect()
        };
        for (i, (c, g)) in cases.iter().zip(&got).enumerate() {
            let err = c.error(g, &references[i]);
            let kind = TileKind::from_u32(round.problems[i].tile_kind).unwrap();
            assert!(
                err < bound,
                "case {i} ({}×{}×{}, flags {}, ld {:?}, alpha {}, beta {}, {:?}, {:?}, {}): relative error {err:e} (bound {bound:e})",
                c.m,
                c.n,
                c.k,
                c.flags,
                c.ld,
                c.alpha,
                c.beta,
                c.activation,
                c.bias_mode,
                kind.name()
            );
            worst = worst.max(err);
        }
    }
    worst
}

/// Shares the CPU among this executable's CPU-engine tests: each holds it for reading, a test
/// that times the CPU engine ([`runtime_test!`]'s `alone` form) for writing, so that no other
/// test of the process runs beside it. (Other processes on the machine still may.)
pub fn cpu_share(alone: bool) -> (Option<RwLockReadGuard<'static, ()>>, Option<RwLockWriteGuard<'static, ()>>) {
    static CPU: RwLock<()> = RwLock::new(());
    if alone {
        (None, Some(CPU.write().unwrap_or_else(|e| e.into_inner())))
    } else {
        (Some(CPU.read().unwrap_or_else(|e| e.into_inner())), None)
    }
}

/// Defines a module `<name>` with tests `cpu` and `gpu`, each running `body(device, on_gpu)` with
/// an `Arc<dyn Device>` for a runtime; the GPU variant says `skipped: no CUDA device` without one.
/// `runtime_test!(alone name, body)` runs the CPU variant with no other test of the executable
/// beside it (for tests that time the CPU engine).
#[macro_export]
macro_rules! runtime_test {
    (alone $name:ident, $body:expr) => {
        $crate::runtime_test!(@with true, $name, $body);
    };
    ($name:ident, $body:expr) => {
        $crate::runtime_test!(@with false, $name, $body);
    };
    (@with $alone:expr, $name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn cpu() {
                let _share = common::cpu_share($alone);
                ($body)(common::cpu(512 << 20), false);
            }
            #[test]
            fn gpu() {
                match common::gpu() {
                    Some((_lock, d)) => ($body)(d as std::sync::Arc<dyn tilemux::Device>, true),
                    None => common::say(concat!(stringify!($name), "::gpu: skipped: no CUDA device")),
                }
            }
        }
    };
}
