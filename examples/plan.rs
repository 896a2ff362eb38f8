//! Prints the chooser's plan for a seed workload: `cargo run --example plan -- conv2_2 1 264`.
use tilemux::abi::{Activation, BiasMode, TileKind};
use tilemux::reference::SEED_SHAPES;
use tilemux::round::{CostModel, TileChooser, problem};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (m, n, k) = SEED_SHAPES.iter().find(|s| s.0 == args[1]).unwrap().1;
    let count: usize = args[2].parse().unwrap();
    let slots: usize = args[3].parse().unwrap();
    let descs: Vec<_> = (0..count)
        .map(|i| {
            problem(
                (1 << 20, 2 << 20, (3 + i as u64) << 22, 0),
                (m, n, k),
                (k, n, n),
                (1.0, 0.0),
                0,
                Activation::None,
                BiasMode::None,
            )
        })
        .collect();
    let cost = CostModel::default();
    let r = TileChooser::default().build(&descs, &[], &cost, slots);
    let p = r.problems[0];
    println!(
        "{} splits {} tiles {} predicted {:?}",
        TileKind::from_u32(p.tile_kind).unwrap().name(),
        p.k_splits,
        r.tiles.len(),
        cost.predict(&r, slots)
    );
}
