//! GPU measurement helpers shared by the benchmark modes: the device, CUDA-event timing with
//! medians, cuBLAS baselines over staged cases, and the two measured ceilings.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tilemux::Device;
use tilemux::abi::ProblemDesc;
use tilemux::cuda::cublas::{Cublas, Group};
use tilemux::cuda::{CudaConfig, CudaDevice, DeviceBuffer, Event, Stream};
use tilemux::memory::Arena;
use tilemux::reference::{Case, Staged, alloc};

/// Median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

/// Percentile `q` in 0..=1 of `v` (sorted in place).
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * q).round() as usize] }
}

/// The CUDA device plus a stream and events of its own for timing baselines.
pub struct Gpu {
    pub dev: Arc<CudaDevice>,
    pub stream: Stream,
    start: Event,
    end: Event,
    pub blas: Cublas,
}

impl Gpu {
    /// Opens GPU 0 with a pool of `pool_bytes`.
    pub fn open(pool_bytes: usize, max_registers: u32) -> Result<Gpu> {
        let dev = CudaDevice::new(&CudaConfig { pool_bytes, max_registers, ..CudaConfig::default() })
            .context("this mode needs a CUDA GPU")?;
        dev.gpu().bind()?;
        let stream = Stream::new()?;
        let blas = Cublas::new(dev.gpu(), &stream)?;
        Ok(Gpu { stream, start: Event::new()?, end: Event::new()?, blas, dev: Arc::new(dev) })
    }

    /// One line naming the device, driver, kernel resources and date.
    pub fn describe(&self) -> String {
        let g = self.dev.gpu();
        let k = self.dev.kernel();
        let wide = k.wide.as_ref().map_or(String::new(), |w| {
            format!(
                "; wide build {} regs, {} B local, {} CTA/SM, grid {}",
                w.registers, w.local_bytes, w.ctas_per_sm, w.grid
            )
        });
        format!(
            "{} (SM {}.{}, {} SMs), CUDA driver {}.{}; megakernel {} regs, {} B local, {} CTAs/SM, grid {}{wide}; persistent grid {}; {}",
            g.name,
            g.cc.0,
            g.cc.1,
            g.sm_count,
            g.driver_version / 1000,
            g.driver_version % 1000 / 10,
            k.registers,
            k.local_bytes,
            k.ctas_per_sm,
            k.grid,
            k.persistent_grid,
            today()
        )
    }

    /// Times `f` on this GPU's stream with events: `warmup` untimed calls, then the median of
    /// `reps` timed ones, in microseconds.
    pub fn time(&self, warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        self.dev.gpu().bind()?;
        for _ in 0..warmup {
            f()?;
        }
        self.stream.sync()?;
        let mut t = Vec::with_capacity(reps);
        for _ in 0..reps {
            self.start.record(&self.stream)?;
            f()?;
            self.end.record(&self.stream)?;
            self.end.sync()?;
            t.push(self.start.elapsed_ms(&self.end)? as f64 * 1e3);
        }
        Ok(median(&mut t))
    }

    /// Measured ceilings: (device-to-device copy in TB/s counting read + write, cuBLAS SGEMM
    /// 8192³ in TFLOP/s).
    pub fn ceilings(&self) -> Result<(f64, f64)> {
        let bytes = 1usize << 30;
        let src = DeviceBuffer::new(bytes)?;
        let dst = DeviceBuffer::new(bytes)?;
        let copy = self.time(3, 10, || {
            // SAFETY: both buffers hold `bytes`.
            let r =
                unsafe { cudarc::driver::sys::cuMemcpyDtoDAsync_v2(dst.addr(), src.addr(), bytes, self.stream.raw()) };
            r.result().context("cuMemcpyDtoDAsync")?;
            Ok(())
        })?;
        let n = 8192u32;
        let mats: Vec<DeviceBuffer> =
            (0..3).map(|_| DeviceBuffer::new((n * n * 4) as usize)).collect::<Result<_, _>>()?;
        let mut rng = rand::rng();
        let data: Vec<f32> = (0..(n * n) as usize).map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0)).collect();
        for m in &mats[..2] {
            // SAFETY: buffer holds n*n floats.
            unsafe { cudarc::driver::sys::cuMemcpyHtoD_v2(m.addr(), data.as_ptr() as *const _, data.len() * 4) }
                .result()?;
        }
        let p = tilemux::round::problem(
            (mats[0].addr(), mats[1].addr(), mats[2].addr(), 0),
            (n, n, n),
            (n, n, n),
            (1.0, 0.0),
            0,
            tilemux::abi::Activation::None,
            tilemux::abi::BiasMode::None,
        );
        // SAFETY: the three matrices are n × n device buffers.
        let gemm = self.time(2, 5, || Ok(unsafe { self.blas.sgemm(&p) }?))?;
        Ok((2.0 * bytes as f64 / copy / 1e6, 2.0 * (n as f64).powi(3) / gemm / 1e6))
    }
}

/// Today's date (UTC), from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

/// Device arrays of per-problem pointers for cuBLAS's batched calls, and a second `C` per
/// problem so baselines never overwrite the megakernel's results before the cross-check.
pub struct BlasArrays {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub c_addrs: Vec<u64>,
}

impl BlasArrays {
    /// Allocates the baseline's own outputs and pointer arrays from `arena`.
    pub fn new(dev: &dyn Device, arena: &mut Arena, staged: &Staged, cases: &[Case]) -> Result<BlasArrays> {
        let mut c_addrs = Vec::new();
        for c in cases {
            c_addrs.push(alloc(arena, (c.c0.len() * 4) as u64)?);
        }
        let mut array = |ptrs: Vec<u64>| -> Result<u64> {
            let addr = alloc(arena, (ptrs.len() * 8) as u64)?;
            dev.write(addr, bytemuck::cast_slice(&ptrs))?;
            Ok(addr)
        };
        let a = array(staged.addrs.iter().map(|x| x[0]).collect())?;
        let b = array(staged.addrs.iter().map(|x| x[1]).collect())?;
        let c = array(c_addrs.clone())?;
        Ok(BlasArrays { a, b, c, c_addrs })
    }

    /// The descriptors of the baseline (same inputs, its own outputs).
    pub fn descs(&self, staged: &Staged, cases: &[Case]) -> Vec<ProblemDesc> {
        let mut d = staged.descs(cases);
        for (p, c) in d.iter_mut().zip(&self.c_addrs) {
            p.c = *c;
        }
        d
    }

    /// Reads the baseline's outputs.
    pub fn read_c(&self, dev: &dyn Device, cases: &[Case]) -> Result<Vec<Vec<f32>>> {
        cases
            .iter()
            .zip(&self.c_addrs)
            .map(|(c, &a)| {
                let mut v = vec![0.0f32; c.c0.len()];
                dev.read(a, &mut v)?;
                Ok(v)
            })
            .collect()
    }
}

/// Groups consecutive equal shapes for `cublasSgemmGroupedBatched`; requires the cases to be
/// sorted by shape already so that each group's pointers are contiguous.
pub fn groups(descs: &[ProblemDesc]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for d in descs {
        match out.last_mut() {
            Some(g) if (g.shape.m, g.shape.n, g.shape.k, g.shape.flags) == (d.m, d.n, d.k, d.flags) => g.count += 1,
            _ => out.push(Group { shape: *d, count: 1 }),
        }
    }
    out
}

/// Fails unless two result sets agree within `bound` (normwise relative).
pub fn cross_check(name: &str, cases: &[Case], got: &[Vec<f32>], want: &[Vec<f32>], bound: f64) -> Result<f64> {
    let mut worst = 0.0f64;
    for (i, (c, (g, w))) in cases.iter().zip(got.iter().zip(want)).enumerate() {
        let value: Vec<f64> = (0..c.m as usize)
            .flat_map(|r| (0..c.n as usize).map(move |j| (r, j)))
            .map(|(r, j)| w[r * c.ld.2 as usize + j] as f64)
            .collect();
        // Plain GEMMs of random data: the result's own norm is the magnitude's order.
        let scale = value.iter().map(|v| v * v).sum::<f64>().sqrt();
        let e = c.error(g, &tilemux::reference::Expected { value, scale });

        if e.is_nan() || e >= bound {
            bail!("{name}: problem {i} differs from cuBLAS: relative error {e:e}");
        }
        worst = worst.max(e);
    }
    Ok(worst)
}
