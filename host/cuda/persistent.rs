//! The CUDA engine of persistent mode: the resident `tilemux_persistent` kernel, launched
//! cooperatively (every CTA resident) on a stream of its own. Publishing copies the new slots
//! from pinned host memory into the device ring with the copy engine, then writes the published
//! count with a stream memory operation on the same stream, so the kernel sees the slots before
//! the count and never reads host memory.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::driver::sys;

use super::driver::ck;
use super::{CudaDevice, DeviceBuffer, PinnedBuffer, Stream};
use crate::abi::ring::{DeviceState, RingSlot, done_offset, host_bytes, slot_offset};
use crate::error::{Error, Result};
use crate::persistent::{Engine, RingMemory};

/// The resident kernel and its buffers.
pub struct CudaEngine {
    kernel_stream: Stream,
    /// Copies and stream memory operations (publish, heartbeat, stop), in order.
    ops: Mutex<Stream>,
    state: DeviceBuffer,
    slots: DeviceBuffer,
    _dev_done: DeviceBuffer,
    _done_ctr: DeviceBuffer,
    ring_slots: u32,
    gpu: Arc<super::Gpu>,
}

// SAFETY: driver handles may be used from any thread with the context bound; the ops stream is
// behind a mutex.
unsafe impl Send for CudaEngine {}
// SAFETY: as above.
unsafe impl Sync for CudaEngine {}

impl CudaDevice {
    /// Starts persistent mode: allocates the ring and launches the resident kernel. While it
    /// runs, this device must not run rounds (the kernel holds every SM).
    pub fn start_persistent(&self, slots: u32, heartbeat_timeout: Duration) -> Result<(Arc<RingMemory>, CudaEngine)> {
        self.gpu().bind()?;
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        let ring = Arc::new(RingMemory::pinned(slots, PinnedBuffer::new(host_bytes(slots), flags)?)?);
        let zeroed = |bytes: usize| -> Result<DeviceBuffer> {
            let b = DeviceBuffer::new(bytes)?;
            // SAFETY: fresh allocation of `bytes`; no resident kernel runs yet.
            ck("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(b.ptr, 0, bytes) })?;
            Ok(b)
        };
        let state = DeviceBuffer::new(size_of::<DeviceState>())?;
        let init = DeviceState {
            claim: 0,
            published: 0,
            heartbeat: 0,
            heartbeat_timeout_ns: heartbeat_timeout.as_nanos() as u64,
            stop: 0,
            status: 0,
            slots,
            _reserved: 0,
        };
        // SAFETY: the buffer holds a DeviceState.
        ck("cuMemcpyHtoD", unsafe {
            sys::cuMemcpyHtoD_v2(
                state.ptr,
                bytemuck::bytes_of(&init).as_ptr() as *const c_void,
                size_of::<DeviceState>(),
            )
        })?;
        let dev_slots = zeroed(slots as usize * size_of::<RingSlot>())?;
        let dev_done = zeroed(slots as usize * 8)?;
        let done_ctr = zeroed(slots as usize * 4)?;
        let host_done = ring.device_base()? + done_offset(slots, 0) as u64;
        let kernel_stream = Stream::new()?;
        let k = self.kernel();
        let (mut a0, mut a1, mut a2, mut a3, mut a4) =
            (state.ptr, dev_slots.ptr, dev_done.ptr, done_ctr.ptr, host_done);
        let mut params: [*mut c_void; 5] = [
            &mut a0 as *mut u64 as *mut c_void,
            &mut a1 as *mut u64 as *mut c_void,
            &mut a2 as *mut u64 as *mut c_void,
            &mut a3 as *mut u64 as *mut c_void,
            &mut a4 as *mut u64 as *mut c_void,
        ];
        // SAFETY: the parameters match `tilemux_persistent`; the grid is at most the
        // co-resident CTAs (cooperative launches fail otherwise); the buffers outlive the kernel
        // (the engine joins it before they drop).
        ck("cuLaunchCooperativeKernel", unsafe {
            sys::cuLaunchCooperativeKernel(
                k.persistent_func,
                k.persistent_grid,
                1,
                1,
                crate::abi::BLOCK_THREADS,
                1,
                1,
                k.smem_bytes,
                kernel_stream.0,
                params.as_mut_ptr(),
            )
        })?;
        let engine = CudaEngine {
            kernel_stream,
            ops: Mutex::new(Stream::new()?),
            state,
            slots: dev_slots,
            _dev_done: dev_done,
            _done_ctr: done_ctr,
            ring_slots: slots,
            gpu: self.gpu().clone(),
        };
        Ok((ring, engine))
    }
}

impl CudaEngine {
    fn field(&self, offset: usize) -> u64 {
        self.state.ptr + offset as u64
    }
}

impl Engine for CudaEngine {
    fn publish(&self, mem: &RingMemory, from: u64, to: u64) -> Result<()> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        self.gpu.bind()?;
        let n = self.ring_slots as u64;
        let mut q = from;
        while q < to {
            // A contiguous run of slots, up to the ring's end.
            let i = (q % n) as u32;
            let count = (to - q).min(n - i as u64) as usize;
            // SAFETY: `count` published-to-be slot images in pinned memory and the same slots
            // of the device ring; the host does not rewrite them until their problems are done,
            // long after this copy (stream order: before the published count below).
            ck("cuMemcpyHtoDAsync", unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    self.slots.ptr + slot_offset(i) as u64,
                    mem.slot_ptr(i) as *const c_void,
                    count * size_of::<RingSlot>(),
                    ops.0,
                )
            })?;
            q += count as u64;
        }
        // SAFETY: the state's `published` word; executes after the copies above.
        ck("cuStreamWriteValue64", unsafe {
            sys::cuStreamWriteValue64_v2(ops.0, self.field(std::mem::offset_of!(DeviceState, published)), to, 0)
        })
    }

    fn beat(&self, n: u64) {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        if self.gpu.bind().is_ok() {
            // SAFETY: the state's heartbeat word. A failure only risks a self-stop on timeout.
            unsafe {
                sys::cuStreamWriteValue64_v2(ops.0, self.field(std::mem::offset_of!(DeviceState, heartbeat)), n, 0)
            };
        }
    }

    fn request_stop(&self) {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        if self.gpu.bind().is_ok() {
            // SAFETY: the state's stop word.
            unsafe { sys::cuStreamWriteValue32_v2(ops.0, self.field(std::mem::offset_of!(DeviceState, stop)), 1, 0) };
        }
    }

    fn join(&self) -> Result<u32> {
        self.gpu.bind()?;
        self.kernel_stream.sync()?;
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).sync()?;
        let mut st = [0u8; size_of::<DeviceState>()];
        // SAFETY: the kernel finished; the buffer holds a DeviceState.
        ck("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(st.as_mut_ptr() as *mut c_void, self.state.ptr, st.len()) })?;
        let st: DeviceState = bytemuck::pod_read_unaligned(&st);
        if st.status != 0 {
            return Err(Error::DeviceStatus { code: st.status, meaning: "reported by the resident kernel" });
        }
        Ok(0)
    }
}
