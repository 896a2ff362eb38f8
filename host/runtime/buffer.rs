//! Tenant buffers: typed handles to a zeroed block of a tenant's arena.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::ticket::{Ticket, ticket};
use super::{Inner, TenantState};
use crate::error::{Error, Result};

/// A tenant's `f32` buffer in device memory. Cloning makes another handle to the same memory; the
/// memory returns to the tenant's arena when the last handle (and the last op using it) is gone.
///
/// Transfers wait for the tenant's pending ops that use the buffer, so a `write` after a `submit`
/// never races the op, and a `read` sees its result.
#[derive(Clone)]
pub struct Buffer {
    inner: Arc<BufferInner>,
}

pub(crate) struct BufferInner {
    id: u64,
    addr: u64,
    len: usize,
    tenant: Arc<TenantState>,
    rt: Arc<Inner>,
    /// Ops (queued or in a round) that read or write this buffer; not those persistent mode's
    /// fast path took straight to the device, which `on_device` counts.
    users: AtomicUsize,
    /// Persistent mode's hazards: requests on the device that read (low 32 bits) and write
    /// (high 32 bits) this buffer. Changed only under the ring's hazard lock, so plain loads
    /// and stores (no read-modify-write) suffice; stored with release, so a transfer that sees
    /// it zero without the lock ([`Buffer::settle`]) sees the requests' completion too.
    on_device: AtomicU64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer#{}({} × f32 of {})", self.inner.id, self.inner.len, self.inner.tenant.name)
    }
}

impl Drop for BufferInner {
    fn drop(&mut self) {
        self.tenant.free(self.addr, self.len as u64 * 4);
    }
}

impl Buffer {
    pub(crate) fn new(rt: Arc<Inner>, tenant: Arc<TenantState>, id: u64, addr: u64, len: usize) -> Buffer {
        let (users, on_device) = (AtomicUsize::new(0), AtomicU64::new(0));
        Buffer { inner: Arc::new(BufferInner { id, addr, len, tenant, rt, users, on_device }) }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// Name of the owning tenant.
    pub fn tenant_name(&self) -> &str {
        &self.inner.tenant.name
    }

    pub(crate) fn tenant_id(&self) -> u32 {
        self.inner.tenant.id
    }

    /// Whether the buffer is `tenant`'s (the same tenant of the same runtime: ids repeat across
    /// runtimes).
    pub(crate) fn belongs_to(&self, tenant: &TenantState) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.inner.tenant), tenant)
    }

    /// The owning tenant's name, as an error names it (said to be of another runtime when it
    /// only shares the submitting tenant's id).
    pub(crate) fn owner_for(&self, tenant: &TenantState) -> String {
        if self.tenant_id() == tenant.id {
            format!("{} of another runtime", self.tenant_name())
        } else {
            self.tenant_name().to_string()
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// The buffer's identity in the process: its runtime's id (unique in the process) and its id
    /// (unique in the runtime).
    pub(crate) fn key(&self) -> (u64, u64) {
        (self.inner.rt.id, self.inner.id)
    }

    pub(crate) fn addr(&self) -> u64 {
        self.inner.addr
    }

    pub(crate) fn add_user(&self) {
        self.inner.users.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn remove_user(&self) {
        self.inner.users.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests on the device that `(read, write)` the buffer. Only under the ring's hazard lock.
    pub(crate) fn on_device(&self) -> (u32, u32) {
        let v = self.inner.on_device.load(Ordering::Relaxed);
        (v as u32, (v >> 32) as u32)
    }

    /// Counts one more request on the device that reads (or `write`s) the buffer, or one fewer
    /// (`add` false). Only under the ring's hazard lock.
    pub(crate) fn count_on_device(&self, write: bool, add: bool) {
        let (r, w) = self.on_device();
        let step = |n: u32, this: bool| match (this, add) {
            (false, _) => n,
            (true, true) => n + 1,
            (true, false) => n.saturating_sub(1),
        };
        let (r, w) = (step(r, !write), step(w, write));
        self.inner.on_device.store(u64::from(w) << 32 | u64::from(r), Ordering::Release);
    }

    /// Fails if the buffer can no longer be used (tenant removed, runtime shut down).
    fn usable(&self) -> Result<()> {
        self.inner.rt.check_open()?;
        if self.inner.tenant.is_removed() {
            return Err(Error::NoSuchTenant(self.inner.tenant.name.to_string()));
        }
        Ok(())
    }

    fn settle(&self) -> Result<()> {
        self.usable()?;
        self.inner.rt.wait_until(|| {
            self.inner.users.load(Ordering::Acquire) == 0 && self.inner.on_device.load(Ordering::Acquire) == 0
        });
        self.usable()
    }

    /// Copies `data` into the buffer from element `offset`, after the pending ops using it.
    pub fn write_at(&self, offset: usize, data: &[f32]) -> Result<()> {
        if offset + data.len() > self.inner.len {
            return Err(Error::BufferTooSmall { len: self.inner.len, needed: offset + data.len() });
        }
        self.settle()?;
        self.inner.rt.device.write(self.inner.addr + offset as u64 * 4, data)?;
        self.inner.tenant.stats.lock().unwrap_or_else(|e| e.into_inner()).bytes_in += size_of_val(data) as u64;
        Ok(())
    }

    /// Copies `data` into the start of the buffer, after the pending ops using it.
    pub fn write(&self, data: &[f32]) -> Result<()> {
        self.write_at(0, data)
    }

    /// Copies the buffer out, after the pending ops using it.
    pub fn read(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.inner.len];
        self.read_into(&mut out)?;
        Ok(out)
    }

    /// Copies the first `out.len()` elements out, after the pending ops using the buffer.
    pub fn read_into(&self, out: &mut [f32]) -> Result<()> {
        if out.len() > self.inner.len {
            return Err(Error::BufferTooSmall { len: self.inner.len, needed: out.len() });
        }
        self.settle()?;
        self.inner.rt.device.read(self.inner.addr, out)?;
        self.inner.tenant.stats.lock().unwrap_or_else(|e| e.into_inner()).bytes_out += size_of_val(out) as u64;
        Ok(())
    }

    /// [`Buffer::write`] on the runtime's transfer thread; transfers run in submission order.
    pub fn write_async(&self, data: Vec<f32>) -> Ticket<()> {
        let (t, r) = ticket();
        let me = self.clone();
        self.inner.rt.transfer(Box::new(move || r.resolve(me.write(&data))));
        t
    }

    /// [`Buffer::read`] on the runtime's transfer thread.
    pub fn read_async(&self) -> Ticket<Vec<f32>> {
        let (t, r) = ticket();
        let me = self.clone();
        self.inner.rt.transfer(Box::new(move || r.resolve(me.read())));
        t
    }
}
