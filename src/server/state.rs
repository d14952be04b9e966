//! One shard's broker state: its partitions, its copy of the catalog, and its end of the
//! mesh. Owned by that shard (`Rc`, `RefCell`), never shared across threads.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flumen_protocol::wire::messages::{EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use flumen_protocol::wire::ErrorCode;

use super::config::BrokerConfig;
use super::errors::from_group;
use super::errors::{from_catalog, from_produce, from_storage, WireError};
use super::mesh::{
    CatalogChange, FetchResult, GroupOp, GroupReply, MeshMessage, PartitionOp, PartitionStats,
    ProduceResult, RemoteOutcome, ShardRequest, ShardResponse,
};
use crate::cluster::{Catalog, CatalogError, ProducerIdAllocator};
use crate::group::{
    offsets_partition, Coordinator, MembershipLimits, OFFSETS_PARTITIONS_DEFAULT, OFFSETS_TOPIC,
};
use crate::partition::{partition_dir, Partition};
use crate::shard::{shard_for_partition, Clock, Inbox, LocalMutex, MeshSender, Notify};
use crate::storage::{StoredBatch, TailCache};

/// Batches of a fetch: read in place on this shard, or copied from another.
pub(crate) enum FetchedBatches {
    Stored(Vec<StoredBatch>),
    Copied(Vec<Bytes>),
}

/// A partition operation's result on the shard that asked for it.
pub(crate) enum Outcome {
    Produced(Result<ProduceResult, WireError>),
    Fetched(Result<FetchResult<FetchedBatches>, WireError>),
    DataReady(bool),
    Offset(Result<(u64, PartitionStats), WireError>),
}

/// What opening a topic's partitions on one shard did.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    /// Bytes recovery cut from the partitions' logs (a torn tail).
    pub bytes_cut: u64,
    /// Partitions opened.
    pub partitions: usize,
    /// Partitions that could not be opened, with why.
    pub failed: Vec<(u32, String)>,
}

/// A reply slot for a request sent over the mesh.
#[derive(Default)]
struct Reply {
    response: RefCell<Option<ShardResponse>>,
    arrived: Notify,
}

/// The state of one shard of the broker.
pub(crate) struct ShardState {
    pub shard: u32,
    pub shards: u32,
    pub config: Rc<BrokerConfig>,
    pub clock: Rc<dyn Clock>,
    pub cache: Rc<TailCache>,
    pub shard_ports: Vec<u16>,
    pub shared_port: u16,
    catalog: RefCell<Rc<Catalog>>,
    partitions: RefCell<HashMap<(String, u32), Rc<Partition>>>,
    mesh: MeshSender<MeshMessage>,
    pending: RefCell<HashMap<u64, Rc<Reply>>>,
    next_request_id: Cell<u64>,
    catalog_lock: LocalMutex,
    /// Used on shard 0 only.
    producer_ids: ProducerIdAllocator,
    /// Groups whose offsets partitions this shard owns.
    groups: Coordinator,
    /// Whether the last [`Self::refresh_offsets`] wrote every live position it had to:
    /// until one has, retention leaves the offsets partitions alone.
    offsets_refreshed: Cell<bool>,
    pub shutting_down: Cell<bool>,
    pub shutdown: Notify,
}

impl ShardState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: u32,
        shards: u32,
        config: Rc<BrokerConfig>,
        clock: Rc<dyn Clock>,
        mesh: MeshSender<MeshMessage>,
        catalog: Catalog,
        shared_port: u16,
        shard_ports: Vec<u16>,
    ) -> Self {
        Self {
            shard,
            shards,
            cache: TailCache::new(config.cache_bytes_per_shard),
            producer_ids: ProducerIdAllocator::new(&config.data_dir),
            groups: Coordinator::new(MembershipLimits {
                session_timeout_min_ms: config.group_session_timeout_min_ms,
                session_timeout_max_ms: config.group_session_timeout_max_ms,
                initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
            }),
            config,
            clock,
            shard_ports,
            shared_port,
            catalog: RefCell::new(Rc::new(catalog)),
            partitions: RefCell::new(HashMap::new()),
            mesh,
            pending: RefCell::new(HashMap::new()),
            next_request_id: Cell::new(0),
            offsets_refreshed: Cell::new(false),
            catalog_lock: LocalMutex::new(),
            shutting_down: Cell::new(false),
            shutdown: Notify::new(),
        }
    }

    /// The current catalog.
    pub fn catalog(&self) -> Rc<Catalog> {
        Rc::clone(&self.catalog.borrow())
    }

    /// The shard owning a partition.
    pub fn owner(&self, topic: &str, partition: u32) -> u32 {
        shard_for_partition(topic, partition, self.shards)
    }

    /// Partitions owned by this shard.
    pub fn local_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    fn local_partition(&self, topic: &str, partition: u32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// Sends `request` to shard `to` and waits for its answer.
    async fn call(&self, to: u32, request: ShardRequest) -> ShardResponse {
        let id = self.next_request_id.get();
        self.next_request_id.set(id + 1);
        let reply = Rc::new(Reply::default());
        self.pending.borrow_mut().insert(id, Rc::clone(&reply));
        let message = MeshMessage::Request {
            id,
            from: self.shard,
            request,
        };
        if self.mesh.send(to, message).await.is_err() {
            panic!("shard {to} stopped while the broker runs");
        }
        loop {
            let listener = reply.arrived.listen();
            if let Some(response) = reply.response.borrow_mut().take() {
                return response;
            }
            listener.await;
        }
    }

    /// Serves messages from one other shard until it goes away.
    pub async fn run_inbox(self: Rc<Self>, inbox: Inbox<MeshMessage>) {
        while let Some(message) = inbox.recv().await {
            match message {
                MeshMessage::Response { id, response } => {
                    let reply = self.pending.borrow_mut().remove(&id);
                    let reply = reply.expect("a response answers a pending request");
                    *reply.response.borrow_mut() = Some(response);
                    reply.arrived.notify_all();
                }
                MeshMessage::Request { id, from, request } => {
                    let state = Rc::clone(&self);
                    crate::shard::spawn_detached(async move {
                        let response = state.serve(request).await;
                        let answer = MeshMessage::Response { id, response };
                        // The asking shard only stops with the broker.
                        let _ = state.mesh.send(from, answer).await;
                    });
                }
            }
        }
    }

    async fn serve(&self, request: ShardRequest) -> ShardResponse {
        match request {
            ShardRequest::ChangeCatalog(change) => {
                ShardResponse::Catalog(self.change_catalog_here(change).await)
            }
            ShardRequest::AllocateProducerId => {
                ShardResponse::ProducerId(self.allocate_producer_id().await)
            }
            ShardRequest::Group(op) => ShardResponse::Group(self.group_op_here(op).await),
            ShardRequest::ApplyCatalog(catalog) => {
                ShardResponse::Applied(self.apply_catalog(catalog).await)
            }
            ShardRequest::Partition {
                topic,
                partition,
                op,
            } => {
                let outcome = self.partition_op_here(&topic, partition, op).await;
                ShardResponse::Partition(into_remote(outcome))
            }
        }
    }

    /// Runs `op` on the partition, here or on its owning shard.
    pub async fn partition_op(&self, topic: &str, partition: u32, op: PartitionOp) -> Outcome {
        let owner = self.owner(topic, partition);
        if owner == self.shard {
            return self.partition_op_here(topic, partition, op).await;
        }
        let request = ShardRequest::Partition {
            topic: topic.to_owned(),
            partition,
            op,
        };
        match self.call(owner, request).await {
            ShardResponse::Partition(remote) => from_remote(remote),
            _ => unreachable!("partition requests get partition answers"),
        }
    }

    async fn partition_op_here(&self, topic: &str, index: u32, op: PartitionOp) -> Outcome {
        let Some(partition) = self.local_partition(topic, index) else {
            let missing = (
                ErrorCode::UnknownPartition,
                format!("{topic}-{index} is not open"),
            );
            return match op {
                PartitionOp::Produce { .. } => Outcome::Produced(Err(missing)),
                PartitionOp::Fetch { .. } => Outcome::Fetched(Err(missing)),
                PartitionOp::WaitForData { .. } => Outcome::DataReady(false),
                PartitionOp::ListOffset { .. } => Outcome::Offset(Err(missing)),
            };
        };
        match op {
            PartitionOp::Produce { acks, batches } => {
                let result = partition.produce(batches, acks).await;
                Outcome::Produced(
                    result
                        .map_err(|error| from_produce(&error))
                        .map(|produced| ProduceResult {
                            base_offset: produced.appended.base_offset,
                            last_offset: produced.appended.last_offset,
                            log_start_offset: partition.log().log_start_offset(),
                            duplicate: produced.duplicate,
                        }),
                )
            }
            PartitionOp::Fetch {
                offset,
                max_bytes,
                first_batch_max,
            } => {
                let result = partition.fetch(offset, max_bytes, first_batch_max).await;
                Outcome::Fetched(result.map_err(|error| from_storage(&error)).map(|batches| {
                    FetchResult {
                        high_watermark: partition.high_watermark(),
                        log_start_offset: partition.log().log_start_offset(),
                        batches: FetchedBatches::Stored(batches),
                    }
                }))
            }
            PartitionOp::WaitForData { offset, wait_ms } => {
                let deadline = Instant::now() + Duration::from_millis(wait_ms);
                Outcome::DataReady(partition.wait_for_data(offset, deadline).await)
            }
            PartitionOp::ListOffset { timestamp } => {
                let offset = list_offset(&partition, timestamp).await;
                let log = partition.log();
                let stats = PartitionStats {
                    log_start_offset: log.log_start_offset(),
                    log_end_offset: log.next_offset(),
                    size_bytes: log.size_bytes(),
                };
                Outcome::Offset(offset.map(|offset| (offset, stats)))
            }
        }
    }

    /// The shard coordinating `group`.
    pub fn coordinator_of(&self, group: &str) -> (u32, u32) {
        let partition = offsets_partition(group, self.offsets_partitions());
        (self.owner(OFFSETS_TOPIC, partition), partition)
    }

    /// Runs a group operation on `shard` (here or over the mesh).
    pub async fn group_op(&self, shard: u32, op: GroupOp) -> GroupReply {
        if shard == self.shard {
            return self.group_op_here(op).await;
        }
        match self.call(shard, ShardRequest::Group(op)).await {
            ShardResponse::Group(reply) => reply,
            _ => unreachable!("group requests get group answers"),
        }
    }

    async fn group_op_here(&self, op: GroupOp) -> GroupReply {
        match op {
            GroupOp::Commit {
                group,
                generation,
                member,
                entries,
            } => {
                let (_, index) = self.coordinator_of(&group);
                let Some(partition) = self.local_partition(OFFSETS_TOPIC, index) else {
                    let message = format!("{OFFSETS_TOPIC}-{index} is not open");
                    return GroupReply::Committed(Err((ErrorCode::StorageError, message)));
                };
                let now = self.clock.now_ms();
                let committed = self
                    .groups
                    .commit(&partition, &group, generation, &member, entries, now)
                    .await;
                GroupReply::Committed(committed.map_err(|error| from_group(&error)))
            }
            GroupOp::Fetch { group } => {
                // Without its partition (it failed to load) the group's positions are
                // unknown, not absent: answering none would move its consumers to
                // their reset policy.
                let (_, index) = self.coordinator_of(&group);
                GroupReply::Positions(match self.local_partition(OFFSETS_TOPIC, index) {
                    Some(_) => Ok(self.groups.committed(&group)),
                    None => Err((
                        ErrorCode::StorageError,
                        format!("{OFFSETS_TOPIC}-{index} is not open"),
                    )),
                })
            }
            GroupOp::Join { group, request } => {
                let now = self.clock.now_ms();
                // A held join ends with a shutdown, which does not wait for the rebalance.
                let joined = crate::shard::until(
                    self.groups.join(&group, request, now),
                    self.shutdown.listen(),
                )
                .await;
                GroupReply::Joined(match joined {
                    Some(joined) => joined.map_err(|error| from_group(&error)),
                    None => Err(shutting_down()),
                })
            }
            GroupOp::Sync {
                group,
                generation,
                member,
                assignments,
            } => {
                let now = self.clock.now_ms();
                let synced = crate::shard::until(
                    self.groups
                        .sync(&group, generation, &member, assignments, now),
                    self.shutdown.listen(),
                )
                .await;
                GroupReply::Synced(match synced {
                    Some(synced) => synced.map_err(|error| from_group(&error)),
                    None => Err(shutting_down()),
                })
            }
            GroupOp::Heartbeat {
                group,
                generation,
                member,
            } => {
                let now = self.clock.now_ms();
                let beat = self.groups.heartbeat(&group, generation, &member, now);
                GroupReply::Committed(beat.map_err(|error| from_group(&error)))
            }
            GroupOp::Leave { group, member } => {
                let now = self.clock.now_ms();
                let left = self.groups.leave(&group, &member, now);
                GroupReply::Committed(left.map_err(|error| from_group(&error)))
            }
            GroupOp::Describe { group } => GroupReply::Described(self.groups.describe(&group)),
            GroupOp::Delete { group } => {
                let (_, index) = self.coordinator_of(&group);
                let Some(partition) = self.local_partition(OFFSETS_TOPIC, index) else {
                    let message = format!("{OFFSETS_TOPIC}-{index} is not open");
                    return GroupReply::Committed(Err((ErrorCode::StorageError, message)));
                };
                let now = self.clock.now_ms();
                let deleted = self.groups.delete(&partition, &group, now).await;
                GroupReply::Committed(deleted.map_err(|error| from_group(&error)))
            }
            GroupOp::List => GroupReply::Groups(self.groups.groups()),
        }
    }

    /// Writes again the live positions held by this shard's offsets partitions whose
    /// newest record is older than a quarter of `offsets_retention_ms` (called by a
    /// timer), so retention never removes them.
    /// Whether every one of this shard's offsets partitions was refreshed is
    /// [`Self::offsets_refreshed`] until the next call.
    pub async fn refresh_offsets(&self) {
        let refreshed = self.refresh_offsets_once().await;
        self.offsets_refreshed.set(refreshed);
    }

    /// Whether the last [`Self::refresh_offsets`] succeeded everywhere: retention may
    /// delete old offsets records only then, or it could take a live position's only
    /// stored copy.
    pub fn offsets_refreshed(&self) -> bool {
        self.offsets_refreshed.get()
    }

    async fn refresh_offsets_once(&self) -> bool {
        let Some(retention_ms) = self.offsets_topic_retention_ms() else {
            return true; // Nothing deletes commits: nothing to write again.
        };
        let mut all = true;
        let now = self.clock.now_ms();
        let older_than = now - (retention_ms / 4) as i64;
        let partitions = self.offsets_partitions();
        for (index, partition) in self.local_offsets_partitions() {
            let refreshed = self
                .groups
                .refresh(&partition, index, partitions, now, older_than)
                .await;
            match refreshed {
                Ok(0) => {}
                Ok(count) => {
                    tracing::debug!(partition = index, count, "refreshed committed offsets")
                }
                Err(error) => {
                    all = false;
                    tracing::warn!(partition = index, %error, "cannot refresh committed offsets")
                }
            }
        }
        all
    }

    /// How many partitions `__consumer_offsets` has (or will have, once created).
    fn offsets_partitions(&self) -> u32 {
        self.catalog()
            .topic(OFFSETS_TOPIC)
            .map_or(OFFSETS_PARTITIONS_DEFAULT, |topic| topic.partitions)
    }

    /// The partitions of `__consumer_offsets` this shard holds, by index.
    fn local_offsets_partitions(&self) -> Vec<(u32, Rc<Partition>)> {
        (0..self.offsets_partitions())
            .filter_map(|index| Some((index, self.local_partition(OFFSETS_TOPIC, index)?)))
            .collect()
    }

    /// The time retention of `__consumer_offsets` in force: the topic's own (set when it
    /// was created, from `offsets_retention_ms` then), not the broker's setting now,
    /// which may have changed since. `None` if nothing deletes by time.
    pub fn offsets_topic_retention_ms(&self) -> Option<u64> {
        let catalog = self.catalog();
        let retention = match catalog.topic(OFFSETS_TOPIC) {
            Some(topic) => topic.config.log_config(&self.config.log).retention_ms,
            None => Some(self.config.offsets_retention_ms as i64),
        };
        retention.map(|ms| ms.max(0) as u64)
    }

    /// Expires group members and completes due rebalances (called by a timer).
    pub fn tick_groups(&self) {
        self.groups.tick(self.clock.now_ms());
    }

    /// A new idempotent producer id; shard 0 hands them out.
    pub async fn allocate_producer_id(&self) -> Result<i64, WireError> {
        if self.shard == 0 {
            let id = self.producer_ids.allocate().await;
            return id.map_err(|error| from_catalog(&error));
        }
        match self.call(0, ShardRequest::AllocateProducerId).await {
            ShardResponse::ProducerId(result) => result,
            _ => unreachable!("producer id requests get producer id answers"),
        }
    }

    /// Applies a catalog change; shard 0 does the work.
    pub async fn change_catalog(self: &Rc<Self>, change: CatalogChange) -> Result<(), WireError> {
        if self.shard == 0 {
            // In a task of its own, as on the other shards' behalf (a mesh request): a
            // change must run to its end even if the request that asked for it goes (its
            // connection closed), or the catalog persisted and the shards' could differ.
            let state = Rc::clone(self);
            return crate::shard::run_to_end(
                async move { state.change_catalog_here(change).await },
            )
            .await;
        }
        match self.call(0, ShardRequest::ChangeCatalog(change)).await {
            ShardResponse::Catalog(result) => result,
            _ => unreachable!("catalog requests get catalog answers"),
        }
    }

    /// On shard 0: validate, persist, then make every shard apply the new catalog before
    /// answering, so a created topic is writable everywhere once CreateTopics returns.
    async fn change_catalog_here(&self, change: CatalogChange) -> Result<(), WireError> {
        assert_eq!(self.shard, 0, "shard 0 owns the catalog");
        let _guard = self.catalog_lock.lock().await;
        let current = self.catalog();
        let (next, validate_only) = match &change {
            CatalogChange::Create {
                name,
                partitions,
                replication_factor,
                configs,
                validate_only,
            } => (
                current.with_topic(name, *partitions, *replication_factor, configs),
                *validate_only,
            ),
            CatalogChange::Delete { name } => (current.without_topic(name), false),
            CatalogChange::Alter { name, configs } => {
                (current.with_config_changes(name, configs), false)
            }
        };
        let next = next.map_err(|error| from_catalog(&error))?;
        if let CatalogChange::Create { name, .. } | CatalogChange::Alter { name, .. } = &change {
            self.check_topic_fits(&next, name)?;
        }
        if validate_only {
            return Ok(());
        }
        if let CatalogChange::Create { name, .. } = &change {
            // Data left by a deleted topic of the same name (a crash between the catalog
            // write and the directory removal) must not come back as the new topic's.
            let leftover = self.config.data_dir.join(name);
            if leftover.exists() {
                tracing::warn!(topic = %name, "removing data left by an earlier topic of this name");
                move_to_trash(&self.config.data_dir, &leftover)
                    .await
                    .map_err(|error| (ErrorCode::StorageError, error.to_string()))?;
            }
        }
        next.persist(&self.config.data_dir)
            .await
            .map_err(|error| from_catalog(&error))?;
        let failed = self.apply_everywhere(&next).await;
        match &change {
            CatalogChange::Create { name, .. } if !failed.is_empty() => {
                Err(self.undo_create(name, &next, failed).await)
            }
            CatalogChange::Delete { name } => {
                self.remove_topic_dir(name).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Removes what is left of a deleted topic's directory: the shards moved the
    /// directories of the partitions they had open to the trash; any never opened (a
    /// failed creation, a failing disk) go with it.
    async fn remove_topic_dir(&self, name: &str) {
        let dir = self.config.data_dir.join(name);
        if dir.exists() {
            if let Err(error) = move_to_trash(&self.config.data_dir, &dir).await {
                tracing::warn!(topic = name, %error, "cannot remove the topic's directory");
            }
        }
    }

    /// On shard 0: makes every shard apply `catalog`; returns the partitions of newly
    /// created topics that could not be opened, on any shard.
    async fn apply_everywhere(&self, catalog: &Catalog) -> Vec<(u32, String)> {
        let mut failed = Vec::new();
        for shard in 1..self.shards {
            match self
                .call(shard, ShardRequest::ApplyCatalog(catalog.clone()))
                .await
            {
                ShardResponse::Applied(on_shard) => failed.extend(on_shard),
                _ => unreachable!("catalog updates get applied answers"),
            }
        }
        failed.extend(self.apply_catalog(catalog.clone()).await);
        failed
    }

    /// On shard 0: a topic was created but some of its partitions could not be opened (out
    /// of file descriptors, a failing disk): it is deleted again, so the creator gets an
    /// error it can act on, and a retry can create it, instead of a topic that answers
    /// `UnknownPartition` on some partitions. Returns the error to answer with.
    async fn undo_create(
        &self,
        name: &str,
        created: &Catalog,
        mut failed: Vec<(u32, String)>,
    ) -> WireError {
        failed.sort_by_key(|(index, _)| *index);
        let (first, why) = &failed[0];
        let what = format!(
            "cannot open {} of topic {name}'s partitions (partition {first}: {why})",
            failed.len()
        );
        let undone = match created.without_topic(name) {
            Ok(undone) => undone,
            Err(error) => return (ErrorCode::StorageError, format!("{what}; {error}")),
        };
        if let Err(error) = undone.persist(&self.config.data_dir).await {
            let message = format!(
                "{what}; the topic exists with those partitions unavailable, and could not be \
                 deleted again: {error}"
            );
            return (ErrorCode::StorageError, message);
        }
        self.apply_everywhere(&undone).await;
        self.remove_topic_dir(name).await;
        tracing::warn!(topic = name, "{what}; the topic was not created");
        (
            ErrorCode::StorageError,
            format!("{what}; the topic was not created"),
        )
    }

    /// Checks a topic's configuration against this broker's defaults and limits: the
    /// catalog only knows the built-in defaults.
    fn check_topic_fits(&self, catalog: &Catalog, name: &str) -> Result<(), WireError> {
        let Some(topic) = catalog.topic(name) else {
            return Ok(());
        };
        let log = topic.config.log_config(&self.config.log);
        log.validate()
            .map_err(|error| (ErrorCode::InvalidConfig, error.to_string()))?;
        let frame_room = self.config.frame_bytes_max.saturating_sub(64 << 10);
        if log.batch_bytes_max > frame_room {
            let message = format!(
                "max.message.bytes {} does not fit this broker's frames ({} bytes max)",
                log.batch_bytes_max, frame_room
            );
            return Err((ErrorCode::InvalidConfig, message));
        }
        Ok(())
    }

    /// Opens, closes and reconfigures this shard's partitions to match `catalog`. Returns
    /// the partitions of newly created topics that could not be opened.
    pub async fn apply_catalog(&self, catalog: Catalog) -> Vec<(u32, String)> {
        let previous = self.catalog.replace(Rc::new(catalog));
        let current = self.catalog();
        let mut failed = Vec::new();
        for old in previous.topics() {
            if current.topic(&old.name).is_none() {
                self.drop_topic(&old.name, old.partitions).await;
                self.forget_committed_positions(&old.name).await;
            }
        }
        for topic in current.topics() {
            match previous.topic(&topic.name) {
                None => failed.extend(self.open_topic(&topic.name).await.failed),
                Some(old) if old.config != topic.config => self.reconfigure_topic(&topic.name),
                Some(_) => {}
            }
        }
        failed
    }

    /// Deletes the groups' committed positions of a deleted topic held by this shard's
    /// offsets partitions. A failure is logged; the positions then stay until the group
    /// commits others or is deleted.
    async fn forget_committed_positions(&self, topic: &str) {
        let partitions = self.offsets_partitions();
        for (index, partition) in self.local_offsets_partitions() {
            let now = self.clock.now_ms();
            let forgotten = self
                .groups
                .forget_topic(&partition, index, partitions, topic, now)
                .await;
            match forgotten {
                Ok(0) => {}
                Ok(count) => tracing::info!(
                    topic,
                    count,
                    "deleted the committed positions of a deleted topic"
                ),
                Err(error) => {
                    tracing::error!(topic, %error, "cannot delete the committed positions of a deleted topic")
                }
            }
        }
    }

    /// Opens the partitions of `topic` this shard owns. A partition that cannot be opened
    /// is logged and listed in the answer; it then answers `UnknownPartition`.
    pub async fn open_topic(&self, name: &str) -> Opened {
        let catalog = self.catalog();
        let mut opened = Opened::default();
        let Some(topic) = catalog.topic(name) else {
            return opened;
        };
        let topic_name: Rc<str> = Rc::from(name);
        for index in (0..topic.partitions).filter(|&index| self.owner(name, index) == self.shard) {
            let opening = Partition::open(
                &self.config.data_dir,
                Rc::clone(&topic_name),
                index,
                topic.config.clone(),
                &self.config.log,
                Rc::clone(&self.clock),
                Rc::clone(&self.cache),
            );
            let partition = match opening.await {
                Ok((partition, report)) => {
                    opened.bytes_cut += report.bytes_cut;
                    partition
                }
                Err(error) => {
                    tracing::error!(topic = name, partition = index, %error, "cannot open partition");
                    opened.failed.push((index, error.to_string()));
                    continue;
                }
            };
            if name == OFFSETS_TOPIC {
                match self.groups.load(&partition).await {
                    Ok(records) => {
                        tracing::debug!(partition = index, records, "loaded committed offsets")
                    }
                    Err(error) => {
                        tracing::error!(partition = index, %error, "cannot load committed offsets");
                        opened
                            .failed
                            .push((index, format!("loading committed offsets: {error}")));
                        continue;
                    }
                }
            }
            opened.partitions += 1;
            self.partitions
                .borrow_mut()
                .insert((name.to_owned(), index), Rc::new(partition));
        }
        opened
    }

    fn reconfigure_topic(&self, name: &str) {
        let catalog = self.catalog();
        let Some(topic) = catalog.topic(name) else {
            return;
        };
        for partition in self
            .local_partitions()
            .iter()
            .filter(|partition| partition.topic() == name)
        {
            if let Err(error) = partition.reconfigure(topic.config.clone(), &self.config.log) {
                tracing::error!(topic = name, %error, "cannot apply topic config");
            }
        }
    }

    async fn drop_topic(&self, name: &str, partitions: u32) {
        for index in 0..partitions {
            let removed = self
                .partitions
                .borrow_mut()
                .remove(&(name.to_owned(), index));
            let Some(partition) = removed else { continue };
            if let Err(error) = partition.close().await {
                tracing::warn!(topic = name, partition = index, %error, "closing a deleted partition");
            }
            let dir = partition_dir(&self.config.data_dir, name, index);
            if let Err(error) = move_to_trash(&self.config.data_dir, &dir).await {
                tracing::error!(dir = %dir.display(), %error, "cannot delete partition directory");
            }
        }
    }

    /// Closes every partition (flush, fsync, index, checkpoint).
    pub async fn close_partitions(&self) -> usize {
        let partitions: Vec<_> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, p)| p)
            .collect();
        let count = partitions.len();
        for partition in partitions {
            if let Err(error) = partition.close().await {
                tracing::error!(?partition, %error, "closing partition");
            }
        }
        count
    }
}

/// Renames a directory into `<data_dir>/.trash/` (one atomic rename, so the topic name
/// is free at once), then deletes it. Runs on one of the shard's helper threads:
/// unlinking a partition's segments (and discarding their blocks) held the shard for
/// 70-170 ms per topic of 8 partitions when it ran on the shard's own.
async fn move_to_trash(data_dir: &Path, dir: &Path) -> std::io::Result<()> {
    let (data_dir, dir) = (data_dir.to_path_buf(), dir.to_path_buf());
    crate::shard::blocking(move || move_to_trash_now(&data_dir, &dir)).await
}

fn move_to_trash_now(data_dir: &Path, dir: &Path) -> std::io::Result<()> {
    let trash = data_dir.join(".trash");
    std::fs::create_dir_all(&trash)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let name = dir
        .strip_prefix(data_dir)
        .unwrap_or(dir)
        .to_string_lossy()
        .replace('/', "-");
    let target: PathBuf = trash.join(format!("{name}-{nanos}"));
    std::fs::rename(dir, &target)?;
    std::fs::remove_dir_all(&target)
}

async fn list_offset(partition: &Partition, timestamp: i64) -> Result<u64, WireError> {
    let log = partition.log();
    match timestamp {
        LATEST_TIMESTAMP => Ok(partition.high_watermark()),
        EARLIEST_TIMESTAMP => Ok(log.log_start_offset()),
        time if time >= 0 => log
            .offset_for_timestamp(time)
            .await
            .map(|found| found.unwrap_or(partition.high_watermark()))
            .map_err(|error| from_storage(&error)),
        _ => Err((
            ErrorCode::InvalidRequest,
            format!("invalid timestamp {timestamp}"),
        )),
    }
}

fn into_remote(outcome: Outcome) -> RemoteOutcome {
    match outcome {
        Outcome::Produced(result) => RemoteOutcome::Produced(result),
        Outcome::Fetched(result) => RemoteOutcome::Fetched(result.map(|fetched| {
            FetchResult {
                high_watermark: fetched.high_watermark,
                log_start_offset: fetched.log_start_offset,
                batches: match fetched.batches {
                    FetchedBatches::Stored(batches) => batches
                        .iter()
                        .map(|batch| Bytes::copy_from_slice(batch.as_bytes()))
                        .collect(),
                    FetchedBatches::Copied(batches) => batches,
                },
            }
        })),
        Outcome::DataReady(ready) => RemoteOutcome::DataReady(ready),
        Outcome::Offset(result) => RemoteOutcome::Offset(result),
    }
}

fn from_remote(outcome: RemoteOutcome) -> Outcome {
    match outcome {
        RemoteOutcome::Produced(result) => Outcome::Produced(result),
        RemoteOutcome::Fetched(result) => Outcome::Fetched(result.map(|fetched| FetchResult {
            high_watermark: fetched.high_watermark,
            log_start_offset: fetched.log_start_offset,
            batches: FetchedBatches::Copied(fetched.batches),
        })),
        RemoteOutcome::DataReady(ready) => Outcome::DataReady(ready),
        RemoteOutcome::Offset(result) => Outcome::Offset(result),
    }
}

/// The catalog of the data directory, with the internal offsets topic added if it is
/// missing (every shard computes the same; `persist` (shard 0) also writes it).
pub(crate) async fn load_catalog(
    config: &BrokerConfig,
    persist: bool,
) -> Result<Catalog, CatalogError> {
    let catalog = Catalog::load(&config.data_dir).await?;
    if catalog.topic(OFFSETS_TOPIC).is_some() {
        return Ok(catalog);
    }
    // Superseded commits go with retention; live positions are written again before
    // they would (see `refresh_offsets`). Segments roll often enough to be deletable.
    let retention = config.offsets_retention_ms;
    let configs = [
        ("retention.ms".to_owned(), retention.to_string()),
        ("retention.bytes".to_owned(), "-1".to_owned()),
        ("segment.ms".to_owned(), (retention / 4).to_string()),
    ];
    let catalog =
        catalog.with_internal_topic(OFFSETS_TOPIC, config.offsets_topic_partitions, &configs)?;
    if persist {
        catalog.persist(&config.data_dir).await?;
    }
    Ok(catalog)
}

/// The answer to a request a shutdown cut short.
fn shutting_down() -> WireError {
    (
        ErrorCode::BrokerShuttingDown,
        "the broker is shutting down".into(),
    )
}
