//! The thread of the priority lane.

use super::BusError;

/// The thread of the priority lane: one per process, started with the first priority-lane
/// subscription (a one-worker runtime, so it has its own timers and I/O driver). Critical
/// messages are read and handled there, never queued behind bulk traffic on a busy runtime.
/// With `realtime` (the first subscription's `delivery.priority_realtime` decides) the thread
/// asks for real-time scheduling: see [`make_realtime`].
pub(super) fn priority_runtime(
    realtime: bool,
) -> Result<&'static tokio::runtime::Runtime, BusError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("dualbus-priority")
                .enable_all()
                .build()
                .inspect(|rt| {
                    // Run on the one worker (not on_thread_start: that would also apply to
                    // the runtime's blocking threads).
                    if realtime {
                        rt.spawn(async { make_realtime() });
                    }
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| BusError::Config(format!("the priority-lane thread could not start: {e}")))
}

/// Puts the calling thread under `SCHED_FIFO` at the lowest real-time priority (1): when a
/// critical message wakes it, it runs at once rather than after the time slice of whichever
/// engine thread holds the core. Measured on a 2-core machine in `dualbus run --flash-crash`:
/// the priority lane's p50 about a third and its p99 about half of what they were (see
/// docs/latency.md). Its handlers are short; a real-time thread that computed for long would
/// starve the other threads of its core (the kernel's real-time throttling leaves them 5%).
/// Without the right (`CAP_SYS_NICE` or `RLIMIT_RTPRIO`) the thread stays as it was.
#[allow(unsafe_code)]
fn make_realtime() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: plain system call on the calling thread (pid 0) with a valid parameter.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        if rc == 0 {
            tracing::debug!("priority-lane thread: real-time scheduling (SCHED_FIFO 1)");
        } else {
            tracing::info!(
                error = %std::io::Error::last_os_error(),
                "priority-lane thread: no real-time scheduling (needs CAP_SYS_NICE or \
                 RLIMIT_RTPRIO); it runs at normal priority"
            );
        }
    }
}
