//! The per-image CPU deadline. Images are compressed on one thread each,
//! so the thread's own CPU clock measures exactly one image's work: time
//! spent waiting for a core or for decode memory does not count, and a busy
//! machine does not fail images that a quiet one would pass.

use std::time::Duration;

/// The moment, on this thread's CPU clock, after which an image's work stops.
#[derive(Debug, Clone, Copy)]
pub struct CpuDeadline {
    until: Duration,
    limit: Duration,
}

impl CpuDeadline {
    /// `limit` of CPU time from now, on the calling thread.
    pub fn after(limit: Duration) -> Self {
        Self {
            until: thread_cpu_time().saturating_add(limit),
            limit,
        }
    }

    /// Whether the calling thread has used up the time (meaningful on the
    /// thread that made the deadline).
    pub fn passed(&self) -> bool {
        thread_cpu_time() > self.until
    }

    /// The error an image gets when it runs past its deadline.
    pub fn message(&self) -> String {
        format!(
            "decoding and encoding took more than {:?} of CPU time",
            self.limit
        )
    }
}

/// CPU time used by the calling thread.
#[cfg(unix)]
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` into the one given.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Without a thread CPU clock, elapsed time since the process started
/// stands in: stricter on a busy machine, never looser.
#[cfg(not(unix))]
pub fn thread_cpu_time() -> Duration {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "calls clock_gettime")]
    fn the_clock_counts_work_not_waiting() {
        let started = thread_cpu_time();
        let deadline = CpuDeadline::after(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!deadline.passed(), "sleeping uses no CPU");
        let mut x = 0u64;
        while !deadline.passed() {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(thread_cpu_time() - started >= Duration::from_millis(20));
        assert!(
            deadline.message().contains("20ms of CPU time"),
            "{}",
            deadline.message()
        );
    }
}
