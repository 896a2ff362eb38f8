//! cuBLAS, as reference and baseline: row-major single GEMMs, `cublasSgemmBatched`,
//! `cublasSgemmGroupedBatched`. FP32 math (`CUBLAS_DEFAULT_MATH`: no TF32).
//!
//! Row-major `C = op(A)·op(B)` is column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, so every call swaps the
//! operands and `m`/`n`; a stored transpose stays a transpose flag.

use std::ffi::c_int;

use cudarc::cublas::sys as cb;

use super::{Gpu, Stream};
use crate::abi::{ProblemDesc, flags};
use crate::error::{Error, Result};

fn ck(call: &'static str, s: cb::cublasStatus_t) -> Result<()> {
    s.result().map_err(|source| Error::Cublas { call, source })
}

/// Whether `libcublas` can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cb::is_culib_present() }
}

/// A cuBLAS handle bound to one stream.
pub struct Cublas {
    handle: cb::cublasHandle_t,
}

// SAFETY: a handle may be used from any thread, one at a time (callers own it exclusively).
unsafe impl Send for Cublas {}

/// One group of `cublasSgemmGroupedBatched`: problems of one shape.
#[derive(Clone, Debug)]
pub struct Group {
    /// Shape, leading dimensions, scalars and transposes (addresses are ignored).
    pub shape: ProblemDesc,
    /// Number of problems in the group.
    pub count: usize,
}

fn ops(p: &ProblemDesc) -> (cb::cublasOperation_t, cb::cublasOperation_t) {
    let op = |t: bool| {
        if t { cb::cublasOperation_t::CUBLAS_OP_T } else { cb::cublasOperation_t::CUBLAS_OP_N }
    };
    // Column-major call order: (op for B, op for A).
    (op(p.flags & flags::TRANS_B != 0), op(p.flags & flags::TRANS_A != 0))
}

impl Cublas {
    /// A handle on `gpu` issuing work to `stream`, FP32 math.
    pub fn new(gpu: &Gpu, stream: &Stream) -> Result<Cublas> {
        gpu.bind()?;
        Cublas::in_current_context(stream)
    }

    /// A handle in whatever context is current on this thread (for per-tenant contexts).
    pub fn in_current_context(stream: &Stream) -> Result<Cublas> {
        if !cublas_present() {
            return Err(Error::NoCudaDriver("libcublas.so not found".into()));
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: a context is current (caller); out-pointer valid.
        unsafe {
            ck("cublasCreate", cb::cublasCreate_v2(&mut handle))?;
            ck("cublasSetStream", cb::cublasSetStream_v2(handle, stream.raw() as cb::cudaStream_t))?;
            ck("cublasSetMathMode", cb::cublasSetMathMode(handle, cb::cublasMath_t::CUBLAS_DEFAULT_MATH))?;
        }
        Ok(Cublas { handle })
    }

    /// Gives cuBLAS a fixed workspace (needed before capturing its calls into a CUDA graph).
    pub fn set_workspace(&self, ws: &super::DeviceBuffer) -> Result<()> {
        // SAFETY: the buffer outlives the handle's use of it (callers keep it alive).
        ck("cublasSetWorkspace", unsafe {
            cb::cublasSetWorkspace_v2(self.handle, ws.addr() as *mut std::ffi::c_void, ws.bytes)
        })
    }

    /// Issues work to `stream` from now on.
    pub fn set_stream(&self, stream: &Stream) -> Result<()> {
        // SAFETY: valid handle and stream.
        ck("cublasSetStream", unsafe { cb::cublasSetStream_v2(self.handle, stream.raw() as cb::cudaStream_t) })
    }

    /// `C = alpha·op(A)·op(B) + beta·C` for one row-major problem (its epilogue fields are
    /// ignored: cuBLAS has no bias or ReLU).
    ///
    /// # Safety
    /// `p`'s addresses are device memory of this context spanning the described matrices.
    pub unsafe fn sgemm(&self, p: &ProblemDesc) -> Result<()> {
        let (ob, oa) = ops(p);
        // SAFETY: per this function's contract.
        ck("cublasSgemm", unsafe {
            cb::cublasSgemm_v2(
                self.handle,
                ob,
                oa,
                p.n as c_int,
                p.m as c_int,
                p.k as c_int,
                &p.alpha,
                p.b as *const f32,
                p.ldb as c_int,
                p.a as *const f32,
                p.lda as c_int,
                &p.beta,
                p.c as *mut f32,
                p.ldc as c_int,
            )
        })
    }

    /// `cublasSgemmBatched`: `count` problems of `shape`; `a`, `b`, `c` are device arrays of
    /// `count` device pointers.
    ///
    /// # Safety
    /// The pointer arrays and every matrix they point to are device memory of this context.
    pub unsafe fn sgemm_batched(&self, shape: &ProblemDesc, a: u64, b: u64, c: u64, count: usize) -> Result<()> {
        let (ob, oa) = ops(shape);
        // SAFETY: per this function's contract.
        ck("cublasSgemmBatched", unsafe {
            cb::cublasSgemmBatched(
                self.handle,
                ob,
                oa,
                shape.n as c_int,
                shape.m as c_int,
                shape.k as c_int,
                &shape.alpha,
                b as *const *const f32,
                shape.ldb as c_int,
                a as *const *const f32,
                shape.lda as c_int,
                &shape.beta,
                c as *const *mut f32,
                shape.ldc as c_int,
                count as c_int,
            )
        })
    }

    /// `cublasSgemmGroupedBatched`: `groups` in order; `a`, `b`, `c` are device arrays of device
    /// pointers, one per problem, group after group.
    ///
    /// # Safety
    /// As [`Cublas::sgemm_batched`].
    pub unsafe fn sgemm_grouped(&self, groups: &[Group], a: u64, b: u64, c: u64) -> Result<()> {
        let mut ta = Vec::new();
        let mut tb = Vec::new();
        let (mut m, mut n, mut k) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ld_first, mut ld_second, mut ldc) = (Vec::new(), Vec::new(), Vec::new());
        let (mut alpha, mut beta, mut size) = (Vec::new(), Vec::new(), Vec::new());
        for g in groups {
            let (ob, oa) = ops(&g.shape);
            tb.push(ob);
            ta.push(oa);
            m.push(g.shape.n as c_int);
            n.push(g.shape.m as c_int);
            k.push(g.shape.k as c_int);
            ld_first.push(g.shape.ldb as c_int);
            ld_second.push(g.shape.lda as c_int);
            ldc.push(g.shape.ldc as c_int);
            alpha.push(g.shape.alpha);
            beta.push(g.shape.beta);
            size.push(g.count as c_int);
        }
        // SAFETY: host arrays have one entry per group; device arrays per this function's
        // contract. Column-major order: B's arrays first.
        ck("cublasSgemmGroupedBatched", unsafe {
            cb::cublasSgemmGroupedBatched(
                self.handle,
                tb.as_ptr(),
                ta.as_ptr(),
                m.as_ptr(),
                n.as_ptr(),
                k.as_ptr(),
                alpha.as_ptr(),
                b as *const *const f32,
                ld_first.as_ptr(),
                a as *const *const f32,
                ld_second.as_ptr(),
                beta.as_ptr(),
                c as *const *mut f32,
                ldc.as_ptr(),
                groups.len() as c_int,
                size.as_ptr(),
            )
        })
    }
}

impl Drop for Cublas {
    fn drop(&mut self) {
        // SAFETY: created in `new`.
        unsafe { cb::cublasDestroy_v2(self.handle) };
    }
}
