//! tilemux: many inference tenants share one GPU through one persistent megakernel.
//!
//! Instead of giving each model the GPU in turns (time-only) or launching each model's small
//! kernels side by side (space-only), tilemux merges the GEMM/GEMV work of many tenants into
//! rounds: one launch of a persistent kernel whose CTAs pull heterogeneous tiles from a
//! device-side queue. A scheduler decides which tenants' work goes into each round.
//!
//! | concept | is like | type |
//! |---|---|---|
//! | tenant | a process | [`runtime::Tenant`] |
//! | tenant arena | its address space | [`memory::Arena`] per tenant, inside the runtime's pool |
//! | buffer | an allocation | [`runtime::Buffer`] |
//! | op / request | a system call | [`runtime::Op`], [`runtime::Request`] |
//! | tile descriptor | an instruction | [`abi::TileDesc`] |
//! | round | a launch / time slice | [`round::Round`] |
//! | device | a CPU core | [`device::Device`]: [`cuda::CudaDevice`] or [`cpu::CpuDevice`] |
//!
//! Layers, bottom up: [`abi`] (shared with the kernels), [`device`] backends that execute checked
//! rounds ([`round::check`] is their only gate), [`validate`] which turns user ops into checked
//! descriptors, and [`runtime`] with tenants, memory, scheduling and tickets.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod error;
pub mod memory;
pub mod persistent;
pub mod reference;
pub mod round;
pub mod runtime;
pub mod validate;

/// The descriptor ABI, shared with the device code (`kernels/src/abi.rs`).
pub use tilemux_kernels::abi;

pub use device::{BackendKind, Device, RoundReport};
pub use error::{DescriptorError, Error, Result};

use std::sync::Arc;

/// Which backend to open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// CUDA when a driver and a device are usable, else the CPU.
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// The CUDA megakernel; fails without a usable GPU.
    Cuda,
}

/// Opens a device with a memory pool of `pool_bytes`. With [`Backend::Auto`], a missing driver or
/// device falls back to the CPU (the reason is logged); other CUDA errors are returned.
pub fn open_device(backend: Backend, pool_bytes: usize) -> Result<Arc<dyn Device>> {
    let cfg = cuda::CudaConfig { pool_bytes, ..Default::default() };
    match backend {
        Backend::Cpu => Ok(Arc::new(cpu::CpuDevice::new(pool_bytes)?)),
        Backend::Cuda => Ok(Arc::new(cuda::CudaDevice::new(&cfg)?)),
        Backend::Auto => match cuda::CudaDevice::new(&cfg) {
            Ok(d) => Ok(Arc::new(d)),
            Err(e @ (Error::NoCudaDriver(_) | Error::NoCudaDevice)) => {
                tracing::info!("no usable GPU ({e}); using the CPU backend");
                Ok(Arc::new(cpu::CpuDevice::new(pool_bytes)?))
            }
            Err(Error::Cuda { call: "cuInit", source }) => {
                tracing::info!("CUDA driver present but cuInit failed ({source}); using the CPU backend");
                Ok(Arc::new(cpu::CpuDevice::new(pool_bytes)?))
            }
            Err(e) => Err(e),
        },
    }
}
