//! The agent's expiry schedule: every learned member's own deadline, in a binary heap, so the
//! agent sleeps until the earliest one ([`Alarm`]) instead of ticking.
//!
//! Invariants:
//! - Each learned member has one entry, armed at a time no later than its deadline; a refresh
//!   only moves the deadline later (no heap operation). An entry that comes due is checked
//!   against the member's current deadline: re-armed there if the member was refreshed, or
//!   reported due.
//! - An entry armed for a member that has since gone (or come back with another entry) is
//!   recognised by its arming time and dropped.
//!
//! The [`Alarm`] is a timerfd, so the agent wakes within tens of microseconds of the earliest
//! entry: tokio's timers round a deadline up to the next millisecond, which would judge a member
//! up to about 2 ms after its hold.
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use tokio::io::{Interest, unix::AsyncFd};

/// A min-heap of (arming time, key).
#[derive(Debug)]
pub struct Deadlines<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord + Copy> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// Arms an entry for `key` at `at`; the caller records `at` as the key's arming time.
    pub fn arm(&mut self, key: K, at: Instant) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest arming time, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, Instant)> {
        if self.next()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse((at, key))| (key, at))
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

/// A one-shot alarm on `CLOCK_MONOTONIC` (the clock of `Instant`), with the kernel's timer
/// precision: a timerfd.
pub struct Alarm {
    fd: AsyncFd<OwnedFd>,
    /// The time the timer is set for and not yet seen to fire (a change costs a syscall).
    armed: Option<Instant>,
}

impl Alarm {
    pub fn new() -> io::Result<Self> {
        // SAFETY: no memory is passed; the result is checked before it is used as an fd.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns or closes.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same until the
        // AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, armed: None })
    }

    /// Completes at `at` (at once if it has passed and was not the time already set; else
    /// when the reactor reports the firing), never if `None`. Cancel-safe: dropped
    /// before it completes, it leaves the timer set, and the next call sets it again only if
    /// `at` changed (setting a timerfd discards a firing not yet read).
    pub async fn until(&mut self, at: Option<Instant>) -> io::Result<()> {
        let Some(at) = at else {
            return std::future::pending().await;
        };
        if self.armed != Some(at) {
            let wait = at.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                self.armed = None;
                return Ok(());
            }
            self.set(wait)?;
            self.armed = Some(at);
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut fired = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8 this function owns.
            let n =
                unsafe { libc::read(guard.get_inner().as_raw_fd(), fired.as_mut_ptr().cast(), 8) };
            if n == 8 {
                self.armed = None;
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }

    /// Sets the timer to fire once, `wait` from now.
    fn set(&self, wait: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call's duration; no old value is asked.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_come_due_in_deadline_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut d = Deadlines::default();
        d.arm(3u32, ms(30));
        d.arm(1, ms(10));
        d.arm(2, ms(20));
        assert_eq!(d.next(), Some(ms(10)));
        assert_eq!(d.pop_due(ms(5)), None);
        assert_eq!(d.pop_due(ms(25)), Some((1, ms(10))));
        assert_eq!(d.pop_due(ms(25)), Some((2, ms(20))));
        assert_eq!(d.pop_due(ms(25)), None);
        assert_eq!(d.pop_due(ms(30)), Some((3, ms(30))));
        assert_eq!(d.next(), None);
    }

    #[test]
    fn the_alarm_wakes_on_time_not_on_the_next_millisecond() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut alarm = Alarm::new().unwrap();
            // A passed deadline completes at once; a changed one replaces the armed one.
            alarm.until(Some(Instant::now())).await.unwrap();
            let far = Instant::now() + Duration::from_secs(60);
            tokio::select! {
                _ = alarm.until(Some(far)) => panic!("the far alarm fired"),
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            let near = Instant::now() + Duration::from_millis(3);
            alarm.until(Some(near)).await.unwrap();
            assert!(Instant::now() >= near);
            // Never early, and (loosely, so that a loaded machine passes in one of three
            // rounds) on time: deadlines fall between the milliseconds, where tokio's rounding
            // up alone would make the median about 0.5 ms late.
            let mut medians = Vec::new();
            for _ in 0..3 {
                let mut late = Vec::new();
                for i in 0..20u32 {
                    let at = Instant::now() + Duration::from_micros(2_000 + 137 * u64::from(i));
                    alarm.until(Some(at)).await.unwrap();
                    let now = Instant::now();
                    assert!(now >= at, "woke {:?} early", at - now);
                    late.push(now - at);
                }
                late.sort();
                medians.push(late[10]);
                if late[10] < Duration::from_micros(300) {
                    return;
                }
            }
            panic!("median lateness {medians:?} in three rounds");
        });
    }
}
