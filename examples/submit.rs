//! Host cost of one request in persistent mode: `submit()` alone and submit → ticket resolved,
//! one 512×1×512 GEMV at a time, on the GPU when there is one (else the CPU backend, whose
//! resident "kernel" is a thread). `cargo run --release --example submit [requests [gap_ns | rgap_ns]]`.
use std::time::Instant;

use tilemux::Backend;
use tilemux::runtime::{Mat, Mode, Op, PersistentConfig, Runtime, RuntimeConfig, TenantSpec};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    // A gap the loop spins between a result and the next submit, outside the measured interval:
    // `GAP_NS` always (sweeping it shows where the next publish meets the GPU's poll cycle), or
    // `rGAP_NS` uniform in [0, GAP_NS) per request (the cycle's phase at random, as for requests
    // that arrive independently: host savings then show in the median).
    let gap_arg = std::env::args().nth(2).unwrap_or_default();
    let (random, gap_ns) = match gap_arg.strip_prefix('r') {
        Some(g) => (true, g.parse::<u64>().unwrap_or(0)),
        None => (false, gap_arg.parse::<u64>().unwrap_or(0)),
    };
    let rt = Runtime::new(RuntimeConfig {
        backend: Backend::Auto,
        memory_budget: 64 << 20,
        calibrate: false,
        mode: Mode::Persistent(PersistentConfig::default()),
        ..Default::default()
    })
    .unwrap();
    let t = rt.add_tenant(TenantSpec::new("one").quota(16 << 20)).unwrap();
    let a = t.upload(&vec![0.5; 512 * 512]).unwrap();
    let x = t.upload(&[0.25; 512]).unwrap();
    let y = t.alloc(512).unwrap();
    let op = Op::gemm(Mat::new(&a, 512, 512), Mat::new(&x, 512, 1), Mat::new(&y, 512, 1));
    let (mut submit, mut total) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 100 {
        let gap = std::time::Duration::from_nanos(if random { rand::random_range(0..gap_ns.max(1)) } else { gap_ns });
        let g = Instant::now();
        while g.elapsed() < gap {
            std::hint::spin_loop();
        }
        let s = Instant::now();
        let ticket = rt.submit(&t, op.clone()).unwrap();
        let after = s.elapsed();
        ticket.wait().unwrap();
        if i >= 100 {
            submit.push(after.as_secs_f64() * 1e6);
            total.push(s.elapsed().as_secs_f64() * 1e6);
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p) as usize]
    };
    println!(
        "{:?}, {n} requests: submit() p50 {:.2} µs, p99 {:.2} µs; submit → resolved p50 {:.1} µs, p99 {:.1} µs",
        rt.backend(),
        pct(&mut submit, 0.5),
        pct(&mut submit, 0.99),
        pct(&mut total, 0.5),
        pct(&mut total, 0.99)
    );
    if let Some(r) = tilemux::runtime::phases::report() {
        println!("{r}");
    }
}
