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

    /// The exact result in f64 and the magnitude of the computation (see [`Expected`]).
    pub fn reference(&self) -> Expected {
        let (m, n, k) = (self.m as usize, self.n as usize, self.k as usize);
        let (lda, ldb, ldc) = (self.ld.0 as isize, self.ld.1 as isize, self.ld.2 as usize);
        let (rsa, csa) = if self.flags & flags::TRANS_A != 0 { (1, lda) } else { (lda, 1) };
        let (rsb, csb) = if self.flags & flags::TRANS_B != 0 { (1, ldb) } else { (ldb, 1) };
        // Two products: A·B, and |A|·|B| for the magnitude.
        let product = |f: fn(f32) -> f64| {
            let a: Vec<f64> = self.a.iter().map(|&x| f(x)).collect();
            let b: Vec<f64> = self.b.iter().map(|&x| f(x)).collect();
            let mut out = vec![0.0f64; m * n];
            // SAFETY: strides describe the stored matrices inside `a` and `b` (built by
            // `build`); `out` is dense m × n.
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
            out
        };
        let mut value = product(|x| x as f64);
        let abs = product(|x| (x as f64).abs());
        let mut scale = 0.0f64;
        for i in 0..m {
            for j in 0..n {
                let old = self.c0[i * ldc + j] as f64;
                let bias = match self.bias_mode {
                    BiasMode::None => 0.0,
                    BiasMode::Row => self.bias[i] as f64,
                    BiasMode::Col => self.bias[j] as f64,
                };
                let mut v = self.alpha as f64 * value[i * n + j] + bias;
                let mut mag = (self.alpha as f64).abs() * abs[i * n + j] + bias.abs();
                if self.beta != 0.0 {
                    v += self.beta as f64 * old;
                    mag += (self.beta as f64 * old).abs();
                }
                if self.activation == Activation::Relu && v < 0.0 {
                    v = 0.0;
                }
                value[i * n + j] = v;
                scale += mag * mag;
            }
        }
        Expected { value, scale: scale.sqrt() }
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

    /// Compares a `C` read back after a run with [`Case::reference`]: `‖C − ref‖ / scale` (see
    /// [`Expected`]); infinite if any element is NaN/inf or the row padding changed.
    pub fn error(&self, c: &[f32], want: &Expected) -> f64 {
        let (n, ldc) = (self.n as usize, self.ld.2 as usize);
        let mut num = 0.0f64;
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
            num += (v as f64 - want.value[i * n + j]).powi(2);
        }
        if want.scale == 0.0 { num.sqrt() } else { num.sqrt() / want.scale }
    }
}

/// A case's exact result (`m × n`, dense row-major, f64) and the Frobenius norm of the magnitude
/// of its computation, `‖ |alpha|·|A|·|B| + |beta·C₀| + |bias| ‖`.
///
/// Errors are measured relative to that magnitude rather than to the result: FP32 rounding
/// scales with the terms summed, so a result that cancels to nearly zero (a 1×1×1 case with bias,
/// say) would otherwise report a huge "relative error" for a correct computation. For plain
/// GEMMs of random data both norms are of the same order.
#[derive(Clone, Debug)]
pub struct Expected {
    /// The exact result.
    pub value: Vec<f64>,
    /// Norm of the computation's magnitude.
    pub scale: f64,
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

/// A [`Case`]'s buffers in a tenant's arena.
#[derive(Clone, Debug)]
pub struct CaseBuffers {
    /// Stored A.
    pub a: crate::runtime::Buffer,
    /// Stored B.
    pub b: crate::runtime::Buffer,
    /// C.
    pub c: crate::runtime::Buffer,
    /// Bias, when the case has one.
    pub bias: Option<crate::runtime::Buffer>,
}

impl Case {
    /// Allocates this case's matrices in `tenant`'s arena.
    pub fn alloc(&self, tenant: &crate::runtime::Tenant) -> Result<CaseBuffers> {
        Ok(CaseBuffers {
            a: tenant.alloc(self.a.len())?,
            b: tenant.alloc(self.b.len())?,
            c: tenant.alloc(self.c0.len())?,
            bias: if self.bias.is_empty() { None } else { Some(tenant.alloc(self.bias.len())?) },
        })
    }

    /// Writes A, B, the bias and the poisoned C ([`Case::poisoned_c`]).
    pub fn upload(&self, bufs: &CaseBuffers) -> Result<()> {
        bufs.a.write(&self.a)?;
        bufs.b.write(&self.b)?;
        bufs.c.write(&self.poisoned_c())?;
        if let Some(b) = &bufs.bias {
            b.write(&self.bias)?;
        }
        Ok(())
    }

    /// The runtime op computing this case on `bufs`.
    pub fn op(&self, bufs: &CaseBuffers) -> crate::runtime::Op {
        use crate::runtime::{Mat, Op};
        let (ar, ac) = if self.flags & flags::TRANS_A != 0 { (self.k, self.m) } else { (self.m, self.k) };
        let (br, bc) = if self.flags & flags::TRANS_B != 0 { (self.n, self.k) } else { (self.k, self.n) };
        let mut a = Mat::new(&bufs.a, ar as usize, ac as usize).ld(self.ld.0 as usize);
        let mut b = Mat::new(&bufs.b, br as usize, bc as usize).ld(self.ld.1 as usize);
        if self.flags & flags::TRANS_A != 0 {
            a = a.t();
        }
        if self.flags & flags::TRANS_B != 0 {
            b = b.t();
        }
        let c = Mat::new(&bufs.c, self.m as usize, self.n as usize).ld(self.ld.2 as usize);
        let mut op = Op::gemm(a, b, c).alpha(self.alpha).beta(self.beta);
        if self.activation == Activation::Relu {
            op = op.relu();
        }
        op = match (self.bias_mode, &bufs.bias) {
            (BiasMode::Row, Some(b)) => op.bias_rows(b, 0),
            (BiasMode::Col, Some(b)) => op.bias_cols(b, 0),
            _ => op,
        };
        op
    }
}
