//! Host-side costs of tilemux, on any machine: validation and descriptor building per op, round
//! building (tile choice, ordering, prediction, checks) per round of 100 / 1000 / 10000 tiles,
//! and the arena allocator. `cargo bench --bench host`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tilemux::abi::{Activation, BiasMode};
use tilemux::memory::Arena;
use tilemux::round::{CostModel, TileChooser, check, problem};
use tilemux::runtime::{Mat, Op, Request, Runtime, RuntimeConfig, TenantSpec};
use tilemux::{Backend, validate};

/// The seed mix's shapes, as in the runtime benchmarks.
const SHAPES: [(u32, u32, u32); 3] = [(512, 1, 512), (256, 128, 1152), (256, 256, 256)];

fn validation(c: &mut Criterion) {
    let rt = Runtime::new(RuntimeConfig {
        backend: Backend::Cpu,
        memory_budget: 64 << 20,
        calibrate: false,
        ..Default::default()
    })
    .expect("runtime");
    let t = rt.add_tenant(TenantSpec::new("bench").quota(32 << 20)).expect("tenant");
    let (a, b, out) = (t.alloc(256 * 1152).unwrap(), t.alloc(1152 * 128).unwrap(), t.alloc(256 * 128).unwrap());
    let bias = t.alloc(256).unwrap();
    let op =
        Op::gemm(Mat::new(&a, 256, 1152), Mat::new(&b, 1152, 128), Mat::new(&out, 256, 128)).bias_rows(&bias, 0).relu();
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one op (conv2_2 + bias + relu)", |bch| {
        bch.iter(|| validate::check(&t, Request::from(op.clone())).unwrap())
    });
    g.finish();
}

fn rounds(c: &mut Criterion) {
    let cost = CostModel::default();
    let chooser = TileChooser::default();
    let mut g = c.benchmark_group("round");
    for tiles in [100usize, 1000, 10000] {
        // Seed-mix problems until the round has about `tiles` 128x128-equivalent tiles.
        let mut descs = Vec::new();
        let mut base = 1u64 << 30;
        let mut n = 0;
        while n < tiles {
            let (m, nn, k) = SHAPES[descs.len() % 3];
            descs.push(problem(
                (base, base + (8 << 20), base + (16 << 20), 0),
                (m, nn, k),
                (k, nn, nn),
                (1.0, 0.0),
                0,
                Activation::None,
                BiasMode::None,
            ));
            base += 32 << 20;
            n += if nn == 1 { m.div_ceil(32) as usize } else { (m.div_ceil(128) * nn.div_ceil(128)) as usize };
        }
        let pool = (1u64 << 30)..base + (32 << 20);
        g.throughput(Throughput::Elements(tiles as u64));
        g.bench_with_input(BenchmarkId::new("build+predict+check", tiles), &descs, |bch, d| {
            bch.iter(|| {
                let r = chooser.build(d, &[], &cost, 264);
                let p = cost.predict(&r, 264);
                check(&r, pool.clone()).unwrap();
                (r.tiles.len(), p)
            })
        });
    }
    // Persistent mode's fast path plans and checks one request on the submitting thread.
    let gemv = [problem(
        (1 << 30, (1 << 30) + (2 << 20), (1 << 30) + (4 << 20), 0),
        (512, 1, 512),
        (512, 1, 1),
        (1.0, 0.0),
        0,
        Activation::None,
        BiasMode::None,
    )];
    let persistent = TileChooser::persistent();
    g.throughput(Throughput::Elements(1));
    g.bench_function("persistent fast path: build+check one GEMV", |bch| {
        bch.iter(|| {
            let r = persistent.build(&gemv, &[], &cost, 264);
            check(&r, (1u64 << 30)..(1u64 << 31)).unwrap();
            r.tiles.len()
        })
    });
    g.finish();
}

fn allocator(c: &mut Criterion) {
    let mut g = c.benchmark_group("arena");
    g.bench_function("alloc+free, 64 live blocks", |bch| {
        let mut a = Arena::new(0, 1 << 30);
        let mut live: Vec<(u64, u64)> =
            (0..64).map(|i| (a.alloc(4096 * (i % 7 + 1)).unwrap(), 4096 * (i % 7 + 1))).collect();
        let mut i = 0u64;
        bch.iter(|| {
            let (addr, len) = live.swap_remove((i % 64) as usize);
            a.free(addr, len);
            let len = 4096 * (i % 11 + 1);
            live.push((a.alloc(len).unwrap(), len));
            i += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, validation, rounds, allocator);
criterion_main!(benches);
