//! What every long-lived part shares about the process's life: the one shutdown signal, the
//! counted connection slots that shutdown waits on, and the open-files limit.
//!
//! A leaf: it counts and signals, and knows nothing of what is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The shutdown signal, cloned into every part that must stop: listeners stop accepting, new
/// WebSockets and tunnels are refused or closed at once, the drain begins.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<ShutdownState>);

#[derive(Debug, Default)]
struct ShutdownState {
    begun: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Starts the shutdown; every `wait` returns. Calling it again changes nothing.
    pub fn begin(&self) {
        self.0.begun.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_begun(&self) -> bool {
        self.0.begun.load(Ordering::SeqCst)
    }

    /// Resolves once the shutdown has begun (at once if it already has).
    pub async fn wait(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_begun() {
                return;
            }
            notified.await;
        }
    }
}

/// Counted places for connections, at most `max` at a time. Each taken place is given back
/// once (by dropping its [`Slot`], or with [`Slots::give_back`] by a holder that took it over
/// with [`Slot::keep`]); [`Slots::wait_empty`] resolves when the last one is given back.
#[derive(Debug)]
pub struct Slots {
    open: AtomicUsize,
    max: usize,
    empty: Notify,
}

/// The limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {max} places are taken")]
pub struct Full {
    pub max: usize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            open: AtomicUsize::new(0),
            max,
            empty: Notify::new(),
        })
    }

    /// Takes a place, or says the limit is reached.
    pub fn take(self: &Arc<Self>) -> Result<Slot, Full> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.give_back();
            return Err(Full { max: self.max });
        }
        Ok(Slot(Some(self.clone())))
    }

    /// Gives back a place taken with [`Slots::take`] and kept with [`Slot::keep`].
    pub fn give_back(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.empty.notify_waiters();
        }
    }

    /// Places taken now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Resolves once no place is taken (at once if none is).
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A taken place, given back when dropped.
#[derive(Debug)]
pub struct Slot(Option<Arc<Slots>>);

impl Slot {
    /// Hands the place over to a holder that gives it back itself with [`Slots::give_back`]
    /// (so it need not carry a pointer per connection).
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.give_back();
        }
    }
}

/// Raises the soft open-files limit to the hard limit; returns the limit now in force (0 when
/// it cannot be read).
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// `server.max_connections` when none is configured: the open-files limit less a reserve (5%,
/// at least 256) for listeners, upstream and Redis connections and logs; 10000 when the limit is
/// unknown.
pub fn max_connections_for(nofile: u64) -> usize {
    if nofile == 0 {
        return 10_000;
    }
    let nofile = nofile.min(1 << 24);
    let reserve = (nofile / 20).max(256);
    usize::try_from(nofile.saturating_sub(reserve).max(64)).unwrap_or(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_default_max_connections_leaves_a_reserve_of_the_open_files_limit() {
        assert_eq!(max_connections_for(20_000), 19_000);
        assert_eq!(max_connections_for(1024), 768);
        assert_eq!(max_connections_for(0), 10_000, "unknown limit");
        assert_eq!(max_connections_for(100), 64);
        assert_eq!(max_connections_for(u64::MAX), (1 << 24) - (1 << 24) / 20);
    }

    #[test]
    fn slots_refuse_past_the_limit_and_come_back_when_dropped() {
        let s = Slots::new(2);
        let a = s.take().unwrap();
        let b = s.take().unwrap();
        assert_eq!(s.take().unwrap_err(), Full { max: 2 });
        assert_eq!(s.open(), 2, "a refused take leaves the count as it was");
        drop(a);
        let c = s.take().unwrap();
        c.keep();
        assert_eq!(s.open(), 2, "a kept place stays taken");
        s.give_back();
        drop(b);
        assert_eq!(s.open(), 0);
    }

    #[tokio::test]
    async fn wait_empty_wakes_on_the_last_give_back() {
        let s = Slots::new(10);
        let a = s.take().unwrap();
        let b = s.take().unwrap();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait_empty().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one place is still taken");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the last give-back")
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_wakes_waiters_and_later_callers() {
        let sd = Shutdown::new();
        let w = tokio::spawn({
            let sd = sd.clone();
            async move { sd.wait().await }
        });
        tokio::task::yield_now().await;
        sd.begin();
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("woken")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), sd.wait())
            .await
            .expect("a wait after begin returns at once");
        assert!(sd.is_begun());
    }
}
