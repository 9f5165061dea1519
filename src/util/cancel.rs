//! Stopping long calls early (Ctrl-C). The caller (the binding layer, when Python
//! raises KeyboardInterrupt) calls `request`; the long loops of the optimizers and the
//! simulator poll `requested` and stop at their next step. A stopped call's result is
//! partial, so whoever runs the work under a `Scope` must look at `requested` when it
//! ends and discard the result if it is set.
//!
//! The flag is process-wide, like the signal: every call running when it is set stops.
//! It is cleared when the last running `Scope` ends, so a later call starts afresh.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// True once a stop has been requested and until the last running scope ends.
#[inline]
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Asks every running scope's work to stop. Does nothing if none runs.
pub fn request() {
    if RUNNING.load(Ordering::SeqCst) > 0 {
        REQUESTED.store(true, Ordering::SeqCst);
    }
}

/// One stoppable call: work polls `requested` while at least one scope lives.
pub struct Scope(());

impl Scope {
    pub fn enter() -> Scope {
        RUNNING.fetch_add(1, Ordering::SeqCst);
        Scope(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if RUNNING.fetch_sub(1, Ordering::SeqCst) == 1 {
            REQUESTED.store(false, Ordering::SeqCst);
        }
    }
}
