//! Host-side phase stamps of one request's way through persistent mode's fast path, for finding
//! where submit → result time goes (`--features phases`; compiled out otherwise). The submitting
//! thread stamps each step; the waiter's last stamp closes the record. [`report`] gives the
//! median of each step over the records so far.

/// The steps, in order: what [`STEPS`] names, for [`mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Validated,
    AdmitDone,
    PlanLocks,
    Chosen,
    Planned,
    Admitted,
    Locked,
    Queued,
    HazardsBooked,
    SlotFree,
    ImageWritten,
    Published,
    HandedOver,
    SeenDone,
    Taken,
    HazardsLocked,
    Unbooked,
    UsersReleased,
    Counted,
    Resolved,
    Settled,
    Returned,
}

/// The steps' names, in order.
pub const STEPS: [&str; 22] = [
    "validated",
    "admitted (ring room)",
    "plan: cost lock, chooser lock",
    "plan: kind chosen",
    "planned, checked",
    "costed",
    "scheduler lock",
    "queued (not on the fast path)",
    "hazards booked",
    "slot free (writer lock, room)",
    "image written",
    "published",
    "ticket made, handed to the completer",
    "waiter saw it done",
    "taken from its cell",
    "hazard lock taken",
    "hazards released",
    "buffer users released",
    "counters recorded",
    "ticket resolved",
    "settled",
    "wait returned",
];

#[cfg(feature = "phases")]
mod imp {
    use std::cell::RefCell;
    use std::sync::Mutex;
    use std::time::Instant;

    use super::STEPS;

    thread_local! {
        static MARKS: RefCell<(Option<Instant>, [Option<Instant>; STEPS.len()])> = const { RefCell::new((None, [None; STEPS.len()])) };
    }
    static RECORDS: Mutex<Vec<[f64; STEPS.len()]>> = Mutex::new(Vec::new());

    pub fn start() {
        MARKS.with(|m| *m.borrow_mut() = (Some(Instant::now()), [None; STEPS.len()]));
    }

    pub fn mark(step: usize) {
        let now = Instant::now();
        MARKS.with(|m| {
            let mut m = m.borrow_mut();
            m.1[step] = Some(now);
            if step == STEPS.len() - 1 {
                if let Some(t0) = m.0 {
                    let mut row = [f64::NAN; STEPS.len()];
                    for (r, t) in row.iter_mut().zip(m.1) {
                        if let Some(t) = t {
                            *r = t.saturating_duration_since(t0).as_secs_f64() * 1e6;
                        }
                    }
                    RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push(row);
                }
            }
        });
    }

    pub fn report() -> Option<String> {
        let recs = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
        if recs.is_empty() {
            return None;
        }
        let mut out = format!("{} fast-path requests, median µs since submit():", recs.len());
        for (i, s) in STEPS.iter().enumerate() {
            let mut v: Vec<f64> = recs.iter().map(|r| r[i]).filter(|x| x.is_finite()).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            out += &format!(" {s} {:.2} ({} seen);", v[v.len() / 2], v.len());
        }
        Some(out)
    }
}

#[cfg(not(feature = "phases"))]
mod imp {
    #[inline(always)]
    pub fn start() {}
    #[inline(always)]
    pub fn mark(_step: usize) {}
    pub fn report() -> Option<String> {
        None
    }
}

/// Starts the calling thread's record (at `submit()`).
#[inline(always)]
pub(crate) fn start() {
    imp::start()
}

/// Stamps `step` on the calling thread; [`Step::Returned`] closes its record.
#[inline(always)]
pub(crate) fn mark(step: Step) {
    imp::mark(step as usize)
}

/// Medians of each step over the records so far; `None` without the `phases` feature or records.
pub fn report() -> Option<String> {
    imp::report()
}

const _: () = assert!(Step::Returned as usize == STEPS.len() - 1);
