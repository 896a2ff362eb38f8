//! Where a lone problem's time goes in the resident kernel, per shape and tile kind: the bare
//! ring (one problem written and published, its completion word polled; no runtime), its
//! submit → done latency and the kernel's trace. For kernel developers tuning the persistent
//! path. `cargo run --release --example ring_trace [requests [rGAP_NS]]` (needs a GPU). One
//! problem at a time is a closed loop whose latency is quantised by the forwarder's poll cycle;
//! `rGAP_NS` waits a random 0..GAP_NS before each publish, so the publish meets the cycle at a
//! random phase and the mean (of the requests below p99) shows every saving.

use rand::SeedableRng;
use tilemux::Device;
use tilemux::abi::TileKind;
use tilemux::cuda::persistent::{Resident, bare_ring_latency};
use tilemux::cuda::{CudaConfig, CudaDevice};
use tilemux::memory::Arena;
use tilemux::reference::{Case, Staged};
use tilemux::round::{CostModel, Round, TileChooser, check_alone};

/// Shapes `(m, n, k)` with the kinds to run them as (`None`: as the fast path plans them alone).
const RUNS: [((u32, u32, u32), Option<TileKind>); 7] = [
    ((8, 1, 16), None),
    ((8, 1, 512), None),
    ((512, 1, 16), None),
    ((512, 1, 512), None),
    ((512, 1, 512), Some(TileKind::Gemv32)),
    ((64, 64, 64), None),
    ((256, 256, 256), None),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let gap_ns: u64 = std::env::args().nth(2).and_then(|a| a.strip_prefix('r')?.parse().ok()).unwrap_or(0);
    let cuda = CudaDevice::new(&CudaConfig { pool_bytes: 256 << 20, ..Default::default() })?;
    println!(
        "{}, {} UTC-epoch s",
        cuda.name(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    for (shape, kind) in RUNS {
        let case = Case::plain(&mut rng, shape);
        let pool = cuda.pool();
        let mut arena = Arena::new(pool.start, pool.end - pool.start);
        let staged = Staged::new(&cuda, &mut arena, std::slice::from_ref(&case))?;
        let desc = staged.descs(std::slice::from_ref(&case))[0];
        let kind = kind.unwrap_or_else(|| {
            TileChooser::persistent().choose_alone(&desc, None, &CostModel::default(), cuda.slots()).kind
        });
        let p = Round::planned(desc, kind, 1);
        check_alone(&p, cuda.pool())?;
        // Timed untraced (the trace's timer reads cost each problem about 0.3 µs), then traced
        // for where the time goes.
        let run = |n: usize, traced: bool| -> Result<(Vec<f64>, String), Box<dyn std::error::Error>> {
            staged.poison(&cuda, std::slice::from_ref(&case))?;
            let timed = bare_ring_latency(&cuda, p, n, gap_ns, Resident { traced, ..Resident::new() })?;
            let got = staged.read_c(&cuda, std::slice::from_ref(&case))?;
            let err = case.error(&got[0], &case.reference());
            if err > 1e-4 {
                return Err(format!("wrong result: relative error {err}").into());
            }
            Ok(timed)
        };
        let (lat, _) = run(n, false)?;
        let (traced, trace) = run((n / 4).max(2000), true)?;
        let below = |l: &[f64]| l[..l.len() * 99 / 100].iter().sum::<f64>() / (l.len() * 99 / 100) as f64;
        println!(
            "{}x{}x{}, {} tiles of {}: mean (below p99) {:.2} µs, p50 {:.2} µs, p99 {:.2} µs; traced: mean {:.2} µs, \
             p50 {:.2} µs\n  {trace}",
            shape.0,
            shape.1,
            shape.2,
            p.tile_count(),
            kind.name(),
            below(&lat),
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100],
            below(&traced),
            traced[traced.len() / 2],
        );
    }
    Ok(())
}
