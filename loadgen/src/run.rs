//! Running the workloads: one ack mode's produce/consume run, the backlog drain and
//! the idle-cost scenario, all through the public client API.
//!
//! A produce/consume run: consumers are assigned the topics' partitions (split evenly,
//! no group, so no rebalance disturbs the measurement) and start reading; producers
//! then send for the warm-up and the measured period, either as fast as the producer's
//! buffer lets them (closed loop) or on an [`OpenLoop`] schedule. Each record is sent
//! with a callback that records its publish latency when it completes; consumers read
//! each value's stamp and record end-to-end latency. Once producers stop, consumers
//! read until they have every record produced, or nothing came for
//! [`Plan::drain_grace`] (then the remainder is reported as `unconsumed`).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen_client::accumulator::AccumulatorConfig;
use flumen_client::{
    Acks, Client, Consumer, ConsumerConfig, Delivery, DeliveryHandler, ProduceError, Producer,
    ProducerConfig, RecordRef, TopicPartition,
};

use crate::report::{AckRun, BacklogDrain, IdleCost, Throughput};
use crate::schedule::{wait_until, OpenLoop, Schedule};
use crate::stats::{take_windows, totals, IntervalLog, Point, Recorder, SharedRecorder, Tally};
use crate::workload::{
    read_stamp, stamped_value, KeyChooser, Rng, SizeDistribution, VALUE_BYTES_MAX,
};

/// Everything a run needs, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bootstrap: String,
    pub topic_prefix: String,
    pub topics: u32,
    /// Configs of the topics created, `(key, value)`.
    pub topic_configs: Vec<(String, String)>,
    pub partitions: u32,
    pub producers: usize,
    pub consumers: usize,
    pub sizes: SizeDistribution,
    pub keys: KeyChooser,
    pub batching: AccumulatorConfig,
    /// Producer batches in flight per broker shard.
    pub max_in_flight: usize,
    /// Open loop: records a second over all producers; `None`: closed loop.
    pub rate_msgs_per_s: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long consumers may go without a record before the run gives up on the rest.
    pub drain_grace: Duration,
    /// Keep per-second interval histograms for HdrHistogram logs.
    pub interval_logs: bool,
    /// Print a progress line every second.
    pub progress: bool,
    pub seed: u64,
    /// Keep the topics a run creates (by default each is deleted when its run ends).
    pub keep_topics: bool,
}

/// One ack mode's results.
pub struct ModeResult {
    pub run: AckRun,
    pub total: Tally,
    pub publish_log: IntervalLog,
    pub end_to_end_log: IntervalLog,
}

/// The clock values are stamped against: microseconds since `epoch`.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
    /// The wall-clock time at `epoch`, ms since the Unix epoch.
    epoch_ms: i64,
}

impl Clock {
    fn new() -> Self {
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        Self {
            epoch: Instant::now(),
            epoch_ms,
        }
    }

    /// A record's timestamp (ms since the Unix epoch) for a send intended at `at`: the
    /// producer then reads no clock for it.
    fn timestamp_ms(&self, at: Instant) -> i64 {
        self.epoch_ms + at.saturating_duration_since(self.epoch).as_millis() as i64
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    fn instant(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_micros(stamp)
    }
}

/// The measured period of a run.
#[derive(Debug, Clone, Copy)]
struct Period {
    from: Instant,
    until: Instant,
}

impl Period {
    fn contains(&self, at: Instant) -> bool {
        self.from <= at && at < self.until
    }
}

/// Progress shared between producers, consumers and the progress task.
#[derive(Debug, Default)]
struct Progress {
    /// Records produced (acknowledged, or sent with acks=0), warm-up included.
    produced: AtomicU64,
    consumed: AtomicU64,
    producers_done: AtomicBool,
}

/// The topics a run created: deleted when it ends (also on an error or a stop), unless
/// the plan keeps them, so runs do not pile data up on the broker.
struct RunTopics<'a> {
    plan: &'a Plan,
    names: Vec<String>,
}

impl std::ops::Deref for RunTopics<'_> {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.names
    }
}

impl Drop for RunTopics<'_> {
    fn drop(&mut self) {
        if !self.plan.keep_topics {
            delete_topics(&self.plan.bootstrap, &self.names);
        }
    }
}

/// Deletes `names`, warning about those it cannot.
fn delete_topics(bootstrap: &str, names: &[String]) {
    let mut client = match Client::connect(bootstrap) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("warning: cannot delete topics {names:?}: {error}");
            return;
        }
    };
    for name in names {
        if let Err(error) = client.delete_topic(name) {
            eprintln!("warning: cannot delete topic {name}: {error}");
        }
    }
}

fn create_topics<'a>(plan: &'a Plan, label: &str) -> Result<RunTopics<'a>, String> {
    let names: Vec<String> = (0..plan.topics)
        .map(|index| match plan.topics {
            1 => format!("{}-{label}-{}", plan.topic_prefix, std::process::id()),
            _ => format!(
                "{}-{label}-{}-{index}",
                plan.topic_prefix,
                std::process::id()
            ),
        })
        .collect();
    let mut client = Client::connect(plan.bootstrap.as_str())
        .map_err(|error| format!("cannot reach the broker at {}: {error}", plan.bootstrap))?;
    let configs: Vec<(&str, &str)> = plan
        .topic_configs
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let mut created = RunTopics {
        plan,
        names: Vec::with_capacity(names.len()),
    };
    for name in names {
        client
            .create_topic(&name, plan.partitions, &configs)
            .map_err(|error| format!("cannot create topic {name}: {error}"))?;
        created.names.push(name);
    }
    Ok(created)
}

fn producer_config(plan: &Plan, acks: Acks) -> ProducerConfig {
    let mut config = ProducerConfig::new(plan.bootstrap.as_str());
    config.acks = acks;
    config.batching = plan.batching;
    config.max_in_flight_per_shard = plan.max_in_flight;
    config
}

fn consumer_config(plan: &Plan) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(plan.bootstrap.as_str());
    config.fetch_max_bytes = plan.batching.batch_size_bytes.max(1 << 20) as u32;
    config.fetch_max_wait = Duration::from_millis(100);
    config.max_poll_records = 10_000;
    config
}

/// Consumer `index` of `consumers` gets every `consumers`-th partition.
fn share(
    topics: &[String],
    partitions: u32,
    index: usize,
    consumers: usize,
) -> Vec<TopicPartition> {
    topics
        .iter()
        .flat_map(|topic| {
            (0..partitions).map(move |partition| TopicPartition::new(topic.as_str(), partition))
        })
        .enumerate()
        .filter(|(position, _)| position % consumers == index)
        .map(|(_, partition)| partition)
        .collect()
}

/// What one producer sends next.
struct Source {
    topics: Vec<String>,
    sizes: SizeDistribution,
    keys: KeyChooser,
    rng: Rng,
    sent: u64,
    /// The value and key buffers, reused from record to record: a send copies them into
    /// its batch, so nothing is allocated per record.
    value: Vec<u8>,
    key: Vec<u8>,
}

impl Source {
    fn new(topics: Vec<String>, sizes: SizeDistribution, keys: KeyChooser, rng: Rng) -> Self {
        Self {
            topics,
            sizes,
            keys,
            rng,
            sent: 0,
            value: Vec::new(),
            key: Vec::new(),
        }
    }

    /// The next record (borrowing the buffers) and its value's size.
    fn record(&mut self, stamp: u64) -> (RecordRef<'_>, usize) {
        let size = self.sizes.sample(&mut self.rng);
        let topic = &self.topics[(self.sent % self.topics.len() as u64) as usize];
        self.sent += 1;
        let keyed = self.keys.next_key_into(&mut self.rng, &mut self.key);
        let mut record = RecordRef::new(topic, stamped_value(&mut self.value, size, stamp));
        if keyed {
            record = record.with_key(&self.key);
        }
        (record, size)
    }
}

/// How a producer paces its sends.
enum Pace {
    /// As fast as the buffer takes them, from the run's start until the end.
    Closed { start: Instant, until: Instant },
    /// On schedule.
    Open(OpenLoop),
    /// Closed loop until this many value bytes were sent by all producers together.
    Bytes { budget: Arc<AtomicU64>, target: u64 },
}

/// What the producer's delivery handler needs to record each outcome.
struct Outcomes {
    recorder: SharedRecorder,
    progress: Arc<Progress>,
    clock: Clock,
}

/// A record's tag for [`Outcomes`] as a delivery handler: its value's size in the high
/// 21 bits, whether it was intended in the measured period in the next, and in the low
/// 42 its intended send time (the clock's microsecond stamp, as in its value) modulo
/// 2^42 µs, 50 days: the delivery's `acknowledged_at`, a little later, gives back the
/// rest, as a TCP receiver unwraps sequence numbers.
const TAG_SIZE_BITS: u32 = 21;
const _: () = assert!(VALUE_BYTES_MAX < 1 << TAG_SIZE_BITS);
const TAG_STAMP_BITS: u32 = 64 - 1 - TAG_SIZE_BITS;
const TAG_STAMP_MASK: u64 = (1 << TAG_STAMP_BITS) - 1;
const TAG_MEASURED: u64 = 1 << TAG_STAMP_BITS;

fn tag(stamp: u64, measured: bool, bytes: usize) -> u64 {
    (bytes as u64) << (TAG_STAMP_BITS + 1)
        | u64::from(measured) << TAG_STAMP_BITS
        | stamp & TAG_STAMP_MASK
}

/// The wrapped stamp, the measured flag and the size of a tag.
fn untag(tag: u64) -> (u64, bool, usize) {
    (
        tag & TAG_STAMP_MASK,
        tag & TAG_MEASURED != 0,
        (tag >> (TAG_STAMP_BITS + 1)) as usize,
    )
}

/// The latest stamp at or before `at` that wraps to `wrapped`.
fn unwrap_stamp(wrapped: u64, at: u64) -> u64 {
    at - (at.wrapping_sub(wrapped) & TAG_STAMP_MASK)
}

/// Tagged deliveries: no allocation per record (a boxed callback per record held the
/// load CPU's throughput 10-15 % lower at 1.4 GB/s of 1 KiB records), so a delivery is
/// recorded as it completes: a record acknowledged while an earlier one of another
/// partition is still out is not charged that one's wait.
impl DeliveryHandler for Outcomes {
    fn delivered(&self, tag: u64, outcome: Result<Delivery, ProduceError>) {
        let (wrapped, measured, bytes) = untag(tag);
        let mut recorder = self.recorder.lock().expect("no task panics holding it");
        match outcome {
            Ok(Delivery {
                acknowledged_at, ..
            }) => {
                let stamp = unwrap_stamp(wrapped, self.clock.stamp(acknowledged_at));
                // From the stamp: at most a microsecond (the histograms' unit) longer.
                let latency = acknowledged_at.saturating_duration_since(self.clock.instant(stamp));
                recorder.delivered(latency, acknowledged_at, bytes, measured);
                self.progress.produced.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => recorder.failed(measured),
        }
    }
}

/// One producer: sends until its pace says stop, then waits for every delivery.
async fn produce(
    producer: Producer,
    mut source: Source,
    mut pace: Pace,
    clock: Clock,
    recorder: SharedRecorder,
    progress: Arc<Progress>,
    period: Period,
) {
    let outcomes = Arc::new(Outcomes {
        recorder: Arc::clone(&recorder),
        progress,
        clock,
    });
    if let Pace::Closed { start, .. } = pace {
        // The consumers are given until then to start polling.
        tokio::time::sleep_until(start.into()).await;
    }
    // A stop request (Ctrl-C) ends the sends; what was sent still gets its outcome.
    while !crate::interrupt::requested() {
        let intended = match &mut pace {
            Pace::Closed { until, .. } => {
                let now = Instant::now();
                if now >= *until {
                    break;
                }
                now
            }
            Pace::Open(schedule) => {
                let Some(due) = schedule.next_due() else {
                    break;
                };
                let slip = wait_until(due).await.saturating_duration_since(due);
                recorder
                    .lock()
                    .expect("no task panics holding it")
                    .slipped(slip, period.contains(due));
                due
            }
            Pace::Bytes { budget, target } => {
                if budget.load(Ordering::Relaxed) >= *target {
                    break;
                }
                Instant::now()
            }
        };
        let stamp = clock.stamp(intended);
        let (record, bytes) = source.record(stamp);
        let record = record.with_timestamp(clock.timestamp_ms(intended));
        if let Pace::Bytes { budget, .. } = &pace {
            budget.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        let tag = tag(stamp, period.contains(intended), bytes);
        producer.send_ref_tagged(&record, &outcomes, tag).await;
    }
    // Every record sent has an outcome (and its callback has run) once this returns.
    producer.flush().await;
}

/// How long the hiccup meter sleeps each time.
const HICCUP_SLEEP: Duration = Duration::from_millis(1);

/// A thread on the load's CPUs that sleeps 1 ms at a time and records how much longer
/// each sleep took, as jHiccup does: nothing in it waits for the broker, so what it
/// sees is the machine's own stalls (a vCPU the host did not run, a busy CPU, a kernel
/// thread in the way), which every latency measured meanwhile includes. It costs a
/// wake-up a millisecond.
struct HiccupMeter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HiccupMeter {
    /// Starts recording into `recorder`, counting sleeps begun in `period` as measured.
    fn start(recorder: SharedRecorder, period: Period) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("hiccups".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let before = Instant::now();
                    std::thread::sleep(HICCUP_SLEEP);
                    let extra = before.elapsed().saturating_sub(HICCUP_SLEEP);
                    recorder
                        .lock()
                        .expect("no task panics holding it")
                        .hiccup(extra, period.contains(before));
                }
            })
            .map_err(|error| format!("cannot start the hiccup meter: {error}"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HiccupMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long consumers wait for missing records after a stop request.
const INTERRUPTED_GRACE: Duration = Duration::from_secs(1);

/// One consumer: reads its partitions until the producers are done and every record
/// produced was read, or nothing came for `grace`. Returns when its last record came.
async fn consume(
    mut consumer: Consumer,
    clock: Clock,
    recorder: SharedRecorder,
    progress: Arc<Progress>,
    period: Option<Period>,
    grace: Duration,
) -> Result<Option<Instant>, String> {
    let mut last_record = Instant::now();
    let mut any = false;
    loop {
        let records = consumer
            .poll(Duration::from_millis(50))
            .await
            .map_err(|error| format!("consumer: {error}"))?;
        let now = Instant::now();
        if !records.is_empty() {
            last_record = now;
            any = true;
            let mut recorder = recorder.lock().expect("no task panics holding it");
            for record in records.iter() {
                let value = record.value().unwrap_or_default();
                let Some(stamp) = read_stamp(value) else {
                    continue;
                };
                let sent = clock.instant(stamp);
                let (counted, stamped) = match period {
                    Some(period) => (period.contains(now), period.contains(sent)),
                    None => (true, false),
                };
                recorder.consumed(
                    now.saturating_duration_since(sent),
                    value.len(),
                    counted,
                    stamped,
                );
            }
            progress
                .consumed
                .fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        // Stopped by a signal, the records still coming are read, but not waited for long.
        let grace = match crate::interrupt::requested() {
            true => grace.min(INTERRUPTED_GRACE),
            false => grace,
        };
        if progress.producers_done.load(Ordering::Acquire) {
            let produced = progress.produced.load(Ordering::Relaxed);
            if progress.consumed.load(Ordering::Relaxed) >= produced
                || now.duration_since(last_record) >= grace
            {
                return Ok(any.then_some(last_record));
            }
        }
    }
}

/// What the progress task hands back: the time series and the interval logs.
type Progressed = (Vec<Point>, IntervalLog, IntervalLog);

/// The running progress task of one phase, and how to stop it.
struct Reporter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Progressed>,
}

impl Reporter {
    /// Reports on `recorders` once a second from `start`; windows before `measure_from`
    /// are the warm-up.
    fn start(
        label: String,
        recorders: &[SharedRecorder],
        producers: &[Producer],
        (start, measure_from): (Instant, Instant),
        show: bool,
        logs: bool,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(report_progress(
            label,
            recorders.to_vec(),
            producers.to_vec(),
            (start, measure_from),
            show,
            logs,
            stopped,
        ));
        Self { stop, task }
    }

    /// Takes the last window and ends the task.
    async fn finish(self) -> Result<Progressed, String> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|error| format!("the progress task failed: {error}"))
    }
}

/// Prints and records one point a second until `stop`. The line counts the
/// producers' retries too: a broker refusing every write (a full disk) shows as retries
/// climbing while nothing is produced, long before the records time out as errors.
async fn report_progress(
    label: String,
    recorders: Vec<SharedRecorder>,
    producers: Vec<Producer>,
    (start, measure_from): (Instant, Instant),
    show: bool,
    logs: bool,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (Vec<Point>, IntervalLog, IntervalLog) {
    let mut series = Vec::new();
    tokio::time::sleep_until(start.into()).await;
    // The logs' intervals are offsets from the run's start, whose wall-clock time they
    // carry.
    let started = std::time::SystemTime::now() - start.elapsed();
    let (mut publish_log, mut end_to_end_log) = (
        IntervalLog::starting_at(started),
        IntervalLog::starting_at(started),
    );
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut window_start = start;
    let mut progressive = crate::stats::histogram();
    let terminal = std::io::stderr().is_terminal();
    tokio::pin!(stop);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            _ = &mut stop => true,
        };
        let now = Instant::now();
        let window = take_windows(&recorders);
        let seconds = now.duration_since(window_start).as_secs_f64();
        // Windows that began in the warm-up are marked as such.
        let warmup = window_start < measure_from;
        let point = Point::of(
            &window,
            now.duration_since(start).as_secs_f64(),
            seconds,
            warmup,
        );
        if !warmup {
            progressive
                .add(&window.publish)
                .expect("histograms share their bounds");
        }
        if show {
            let line = format!(
                "acks={label} {:>5.0}s{} produced {:>9.0} msg/s {:>8.1} MB/s  p99 {} us  \
                 consumed {:>9.0} msg/s  errors {}  retries {}",
                point.t_s,
                if warmup { " (warm-up)" } else { "" },
                point.producer_msgs_per_s,
                point.producer_mb_per_s,
                if warmup {
                    point.publish_p99_us
                } else {
                    progressive.value_at_quantile(0.99)
                },
                point.consumer_msgs_per_s,
                point.errors,
                producers
                    .iter()
                    .map(|producer| producer.metrics().retries)
                    .sum::<u64>()
            );
            let mut stderr = std::io::stderr().lock();
            let _ = match terminal {
                true => write!(stderr, "\r\x1b[2K{line}"),
                false => writeln!(stderr, "{line}"),
            };
        }
        if logs {
            let offset = window_start.duration_since(start);
            publish_log.push(offset, now - window_start, window.publish.clone());
            end_to_end_log.push(offset, now - window_start, window.end_to_end.clone());
        }
        series.push(point);
        window_start = now;
        if last {
            if show && terminal {
                eprintln!();
            }
            return (series, publish_log, end_to_end_log);
        }
    }
}

/// The tasks of one run: the clock they stamp with, their shared progress and their
/// recorders.
struct Load {
    clock: Clock,
    progress: Arc<Progress>,
    recorders: Vec<SharedRecorder>,
}

impl Load {
    fn new() -> Self {
        Self {
            clock: Clock::new(),
            progress: Arc::new(Progress::default()),
            recorders: Vec::new(),
        }
    }

    fn recorder(&mut self) -> SharedRecorder {
        let recorder = Recorder::shared();
        self.recorders.push(Arc::clone(&recorder));
        recorder
    }
}

fn start_consumers(
    plan: &Plan,
    topics: &[String],
    load: &mut Load,
    period: Option<Period>,
) -> Vec<tokio::task::JoinHandle<Result<Option<Instant>, String>>> {
    let consumers = plan
        .consumers
        .min((topics.len() as u32 * plan.partitions) as usize);
    (0..consumers)
        .map(|index| {
            let recorder = load.recorder();
            let partitions = share(topics, plan.partitions, index, consumers);
            let config = consumer_config(plan);
            let progress = Arc::clone(&load.progress);
            let clock = load.clock;
            let grace = plan.drain_grace;
            tokio::spawn(async move {
                let mut consumer = Consumer::new(config);
                consumer
                    .assign(&partitions)
                    .await
                    .map_err(|error| format!("consumer assign: {error}"))?;
                consume(consumer, clock, recorder, progress, period, grace).await
            })
        })
        .collect()
}

fn start_producers(
    plan: &Plan,
    acks: Acks,
    topics: &[String],
    load: &mut Load,
    period: Period,
    mut pace: impl FnMut(usize) -> Pace,
) -> (Vec<Producer>, Vec<tokio::task::JoinHandle<()>>) {
    let mut producers = Vec::new();
    let mut tasks = Vec::new();
    for index in 0..plan.producers {
        let producer = Producer::start(producer_config(plan, acks));
        let recorder = load.recorder();
        let mut source = Source::new(
            topics.to_vec(),
            plan.sizes.clone(),
            plan.keys.clone(),
            Rng::new(plan.seed.wrapping_add(index as u64)),
        );
        source.sent = index as u64;
        producers.push(producer.clone());
        tasks.push(tokio::spawn(produce(
            producer,
            source,
            pace(index),
            load.clock,
            recorder,
            Arc::clone(&load.progress),
            period,
        )));
    }
    (producers, tasks)
}

async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Result<Vec<T>, String> {
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            task.await
                .map_err(|error| format!("a load task failed: {error}"))?,
        );
    }
    Ok(results)
}

/// Closes `producers`, returning their retries.
async fn close(producers: Vec<Producer>) -> u64 {
    let mut retries = 0;
    for producer in producers {
        retries += producer.metrics().retries;
        producer.close().await;
    }
    retries
}

/// Runs the produce/consume workload for one ack mode (`label`: `0`, `1` or `all`).
pub async fn run_mode(plan: &Plan, label: &str, acks: Acks) -> Result<ModeResult, String> {
    let topics = create_topics(plan, &format!("acks{label}"))?;
    let mut load = Load::new();
    // Consumers first, so they are polling when the first record lands.
    let start = Instant::now() + Duration::from_millis(200);
    let period = Period {
        from: start + plan.warmup,
        until: start + plan.warmup + plan.duration,
    };
    let consumers = start_consumers(plan, &topics, &mut load, Some(period));
    let pace = |index: usize| match plan.rate_msgs_per_s {
        None => Pace::Closed {
            start,
            until: period.until,
        },
        Some(rate) => {
            // Producers interleave: producer i starts i/n of an interval after the first.
            let per_producer = rate / plan.producers as f64;
            let offset = Duration::from_secs_f64(index as f64 / rate);
            Pace::Open(OpenLoop::new(
                Schedule::new(start + offset, per_producer),
                period.until,
            ))
        }
    };
    let (producers, producing) = start_producers(plan, acks, &topics, &mut load, period, pace);
    // Started from the load's thread, so it runs on the load's CPUs.
    let hiccups = HiccupMeter::start(load.recorder(), period)?;
    let reporter = Reporter::start(
        label.to_owned(),
        &load.recorders,
        &producers,
        (start, period.from),
        plan.progress,
        plan.interval_logs,
    );
    join_all(producing).await?;
    drop(hiccups);
    // Stopped early, the rates are over the part of the measured period that ran
    // before the stop (not the flush after it).
    let measured = match crate::interrupt::requested_at() {
        Some(stopped) => stopped
            .min(period.until)
            .saturating_duration_since(period.from),
        None => plan.duration,
    };
    let retries = close(producers).await;
    load.progress.producers_done.store(true, Ordering::Release);
    for outcome in join_all(consumers).await? {
        outcome?;
    }
    let (series, publish_log, end_to_end_log) = reporter.finish().await?;
    if measured.is_zero() {
        return Err("stopped during the warm-up: nothing was measured".into());
    }
    let total = totals(&load.recorders);
    let mut run = AckRun::new(
        label,
        &total,
        measured.as_secs_f64(),
        plan.consumers > 0,
        plan.rate_msgs_per_s.is_some(),
    );
    run.retries = retries;
    run.time_series = series;
    if plan.consumers > 0 {
        let progress = &load.progress;
        run.unconsumed = progress
            .produced
            .load(Ordering::Relaxed)
            .saturating_sub(progress.consumed.load(Ordering::Relaxed));
    }
    Ok(ModeResult {
        run,
        total,
        publish_log,
        end_to_end_log,
    })
}

/// The backlog-drain scenario: produce `backlog_bytes` of values with no consumer
/// (closed loop), then read everything back from the beginning with `plan.consumers`
/// consumers (at least one) and time it.
pub async fn run_drain(
    plan: &Plan,
    label: &str,
    acks: Acks,
    backlog_bytes: u64,
) -> Result<(ModeResult, BacklogDrain), String> {
    let topics = create_topics(plan, &format!("drain-acks{label}"))?;
    let mut load = Load::new();
    let start = Instant::now();
    let everything = Period {
        from: start,
        until: start + Duration::from_secs(365 * 24 * 3600),
    };
    let budget = Arc::new(AtomicU64::new(0));
    let pace = |_| Pace::Bytes {
        budget: Arc::clone(&budget),
        target: backlog_bytes,
    };
    let (producers, producing) = start_producers(plan, acks, &topics, &mut load, everything, pace);
    let reporter = Reporter::start(
        format!("{label} (backlog)"),
        &load.recorders,
        &producers,
        (start, start),
        plan.progress,
        false,
    );
    join_all(producing).await?;
    let retries = close(producers).await;
    let build_seconds = start.elapsed().as_secs_f64();
    let built = totals(&load.recorders);
    load.progress.producers_done.store(true, Ordering::Release);

    let plan = Plan {
        consumers: plan.consumers.max(1),
        ..plan.clone()
    };
    reporter.finish().await?;
    // From the consumers' start: their connecting is part of catching up.
    let drain_start = Instant::now();
    // The readers get recorders of their own, so the drain is timed apart from the build.
    let mut readers = Load {
        clock: load.clock,
        progress: Arc::clone(&load.progress),
        recorders: Vec::new(),
    };
    let consumers = start_consumers(&plan, &topics, &mut readers, None);
    let reporter = Reporter::start(
        format!("{label} (drain)"),
        &readers.recorders,
        &[],
        (drain_start, drain_start),
        plan.progress,
        false,
    );
    let mut last_record = drain_start;
    for outcome in join_all(consumers).await? {
        last_record = last_record.max(outcome?.unwrap_or(drain_start));
    }
    reporter.finish().await?;
    // Up to the last record read: the wait for more after it is not reading time.
    let drain_seconds = last_record.duration_since(drain_start).as_secs_f64();
    let read = totals(&readers.recorders);
    let mut total = built.clone();
    total.merge(&read);
    let mut run = AckRun::new(label, &built, build_seconds, true, false);
    run.consumer = Some(Throughput::of(
        read.consumed,
        read.consumed_bytes,
        drain_seconds,
    ));
    run.end_to_end_latency_us = None;
    run.retries = retries;
    run.unconsumed = built.produced.saturating_sub(read.consumed);
    let drain = BacklogDrain {
        backlog_bytes: built.produced_bytes,
        messages: built.produced,
        build: Throughput::of(built.produced, built.produced_bytes, build_seconds),
        build_seconds,
        drain: Throughput::of(read.consumed, read.consumed_bytes, drain_seconds),
        drain_seconds,
    };
    Ok((
        ModeResult {
            run,
            total,
            publish_log: IntervalLog::default(),
            end_to_end_log: IntervalLog::default(),
        },
        drain,
    ))
}

/// Resident memory of process `pid`, in bytes.
pub fn resident_bytes(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|error| format!("cannot read /proc/{pid}/status: {error}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The idle-cost scenario: the broker's resident memory before and after creating
/// `partitions` partitions (topics of up to 1,000) and opening `connections` client
/// connections that each made one request and then stay idle.
pub fn run_idle(
    plan: &Plan,
    broker_pid: u32,
    partitions: u32,
    connections: u32,
    settle: Duration,
) -> Result<IdleCost, String> {
    let settled = || {
        std::thread::sleep(settle);
        resident_bytes(broker_pid)
    };
    let rss_before_bytes = settled()?;
    let mut admin = Client::connect(plan.bootstrap.as_str())
        .map_err(|error| format!("cannot reach the broker at {}: {error}", plan.bootstrap))?;
    let mut remaining = partitions;
    let mut created = RunTopics {
        plan,
        names: Vec::new(),
    };
    while remaining > 0 {
        let count = remaining.min(1_000);
        let name = format!(
            "{}-idle-{}-{}",
            plan.topic_prefix,
            std::process::id(),
            created.names.len()
        );
        admin
            .create_topic(&name, count, &[])
            .map_err(|error| format!("cannot create {name} ({count} partitions): {error}"))?;
        created.names.push(name);
        remaining -= count;
    }
    let rss_after_partitions_bytes = settled()?;
    let mut open = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        let mut client = Client::connect(plan.bootstrap.as_str())
            .map_err(|error| format!("connection {}: {error}", open.len() + 1))?;
        client
            .metadata(Some(&[]))
            .map_err(|error| format!("connection {}: {error}", open.len() + 1))?;
        open.push(client);
    }
    let rss_after_connections_bytes = settled()?;
    let per = |after: u64, before: u64, count: u32| {
        (after as f64 - before as f64) / f64::from(count.max(1))
    };
    drop(open);
    Ok(IdleCost {
        broker_pid,
        rss_before_bytes,
        partitions,
        rss_after_partitions_bytes,
        bytes_per_partition: per(rss_after_partitions_bytes, rss_before_bytes, partitions),
        connections,
        rss_after_connections_bytes,
        bytes_per_connection: per(
            rss_after_connections_bytes,
            rss_after_partitions_bytes,
            connections,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tag gives back the size and flag it was made of, and the stamp once unwrapped
    /// against any later time within 50 days, across the wrap too.
    #[test]
    fn a_tag_carries_the_intended_time_and_the_size() {
        let wrap = TAG_STAMP_MASK + 1;
        for (stamp, measured, bytes) in [
            (0, false, 0),
            (1, true, 1024),
            (wrap - 1, true, VALUE_BYTES_MAX),
            (wrap, false, VALUE_BYTES_MAX),
            (5 * wrap + 7, true, 8),
        ] {
            let (wrapped, got_measured, got_bytes) = untag(tag(stamp, measured, bytes));
            assert_eq!((got_measured, got_bytes), (measured, bytes));
            for later in [0, 1, 3_000_000, wrap - 1] {
                assert_eq!(
                    unwrap_stamp(wrapped, stamp + later),
                    stamp,
                    "{stamp} + {later}"
                );
            }
        }
    }
}
