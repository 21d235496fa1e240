//! Timers on a timerfd: the kernel wakes the thread once, at the deadline (a tokio sleep or
//! interval of a few hundred milliseconds or more wakes the thread at each level of the
//! runtime's timer wheel on the way): the pipeline's timers that run while events flow.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::io::{Interest, unix::AsyncFd};

pub struct TimerFd {
    fd: AsyncFd<OwnedFd>,
}

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd it returns is owned below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the fd, and `as_raw_fd` always returns that same fd.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Expires `after` from now (at least a nanosecond: zero would disarm it).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        self.set(
            timespec(after.max(Duration::from_nanos(1))),
            timespec(Duration::ZERO),
        )
    }

    /// Expires every `period` from now on (a missed expiry is one tick, as tokio's `Skip`).
    pub fn every(period: Duration) -> io::Result<Self> {
        let t = Self::new()?;
        t.repeat(period)?;
        Ok(t)
    }

    /// From now on expires every `period`.
    pub fn repeat(&self, period: Duration) -> io::Result<()> {
        let period = timespec(period.max(Duration::from_nanos(1)));
        self.set(period, period)
    }

    /// Stops it, and forgets an expiry nobody waited for (it would end the next wait early).
    pub fn disarm(&self) -> io::Result<()> {
        self.set(timespec(Duration::ZERO), timespec(Duration::ZERO))?;
        self.read().map(|_| ())
    }

    /// Waits for the (next) expiry.
    pub async fn expired(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            if self.read()? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    fn set(&self, value: libc::timespec, interval: libc::timespec) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: interval,
            it_value: value,
        };
        // SAFETY: our fd, a valid itimerspec, no old value asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiry count: true when it had expired.
    fn read(&self) -> io::Result<bool> {
        let mut count = 0u64;
        // SAFETY: 8 bytes into a u64 we own.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(count).cast(),
                size_of::<u64>(),
            )
        };
        if n == size_of::<u64>() as isize {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn expires_once_at_the_deadline_and_a_disarmed_one_never() {
        let t = TimerFd::new().unwrap();
        let start = Instant::now();
        t.arm(Duration::from_millis(30)).unwrap();
        t.expired().await.unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        t.disarm().unwrap();
        // Disarmed before its deadline: no expiry is left behind.
        t.arm(Duration::from_millis(10)).unwrap();
        t.disarm().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let waited = tokio::time::timeout(Duration::from_millis(50), t.expired()).await;
        assert!(waited.is_err(), "a disarmed timer expired");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_periodic_one_ticks_each_period() {
        let t = TimerFd::every(Duration::from_millis(20)).unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            t.expired().await.unwrap();
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(60), "{took:?}");
    }
}
