//! Tickets: the result of submitted work, to wait on (blocking, with a timeout) or to `.await`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

enum Slot<T> {
    Pending(Option<Waker>),
    Ready(Result<T>),
    Taken,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    cv: Condvar,
    /// Set once the slot holds a result (lets waiters spin without the lock).
    ready: AtomicBool,
    /// Threads blocked on `cv` (changed under `slot`'s lock): the resolver skips the wake-up
    /// system call when there are none, the usual case (waiters spin first).
    sleepers: AtomicU32,
    /// Called by a spinning waiter with `true` on every spin, and once with `false` when it stops
    /// spinning to block: lets it finish the work itself once done (persistent mode's fast path,
    /// whose completion words the waiter can read), ahead of the completer thread. A hook that
    /// finished the work returns its result: the waiter returns it as it is, and the slot is
    /// never written (the waiter owns the ticket, so no one else can look).
    hook: OnceLock<Hook<T>>,
}

/// A waiter's hook (see `Shared::hook`).
pub(crate) type Hook<T> = Box<dyn Fn(bool) -> Option<Result<T>> + Send + Sync>;

/// A pending result. Resolves exactly once: with the work's outcome, or with an error when the
/// work was rejected, cancelled (tenant removed, runtime shut down) or its round failed.
#[must_use = "a ticket is how the result (or error) of submitted work comes back"]
pub struct Ticket<T> {
    shared: Arc<Shared<T>>,
}

/// The runtime's end of a [`Ticket`]. Dropping it unresolved resolves the ticket with
/// [`Error::Closed`], so no ticket can hang.
pub(crate) struct Resolver<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// A connected ticket and resolver.
pub(crate) fn ticket<T>() -> (Ticket<T>, Resolver<T>) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot::Pending(None)),
        cv: Condvar::new(),
        ready: AtomicBool::new(false),
        sleepers: AtomicU32::new(0),
        hook: OnceLock::new(),
    });
    (Ticket { shared: shared.clone() }, Resolver { shared: Some(shared) })
}

impl<T> Resolver<T> {
    /// Gives the ticket's spinning waiter `hook` to call (at most once set): `hook(true)` on each
    /// spin should resolve the ticket through this resolver when the work is done, and do nothing
    /// otherwise; `hook(false)` says the waiter stops spinning (someone else must finish it).
    pub(crate) fn set_hook(&self, hook: Hook<T>) {
        if let Some(s) = &self.shared {
            let _ = s.hook.set(hook);
        }
    }

    /// Resolves the ticket (first call wins; the resolver is consumed).
    pub(crate) fn resolve(mut self, r: Result<T>) {
        self.set(r);
    }

    /// Consumes the resolver without resolving: only for a hook that hands the result to the
    /// ticket's waiter itself, the one caller that can still observe the ticket.
    pub(crate) fn hand_over(mut self, r: Result<T>) -> Result<T> {
        self.shared = None;
        r
    }

    fn set(&mut self, r: Result<T>) {
        if let Some(s) = self.shared.take() {
            let mut slot = s.slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Slot::Pending(Some(w)) = std::mem::replace(&mut *slot, Slot::Ready(r)) {
                w.wake();
            }
            s.ready.store(true, Ordering::Release);
            if s.sleepers.load(Ordering::Relaxed) > 0 {
                s.cv.notify_all();
            }
        }
    }
}

impl<T> Drop for Resolver<T> {
    fn drop(&mut self) {
        self.set(Err(Error::Closed));
    }
}

impl<T> std::fmt::Debug for Ticket<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_done() { "Ticket(done)" } else { "Ticket(pending)" })
    }
}

impl<T> Ticket<T> {
    /// Whether the result is in (a wait would not block).
    pub fn is_done(&self) -> bool {
        !matches!(*self.shared.slot.lock().unwrap_or_else(|e| e.into_inner()), Slot::Pending(_))
    }

    /// Tells the hook, if any, that this ticket's result is waited for without spinning (a
    /// future, a wait with a timeout): whoever else finishes the work must not leave it to us.
    fn not_spinning(&self) {
        if let Some(hook) = self.shared.hook.get().filter(|_| !self.shared.ready.load(Ordering::Acquire)) {
            let _ = hook(false);
        }
    }

    fn take(slot: &mut Slot<T>) -> Option<Result<T>> {
        match std::mem::replace(slot, Slot::Taken) {
            Slot::Ready(r) => Some(r),
            Slot::Taken => Some(Err(Error::RoundFailed("the ticket's result was already taken".into()))),
            p @ Slot::Pending(_) => {
                *slot = p;
                None
            }
        }
    }

    /// Blocks until the result is in (spinning briefly first where cores allow: most results
    /// arrive within a round, and a sleeping thread's wake-up adds tens of microseconds).
    pub fn wait(self) -> Result<T> {
        let (t, spin) = (Instant::now(), super::scheduler::spin());
        let hook = self.shared.hook.get();
        // The clock is read every 16th spin: a read costs more than a spin, and each spin's
        // cost is how late the waiter can see the result.
        let mut spins = 0u32;
        while !self.shared.ready.load(Ordering::Acquire) && (spins % 16 != 0 || t.elapsed() < spin) {
            if let Some(r) = hook.and_then(|hook| hook(true)) {
                super::phases::mark(super::phases::Step::Returned);
                return r;
            }
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
        }
        if let Some(hook) = hook.filter(|_| !self.shared.ready.load(Ordering::Acquire)) {
            // Only says the waiter stops spinning: it finishes nothing.
            let _ = hook(false);
        }
        let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = Self::take(&mut slot) {
                super::phases::mark(super::phases::Step::Returned);
                return r;
            }
            self.shared.sleepers.fetch_add(1, Ordering::Relaxed);
            slot = self.shared.cv.wait(slot).unwrap_or_else(|e| e.into_inner());
            self.shared.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Blocks at most `timeout`; on [`Error::Timeout`] the ticket stays valid and can be waited on
    /// again.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<T> {
        let deadline = Instant::now() + timeout;
        self.not_spinning();
        let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = Self::take(&mut slot) {
                return r;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(timeout));
            }
            self.shared.sleepers.fetch_add(1, Ordering::Relaxed);
            slot = self.shared.cv.wait_timeout(slot, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
            self.shared.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = Self::take(&mut slot) {
            return Poll::Ready(r);
        }
        *slot = Slot::Pending(Some(cx.waker().clone()));
        drop(slot);
        self.not_spinning();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_then_resolve() {
        let (mut t, r) = ticket::<u32>();
        assert!(matches!(t.wait_timeout(Duration::from_millis(5)), Err(Error::Timeout(_))));
        assert!(!t.is_done());
        let h = std::thread::spawn(move || r.resolve(Ok(7)));
        assert_eq!(t.wait_timeout(Duration::from_secs(5)).unwrap(), 7);
        h.join().unwrap();
    }

    #[test]
    fn dropped_resolver_closes() {
        let (t, r) = ticket::<()>();
        drop(r);
        assert!(matches!(t.wait(), Err(Error::Closed)));
    }

    #[test]
    fn future_resolves() {
        let (t, r) = ticket::<&str>();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            r.resolve(Ok("done"));
        });
        assert_eq!(pollster::block_on(t).unwrap(), "done");
    }
}
