//! Long core calls that Ctrl-C stops. Python handles a signal only when the main thread
//! runs Python code, which it does not while it waits in a Rust call: the work runs on a
//! helper thread with the GIL released, and the calling thread checks for signals every
//! `POLL`. On KeyboardInterrupt (or any exception a signal handler raises) it asks the
//! core to stop (`crate::util::cancel`), waits for the work to notice, and raises the exception.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;

use crate::util::cancel;

const POLL: Duration = Duration::from_millis(25);

/// Marks the work done and wakes the caller when the helper's work ends, even by a panic.
struct Wake<'a>(&'a AtomicBool, std::thread::Thread);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
        self.1.unpark();
    }
}

/// Runs `work` with the GIL released so that a signal stops it; its partial result is
/// discarded when a stop was requested, here or by another call's signal.
pub fn interruptible<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> crate::Result<T> + Send,
{
    let _scope = cancel::Scope::enter();
    let waiter = std::thread::current();
    let mut signal: Option<PyErr> = None;
    // Set by the helper before it wakes the caller: `is_finished` turns true only once the
    // thread has exited, after the wake-up, and waiting on it would cost a whole POLL.
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let finished = &done;
        let handle = s.spawn(move || {
            let _wake = Wake(finished, waiter);
            work()
        });
        while !done.load(Ordering::Acquire) {
            py.detach(|| std::thread::park_timeout(POLL));
            if signal.is_none() && !done.load(Ordering::Acquire) {
                if let Err(err) = py.check_signals() {
                    signal = Some(err);
                    cancel::request();
                }
            }
        }
        handle.join()
    });
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    if let Some(err) = signal {
        return Err(err);
    }
    if cancel::requested() {
        return Err(PyKeyboardInterrupt::new_err(
            "stopped: another call was interrupted",
        ));
    }
    Ok(result?)
}

/// Stops every running core call (their callers raise KeyboardInterrupt). For Python
/// code that catches KeyboardInterrupt while worker threads run core calls.
#[pyfunction]
pub fn interrupt() {
    cancel::request();
}
