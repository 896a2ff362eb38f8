//! The transport probe (`tilemux_echo`): round trips host → GPU → host with nothing else in the
//! way, for each way persistent mode could ring its doorbell. The floor under dispatch latency
//! on the machine at hand; `tilemux bench dispatch` reports it next to the ring.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cudarc::driver::sys;

use super::driver::{KernelArgs, ck};
use super::{CudaDevice, DeviceBuffer, Module, PinnedBuffer, Stream, ptx_with_entries};
use crate::abi::echo::{COPIES as ECHO_COPIES, INLINE as ECHO_INLINE, REPLY_SHIFT as ECHO_REPLY_SHIFT};
use crate::error::{Error, Result};

/// How the host rings the doorbell (and where the payload the GPU loads lives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doorbell {
    /// A release store to host-mapped memory that the GPU polls over PCIe; payload in host-mapped
    /// memory too (the GPU loads it across the bus).
    HostStore,
    /// `cuStreamWriteValue64` to device memory; payload in device memory.
    StreamWrite,
    /// `cuMemcpyHtoDAsync` of the payload from pinned memory, then `cuStreamWriteValue64`, on one
    /// stream (persistent mode's publish).
    CopyThenWrite,
}

impl From<Doorbell> for EchoWay {
    fn from(d: Doorbell) -> EchoWay {
        EchoWay::plain(d)
    }
}

impl Doorbell {
    /// Every way, in report order.
    pub const ALL: [Doorbell; 3] = [Doorbell::HostStore, Doorbell::StreamWrite, Doorbell::CopyThenWrite];

    /// Report label.
    pub fn label(self) -> &'static str {
        match self {
            Doorbell::HostStore => "host store to mapped memory, GPU polls over PCIe",
            Doorbell::StreamWrite => "cuStreamWriteValue64 to device memory",
            Doorbell::CopyThenWrite => "cuMemcpyHtoDAsync + cuStreamWriteValue64",
        }
    }
}

/// How the GPU side writes its reply to host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Two `st.release.sys` stores (payload check word, then the echo number).
    TwoReleases,
    /// Relaxed stores around one `fence.acq_rel.sys`.
    SysFence,
    /// Relaxed stores around one `fence.acq_rel.gpu`.
    GpuFence,
    /// Two relaxed stores, no fence.
    Relaxed,
}

/// One way to ring the doorbell, poll it and answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoWay {
    pub doorbell: Doorbell,
    /// Warps polling, started a fraction of a bus round trip apart (1..=8).
    pub pollers: u32,
    /// The payload is polled itself: each 16-byte chunk carries its stamp (host store only).
    pub inline: bool,
    pub reply: Reply,
    /// What the host writes per echo of an inline payload.
    pub write: Write,
}

/// What the host writes per echo of an inline (stamped) payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The stamps alone (release stores).
    Stamps,
    /// Each chunk's three data words (relaxed), then the stamps (release), as the ring's writer
    /// does.
    Image,
    /// The data words with non-temporal stores (no read for ownership of lines the GPU keeps
    /// polling), a store fence, the stamps likewise, another fence. x86-64 only (else `Image`).
    ImageNonTemporal,
    /// The stamps of two copies of the payload (at most 256 bytes) 256 bytes apart; polling
    /// warp `w` reads copy `w % 2`.
    TwoCopies,
}

impl EchoWay {
    /// One warp polling the doorbell word, two releasing stores back.
    pub fn plain(doorbell: Doorbell) -> EchoWay {
        EchoWay { doorbell, pollers: 1, inline: false, reply: Reply::TwoReleases, write: Write::Stamps }
    }

    /// Report label.
    pub fn label(&self) -> String {
        if *self == EchoWay::plain(self.doorbell) {
            return self.doorbell.label().to_string();
        }
        format!(
            "{}; {} polling warp(s){}; reply {:?}",
            self.doorbell.label(),
            self.pollers,
            match (self.inline, self.write) {
                (false, _) => "",
                (true, Write::Stamps) => ", stamped payload polled itself",
                (true, Write::Image) => ", stamped payload polled itself, its data rewritten",
                (true, Write::ImageNonTemporal) =>
                    ", stamped payload polled itself, rewritten with non-temporal stores",
                (true, Write::TwoCopies) => ", stamped payload in two copies, one per warp",
            },
            self.reply
        )
    }
}

/// Round-trip times, sorted, in µs: `n` doorbells rung one at a time, each answered by a warp
/// after it loaded `payload_bytes` (≤ 512, a multiple of 16) from where the doorbell says (or,
/// inline, polled the stamped payload itself), the reply written to host-mapped memory and
/// polled by this thread.
pub fn echo(dev: &CudaDevice, way: impl Into<EchoWay>, payload_bytes: usize, n: usize) -> Result<Vec<f64>> {
    let way: EchoWay = way.into();
    let how = way.doorbell;
    if payload_bytes % 16 != 0 || payload_bytes > 512 {
        return Err(Error::Config(format!(
            "echo payload of {payload_bytes} bytes: want a multiple of 16, at most 512"
        )));
    }
    if way.inline && (how != Doorbell::HostStore || payload_bytes == 0) {
        return Err(Error::Config("an inline echo needs a host-store doorbell and a payload".into()));
    }
    if way.write == Write::TwoCopies && (!way.inline || payload_bytes > 256) {
        return Err(Error::Config("two copies need an inline payload of at most 256 bytes".into()));
    }
    if !(1..=8).contains(&way.pollers) {
        return Err(Error::Config(format!("{} polling warps: want 1 to 8", way.pollers)));
    }
    dev.gpu().bind()?;
    let module = Module::load(&ptx_with_entries(&["tilemux_echo"]), 0)?;
    let func = module.function("tilemux_echo")?;
    let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
    // Host block: [doorbell u64 | pad | reply u64, sink u64 | pad | payload 512 B].
    let host = PinnedBuffer::new(1024, flags)?;
    let hdev = host.device_addr()?;
    let dev_buf = DeviceBuffer::new(1024)?;
    // SAFETY: 512 bytes at offset 512 of the pinned block, ours alone.
    unsafe {
        for (i, b) in std::slice::from_raw_parts_mut(host.ptr().add(512), 512).iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
    }
    let word = |off: usize| -> &AtomicU64 {
        // SAFETY: 8-aligned offset inside the block; accessed only atomically by the host.
        unsafe { &*(host.ptr().add(off) as *const AtomicU64) }
    };
    let (doorbell, payload) = match how {
        Doorbell::HostStore => (hdev, hdev + 512),
        Doorbell::StreamWrite | Doorbell::CopyThenWrite => (dev_buf.ptr, dev_buf.ptr + 512),
    };
    // SAFETY: zero the device doorbell before the kernel polls it.
    ck("cuMemsetD8", unsafe { sys::cuMemsetD8_v2(dev_buf.ptr, 0, 1024) })?;
    let (kernel_stream, ops) = (Stream::new()?, Stream::new()?);
    let timeout = Duration::from_secs(1);
    let chunks = payload_bytes / 16;
    let mode = match way.reply {
        Reply::TwoReleases => 0,
        Reply::SysFence => 1,
        Reply::GpuFence => 2,
        Reply::Relaxed => 3,
    };
    let copies = if way.write == Write::TwoCopies { ECHO_COPIES } else { 0 };
    let flags = way.pollers | if way.inline { ECHO_INLINE } else { 0 } | copies | mode << ECHO_REPLY_SHIFT;
    let mut params = KernelArgs::new(&[
        doorbell,
        hdev + 64,
        payload,
        chunks as u64,
        n as u64,
        timeout.as_nanos() as u64,
        flags as u64,
    ]);
    let word32 = |c: usize, m: usize| -> &AtomicU32 {
        // SAFETY: 4-aligned offset inside the payload area; accessed only atomically by the host
        // (or by its non-temporal stores, never concurrently).
        unsafe { &*(host.ptr().add(512 + 16 * c + 4 * m) as *const AtomicU32) }
    };
    let stamp = |c: usize| word32(c, 0);
    // The second copy's stamp of chunk `c`.
    let stamp2 = |c: usize| word32(16 + c, 0);
    if way.inline {
        (0..chunks).for_each(|c| stamp(c).store(0, Ordering::Relaxed));
        (0..chunks).filter(|_| way.write == Write::TwoCopies).for_each(|c| stamp2(c).store(0, Ordering::Relaxed));
    }
    // SAFETY: parameters match `tilemux_echo`; the buffers outlive the kernel (joined below).
    ck("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            func,
            1,
            1,
            1,
            32 * way.pollers,
            1,
            1,
            16,
            kernel_stream.0,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    })?;
    let mut out = Vec::with_capacity(n);
    let mut failed = None;
    for i in 1..=n as u64 {
        let t = Instant::now();
        let rung = match how {
            Doorbell::HostStore if way.inline => {
                // Each chunk's stamp after its data (x86 keeps a thread's stores in order; the
                // non-temporal ones are ordered by the fences).
                let data = |c: usize, m: usize| (i as u32).wrapping_mul(2_654_435_761) ^ (4 * c + m) as u32;
                let stamps_stored = match way.write {
                    Write::Stamps => false,
                    Write::TwoCopies => {
                        (0..chunks).for_each(|c| stamp(c).store(i as u32, Ordering::Release));
                        (0..chunks).for_each(|c| stamp2(c).store(i as u32, Ordering::Release));
                        true
                    }
                    #[cfg(target_arch = "x86_64")]
                    Write::ImageNonTemporal => {
                        // SAFETY: 4-aligned words of the payload area, written by this thread
                        // only (the GPU reads them); the first fence orders the data before the
                        // stamps, the second makes the stamps visible now.
                        unsafe {
                            use std::arch::x86_64::{_mm_sfence, _mm_stream_si32};
                            for c in 0..chunks {
                                for m in 1..4 {
                                    _mm_stream_si32(word32(c, m).as_ptr() as *mut i32, data(c, m) as i32);
                                }
                            }
                            _mm_sfence();
                            (0..chunks).for_each(|c| _mm_stream_si32(stamp(c).as_ptr() as *mut i32, i as i32));
                            _mm_sfence();
                        }
                        true
                    }
                    _ => {
                        (0..chunks)
                            .for_each(|c| (1..4).for_each(|m| word32(c, m).store(data(c, m), Ordering::Relaxed)));
                        false
                    }
                };
                if !stamps_stored {
                    (0..chunks).for_each(|c| stamp(c).store(i as u32, Ordering::Release));
                }
                Ok(())
            }
            Doorbell::HostStore => {
                word(0).store(i, Ordering::Release);
                Ok(())
            }
            Doorbell::StreamWrite => {
                // SAFETY: the device doorbell word.
                ck("cuStreamWriteValue64", unsafe { sys::cuStreamWriteValue64_v2(ops.0, doorbell, i, 0) })
            }
            Doorbell::CopyThenWrite => {
                // SAFETY: `payload_bytes` of pinned memory into the device payload, then the
                // doorbell, in stream order.
                ck("cuMemcpyHtoDAsync", unsafe {
                    sys::cuMemcpyHtoDAsync_v2(payload, host.ptr().add(512) as *const c_void, payload_bytes, ops.0)
                })
                .and_then(|()| {
                    // SAFETY: as above.
                    ck("cuStreamWriteValue64", unsafe { sys::cuStreamWriteValue64_v2(ops.0, doorbell, i, 0) })
                })
            }
        };
        if let Err(e) = rung {
            failed = Some(e);
            break;
        }
        while word(64).load(Ordering::Acquire) < i {
            if t.elapsed() > timeout {
                failed = Some(Error::Config(format!("echo {i} ({}) not answered in {timeout:?}", how.label())));
                break;
            }
            std::hint::spin_loop();
        }
        if failed.is_some() {
            break;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // The kernel returns after its n-th echo, or on its own timeout once we stop ringing.
    kernel_stream.sync()?;
    ops.sync()?;
    if let Some(e) = failed {
        return Err(e);
    }
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

/// Round trips from every SM (`tilemux_sm_rtt`): per CTA, one per SM and one at a time, the
/// mean of `n` dependent loads from host-mapped memory and from device memory, in ns, with the
/// CTA's `%smid`. Sorted by SM. Tells whether where the forwarder runs matters.
pub fn sm_rtt(dev: &CudaDevice, n: u32) -> Result<Vec<crate::abi::SmRtt>> {
    use crate::abi::SmRtt;
    let gpu = dev.gpu();
    gpu.bind()?;
    let module = Module::load(&ptx_with_entries(&["tilemux_sm_rtt"]), 0)?;
    let func = module.function("tilemux_sm_rtt")?;
    // More than half an SM's shared memory: one CTA per SM.
    let smem = (gpu.smem_per_sm / 2 + 1024).min(gpu.smem_per_block_optin);
    // SAFETY: a valid function; an attribute the device allows (at most the opt-in size).
    ck("cuFuncSetAttribute", unsafe {
        sys::cuFuncSetAttribute(
            func,
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
    })?;
    let host = PinnedBuffer::new(4096, sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE)?;
    let ctas = gpu.sm_count as usize;
    let words = DeviceBuffer::new(4096)?;
    let out = DeviceBuffer::new(ctas * size_of::<SmRtt>())?;
    // SAFETY: zero the chains' words, the turn word and the records (all ours).
    unsafe {
        std::ptr::write_bytes(host.ptr(), 0, 4096);
        ck("cuMemsetD8", sys::cuMemsetD8_v2(words.ptr, 0, 4096))?;
        ck("cuMemsetD8", sys::cuMemsetD8_v2(out.ptr, 0, out.bytes))?;
    }
    let stream = Stream::new()?;
    let mut params = KernelArgs::new(&[host.device_addr()?, words.ptr, words.ptr + 2048, out.ptr, n as u64, 0]);
    // SAFETY: the parameters match `tilemux_sm_rtt`; a cooperative launch keeps every CTA
    // resident (they take turns); the buffers outlive the kernel (synchronized below).
    ck("cuLaunchCooperativeKernel", unsafe {
        sys::cuLaunchCooperativeKernel(func, ctas as u32, 1, 1, 32, 1, 1, smem, stream.0, params.as_mut_ptr())
    })?;
    stream.sync()?;
    let mut recs = vec![SmRtt::default(); ctas];
    // SAFETY: `ctas` records of device memory into as many host ones.
    ck("cuMemcpyDtoH", unsafe { sys::cuMemcpyDtoH_v2(recs.as_mut_ptr() as *mut c_void, out.ptr, out.bytes) })?;
    recs.iter_mut().for_each(|r| {
        r.host_ns /= n.max(1) as u64;
        r.device_ns /= n.max(1) as u64;
    });
    recs.sort_by_key(|r| r.sm);
    Ok(recs)
}
