//! The shard pool: one glommio executor per shard, each on its own thread pinned to its
//! own CPU, joined by a full mesh of bounded channels.
//!
//! Shards share nothing. Work reaches another shard only as an owned message sent over
//! the mesh; each channel holds at most `mesh_channel_capacity` messages, so a slow shard
//! applies backpressure to its senders instead of letting queues grow.
//!
//! Lifecycle: [`ShardPool::start`] spawns the executors and runs the same async body on
//! each with its [`ShardContext`]; [`ShardPool::join`] waits until every body returned.

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};

/// How to start the shards.
#[derive(Debug, Clone)]
pub struct ShardPoolConfig {
    /// Number of shards (executors).
    pub shards: usize,
    /// CPUs to pin shard `i` to (`cpus[i % cpus.len()]`); empty for no pinning.
    pub cpus: Vec<usize>,
    /// Locked memory per shard for io_uring buffers (counts against `ulimit -l`).
    pub io_memory_bytes: usize,
    /// Capacity of each shard-to-shard channel, in messages.
    pub mesh_channel_capacity: usize,
    /// Thread name prefix.
    pub name: String,
}

impl Default for ShardPoolConfig {
    fn default() -> Self {
        let cpus = available_cpus();
        Self {
            shards: cpus.len().max(1),
            cpus,
            io_memory_bytes: 1 << 20,
            mesh_channel_capacity: 1024,
            name: "shard".into(),
        }
    }
}

/// What a shard's body gets: its identity and its end of the mesh.
pub struct ShardContext<M: Send + 'static> {
    /// This shard's number, `0..shards`.
    pub shard: u32,
    /// Number of shards.
    pub shards: u32,
    senders: Rc<Senders<M>>,
    receivers: Option<Receivers<M>>,
}

impl<M: Send + 'static> ShardContext<M> {
    /// A handle for sending to other shards; cheap to clone into tasks.
    pub fn mesh(&self) -> MeshSender<M> {
        MeshSender {
            shard: self.shard,
            senders: Rc::clone(&self.senders),
        }
    }

    /// The receiving ends, one per other shard. Can be taken once.
    pub fn take_inboxes(&mut self) -> Vec<Inbox<M>> {
        let Some(mut receivers) = self.receivers.take() else {
            return Vec::new();
        };
        receivers
            .streams()
            .into_iter()
            .map(|(peer, receiver)| Inbox {
                from_shard: peer as u32,
                receiver,
            })
            .collect()
    }
}

/// Sends owned messages to other shards over bounded channels.
pub struct MeshSender<M: Send + 'static> {
    shard: u32,
    senders: Rc<Senders<M>>,
}

impl<M: Send + 'static> Clone for MeshSender<M> {
    fn clone(&self) -> Self {
        Self {
            shard: self.shard,
            senders: Rc::clone(&self.senders),
        }
    }
}

impl<M: Send + 'static> MeshSender<M> {
    /// Sends `message` to shard `to`, waiting while its channel is full. Gives the message
    /// back if the receiving shard has stopped.
    pub async fn send(&self, to: u32, message: M) -> Result<(), M> {
        assert_ne!(to, self.shard, "a shard does not send to itself");
        self.senders
            .send_to(to as usize, message)
            .await
            .map_err(|error| match error {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(message))
                | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(message)) => {
                    message
                }
                other => panic!("unexpected mesh send error: {other}"),
            })
    }
}

/// Messages from one other shard.
pub struct Inbox<M: Send + 'static> {
    /// The sending shard.
    pub from_shard: u32,
    receiver: glommio::channels::shared_channel::ConnectedReceiver<M>,
}

impl<M: Send + 'static> Inbox<M> {
    /// The next message, or `None` once the sender is gone.
    pub async fn recv(&self) -> Option<M> {
        self.receiver.recv().await
    }
}

/// The running shards.
pub struct ShardPool {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

/// Threads per shard for the system calls io_uring cannot do (unlink, rename, truncate,
/// fallocate): glommio's default is one. On ext4 each of those may wait for the
/// journal's running commit (tens of ms under a heavy write load), so with one thread
/// retention's unlinks, the freeing of deleted segments and the next spare file queued
/// behind one another: a retention pass over eight partitions took seconds and fell
/// behind a 1.5 GB/s ingest. With several, calls waiting for the same commit wait
/// together. They are placed like the shard (they mostly sleep).
const BLOCKING_THREADS_PER_SHARD: usize = 4;

fn blocking_pool(placement: &Placement) -> PoolPlacement {
    match placement {
        Placement::Unbound => PoolPlacement::Unbound(BLOCKING_THREADS_PER_SHARD),
        Placement::Fenced(set) => PoolPlacement::Fenced(BLOCKING_THREADS_PER_SHARD, set.clone()),
        Placement::Fixed(cpu) => match CpuSet::online() {
            Ok(online) => {
                let set = online.filter(|location| location.cpu == *cpu);
                PoolPlacement::Custom(vec![set; BLOCKING_THREADS_PER_SHARD])
            }
            // glommio's own placement (it asks for the online CPUs again, and says why).
            Err(_) => PoolPlacement::from(placement.clone()),
        },
    }
}

impl ShardPool {
    /// Starts `config.shards` executors and runs `body` on each.
    pub fn start<M, F, Fut>(config: &ShardPoolConfig, body: F) -> io::Result<Self>
    where
        M: Send + 'static,
        F: Fn(ShardContext<M>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        assert!(config.shards > 0, "at least one shard");
        let mesh = MeshBuilder::<M, _>::full(config.shards, config.mesh_channel_capacity);
        let mut handles = Vec::with_capacity(config.shards);
        // Set when a shard cannot start (its spawn fails, or its executor is never
        // created): the shards waiting for it in the mesh then give up and end, rather
        // than wait for good.
        let failed = Arc::new(AtomicBool::new(false));
        // Executors are spawned in shard order; the mesh numbers peers by executor id, which
        // grows in spawn order, so peer `i` is shard `i` (checked on join).
        for shard in 0..config.shards {
            let placement = match config.cpus.is_empty() {
                true => Placement::Unbound,
                false => Placement::Fixed(config.cpus[shard % config.cpus.len()]),
            };
            let mesh = mesh.clone();
            let body = body.clone();
            let shards = config.shards as u32;
            // Dropped unused if glommio never creates this shard's executor.
            let unstarted = Unstarted(Some(Arc::clone(&failed)));
            let failed_peer = Arc::clone(&failed);
            let spawned = LocalExecutorBuilder::new(placement.clone())
                .blocking_thread_pool_placement(blocking_pool(&placement))
                .name(&format!("{}-{shard}", config.name))
                .io_memory(config.io_memory_bytes)
                .spawn(move || {
                    let mut unstarted = unstarted;
                    unstarted.0 = None;
                    async move {
                        let joined = super::until(mesh.join(), peer_failed(failed_peer)).await;
                        let Some(joined) = joined else {
                            return;
                        };
                        let (senders, receivers) = joined.expect("joins the shard mesh");
                        assert_eq!(senders.peer_id(), shard, "mesh peer ids follow shard order");
                        body(ShardContext {
                            shard: shard as u32,
                            shards,
                            senders: Rc::new(senders),
                            receivers: Some(receivers),
                        })
                        .await;
                    }
                })
                .map_err(io::Error::from);
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    failed.store(true, Ordering::Release);
                    // The shards already started give up on the mesh and end: waited
                    // for, so nothing of the pool outlives its error.
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(error);
                }
            }
        }
        Ok(Self { handles })
    }

    /// Waits for every shard's body to return. A panicking shard is reported as an error.
    pub fn join(self) -> io::Result<()> {
        // Wait for every shard even after one failed: callers free what the shards use
        // (locks, directories) once this returns.
        let mut first_error = None;
        for handle in self.handles {
            if let Err(error) = handle.join() {
                first_error
                    .get_or_insert_with(|| io::Error::other(format!("a shard failed: {error:?}")));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Marks the pool failed when dropped still holding the flag: a shard whose start-up
/// closure glommio dropped without running (its executor could not be created).
struct Unstarted(Option<Arc<AtomicBool>>);

impl Drop for Unstarted {
    fn drop(&mut self) {
        if let Some(failed) = self.0.take() {
            failed.store(true, Ordering::Release);
        }
    }
}

/// Resolves once a shard of the pool failed to start (checked every 10 ms while the
/// shards join the mesh, which takes a moment).
async fn peer_failed(failed: Arc<AtomicBool>) {
    while !failed.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// The CPUs this process may run on (its affinity mask), in ascending order.
pub fn available_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; zeroed is a valid empty set, and
    // `sched_getaffinity` writes at most `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable `cpu_set_t` of `size` bytes; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return vec![0];
    }
    // SAFETY: `CPU_ISSET` reads the initialised set for indices below `CPU_SETSIZE`.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}
