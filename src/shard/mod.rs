//! Shards: one glommio executor per core, and the primitives code running on a shard
//! needs from it.
//!
//! - `runtime` — the [`ShardPool`]: executors pinned to CPUs, joined by a full mesh of
//!   bounded channels for owned messages between shards;
//! - `placement` — which shard owns a partition ([`shard_for_partition`]);
//! - `clock` — the [`Clock`] seam for time-based decisions;
//! - `sync` — shard-local waiting ([`Notify`], [`LocalMutex`]);
//! - `stall` — reports of a shard held up, and of slow disk operations, with where the
//!   time went.
//!
//! Everything here is `!Send` by design: state owned by a shard is only touched by that
//! shard, so it uses `Rc`, `Cell` and `RefCell`, never locks or atomics. Waiting is done
//! with [`Notify`] and [`LocalMutex`], which are cheap because they never cross threads.
//!
//! This module, the storage DMA adapter and the server's socket code are the only places
//! that name glommio, so the executor stays replaceable.

mod clock;
mod placement;
mod runtime;
pub mod stall;
mod sync;

pub use clock::{Clock, ManualClock, SystemClock};
pub use placement::{fnv1a_64, shard_for_partition};
pub use runtime::{available_cpus, Inbox, MeshSender, ShardContext, ShardPool, ShardPoolConfig};
pub use sync::{BudgetPermit, LocalBudget, LocalMutex, LocalMutexGuard, Notify};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Keeps large I/O buffers in the allocator instead of returning them to the kernel.
///
/// Direct I/O buffers (staging buffers, read windows) are megabytes each. glibc serves
/// such sizes with `mmap` and unmaps them on free, so every buffer costs fresh page
/// faults, kernel page zeroing and an `munmap`; profiling a cold read showed more CPU
/// there than in the reads themselves. Raising the mmap and trim thresholds makes freed
/// buffers reusable from the heap. Call once at start-up, before the shards start.
pub fn tune_allocator() {
    const THRESHOLD_BYTES: libc::c_int = 64 << 20;
    // SAFETY: `mallopt` only changes allocator parameters; it is called before the shards
    // allocate I/O buffers, and any value is valid for these two options.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * THRESHOLD_BYTES);
    }
}

/// Runs `future` to completion on an executor of its own on this thread; for unit tests
/// of code that runs on a shard.
#[cfg(test)]
pub(crate) fn run_for_test<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("a test executor")
        .run(future)
}

/// Runs `future` to completion in the background on the current shard.
///
/// Must be called from inside a shard's executor. The task is detached: it keeps running
/// when the caller moves on, and reports its outcome through shared state.
pub fn spawn_detached<F>(future: F)
where
    F: Future<Output = ()> + 'static,
{
    glommio::spawn_local(future).detach();
}

/// Runs `future` as a task of its own on this shard and waits for its output. Unlike a
/// [`Task`] (or the future awaited in place), dropping the wait does not cancel it: work
/// that must not stop half-way runs to its end either way.
pub async fn run_to_end<T: 'static>(future: impl Future<Output = T> + 'static) -> T {
    glommio::spawn_local(future)
        .detach()
        .await
        .expect("a detached task runs to its end while its shard runs")
}

/// Runs `work` on one of this shard's helper threads (the ones for the system calls
/// io_uring cannot make) and waits for it without blocking the shard: for file system
/// work that may take a while, such as removing a deleted partition's files.
pub async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(work).await
}

/// Lets other tasks on this shard run if this one has used up its time slice: long loops
/// call this so one task cannot starve the shard.
pub async fn yield_now() {
    glommio::yield_if_needed().await;
}

/// Waits for `duration` without blocking the shard.
pub async fn sleep(duration: std::time::Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `future` until it completes or `deadline` passes, whichever comes first; `None`
/// on timeout (the future is dropped).
pub async fn with_deadline<F: Future>(
    future: F,
    deadline: std::time::Instant,
) -> Option<F::Output> {
    let timer =
        glommio::timer::Timer::new(deadline.saturating_duration_since(std::time::Instant::now()));
    until(future, timer).await
}

/// Runs `future` until it completes or `stop` completes first; `None` if stopped (the
/// future is dropped).
pub async fn until<F: Future, S: Future>(future: F, stop: S) -> Option<F::Output> {
    Race {
        future: Box::pin(future),
        stop: Box::pin(stop),
    }
    .await
}

struct Race<F: Future, S: Future> {
    future: Pin<Box<F>>,
    stop: Pin<Box<S>>,
}

impl<F: Future, S: Future> Future for Race<F, S> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(context) {
            return Poll::Ready(Some(output));
        }
        match self.stop.as_mut().poll(context) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A task running on this shard; awaiting it gives its output, dropping it cancels it.
pub type Task<T> = glommio::Task<T>;

/// Starts `future` as a task on this shard.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Lets every task that is ready now run before this one continues. Used where waiting
/// a moment lets more work join a batch (group commit), never for correctness.
pub async fn yield_to_ready_tasks() {
    YieldOnce(false).await;
}

struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        // Re-queue this task behind the ones already ready.
        context.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    /// A wait for `run_to_end` given up on (its caller dropped) leaves the work running
    /// to its end; the same future awaited in place would have stopped.
    #[test]
    fn work_run_to_end_finishes_when_its_caller_goes() {
        super::run_for_test(async {
            let done = Rc::new(Cell::new(false));
            let work = |done: Rc<Cell<bool>>| async move {
                super::sleep(Duration::from_millis(50)).await;
                done.set(true);
            };
            let soon = || Instant::now() + Duration::from_millis(5);
            let in_place = super::with_deadline(work(Rc::clone(&done)), soon()).await;
            assert!(in_place.is_none());
            super::sleep(Duration::from_millis(100)).await;
            assert!(!done.get(), "awaited in place, it stopped with its caller");
            let detached =
                super::with_deadline(super::run_to_end(work(Rc::clone(&done))), soon()).await;
            assert!(detached.is_none(), "the caller stopped waiting");
            super::sleep(Duration::from_millis(100)).await;
            assert!(done.get(), "run to its end all the same");
        });
    }
}
