//! Host overhead of the runtime path: R tenants submit one tiny op each; wall time until all
//! tickets resolve. `cargo run --release --example overhead`.
use std::time::Instant;
use tilemux::Backend;
use tilemux::runtime::{Mat, Op, Runtime, RuntimeConfig, TenantSpec};

fn main() {
    let rt = Runtime::new(RuntimeConfig {
        backend: Backend::Cpu,
        memory_budget: 256 << 20,
        calibrate: false,
        ..Default::default()
    })
    .unwrap();
    let ts: Vec<_> = (0..120)
        .map(|i| {
            let t = rt.add_tenant(TenantSpec::new(format!("t{i}")).quota(1 << 20)).unwrap();
            let a = t.upload(&[0.5; 64]).unwrap();
            let c = t.alloc(64).unwrap();
            let op = Op::gemm(Mat::new(&a, 8, 8), Mat::new(&a, 8, 8), Mat::new(&c, 8, 8));
            (t, op)
        })
        .collect();
    for r in [1usize, 10, 20, 120] {
        let mut times = Vec::new();
        for _ in 0..200 {
            let start = Instant::now();
            let tickets: Vec<_> = ts[..r].iter().map(|(t, op)| rt.submit(t, op.clone()).unwrap()).collect();
            for t in tickets {
                t.wait().unwrap();
            }
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let rounds = rt.rounds();
        let last = &rounds[rounds.len() - 1];
        println!(
            "R={r:>3}: median {:>7.1} µs (last round {} problems, kernel {:?}, total {:?})",
            times[100], last.problems, last.measured, last.total
        );
    }
}
