//! Every raw PTX instruction the kernels use, behind small named `#[inline(always)]` wrappers.
//! One file per instruction family; tile code never writes `asm!` itself.
//!
//! Addresses are plain integers: `u64` generic/global addresses as the host wrote them into the
//! descriptors, `u32` offsets in the shared window for shared memory.

mod atom;
mod bar;
mod fma;
mod gmem;
mod shfl;
mod smem;
mod sreg;

pub use atom::*;
pub use bar::*;
pub use fma::*;
pub use gmem::*;
pub use shfl::*;
pub use smem::*;
pub use sreg::*;
