//! Shard-local waiting: a broadcast [`Notify`] and an async [`LocalMutex`].
//!
//! Both are for tasks of one executor only (`!Send`). Waiters re-check their condition
//! after every wake-up, so a spurious wake-up is harmless.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every task waiting on it when [`Notify::notify_all`] is called.
///
/// Use it as "check, listen, re-check, await": create the listener before the final check
/// of the condition, so a notification between the check and the await is not lost. On a
/// single-threaded executor nothing runs between two lines without an `.await`, so
/// `let listener = notify.listen(); if ready() { .. } listener.await` is race-free.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// A notifier with no waiters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes all current listeners.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    /// A future that completes at the next [`Notify::notify_all`] after this call.
    pub fn listen(&self) -> Listener<'_> {
        Listener {
            notify: self,
            generation: self.generation.get(),
        }
    }
}

/// The future returned by [`Notify::listen`].
#[derive(Debug)]
pub struct Listener<'a> {
    notify: &'a Notify,
    generation: u64,
}

impl Future for Listener<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        if !waiters.iter().any(|waker| waker.will_wake(context.waker())) {
            waiters.push(context.waker().clone());
        }
        Poll::Pending
    }
}

/// An async mutual-exclusion lock for tasks of one shard.
///
/// Holding the guard across `.await` is the point: it serialises multi-step operations
/// (an append that may roll a segment) without blocking the executor.
#[derive(Debug, Default)]
pub struct LocalMutex {
    locked: Cell<bool>,
    released: Notify,
}

impl LocalMutex {
    /// An unlocked mutex.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until the lock is free and takes it.
    pub async fn lock(&self) -> LocalMutexGuard<'_> {
        loop {
            let listener = self.released.listen();
            if !self.locked.get() {
                self.locked.set(true);
                return LocalMutexGuard { mutex: self };
            }
            listener.await;
        }
    }
}

/// Releases the [`LocalMutex`] when dropped.
#[derive(Debug)]
pub struct LocalMutexGuard<'a> {
    mutex: &'a LocalMutex,
}

impl Drop for LocalMutexGuard<'_> {
    fn drop(&mut self) {
        self.mutex.locked.set(false);
        self.mutex.released.notify_all();
    }
}
