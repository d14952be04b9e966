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
    next_key: Cell<u64>,
    /// Wakers of pending listeners, by listener; a dropped listener removes its own, so
    /// the set is bounded by the listeners alive, not by how many were ever created.
    waiters: RefCell<std::collections::HashMap<u64, Waker>>,
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
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// A future that completes at the next [`Notify::notify_all`] after this call.
    pub fn listen(&self) -> Listener<'_> {
        Listener {
            notify: self,
            generation: self.generation.get(),
            key: None,
        }
    }

    /// Listeners currently registered (for tests and diagnostics).
    pub fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// The future returned by [`Notify::listen`].
#[derive(Debug)]
pub struct Listener<'a> {
    notify: &'a Notify,
    generation: u64,
    key: Option<u64>,
}

impl Future for Listener<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.generation {
            return Poll::Ready(());
        }
        let key = match self.key {
            Some(key) => key,
            None => {
                let key = self.notify.next_key.get();
                self.notify.next_key.set(key.wrapping_add(1));
                self.key = Some(key);
                key
            }
        };
        let mut waiters = self.notify.waiters.borrow_mut();
        match waiters.get_mut(&key) {
            Some(waker) if waker.will_wake(context.waker()) => {}
            _ => {
                waiters.insert(key, context.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.notify.waiters.borrow_mut().remove(&key);
        }
    }
}

#[cfg(test)]
mod notify_tests {
    use super::*;

    #[test]
    fn dropped_listeners_leave_nothing_behind() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .spawn(|| async {
                let notify = Notify::new();
                for _ in 0..1_000 {
                    // A listener polled once (registered), then dropped unfired.
                    let listener = notify.listen();
                    let _ = crate::shard::until(listener, std::future::ready(())).await;
                }
                assert_eq!(
                    notify.waiting(),
                    0,
                    "wakers of dropped listeners are removed"
                );
                let mut listener = std::pin::pin!(notify.listen());
                let mut context = Context::from_waker(std::task::Waker::noop());
                assert!(listener.as_mut().poll(&mut context).is_pending());
                assert_eq!(notify.waiting(), 1);
                notify.notify_all();
                assert_eq!(notify.waiting(), 0);
                assert!(listener.as_mut().poll(&mut context).is_ready());
            })
            .unwrap()
            .join()
            .unwrap();
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

/// A budget of units (bytes) shared by the tasks of one shard: [`LocalBudget::acquire`]
/// waits until enough is free and returns a permit that gives it back when dropped.
///
/// Waiters are served strictly in the order they called `acquire`, so a later, smaller
/// request never takes units an earlier one is waiting for. Connections rely on this:
/// responses are written in request order, so an earlier request starved by later ones
/// would never release them.
#[derive(Debug)]
pub struct LocalBudget {
    capacity: usize,
    available: Cell<usize>,
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets whose waiters gave up (their future was dropped) before being served.
    abandoned: RefCell<std::collections::BTreeSet<u64>>,
    released: Notify,
}

impl LocalBudget {
    /// A budget of `capacity` units.
    pub fn new(capacity: usize) -> std::rc::Rc<Self> {
        std::rc::Rc::new(Self {
            capacity,
            available: Cell::new(capacity),
            next_ticket: Cell::new(0),
            serving: Cell::new(0),
            abandoned: RefCell::new(std::collections::BTreeSet::new()),
            released: Notify::new(),
        })
    }

    /// Takes `units` (at most the whole capacity, so a large request still proceeds
    /// alone), waiting while they are in use elsewhere.
    pub async fn acquire(self: &std::rc::Rc<Self>, units: usize) -> BudgetPermit {
        let units = units.min(self.capacity);
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        // If this future is dropped while waiting, its turn must not block the ones after.
        let mut turn = Turn {
            budget: self,
            ticket,
            served: false,
        };
        loop {
            let listener = self.released.listen();
            if self.serving.get() == ticket && self.available.get() >= units {
                self.available.set(self.available.get() - units);
                turn.served = true;
                self.advance_past(ticket);
                return BudgetPermit {
                    budget: std::rc::Rc::clone(self),
                    units,
                };
            }
            listener.await;
        }
    }

    /// Takes `units` now if they are free and nobody is waiting in line for them.
    pub fn try_acquire(self: &std::rc::Rc<Self>, units: usize) -> Option<BudgetPermit> {
        let units = units.min(self.capacity);
        if self.serving.get() != self.next_ticket.get() || self.available.get() < units {
            return None;
        }
        self.available.set(self.available.get() - units);
        Some(BudgetPermit {
            budget: std::rc::Rc::clone(self),
            units,
        })
    }

    /// The whole budget.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Units free now.
    pub fn available(&self) -> usize {
        self.available.get()
    }

    /// Moves the turn past `ticket` and past every abandoned ticket after it.
    fn advance_past(&self, ticket: u64) {
        let mut next = ticket + 1;
        let mut abandoned = self.abandoned.borrow_mut();
        while abandoned.remove(&next) {
            next += 1;
        }
        self.serving.set(next);
        drop(abandoned);
        self.released.notify_all();
    }
}

/// A waiter's place in line; gives the place up if dropped before being served.
struct Turn<'a> {
    budget: &'a LocalBudget,
    ticket: u64,
    served: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        if self.budget.serving.get() == self.ticket {
            self.budget.advance_past(self.ticket);
        } else {
            self.budget.abandoned.borrow_mut().insert(self.ticket);
        }
    }
}

/// Units taken from a [`LocalBudget`], returned on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    budget: std::rc::Rc<LocalBudget>,
    units: usize,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget
            .available
            .set(self.budget.available.get() + self.units);
        self.budget.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn try_acquire_takes_only_free_units_and_never_jumps_the_line() {
        crate::shard::run_for_test(async {
            let budget = LocalBudget::new(100);
            let held = budget.try_acquire(70).expect("70 of 100 are free");
            assert!(budget.try_acquire(40).is_none(), "only 30 are free");
            let small = budget.try_acquire(30).expect("30 are free");
            assert_eq!(budget.available(), 0);
            drop(small);
            // A waiter for 50 is in line: 30 free units stay for it.
            let waiter = {
                let budget = Rc::clone(&budget);
                crate::shard::spawn(async move { drop(budget.acquire(50).await) })
            };
            crate::shard::yield_to_ready_tasks().await;
            assert!(budget.try_acquire(10).is_none(), "someone waits");
            drop(held);
            waiter.await;
            assert_eq!(
                budget.try_acquire(100).map(|permit| permit.units),
                Some(100)
            );
            assert_eq!(budget.available(), 100);
        });
    }

    #[test]
    fn budget_serves_waiters_in_order_and_returns_units_on_drop() {
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .spawn(|| async {
                let budget = LocalBudget::new(100);
                let first = budget.acquire(80).await;
                let order = Rc::new(std::cell::RefCell::new(Vec::new()));
                let big = {
                    let (budget, order) = (Rc::clone(&budget), Rc::clone(&order));
                    glommio::spawn_local(async move {
                        let permit = budget.acquire(60).await;
                        order.borrow_mut().push("big");
                        permit
                    })
                };
                let small = {
                    let (budget, order) = (Rc::clone(&budget), Rc::clone(&order));
                    glommio::spawn_local(async move {
                        let _permit = budget.acquire(10).await;
                        order.borrow_mut().push("small");
                    })
                };
                glommio::yield_if_needed().await;
                crate::shard::yield_to_ready_tasks().await;
                // 20 units are free, enough for `small`, but `big` asked first.
                assert!(order.borrow().is_empty());
                drop(first);
                let big_permit = big.await;
                small.await;
                assert_eq!(*order.borrow(), vec!["big", "small"]);
                drop(big_permit);
                assert_eq!(budget.available(), 100);
                let huge = budget.acquire(1_000).await;
                assert_eq!(
                    budget.available(),
                    0,
                    "a request over capacity takes all of it"
                );
                // A waiter that gives up does not block the ones behind it.
                let abandoned = {
                    let budget = Rc::clone(&budget);
                    glommio::spawn_local(async move { drop(budget.acquire(10).await) })
                };
                let behind = {
                    let budget = Rc::clone(&budget);
                    glommio::spawn_local(async move { drop(budget.acquire(10).await) })
                };
                crate::shard::yield_to_ready_tasks().await;
                drop(abandoned); // cancelled while waiting for its turn
                drop(huge);
                behind.await;
                assert_eq!(budget.available(), 100);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
