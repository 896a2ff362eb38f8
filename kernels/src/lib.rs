//! tilemux device code and the descriptor ABI it shares with the host.
//!
//! Built twice. For the host, only [`abi`] exists: the `#[repr(C)]` descriptors, their enums and
//! the index math. For `nvptx64-nvidia-cuda`, `build.rs` in the parent crate compiles this crate to
//! PTX (`--emit=asm`), and the megakernel entry points in `megakernel.rs` exist too.
//!
//! Device layout: `arch/` wraps every raw PTX instruction; `sgemm.rs` and `gemv.rs` are the tile
//! routines; `epilogue.rs` is the shared `alpha·acc + beta·C + bias`, ReLU; `megakernel.rs` is the
//! persistent tile loop (its protocol: `QUEUE.md`).

#![no_std]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(abi_ptx, stdarch_nvptx, asm_experimental_arch, core_intrinsics, stmt_expr_attributes)
)]
#![cfg_attr(target_arch = "nvptx64", allow(internal_features))]

pub mod abi;

#[cfg(target_arch = "nvptx64")]
mod arch;
#[cfg(target_arch = "nvptx64")]
mod epilogue;
#[cfg(target_arch = "nvptx64")]
mod gemv;
#[cfg(target_arch = "nvptx64")]
pub mod megakernel;
#[cfg(target_arch = "nvptx64")]
pub mod persistent;
#[cfg(target_arch = "nvptx64")]
pub mod probe;
#[cfg(target_arch = "nvptx64")]
mod problem;
#[cfg(target_arch = "nvptx64")]
mod sgemm;

/// Kernels never panic (no bounds-checked indexing, no division by runtime values); `build.rs`
/// rejects PTX that calls into `core`. Should one slip through, trap rather than loop.
#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: `trap` aborts the kernel; it has no preconditions.
    unsafe { core::arch::nvptx::trap() }
}
