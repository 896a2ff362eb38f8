//! The epilogue every tile routine ends with: `C = act(alpha·acc + beta·C + bias)`.

use crate::abi::{Activation, BiasMode};
use crate::arch::{fma, ld_global_f32, ld_global_nc_f32, ld_global_v4, relu, st_global_f32, st_global_v4};
use crate::problem::Problem;

/// A problem's output side, decoded once per tile.
#[derive(Clone, Copy)]
pub struct Epilogue {
    c: u64,
    ldc: u64,
    m: u32,
    n: u32,
    alpha: f32,
    beta: f32,
    relu: bool,
    bias: BiasMode,
    bias_addr: u64,
    /// `C` rows start 16-byte aligned: 4-wide stores allowed.
    c_vec: bool,
}

impl Epilogue {
    /// Reads the output side of the staged problem `p` (call after the main loop, so that none of
    /// it occupies registers during the k-loop). The megakernel already rejected undefined
    /// activation and bias codes; they decode as "none" here.
    #[inline(always)]
    pub fn new(p: Problem) -> Self {
        let c = p.c();
        let ldc = p.ldc();
        Epilogue {
            c,
            ldc: ldc as u64,
            m: p.m(),
            n: p.n(),
            alpha: p.alpha(),
            beta: p.beta(),
            relu: Activation::from_u32(p.activation()) == Some(Activation::Relu),
            bias: BiasMode::from_u32(p.bias_mode()).unwrap_or(BiasMode::None),
            bias_addr: p.bias(),
            c_vec: c % 16 == 0 && ldc % 4 == 0,
        }
    }

    #[inline(always)]
    unsafe fn bias_at(&self, row: u32, col: u32) -> f32 {
        // SAFETY (all arms): validation on the host checked that the bias vector holds `m` (Row)
        // or `n` (Col) elements, and callers pass `row < m`, `col < n`.
        match self.bias {
            BiasMode::None => 0.0,
            BiasMode::Row => unsafe { ld_global_nc_f32(self.bias_addr + row as u64 * 4) },
            BiasMode::Col => unsafe { ld_global_nc_f32(self.bias_addr + col as u64 * 4) },
        }
    }

    #[inline(always)]
    fn finish(&self, acc: f32, old: f32, bias: f32) -> f32 {
        let mut v = self.alpha * acc;
        if self.beta != 0.0 {
            v = fma(self.beta, old, v);
        }
        v += bias;
        if self.relu { relu(v) } else { v }
    }

    #[inline(always)]
    fn addr(&self, row: u32, col: u32) -> u64 {
        self.c + (row as u64 * self.ldc + col as u64) * 4
    }

    /// Writes `acc` to `C[row][col]`; nothing when outside `m × n`.
    ///
    /// # Safety
    /// The problem was validated: `C` spans `m × n` with `ldc`, and no other thread writes this
    /// element in the launch.
    #[inline(always)]
    pub unsafe fn store1(&self, row: u32, col: u32, acc: f32) {
        if row >= self.m || col >= self.n {
            return;
        }
        let a = self.addr(row, col);
        // SAFETY: in bounds (checked above) of a validated `C`; this thread owns the element.
        unsafe {
            let old = if self.beta != 0.0 { ld_global_f32(a) } else { 0.0 };
            st_global_f32(a, self.finish(acc, old, self.bias_at(row, col)));
        }
    }

    /// Writes a thread's `TM × TN` block of a tile: `acc[i][4h + j]` goes to
    /// `C[row0 + (i / 4)·row_step + i % 4][col0 + h·col_step + j]`. When the tile lies inside `C`
    /// (`inside`), `C` allows 16-byte stores and there is no bias, the block is straight-line
    /// code: one branch on `beta` for the whole block, no bounds; else element by element
    /// through [`Epilogue::store4`].
    ///
    /// # Safety
    /// As [`Epilogue::store4`] for every element of the block; `inside` only when every row and
    /// column of the block is inside `m × n`, and `col0`, `col_step` are multiples of 4.
    #[inline(always)]
    pub unsafe fn store_block<const TM: usize, const TN: usize>(
        &self,
        acc: &[[f32; TN]; TM],
        (row0, row_step): (u32, u32),
        (col0, col_step): (u32, u32),
        inside: bool,
    ) {
        let row = |i: usize| row0 + (i as u32 / 4) * row_step + i as u32 % 4;
        let quad = |i: usize, h: usize| [acc[i][h * 4], acc[i][h * 4 + 1], acc[i][h * 4 + 2], acc[i][h * 4 + 3]];
        if !(inside && self.c_vec && self.bias == BiasMode::None) {
            for i in 0..TM {
                for h in 0..TN / 4 {
                    // SAFETY: the caller's contract; store4 checks the bounds.
                    unsafe { self.store4(row(i), col0 + h as u32 * col_step, quad(i, h)) };
                }
            }
            return;
        }
        let (alpha, beta, act) = (self.alpha, self.beta, self.relu);
        let out = #[inline(always)]
        |i: usize, h: usize, old: [f32; 4]| {
            let v = quad(i, h);
            core::array::from_fn::<f32, 4, _>(
                #[inline(always)]
                |j| {
                    let x = if beta != 0.0 { fma(beta, old[j], alpha * v[j]) } else { alpha * v[j] };
                    if act { relu(x) } else { x }
                },
            )
        };
        // SAFETY (both loops): every element is inside `C` (`inside`), 16-byte aligned (`c_vec`,
        // columns multiples of 4) and this thread's alone (the caller's contract).
        if beta == 0.0 {
            for i in 0..TM {
                for h in 0..TN / 4 {
                    let a = self.addr(row(i), col0 + h as u32 * col_step);
                    unsafe { st_global_v4(a, out(i, h, [0.0; 4])) };
                }
            }
        } else {
            for i in 0..TM {
                for h in 0..TN / 4 {
                    let a = self.addr(row(i), col0 + h as u32 * col_step);
                    unsafe { st_global_v4(a, out(i, h, ld_global_v4(a))) };
                }
            }
        }
    }

    /// Writes `acc[j]` to `C[row][col + j]` for `j < 4`, as one 16-byte store when all four are
    /// inside `C` and aligned; columns past `n` (and rows past `m`) are skipped.
    ///
    /// # Safety
    /// As [`Epilogue::store1`], for the four elements.
    #[inline(always)]
    pub unsafe fn store4(&self, row: u32, col: u32, acc: [f32; 4]) {
        if row >= self.m {
            return;
        }
        if self.c_vec && col + 3 < self.n {
            let a = self.addr(row, col);
            // SAFETY: four in-bounds elements of a validated `C`, 16-byte aligned (`c_vec` and
            // `col` a multiple of 4); this thread owns them.
            unsafe {
                let old = if self.beta != 0.0 { ld_global_v4(a) } else { [0.0; 4] };
                let mut out = [0.0f32; 4];
                for j in 0..4 {
                    out[j] = self.finish(acc[j], old[j], self.bias_at(row, col + j as u32));
                }
                st_global_v4(a, out);
            }
        } else {
            for j in 0..4 {
                // SAFETY: as this function's contract; store1 skips columns past `n`.
                unsafe { self.store1(row, col + j as u32, acc[j]) };
            }
        }
    }
}
