//! The forwarder's pacer (`abi::ring::pace`, run by the resident kernel's forwarder) against a
//! model of its polls: each poll reads host memory half a cycle after it goes out and returns a
//! cycle after; a problem published at `P` is seen by the first poll that reads at or after `P`.
//! A closed loop (the next publish a fixed time after the forward, whatever the phase) must end
//! up waiting little for its read; arrivals that do not depend on the forward must not wait
//! longer than without pacing. CPU only: the same code the kernel runs, with its scores in an
//! array.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tilemux::abi::ring::pace::{PACE_PHASES, Pacer};

/// The model's poll cycle (SM cycles; about 1.2 µs at 2 GHz, as on the H100).
const CYCLE: u64 = 2400;
/// From a poll's return to the end of the forward of what it found.
const FORWARD: u64 = 200;

/// The forwarder's polls and a pacer, in SM cycles.
struct Model {
    pacer: Pacer<[u32; PACE_PHASES as usize]>,
    paced: bool,
    /// When the last problem was seen (its poll returned).
    seen: u64,
}

impl Model {
    fn new(paced: bool) -> Model {
        let mut pacer = Pacer::new([0u32; PACE_PHASES as usize]);
        let mut t = 1_000u64;
        // Busy polls before the first problem: the pacer's estimate of the cycle.
        for _ in 0..64 {
            pacer.empty_poll(t);
            t += CYCLE;
        }
        Model { pacer, paced, seen: t }
    }

    /// Forwards the last problem seen; the next is published `after` cycles after the forward
    /// ends. Returns the delay before the first poll and how long the publish waited for a read.
    fn step(&mut self, after: u64) -> (u64, u64) {
        let now = self.seen + FORWARD;
        let (delay, phase) = if self.paced { self.pacer.next_wait() } else { (0, 0) };
        self.pacer.seen(self.seen, now, phase);
        let p = now + after;
        // Polls go out at now + delay + k·CYCLE and read half a cycle later.
        let first_read = now + delay + CYCLE / 2;
        let k = p.saturating_sub(first_read).div_ceil(CYCLE);
        for j in 0..k {
            // The empty polls before it (their returns).
            self.pacer.empty_poll(now + delay + j * CYCLE + CYCLE);
        }
        let read = first_read + k * CYCLE;
        self.seen = read + CYCLE / 2;
        (delay, read - p)
    }
}

/// Runs `n` problems through the model, each published `publish(rng)` cycles after the previous
/// forward ended; paced, or with every first poll sent at once. Returns, per problem after the
/// first `n / 2`, how long its publish waited for a read.
fn run(n: usize, paced: bool, seed: u64, publish: impl Fn(&mut StdRng) -> u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new(paced);
    let waits: Vec<u64> = (0..n).map(|_| model.step(publish(&mut rng)).1).collect();
    waits[n / 2..].to_vec()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len() as f64
}

#[test]
fn a_closed_loop_learns_to_poll_when_the_publish_lands() {
    // The host's turnaround at every phase of the cycle, with 0–150 cycles of jitter.
    for (i, offset) in (0..12).map(|j| 9_000 + j * CYCLE / 12).enumerate() {
        let publish = |rng: &mut StdRng| offset + rng.random_range(0..150);
        let paced = median(run(4000, true, i as u64, publish));
        let unpaced = median(run(4000, false, i as u64, publish));
        assert!(
            paced <= CYCLE / 4,
            "offset {offset}: the paced loop's publish waits {paced} cycles for its read (unpaced {unpaced})"
        );
        assert!(paced <= unpaced + CYCLE / 16, "offset {offset}: paced {paced} against unpaced {unpaced}");
    }
}

#[test]
fn arrivals_independent_of_the_forward_wait_no_longer() {
    // Publishes spread over three cycles after the forward (a random gap before each request),
    // and publishes within the first cycle (the next request already on its way), where a delay
    // before the first poll would hold them.
    for (spread, what) in [(3 * CYCLE, "spread over three cycles"), (CYCLE, "within the first cycle")] {
        let publish = |rng: &mut StdRng| rng.random_range(0..spread);
        let paced = mean(&run(20_000, true, 7, publish));
        let unpaced = mean(&run(20_000, false, 7, publish));
        assert!(
            paced <= unpaced + CYCLE as f64 / 16.0,
            "{what}: mean wait for a read {paced:.0} cycles paced against {unpaced:.0} unpaced"
        );
    }
}

#[test]
fn long_waits_leave_the_first_poll_undelayed() {
    // A host that submits now and then (tens of cycles apart): nothing to learn, no delay.
    let mut model = Model::new(true);
    for _ in 0..1000 {
        let (delay, _) = model.step(40 * CYCLE);
        assert!(delay < CYCLE, "a delay of {delay} cycles, more than one poll cycle");
    }
    assert_eq!(model.pacer.best(), 0, "waits too long to score moved the pacer off phase 0");
}

#[test]
fn a_saturated_ring_unlearns_the_delay() {
    // First a closed loop that learns a delay, then a ring that always has the next problem
    // waiting at the forward (saturated): every delay then only holds it up.
    let mut model = Model::new(true);
    let (mut learned, mut delays) = (0u64, Vec::new());
    for i in 0..6000 {
        // The closed loop publishes just after an unpaced read (11 000 cycles after the forward,
        // the read at 10 800): unpaced it waits 2 200 cycles for the next; an eighth of a cycle's
        // delay cuts that to 100.
        let (delay, _) = model.step(if i < 2000 { 11_000 } else { 0 });
        if i == 1999 {
            learned = delay;
        }
        if i >= 5000 {
            delays.push(delay);
        }
    }
    assert_eq!(learned, CYCLE / 8, "the closed loop's delay");
    let mean = mean(&delays);
    assert!(mean < CYCLE as f64 / 8.0, "saturated, the first poll still waits {mean:.0} cycles on average");
}
