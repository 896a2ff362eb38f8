//! The few CUDA driver objects tilemux needs, each owning its handle: context, stream, event,
//! device memory, pinned host memory, module. Every call's status becomes an [`Error::Cuda`].

use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::driver::sys;

use crate::error::{Error, Result};

/// Turns a driver status into a `Result`, naming the call.
pub(crate) fn ck(call: &'static str, r: sys::CUresult) -> Result<()> {
    r.result().map_err(|source| Error::Cuda { call, source })
}

/// Whether `libcuda` can be loaded at all (without it, every driver call would panic).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

/// A CUDA device with its primary context, current on the thread that made it and re-bound by
/// every method that calls the driver from another thread.
pub struct Gpu {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    /// `cuDeviceGetName`.
    pub name: String,
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// Device memory in bytes.
    pub total_mem: u64,
    /// Shared memory per SM, and the most one block may opt in to (bytes).
    pub smem_per_sm: u32,
    pub smem_per_block_optin: u32,
    /// `cuDriverGetVersion`, e.g. 13000.
    pub driver_version: i32,
}

// SAFETY: a CUDA context may be used from any thread once bound there (`Gpu::bind`).
unsafe impl Send for Gpu {}
// SAFETY: as above; the driver API is thread-safe.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Opens device `ordinal`: loads the driver, retains the primary context.
    pub fn open(ordinal: i32) -> Result<Arc<Gpu>> {
        if !driver_present() {
            return Err(Error::NoCudaDriver("libcuda.so not found".into()));
        }
        // SAFETY: the library is present; these calls have no other preconditions.
        unsafe {
            ck("cuInit", sys::cuInit(0))?;
            let mut count = 0;
            ck("cuDeviceGetCount", sys::cuDeviceGetCount(&mut count))?;
            if count <= ordinal {
                return Err(Error::NoCudaDevice);
            }
            let mut dev = 0;
            ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, ordinal))?;
            let mut ctx = std::ptr::null_mut();
            ck("cuDevicePrimaryCtxRetain", sys::cuDevicePrimaryCtxRetain(&mut ctx, dev))?;
            ck("cuCtxSetCurrent", sys::cuCtxSetCurrent(ctx))?;
            let mut name = [0i8; 256];
            ck("cuDeviceGetName", sys::cuDeviceGetName(name.as_mut_ptr(), 256, dev))?;
            let name = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let attr = |a| {
                let mut v = 0;
                ck("cuDeviceGetAttribute", sys::cuDeviceGetAttribute(&mut v, a, dev)).map(|_| v)
            };
            use sys::CUdevice_attribute::*;
            let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
            let cc = (
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let smem_per_sm = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)? as u32;
            let smem_per_block_optin = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
            let mut total = 0usize;
            ck("cuDeviceTotalMem", sys::cuDeviceTotalMem_v2(&mut total, dev))?;
            let mut driver_version = 0;
            ck("cuDriverGetVersion", sys::cuDriverGetVersion(&mut driver_version))?;
            Ok(Arc::new(Gpu {
                dev,
                ctx,
                name,
                sm_count,
                cc,
                total_mem: total as u64,
                smem_per_sm,
                smem_per_block_optin,
                driver_version,
            }))
        }
    }

    /// Makes this context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: `ctx` is a retained primary context.
        ck("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(self.ctx) })
    }

    /// Raw context handle (for baselines that need it).
    pub fn ctx(&self) -> sys::CUcontext {
        self.ctx
    }

    /// Free and total device memory now.
    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: context bound.
        ck("cuMemGetInfo", unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
        Ok((free as u64, total as u64))
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `open`.
        unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.dev) };
    }
}

/// A non-blocking stream (never synchronises with the legacy default stream).
pub struct Stream(pub(crate) sys::CUstream);

// SAFETY: stream handles may be used from any thread with the context bound.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Stream {
    /// A new non-blocking stream in the current context.
    pub fn new() -> Result<Stream> {
        let mut s = std::ptr::null_mut();
        // SAFETY: a context is current (callers bind first).
        ck("cuStreamCreate", unsafe {
            sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
        })?;
        Ok(Stream(s))
    }

    /// Blocks until all work queued on the stream is done.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: valid stream.
        ck("cuStreamSynchronize", unsafe { sys::cuStreamSynchronize(self.0) })
    }

    /// Raw handle.
    pub fn raw(&self) -> sys::CUstream {
        self.0
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created by `Stream::new`; destroying a stream with pending work is allowed.
        unsafe { sys::cuStreamDestroy_v2(self.0) };
    }
}

/// A timing event.
pub struct Event(pub(crate) sys::CUevent);

// SAFETY: event handles may be used from any thread with the context bound.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    /// A new event that records timestamps.
    pub fn new() -> Result<Event> {
        let mut e = std::ptr::null_mut();
        // SAFETY: a context is current.
        ck("cuEventCreate", unsafe { sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DEFAULT as u32) })?;
        Ok(Event(e))
    }

    /// Records the event on `s`.
    pub fn record(&self, s: &Stream) -> Result<()> {
        // SAFETY: valid event and stream of the same context.
        ck("cuEventRecord", unsafe { sys::cuEventRecord(self.0, s.0) })
    }

    /// Blocks until the event completes.
    pub fn sync(&self) -> Result<()> {
        // SAFETY: valid event.
        ck("cuEventSynchronize", unsafe { sys::cuEventSynchronize(self.0) })
    }

    /// Raw handle.
    pub fn raw(&self) -> sys::CUevent {
        self.0
    }

    /// Milliseconds from `self` to `end` (both completed).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        let mut ms = 0.0;
        // SAFETY: valid events.
        ck("cuEventElapsedTime", unsafe { sys::cuEventElapsedTime_v2(&mut ms, self.0, end.0) })?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by `Event::new`.
        unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}

/// A device allocation.
pub struct DeviceBuffer {
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) bytes: usize,
}

// SAFETY: a device address is just a number; access goes through the driver.
unsafe impl Send for DeviceBuffer {}
// SAFETY: as above.
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// `cuMemAlloc` of `bytes` in the current context.
    pub fn new(bytes: usize) -> Result<DeviceBuffer> {
        let mut ptr = 0;
        // SAFETY: a context is current.
        ck("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(256)) })?;
        Ok(DeviceBuffer { ptr, bytes })
    }

    /// Device address.
    pub fn addr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by `DeviceBuffer::new`; callers synchronise before dropping buffers
        // that queued work still uses.
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// Page-locked host memory (fast, truly asynchronous copies).
pub struct PinnedBuffer {
    ptr: *mut u8,
    bytes: usize,
}

// SAFETY: plain host memory; users synchronise with the copies that use it.
unsafe impl Send for PinnedBuffer {}
// SAFETY: as above.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// `cuMemHostAlloc` of `bytes` with `flags` (`CU_MEMHOSTALLOC_*`), zeroed.
    pub fn new(bytes: usize, flags: u32) -> Result<PinnedBuffer> {
        let mut p = std::ptr::null_mut();
        // SAFETY: a context is current.
        ck("cuMemHostAlloc", unsafe { sys::cuMemHostAlloc(&mut p, bytes.max(64), flags) })?;
        // SAFETY: freshly allocated, `bytes` long.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, bytes) };
        Ok(PinnedBuffer { ptr: p as *mut u8, bytes })
    }

    /// Host pointer.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Device address of mapped memory (`CU_MEMHOSTALLOC_DEVICEMAP`).
    pub fn device_addr(&self) -> Result<u64> {
        let mut d = 0;
        // SAFETY: the pointer came from cuMemHostAlloc.
        ck("cuMemHostGetDevicePointer", unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut d, self.ptr as *mut c_void, 0)
        })?;
        Ok(d)
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemHostAlloc; callers synchronise first.
        unsafe { sys::cuMemFreeHost(self.ptr as *mut c_void) };
    }
}

/// Kernel parameters for the driver's launch calls: each value in a slot of its own, and the
/// array of pointers to the slots the launch call reads. A `u32` parameter reads the low half of
/// its slot (little-endian hosts, as every CUDA host is).
pub(crate) struct KernelArgs {
    _slots: Box<[u64]>,
    ptrs: Vec<*mut c_void>,
}

impl KernelArgs {
    /// Arguments with these values, in the kernel's parameter order.
    pub(crate) fn new(values: &[u64]) -> KernelArgs {
        let mut slots: Box<[u64]> = values.into();
        let ptrs = slots.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        KernelArgs { _slots: slots, ptrs }
    }

    /// The `kernelParams` array (valid while `self` lives: the slots never move).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut *mut c_void {
        self.ptrs.as_mut_ptr()
    }
}

/// A loaded PTX module and its JIT log.
pub struct Module {
    pub(crate) raw: sys::CUmodule,
    /// ptxas's info log (registers, shared memory, spills).
    pub log: String,
}

// SAFETY: module handles may be used from any thread with the context bound.
unsafe impl Send for Module {}
// SAFETY: as above.
unsafe impl Sync for Module {}

impl Module {
    /// JIT-compiles `ptx` in the current context with a verbose info log; `max_registers` caps
    /// registers per thread (0: no cap).
    pub fn load(ptx: &str, max_registers: u32) -> Result<Module> {
        let image = CString::new(ptx).expect("PTX has no NUL bytes");
        let mut info = vec![0u8; 1 << 16];
        let mut err = vec![0u8; 1 << 16];
        use sys::CUjit_option::*;
        let mut opts = vec![
            CU_JIT_INFO_LOG_BUFFER,
            CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
            CU_JIT_ERROR_LOG_BUFFER,
            CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
            CU_JIT_LOG_VERBOSE,
        ];
        // Integer option values travel in the pointer-sized slots.
        let int = std::ptr::without_provenance_mut::<c_void>;
        let mut vals: Vec<*mut c_void> = vec![
            info.as_mut_ptr() as *mut c_void,
            int(info.len()),
            err.as_mut_ptr() as *mut c_void,
            int(err.len()),
            int(1),
        ];
        if max_registers > 0 {
            opts.push(CU_JIT_MAX_REGISTERS);
            vals.push(int(max_registers as usize));
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: option arrays match in length and types; buffers outlive the call.
        let r = unsafe {
            sys::cuModuleLoadDataEx(
                &mut raw,
                image.as_ptr() as *const c_void,
                opts.len() as u32,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        };
        let text =
            |b: &[u8]| String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).into_owned();
        let log = text(&info);
        match r.result() {
            Ok(()) => Ok(Module { raw, log }),
            Err(source) => Err(Error::ModuleLoad { source, log: format!("{}\n{}", text(&err), log) }),
        }
    }

    /// A kernel of this module.
    pub fn function(&self, name: &str) -> Result<sys::CUfunction> {
        let name = CString::new(name).expect("no NUL");
        let mut f = std::ptr::null_mut();
        // SAFETY: valid module, NUL-terminated name.
        ck("cuModuleGetFunction", unsafe { sys::cuModuleGetFunction(&mut f, self.raw, name.as_ptr()) })?;
        Ok(f)
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: loaded by `Module::load`.
        unsafe { sys::cuModuleUnload(self.raw) };
    }
}

/// Reads a function attribute.
///
/// # Safety
/// `f` is a function of a loaded module.
pub(crate) unsafe fn func_attr(f: sys::CUfunction, a: sys::CUfunction_attribute) -> Result<i32> {
    let mut v = 0;
    // SAFETY: `f` is valid (caller's contract).

    ck("cuFuncGetAttribute", unsafe { sys::cuFuncGetAttribute(&mut v, a, f) })?;
    Ok(v)
}
