//! Starting and stopping a broker: checks with clear advice, one shard per core, the
//! listeners, retention, and a graceful shutdown that flushes every partition.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::net::TcpListener;

use super::config::BrokerConfig;
use super::connection::serve;
use super::mesh::MeshMessage;
use super::state::{load_catalog, ShardState};
use crate::partition::Partition;
use crate::shard::{
    available_cpus, sleep, spawn, spawn_detached, stall, until, ShardContext, ShardPool,
    ShardPoolConfig, SystemClock,
};

/// What the broker reports once every shard is serving.
#[derive(Debug, Clone)]
pub struct StartupSummary {
    /// Number of shards.
    pub shards: usize,
    /// CPUs the shards are pinned to.
    pub cpus: Vec<usize>,
    /// The shared address.
    pub listen: SocketAddr,
    /// Each shard's own port.
    pub shard_ports: Vec<u16>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Partitions opened (recovered).
    pub partitions: usize,
    /// Bytes recovery cut from damaged or torn log tails.
    pub bytes_cut: u64,
}

/// Why a broker could not start; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listen address is taken.
    #[error("{addr} is already in use: stop the other process or choose another --listen address")]
    PortInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The data directory cannot be written.
    #[error(
        "data directory {path} is not writable ({reason}): create it or choose another --data-dir"
    )]
    DataDirNotWritable {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another broker uses the data directory.
    #[error("data directory {path} is in use by another broker (it holds {path}/.lock)")]
    DataDirInUse {
        /// The directory.
        path: PathBuf,
    },
    /// The locked-memory limit is below what the shards need.
    #[error(
        "locked memory limit (ulimit -l) is {limit_bytes} bytes but {needed_bytes} are needed for \
         {shards} shards: raise it (ulimit -l, or LimitMEMLOCK= in a systemd unit) or use fewer --shards"
    )]
    MemlockTooLow {
        /// The current limit.
        limit_bytes: u64,
        /// What the shards need.
        needed_bytes: u64,
        /// Shards requested.
        shards: usize,
    },
    /// io_uring cannot be used here.
    #[error(
        "cannot start the io_uring executors ({0}): Flumen needs Linux 5.8+ with io_uring enabled; \
         containers may block it (seccomp): allow io_uring_setup/io_uring_enter"
    )]
    IoUringUnavailable(String),
    /// A shard failed while starting.
    #[error("a shard failed to start: {0}")]
    Shard(String),
}

/// A running broker.
pub struct BrokerHandle {
    stop: Arc<AtomicBool>,
    pool: Option<ShardPool>,
    summary: StartupSummary,
    /// Holds the data directory's lock for the broker's lifetime.
    _lock: std::fs::File,
}

impl BrokerHandle {
    /// What started.
    pub fn summary(&self) -> &StartupSummary {
        &self.summary
    }

    /// Asks every shard to stop: stop accepting, finish in-flight requests, flush and
    /// close every partition.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// A flag that stops the broker when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Waits until every shard stopped.
    pub fn join(mut self) -> std::io::Result<()> {
        self.pool.take().map_or(Ok(()), ShardPool::join)
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = pool.join();
        }
    }
}

/// Resolved addresses: the shared port and each shard's port.
struct Ports {
    listen: SocketAddr,
    shards: Vec<u16>,
}

/// Starts a broker and returns once every shard serves (or the first failure).
pub fn run_broker(config: BrokerConfig) -> Result<BrokerHandle, StartupError> {
    run_broker_with_stop(config, Arc::new(AtomicBool::new(false)))
}

/// Like [`run_broker`], stopping when `stop` is set, even during start-up (signal
/// handlers registered before the broker starts use it).
pub fn run_broker_with_stop(
    mut config: BrokerConfig,
    stop: Arc<AtomicBool>,
) -> Result<BrokerHandle, StartupError> {
    config.validate().map_err(StartupError::Config)?;
    check_data_dir(&config)?;
    config.data_dir = std::path::absolute(&config.data_dir).map_err(|error| {
        StartupError::DataDirNotWritable {
            path: config.data_dir.clone(),
            reason: error.to_string(),
        }
    })?;
    let lock = lock_data_dir(&config)?;
    // Deletions interrupted by a crash finish now that the directory is ours.
    let _ = std::fs::remove_dir_all(config.data_dir.join(".trash"));
    check_memlock(&config)?;
    check_io_uring(&config)?;
    raise_open_files_limit();
    let ports = resolve_ports(&config)?;
    let cpus = available_cpus();
    let pool_config = ShardPoolConfig {
        shards: config.shards,
        cpus: cpus.clone(),
        io_memory_bytes: config.io_memory_bytes,
        mesh_channel_capacity: 1024,
        name: "flumen-shard".into(),
    };
    let (ready, readiness) = mpsc::channel::<Result<(usize, u64), String>>();
    let shared = Arc::new(Shared {
        config: config.clone(),
        listen: ports.listen,
        shard_ports: ports.shards.clone(),
        stop: Arc::clone(&stop),
        opened: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
    });
    let pool = ShardPool::start::<MeshMessage, _, _>(&pool_config, move |context| {
        run_shard(context, Arc::clone(&shared), ready.clone())
    })
    .map_err(|error| StartupError::IoUringUnavailable(error.to_string()))?;
    let mut handle = BrokerHandle {
        _lock: lock,
        stop,
        pool: Some(pool),
        summary: StartupSummary {
            shards: config.shards,
            cpus: cpus.into_iter().take(config.shards).collect(),
            listen: ports.listen,
            shard_ports: ports.shards,
            data_dir: config.data_dir.clone(),
            partitions: 0,
            bytes_cut: 0,
        },
    };
    for _ in 0..config.shards {
        match readiness.recv() {
            Ok(Ok((partitions, bytes_cut))) => {
                handle.summary.partitions += partitions;
                handle.summary.bytes_cut += bytes_cut;
            }
            Ok(Err(reason)) => {
                handle.shutdown();
                return Err(StartupError::Shard(reason));
            }
            Err(_) => return Err(StartupError::Shard("a shard exited while starting".into())),
        }
    }
    Ok(handle)
}

/// Longest wait for connections to finish their requests at shutdown.
const SHUTDOWN_DRAIN_MS: u64 = 10_000;

/// Probes of a busy address before it counts as taken (200 ms apart).
const PORT_RELEASE_ATTEMPTS: u32 = 15;

/// What every shard shares: configuration and the stop and shutdown barriers (control
/// path only).
struct Shared {
    config: BrokerConfig,
    listen: SocketAddr,
    shard_ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    opened: AtomicUsize,
    drained: AtomicUsize,
    closed: AtomicUsize,
}

/// The barriers every shard passes: all recovered (then listen), all drained (then
/// close partitions), all closed (then exit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Opened = 0,
    Drained = 1,
    Closed = 2,
}

/// One shard's way through start-up and shutdown. However the shard ends — an error, a
/// panic unwinding through it — dropping this reports a start-up failure if readiness
/// was never sent, counts the shard at every barrier it did not reach (so no other shard
/// waits for it forever) and, unless it finished normally, stops the broker.
struct Progress {
    shared: Arc<Shared>,
    ready: Option<mpsc::Sender<Result<(usize, u64), String>>>,
    passed: std::cell::Cell<[bool; 3]>,
}

impl Progress {
    fn new(shared: Arc<Shared>, ready: mpsc::Sender<Result<(usize, u64), String>>) -> Self {
        Self {
            shared,
            ready: Some(ready),
            passed: std::cell::Cell::new([false; 3]),
        }
    }

    fn counter(&self, stage: Stage) -> &AtomicUsize {
        match stage {
            Stage::Opened => &self.shared.opened,
            Stage::Drained => &self.shared.drained,
            Stage::Closed => &self.shared.closed,
        }
    }

    async fn pass(&self, stage: Stage, shards: u32) {
        let mut passed = self.passed.get();
        passed[stage as usize] = true;
        self.passed.set(passed);
        barrier(self.counter(stage), shards).await;
    }

    fn ready(&self, partitions: usize, bytes_cut: u64) {
        if let Some(ready) = &self.ready {
            let _ = ready.send(Ok((partitions, bytes_cut)));
        }
    }

    fn fail(mut self, reason: String) {
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(reason));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let passed = self.passed.get();
        if passed == [true; 3] {
            return;
        }
        if let Some(ready) = self.ready.take() {
            if !passed[Stage::Opened as usize] {
                let _ = ready.send(Err("a shard stopped while starting (see the log)".into()));
            }
        }
        for stage in [Stage::Opened, Stage::Drained, Stage::Closed] {
            if !passed[stage as usize] {
                self.counter(stage).fetch_add(1, Ordering::SeqCst);
            }
        }
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

async fn run_shard(
    mut context: ShardContext<MeshMessage>,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<(usize, u64), String>>,
) {
    let progress = Progress::new(Arc::clone(&shared), ready);
    let config = Rc::new(shared.config.clone());
    stall::set_threshold(Some(Duration::from_millis(config.stall_warn_ms)));
    crate::storage::set_shared_write_window(config.write_window_bytes_per_shard);
    let catalog = match load_catalog(&config, context.shard == 0).await {
        Ok(catalog) => catalog,
        Err(error) => return progress.fail(format!("cannot load the topic catalog: {error}")),
    };
    let state = Rc::new(ShardState::new(
        context.shard,
        context.shards,
        Rc::clone(&config),
        Rc::new(SystemClock),
        context.mesh(),
        catalog,
        shared.listen.port(),
        shared.shard_ports.clone(),
    ));
    for inbox in context.take_inboxes() {
        spawn_detached(Rc::clone(&state).run_inbox(inbox));
    }
    // Listen before recovering: connections wait in the backlog until this shard accepts,
    // and another broker started meanwhile finds the port taken instead of sharing it
    // (the listeners use SO_REUSEPORT).
    let own = SocketAddr::new(
        shared.listen.ip(),
        shared.shard_ports[context.shard as usize],
    );
    let listeners = match (TcpListener::bind(shared.listen), TcpListener::bind(own)) {
        (Ok(common), Ok(own)) => [common, own],
        (Err(error), _) | (_, Err(error)) => {
            return progress.fail(format!("cannot listen: {error}"))
        }
    };
    let (mut partitions, mut bytes_cut) = (0, 0);
    for topic in state.catalog().topics() {
        let opened = state.open_topic(&topic.name).await;
        bytes_cut += opened.bytes_cut;
        partitions += opened.partitions;
    }
    // Accept nothing until every shard has recovered its partitions: a connection landing
    // here may ask for any partition.
    progress.pass(Stage::Opened, context.shards).await;
    progress.ready(partitions, bytes_cut);
    serve_until_stopped(&state, listeners, &shared, &progress).await;
}

async fn serve_until_stopped(
    state: &Rc<ShardState>,
    listeners: [TcpListener; 2],
    shared: &Shared,
    progress: &Progress,
) {
    let connections = Rc::new(std::cell::Cell::new(0usize));
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            spawn(accept_loop(
                Rc::clone(state),
                listener,
                Rc::clone(&connections),
            ))
        })
        .collect();
    let retention = spawn(retention_loop(Rc::clone(state)));
    let group_timer = spawn(group_timer_loop(Rc::clone(state)));
    let offsets_refresh = spawn(offsets_refresh_loop(Rc::clone(state)));
    let write_out = spawn(write_out_loop(Rc::clone(state)));
    let background_flush = spawn(background_flush_loop(Rc::clone(state)));
    let stall_watch = spawn(stall::watch(state.shard));
    while !shared.stop.load(Ordering::SeqCst) {
        sleep(Duration::from_millis(20)).await;
    }
    state.shutting_down.set(true);
    state.shutdown.notify_all();
    for acceptor in acceptors {
        acceptor.await;
    }
    drop(retention);
    drop(group_timer);
    drop(offsets_refresh);
    drop(write_out);
    drop(background_flush);
    drop(stall_watch);
    // Let connections finish their in-flight requests (they may need other shards, so
    // every shard keeps serving the mesh until all have drained), but not forever: a
    // client that stops reading must not hold the broker up.
    let drain_deadline = std::time::Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS);
    while connections.get() > 0 && std::time::Instant::now() < drain_deadline {
        sleep(Duration::from_millis(5)).await;
    }
    if connections.get() > 0 {
        tracing::warn!(
            connections = connections.get(),
            "closing connections that did not finish in time"
        );
    }
    progress.pass(Stage::Drained, state.shards).await;
    let closed = state.close_partitions().await;
    let stalls = stall::summary();
    tracing::info!(
        shard = state.shard,
        partitions = closed,
        stalls = stalls.stalls.count,
        worst_stall_ms = stalls.stalls.worst.as_millis() as u64,
        slow_disk_ops = stalls.slow_disk_ops.count,
        worst_disk_op_ms = stalls.slow_disk_ops.worst.as_millis() as u64,
        "shard stopped"
    );
    progress.pass(Stage::Closed, state.shards).await;
}

/// Waits until `shards` shards reached this point (shutdown only, so polling is fine).
async fn barrier(counter: &AtomicUsize, shards: u32) {
    counter.fetch_add(1, Ordering::SeqCst);
    while counter.load(Ordering::SeqCst) < shards as usize {
        sleep(Duration::from_millis(2)).await;
    }
}

async fn accept_loop(
    state: Rc<ShardState>,
    listener: TcpListener,
    connections: Rc<std::cell::Cell<usize>>,
) {
    loop {
        let accepted = until(listener.accept(), state.shutdown.listen()).await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::warn!(%error, "accept failed");
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if connections.get() >= state.config.connections_max_per_shard {
            tracing::warn!("connection limit reached; closing a new connection");
            drop(stream);
            continue;
        }
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        connections.set(connections.get() + 1);
        let (state, connections) = (Rc::clone(&state), Rc::clone(&connections));
        spawn_detached(async move {
            serve(state, stream, peer).await;
            connections.set(connections.get() - 1);
        });
    }
}

async fn write_out_loop(state: Rc<ShardState>) {
    let interval = Duration::from_millis(state.config.write_out_interval_ms.max(1));
    loop {
        sleep(interval).await;
        for partition in state.local_partitions() {
            partition.log().submit_staged();
        }
    }
}

/// The syncs kept off the produce path, in a task per partition so one slow sync never
/// delays another partition's; a partition whose turn is still running is skipped, so a
/// slow sync does not pile up tasks behind it:
/// - segments a roll left behind are sealed soon after (`Log::finish_pending_seal`), and
///   the producer-state snapshot it captured is written (`Partition::write_due_snapshot`);
/// - a partition whose active segment is half full gets the spare file its next roll
///   takes (`Log::prepare_spare`), so the roll does not create a file while appends wait;
/// - with `flush_interval_ms` set, partitions whose appended bytes went unsynced that long
///   or exceed `flush_bytes` are synced, bounding what a power loss takes of acks=0/1 data.
async fn background_flush_loop(state: Rc<ShardState>) {
    let interval = state.config.flush_interval_ms;
    let tick = if interval == 0 {
        100
    } else {
        interval.clamp(1, 100)
    };
    let ticks_per_interval = interval.div_ceil(tick).max(1);
    let retention_free_within = retention_interval(&state) / 2;
    let mut ticks = 0u64;
    loop {
        sleep(Duration::from_millis(tick)).await;
        ticks += 1;
        let due = interval > 0 && ticks.is_multiple_of(ticks_per_interval);
        for partition in state.local_partitions() {
            let log = partition.log();
            let flush = background_flush_due(
                log.unsynced_bytes(),
                interval,
                due,
                state.config.flush_bytes,
            );
            let work = flush
                || log.has_pending_seal()
                || partition.has_due_snapshot()
                || log.wants_spare();
            if !work || !partition.claim_background() {
                continue;
            }
            spawn_detached(background_turn(partition, flush, retention_free_within));
        }
    }
}

/// One partition's background work, in order: the sync, the pending seal (a spare
/// waits for the seal that names the last one), the due snapshot, a retention pass if a
/// roll took the log over `retention.bytes` (`Log::over_retention_bytes`: it deletes the
/// oldest segment and recycles it as the spare), the spare.
async fn background_turn(partition: Rc<Partition>, flush: bool, free_within: Duration) {
    struct Turn(Rc<Partition>);
    impl Drop for Turn {
        fn drop(&mut self) {
            self.0.release_background();
        }
    }
    let turn = Turn(partition);
    let partition = &turn.0;
    let log = partition.log();
    // A flush syncs a rolled segment's data but leaves the rest of its seal to this.
    let synced = async {
        if flush {
            log.flush().await?;
        }
        log.finish_pending_seal().await
    };
    if let Err(error) = synced.await {
        tracing::error!(?partition, %error, "background sync failed");
    }
    partition.write_due_snapshot().await;
    if log.over_retention_bytes() {
        if let Err(error) = log.apply_retention_freeing_within(free_within).await {
            tracing::error!(?partition, %error, "retention failed");
        }
    }
    if let Err(error) = log.prepare_spare().await {
        tracing::warn!(?partition, %error, "cannot create a spare segment file");
    }
}

/// Whether the background task syncs a partition holding `unsynced` bytes: periodic syncs
/// are on (`interval_ms > 0`), and the interval came round or it holds `flush_bytes`.
fn background_flush_due(
    unsynced: u64,
    interval_ms: u64,
    interval_came: bool,
    flush_bytes: u64,
) -> bool {
    interval_ms > 0 && unsynced > 0 && (interval_came || unsynced >= flush_bytes)
}

/// Expires group members that missed their session and completes rebalances whose
/// deadline passed (a group's timing is only as fine as this period).
async fn group_timer_loop(state: Rc<ShardState>) {
    loop {
        sleep(Duration::from_millis(100)).await;
        state.tick_groups();
    }
}

/// Writes live committed positions again before `__consumer_offsets`' retention could
/// remove them: every eighth of the retention time, at most hourly.
async fn offsets_refresh_loop(state: Rc<ShardState>) {
    loop {
        // From the topic's retention in force, which the broker's setting may no longer
        // match (it applies when the topic is created).
        let period = state
            .offsets_topic_retention_ms()
            .map_or(3_600_000, |retention| (retention / 8).clamp(100, 3_600_000));
        sleep(Duration::from_millis(period)).await;
        state.refresh_offsets().await;
    }
}

/// Applies retention to every partition of the shard each `retention_check_interval_ms`;
/// what a pass deletes is freed over half the interval (steps no slower than 20 ms), so
/// the freeing's cost is spread rather than taken in one burst.
async fn retention_loop(state: Rc<ShardState>) {
    // Live committed positions are written again before the first pass: after a
    // downtime longer than their retention, that pass would otherwise delete their
    // only stored copies, leaving them in memory until the next refresh (up to an hour).
    // Whenever the last refresh failed (a full disk may fail it, here or in
    // `offsets_refresh_loop`), it is tried again first, and the offsets partitions are
    // left alone until one succeeds.
    state.refresh_offsets().await;
    let interval = retention_interval(&state);
    loop {
        sleep(interval).await;
        if !state.offsets_refreshed() {
            state.refresh_offsets().await;
        }
        for partition in state.local_partitions() {
            if !state.offsets_refreshed() && partition.topic() == crate::group::OFFSETS_TOPIC {
                continue;
            }
            let log = partition.log();
            if let Err(error) = log.apply_retention_freeing_within(interval / 2).await {
                tracing::error!(?partition, %error, "retention failed");
            }
        }
    }
}

fn retention_interval(state: &ShardState) -> Duration {
    Duration::from_millis(state.config.retention_check_interval_ms.max(10))
}

fn check_data_dir(config: &BrokerConfig) -> Result<(), StartupError> {
    let not_writable = |reason: String| StartupError::DataDirNotWritable {
        path: config.data_dir.clone(),
        reason,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(|error| not_writable(error.to_string()))?;
    let probe = config.data_dir.join(".write-probe.tmp");
    std::fs::write(&probe, b"ok").map_err(|error| not_writable(error.to_string()))?;
    // Every data file is opened with O_DIRECT: say so now rather than fail later with a
    // bare EINVAL from the first file the catalog opens.
    let direct = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
    };
    let _ = std::fs::remove_file(&probe);
    match direct {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Err(not_writable(
            "the filesystem does not support O_DIRECT (direct I/O), which every data file \
             uses: use ext4 or xfs (tmpfs has it from Linux 6.6)"
                .into(),
        )),
        Err(error) => Err(not_writable(error.to_string())),
        Ok(_) => Ok(()),
    }
}

/// Creates (and drops) one executor here, so a blocked io_uring is reported with advice
/// instead of as a shard thread dying.
fn check_io_uring(config: &BrokerConfig) -> Result<(), StartupError> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(config.io_memory_bytes)
        .make()
        .map(drop)
        .map_err(|error| StartupError::IoUringUnavailable(error.to_string()))
}

/// Takes an exclusive lock on `<data_dir>/.lock`, so two brokers never share a data
/// directory. The kernel releases it when the process ends, however it ends.
fn lock_data_dir(config: &BrokerConfig) -> Result<std::fs::File, StartupError> {
    use std::os::fd::AsRawFd;
    let path = config.data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| StartupError::DataDirNotWritable {
            path: config.data_dir.clone(),
            reason: error.to_string(),
        })?;
    // SAFETY: `flock` on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(StartupError::DataDirInUse {
                path: config.data_dir.clone(),
            });
        }
        return Err(StartupError::DataDirNotWritable {
            path: config.data_dir.clone(),
            reason: format!("cannot lock {}: {error}", path.display()),
        });
    }
    Ok(file)
}

/// Raises the soft limit on open files to the hard limit: every segment file and every
/// connection is a descriptor.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid `rlimit` for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::info!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "raised the open files limit"
                );
            }
        }
    }
}

/// The locked-memory limit (`ulimit -l`) in bytes; `None` if unlimited or unknown.
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid `rlimit` to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// How many shards of `io_memory_bytes` each the locked-memory limit allows, at most
/// `wanted` (and at least 1: one that does not fit is refused with advice at start).
/// For a shard count nobody chose (one per CPU by default), so that a machine with many
/// CPUs and the usual 8 MiB limit still starts.
pub fn shards_within_memlock(wanted: usize, io_memory_bytes: usize) -> usize {
    match memlock_limit() {
        Some(limit) => {
            let fitting = (limit / io_memory_bytes.max(1) as u64).max(1);
            wanted.min(usize::try_from(fitting).unwrap_or(usize::MAX))
        }
        None => wanted,
    }
}

fn check_memlock(config: &BrokerConfig) -> Result<(), StartupError> {
    let Some(limit) = memlock_limit() else {
        return Ok(());
    };
    let needed = config.io_memory_bytes.saturating_mul(config.shards) as u64;
    if limit < needed {
        return Err(StartupError::MemlockTooLow {
            limit_bytes: limit,
            needed_bytes: needed,
            shards: config.shards,
        });
    }
    Ok(())
}

/// Checks the addresses are free and picks ports: `port 0` means ephemeral (tests and
/// embedded brokers); shard ports default to the shared port + 1 + shard.
fn resolve_ports(config: &BrokerConfig) -> Result<Ports, StartupError> {
    let port = free_port(config.listen)?;
    let listen = SocketAddr::new(config.listen.ip(), port);
    let shards = (0..config.shards)
        .map(|shard| {
            // Within range: `BrokerConfig::validate` refuses shard ports past 65535.
            let fixed = config
                .first_shard_port()
                .map_or(0, |first| (first + shard as u64) as u16);
            free_port(SocketAddr::new(listen.ip(), fixed))
        })
        .collect::<Result<_, _>>()?;
    Ok(Ports { listen, shards })
}

/// The port to use for `addr`: a fresh ephemeral one for port 0, else `addr`'s own if
/// nothing listens there.
///
/// "In use" means something accepts connections: a bind test would also fail for a
/// broker restarted right after `kill -9`, whose old connections still hold the port
/// (SO_REUSEPORT lets the new listeners share it with them).
fn free_port(addr: SocketAddr) -> Result<u16, StartupError> {
    if addr.port() == 0 {
        let probe = StdListener::bind(addr).map_err(|error| StartupError::Listen {
            addr,
            reason: error.to_string(),
        })?;
        return probe
            .local_addr()
            .map(|local| local.port())
            .map_err(|error| StartupError::Listen {
                addr,
                reason: error.to_string(),
            });
    }
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    // A process killed moments ago can leave its listeners alive a little longer: io_uring
    // tears a ring (and the sockets its requests hold) down asynchronously. Give such a
    // port a few seconds to be released before calling it taken.
    for attempt in 0..PORT_RELEASE_ATTEMPTS {
        if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(250)).is_err() {
            return Ok(addr.port());
        }
        if attempt == 0 {
            tracing::info!(%addr, "address busy; waiting for it to be released");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(StartupError::PortInUse { addr })
}

#[cfg(test)]
mod tests {
    use super::background_flush_due;

    #[test]
    fn background_syncs_follow_the_interval_and_the_byte_threshold() {
        let mib = 1 << 20;
        // Off: never, however much is unsynced.
        assert!(!background_flush_due(100 * mib, 0, true, 4 * mib));
        // Nothing unsynced: nothing to do.
        assert!(!background_flush_due(0, 1_000, true, 4 * mib));
        // Between intervals only a partition past the threshold is synced.
        assert!(!background_flush_due(mib, 1_000, false, 4 * mib));
        assert!(background_flush_due(4 * mib, 1_000, false, 4 * mib));
        // When the interval comes round, every partition with unsynced bytes is.
        assert!(background_flush_due(1, 1_000, true, 4 * mib));
    }
}
