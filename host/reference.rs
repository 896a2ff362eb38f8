//! Problems with host-side data, their f64 reference results, and staging them on a device: the
//! common ground of the correctness tests (CPU and GPU) and the benchmarks.
//!
//! Checks follow one recipe: fresh random inputs, `C` poisoned with NaN (or, when `beta != 0`,
//! fresh random values) before every run, the padding between rows of `C` filled with a sentinel
//! that must survive, and the normwise relative error `‖C − ref‖ / ‖ref‖` against an f64
//! reference.

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::abi::{Activation, BiasMode, ProblemDesc, flags};
use crate::device::Device;
use crate::error::Result;
use crate::memory::Arena;
use crate::round::problem;

/// Value written into the padding of `C` rows; it must be there after a run.
pub const SENTINEL: f32 = -12345.5;

/// Shapes of the research poster tilemux starts from.
pub const SEED_SHAPES: [(&str, (u32, u32, u32)); 4] = [
    ("rnn512", (512, 1, 512)),
    ("rnn1024", (1024, 1, 1024)),
    ("conv2_2", (256, 128, 1152)),
    ("square256", (256, 256, 256)),
];

/// The three shapes of the poster's mixed workload, used round-robin.
pub const SEED_MIX: [(u32, u32, u32); 3] = [(512, 1, 512), (256, 128, 1152), (256, 256, 256)];

/// Primes and edge values that shake out ragged-tile bugs.
pub const AWKWARD_DIMS: [u32; 14] = [1, 2, 3, 5, 7, 31, 33, 63, 65, 127, 129, 257, 509, 1021];

/// One GEMM problem and its host data (row-major, stored shapes per the transposes).
#[derive(Clone, Debug)]
pub struct Case {
    /// Rows of `op(A)` and `C`.
    pub m: u32,
    /// Columns of `op(B)` and `C`.
    pub n: u32,
    /// Inner dimension.
    pub k: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// Leading dimensions of stored A, B and of C.
    pub ld: (u32, u32, u32),
    /// Scalars.
    pub alpha: f32,
    /// Scalars.
    pub beta: f32,
    /// Epilogue activation.
    pub activation: Activation,
    /// Epilogue bias.
    pub bias_mode: BiasMode,
    /// Stored A.
    pub a: Vec<f32>,
    /// Stored B.
    pub b: Vec<f32>,
    /// `C` before the run (used when `beta != 0`).
    pub c0: Vec<f32>,
    /// Bias vector (empty without bias).
    pub bias: Vec<f32>,
}

fn random_vec(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

impl Case {
    /// A plain problem: tight leading dimensions, `alpha = 1`, `beta = 0`, no epilogue.
    pub fn plain(rng: &mut impl Rng, (m, n, k): (u32, u32, u32)) -> Case {
        Case::build(rng, (m, n, k), 0, (0, 0, 0), (1.0, 0.0), Activation::None, BiasMode::None)
    }

    /// A problem with everything random: transposes, row padding, scalars, epilogue.
    pub fn random(rng: &mut impl Rng, (m, n, k): (u32, u32, u32)) -> Case {
        let fl = rng.random_range(0..4u32);
        let pad = (rng.random_range(0..3u32) * 4, rng.random_range(0..3u32) * 3, rng.random_range(0..3u32) * 5);
        let alpha = *[1.0f32, -0.5, 1.75, rng.random_range(-2.0f32..2.0)].choose(rng).unwrap();
        let beta = *[0.0f32, 0.0, 1.0, rng.random_range(-1.5f32..1.5)].choose(rng).unwrap();
        let act = *Activation::ALL.choose(rng).unwrap();
        let bias = *BiasMode::ALL.choose(rng).unwrap();
        Case::build(rng, (m, n, k), fl, pad, (alpha, beta), act, bias)
    }

    /// A problem with these settings and fresh random data; `pad` adds to each minimal leading
    /// dimension.
    pub fn build(
        rng: &mut impl Rng,
        (m, n, k): (u32, u32, u32),
        fl: u32,
        pad: (u32, u32, u32),
        (alpha, beta): (f32, f32),
        activation: Activation,
        bias_mode: BiasMode,
    ) -> Case {
        let (ar, ac) = if fl & flags::TRANS_A != 0 { (k, m) } else { (m, k) };
        let (br, bc) = if fl & flags::TRANS_B != 0 { (n, k) } else { (k, n) };
        let ld = (ac + pad.0, bc + pad.1, n + pad.2);
        let bias_len = match bias_mode {
            BiasMode::None => 0,
            BiasMode::Row => m,
            BiasMode::Col => n,
        };
        Case {
            m,
            n,
            k,
            flags: fl,
            ld,
            alpha,
            beta,
            activation,
            bias_mode,
            a: random_vec(rng, (ar * ld.0) as usize),
            b: random_vec(rng, (br * ld.1) as usize),
            c0: random_vec(rng, (m * ld.2) as usize),
            bias: random_vec(rng, bias_len as usize),
        }
    }

    /// Draws fresh random inputs of the same shapes (a new check must not reuse old data).
    pub fn refresh(&mut self, rng: &mut impl Rng) {
        for v in [&mut self.a, &mut self.b, &mut self.c0, &mut self.bias] {
            v.iter_mut().for_each(|x| *x = rng.random_range(-1.0f32..1.0));
        }
    }

    /// Floating-point operations (2·m·n·k).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// The descriptor of this case at the given device addresses (tile kind not yet chosen).
    pub fn desc(&self, [a, b, c, bias]: [u64; 4]) -> ProblemDesc {
        problem(
            (a, b, c, if self.bias.is_empty() { 0 } else { bias }),
            (self.m, self.n, self.k),
            self.ld,
            (self.alpha, self.beta),
            self.flags,
            self.activation,
            self.bias_mode,
        )
    }

    /// The exact result in f64: `m × n`, dense row-major.
    pub fn reference(&self) -> Vec<f64> {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let (lda, ldb, ldc) = (self.ld.0 as isize, self.ld.1 as isize, self.ld.2 as usize);
        let (rsa, csa) = if self.flags & flags::TRANS_A != 0 { (1, lda) } else { (lda, 1) };
        let (rsb, csb) = if self.flags & flags::TRANS_B != 0 { (1, ldb) } else { (ldb, 1) };
        let a: Vec<f64> = self.a.iter().map(|&x| x as f64).collect();
        let b: Vec<f64> = self.b.iter().map(|&x| x as f64).collect();
        let mut out = vec![0.0f64; m * n];
        // SAFETY: strides describe the stored matrices inside `a` and `b` (built by `build`);
        // `out` is dense m × n.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                0.0,
                out.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        for i in 0..m {
            for j in 0..n {
                let mut v = self.alpha as f64 * out[i * n + j];
                if self.beta != 0.0 {
                    v += self.beta as f64 * self.c0[i * ldc + j] as f64;
                }
                v += match self.bias_mode {
                    BiasMode::None => 0.0,
                    BiasMode::Row => self.bias[i] as f64,
                    BiasMode::Col => self.bias[j] as f64,
                };
                if self.activation == Activation::Relu && v < 0.0 {
                    v = 0.0;
                }
                out[i * n + j] = v;
            }
        }
        out
    }

    /// `C` as it must be written before a run: the old values when `beta != 0`, else NaN; the
    /// row padding holds [`SENTINEL`].
    pub fn poisoned_c(&self) -> Vec<f32> {
        let (n, ldc) = (self.n as usize, self.ld.2 as usize);
        let mut c = self.c0.clone();
        for (idx, v) in c.iter_mut().enumerate() {
            if idx % ldc >= n {
                *v = SENTINEL;
            } else if self.beta == 0.0 {
                *v = f32::NAN;
            }
        }
        c
    }

    /// Compares a `C` read back after a run: normwise relative error against [`Case::reference`],
    /// infinite if any element is NaN/inf where the reference is finite or if the padding changed.
    pub fn error(&self, c: &[f32], reference: &[f64]) -> f64 {
        let (n, ldc) = (self.n as usize, self.ld.2 as usize);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (idx, &v) in c.iter().enumerate() {
            let (i, j) = (idx / ldc, idx % ldc);
            if j >= n {
                if v.to_bits() != SENTINEL.to_bits() {
                    return f64::INFINITY;
                }
                continue;
            }
            if !v.is_finite() {
                return f64::INFINITY;
            }
            let r = reference[i * n + j];
            num += (v as f64 - r).powi(2);
            den += r * r;
        }
        if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
    }
}

/// Random dimensions for correctness sweeps: a mix of awkward values and uniform draws in
/// `1..=max`, including `n = 1`, `k = 1` and `m = 1` cases.
pub fn random_dims<R: Rng>(rng: &mut R, max: u32) -> (u32, u32, u32) {
    let awkward: Vec<u32> = AWKWARD_DIMS.iter().copied().filter(|&d| d <= max).collect();
    let pick = |rng: &mut R| {
        if rng.random_bool(0.4) { *awkward.choose(rng).unwrap_or(&1) } else { rng.random_range(1..=max) }
    };
    let (mut m, mut n, mut k) = (pick(rng), pick(rng), pick(rng));
    match rng.random_range(0..10) {
        0 => n = 1,
        1 => k = 1,
        2 => m = 1,
        3 => {
            n = 1;
            m = m.max(64.min(max));
        }
        _ => {}
    }
    (m, n, k)
}

/// Cases laid out in a device pool: addresses per case.
pub struct Staged {
    /// `[a, b, c, bias]` device addresses per case.
    pub addrs: Vec<[u64; 4]>,
}

/// Allocates `bytes` from `arena` or reports how much one piece could have.
pub fn alloc(arena: &mut Arena, bytes: u64) -> Result<u64> {
    arena.alloc(bytes).ok_or(crate::Error::OutOfDeviceMemory { requested: bytes, available: arena.largest_free() })
}

impl Staged {
    /// Allocates every case's matrices from `arena` (a range of `device`'s pool) and uploads A,
    /// B and the bias.
    pub fn new(device: &dyn Device, arena: &mut Arena, cases: &[Case]) -> Result<Staged> {
        let mut addrs = Vec::with_capacity(cases.len());
        for c in cases {
            let mut one = |v: &[f32]| alloc(arena, (v.len().max(1) * 4) as u64);
            addrs.push([one(&c.a)?, one(&c.b)?, one(&c.c0)?, one(&c.bias)?]);
        }
        let s = Staged { addrs };
        s.upload_inputs(device, cases)?;
        Ok(s)
    }

    /// Uploads A, B and the bias of every case (after [`Case::refresh`]).
    pub fn upload_inputs(&self, device: &dyn Device, cases: &[Case]) -> Result<()> {
        for (c, a) in cases.iter().zip(&self.addrs) {
            device.write(a[0], &c.a)?;
            device.write(a[1], &c.b)?;
            if !c.bias.is_empty() {
                device.write(a[3], &c.bias)?;
            }
        }
        Ok(())
    }

    /// Writes every case's poisoned `C` ([`Case::poisoned_c`]).
    pub fn poison(&self, device: &dyn Device, cases: &[Case]) -> Result<()> {
        for (c, a) in cases.iter().zip(&self.addrs) {
            device.write(a[2], &c.poisoned_c())?;
        }
        Ok(())
    }

    /// Descriptors of every case (tile kinds not yet chosen).
    pub fn descs(&self, cases: &[Case]) -> Vec<ProblemDesc> {
        cases.iter().zip(&self.addrs).map(|(c, a)| c.desc(*a)).collect()
    }

    /// Reads every case's `C` back.
    pub fn read_c(&self, device: &dyn Device, cases: &[Case]) -> Result<Vec<Vec<f32>>> {
        cases
            .iter()
            .zip(&self.addrs)
            .map(|(c, a)| {
                let mut out = vec![0.0f32; c.c0.len()];
                device.read(a[2], &mut out)?;
                Ok(out)
            })
            .collect()
    }
}
