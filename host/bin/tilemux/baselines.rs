//! The baselines tilemux is measured against, on staged workloads: time-only (serial launches on
//! one stream, the same captured as a CUDA graph, one CUDA context per tenant from its own
//! thread) and space-only (one stream per tenant; MPS lives in `mps.rs`), plus cuBLAS's batched
//! and grouped calls.

use std::ffi::c_void;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use cudarc::driver::sys;
use tilemux::abi::ProblemDesc;
use tilemux::cuda::cublas::Cublas;
use tilemux::cuda::{Event, Gpu as Device, Stream};
use tilemux::reference::Case;

use crate::gpu::{Gpu, median};

fn ck(call: &str, r: sys::CUresult) -> Result<()> {
    r.result().with_context(|| call.to_string())
}

/// A captured CUDA graph of serial launches.
pub struct Graph {
    exec: sys::CUgraphExec,
    graph: sys::CUgraph,
}

impl Graph {
    /// Captures `launch` (work issued to `stream`) into an executable graph.
    pub fn capture(stream: &Stream, launch: impl FnOnce() -> Result<()>) -> Result<Graph> {
        // SAFETY: valid stream; capture mode per CUDA docs; graph handles are owned here.
        unsafe {
            ck(
                "cuStreamBeginCapture",
                sys::cuStreamBeginCapture_v2(
                    stream.raw(),
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                ),
            )?;
            let r = launch();
            let mut graph = std::ptr::null_mut();
            ck("cuStreamEndCapture", sys::cuStreamEndCapture(stream.raw(), &mut graph))?;
            r?;
            let mut exec = std::ptr::null_mut();
            ck("cuGraphInstantiate", sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0))?;
            Ok(Graph { exec, graph })
        }
    }

    /// Launches the graph on `stream`.
    pub fn launch(&self, stream: &Stream) -> Result<()> {
        // SAFETY: instantiated graph, valid stream.
        ck("cuGraphLaunch", unsafe { sys::cuGraphLaunch(self.exec, stream.raw()) })
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: owned handles.
        unsafe {
            sys::cuGraphExecDestroy(self.exec);
            sys::cuGraphDestroy(self.graph);
        }
    }
}

/// Makes `waiter` wait for everything queued on `on` so far.
pub fn join(waiter: &Stream, on: &Stream, ev: &Event) -> Result<()> {
    ev.record(on)?;
    // SAFETY: valid stream and event of one context.
    ck("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(waiter.raw(), ev.raw(), 0) })
}

/// One stream (and fork/join events) per tenant.
pub struct Streams {
    pub streams: Vec<Stream>,
    fork: Event,
    joins: Vec<Event>,
}

impl Streams {
    pub fn new(n: usize) -> Result<Streams> {
        Ok(Streams {
            streams: (0..n).map(|_| Stream::new()).collect::<Result<_, _>>()?,
            fork: Event::new()?,
            joins: (0..n).map(|_| Event::new()).collect::<Result<_, _>>()?,
        })
    }

    /// Runs `descs[i]` on stream `i`, all forked from and joined back into `main`.
    pub fn run(&self, gpu: &Gpu, main: &Stream, descs: &[ProblemDesc]) -> Result<()> {
        self.fork.record(main)?;
        for (i, d) in descs.iter().enumerate() {
            let s = &self.streams[i];
            // SAFETY: valid streams/events of one context.
            ck("cuStreamWaitEvent", unsafe { sys::cuStreamWaitEvent(s.raw(), self.fork.raw(), 0) })?;
            gpu.blas.set_stream(s)?;
            // SAFETY: staged device matrices.
            unsafe { gpu.blas.sgemm(d)? };
            join(main, s, &self.joins[i])?;
        }
        gpu.blas.set_stream(main)?;
        Ok(())
    }
}

/// Serial cuBLAS launches of `descs` on the GPU's stream.
pub fn serial(gpu: &Gpu, descs: &[ProblemDesc]) -> Result<()> {
    for d in descs {
        // SAFETY: staged device matrices.
        unsafe { gpu.blas.sgemm(d)? };
    }
    Ok(())
}

/// A tenant with its own CUDA context, stream, cuBLAS handle and matrices.
pub struct CtxTenant {
    ctx: sys::CUcontext,
    stream: Option<Stream>,
    blas: Option<Cublas>,
    desc: ProblemDesc,
    bufs: Vec<tilemux::cuda::DeviceBuffer>,
    case: Case,
}

// SAFETY: each CtxTenant is used by one thread at a time, which binds its context first.
unsafe impl Send for CtxTenant {}
// SAFETY: as above.
unsafe impl Sync for CtxTenant {}

impl CtxTenant {
    /// Creates a context on `gpu`'s device with `case`'s matrices in it.
    pub fn new(gpu: &Device, case: Case) -> Result<CtxTenant> {
        let mut ctx = std::ptr::null_mut();
        let mut dev = 0;
        // SAFETY: driver initialised by `gpu`; device 0.
        unsafe {
            ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, 0))?;
            ck("cuCtxCreate", sys::cuCtxCreate_v4(&mut ctx, std::ptr::null_mut(), 0, dev))?;
        }
        let _ = gpu;
        // cuCtxCreate made the new context current: the stream and handle belong to it.
        let stream = Stream::new()?;
        let blas = Cublas::in_current_context(&stream)?;
        let mut bufs = Vec::new();
        let mut up = |v: &[f32]| -> Result<u64> {
            let b = tilemux::cuda::DeviceBuffer::new(v.len().max(1) * 4)?;
            // SAFETY: buffer holds `v`.
            ck("cuMemcpyHtoD", unsafe { sys::cuMemcpyHtoD_v2(b.addr(), v.as_ptr() as *const c_void, v.len() * 4) })?;
            let a = b.addr();
            bufs.push(b);
            Ok(a)
        };
        let (a, b, c) = (up(&case.a)?, up(&case.b)?, up(&case.c0)?);
        let desc = case.desc([a, b, c, 0]);
        Ok(CtxTenant { ctx, stream: Some(stream), blas: Some(blas), desc, bufs, case })
    }

    /// Runs its GEMM once and waits (from the calling thread, binding the context).
    pub fn step(&self) -> Result<()> {
        // SAFETY: our context.
        ck("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.ctx) })?;
        let (blas, stream) = (self.blas.as_ref().expect("alive"), self.stream.as_ref().expect("alive"));
        // SAFETY: our matrices.
        unsafe { blas.sgemm(&self.desc)? };
        stream.sync()?;
        Ok(())
    }

    /// Relative error of its output against the f64 reference.
    pub fn check(&self) -> Result<f64> {
        // SAFETY: our context.
        ck("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.ctx) })?;
        let mut c = vec![0.0f32; self.case.c0.len()];
        // SAFETY: C buffer holds this many floats.
        ck("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(c.as_mut_ptr() as *mut c_void, self.desc.c, c.len() * 4) })?;
        // The padding sentinel is not staged here: compare the m × n part only.
        let want = self.case.reference();
        let mut num = 0.0f64;
        for i in 0..self.case.m as usize {
            for j in 0..self.case.n as usize {
                num += (c[i * self.case.ld.2 as usize + j] as f64 - want.value[i * self.case.n as usize + j]).powi(2);
            }
        }
        Ok(num.sqrt() / want.scale)
    }
}

impl Drop for CtxTenant {
    fn drop(&mut self) {
        // SAFETY: our context; destroy after freeing its resources.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx);
        }
        self.blas.take();
        self.stream.take();
        self.bufs.clear();
        // SAFETY: created in `new`, nothing of it is used any more.
        unsafe {
            sys::cuCtxDestroy_v2(self.ctx);
        }
    }
}

/// Creates up to `n` context tenants with `cases`, stopping at the first failure (the memory
/// wall). Returns the tenants and the device memory each context took on average.
pub fn contexts(gpu: &Device, cases: Vec<Case>) -> (Vec<CtxTenant>, Option<String>, f64) {
    let before = gpu.mem_info().map(|m| m.0).unwrap_or(0);
    let mut out = Vec::new();
    let mut stop = None;
    for c in cases {
        match CtxTenant::new(gpu, c) {
            Ok(t) => out.push(t),
            Err(e) => {
                stop = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let _ = gpu.bind();
    let after = gpu.mem_info().map(|m| m.0).unwrap_or(0);
    let per = if out.is_empty() { 0.0 } else { before.saturating_sub(after) as f64 / out.len() as f64 };
    (out, stop, per)
}

/// Time-only with contexts: each of `tenants` runs its GEMM from its own thread, all released
/// together; the median over `reps` of the wall time until the last one finishes, in µs.
pub fn time_contexts(tenants: &[CtxTenant], warmup: usize, reps: usize) -> Result<f64> {
    ensure!(!tenants.is_empty(), "no contexts");
    let barrier = Arc::new(Barrier::new(tenants.len() + 1));
    let mut times = Vec::new();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = tenants
            .iter()
            .map(|t| {
                let b = barrier.clone();
                s.spawn(move || -> Result<()> {
                    for _ in 0..warmup + reps {
                        b.wait();
                        let r = t.step();
                        b.wait();
                        r?;
                    }
                    Ok(())
                })
            })
            .collect();
        for i in 0..warmup + reps {
            barrier.wait();
            let start = Instant::now();
            barrier.wait();
            if i >= warmup {
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        for h in hs {
            h.join().expect("context thread")?;
        }
        Ok(())
    })?;
    Ok(median(&mut times))
}

/// cuBLAS workspace for graph capture (cuBLAS must not allocate while capturing).
pub fn capture_workspace(gpu: &Gpu) -> Result<tilemux::cuda::DeviceBuffer> {
    let ws = tilemux::cuda::DeviceBuffer::new(64 << 20)?;
    gpu.blas.set_workspace(&ws)?;
    Ok(ws)
}
