//! Measurements: counts and HdrHistograms (microsecond resolution, 3 significant
//! digits, 1 µs to 10 minutes), kept per task and merged.
//!
//! Every producer (its delivery callbacks, which run on its client's background task)
//! and consumer task owns one [`Recorder`] behind a mutex that only it locks on the hot
//! path; once a second the progress task takes each recorder's
//! window and merges them into one [`Tally`] for the time series and the HdrHistogram
//! interval logs. The measured totals (warm-up excluded) are merged the same way at the
//! end of a run.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded, in microseconds (larger ones are saturated to it).
pub const LATENCY_MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// What was measured over some time: a window, a task's run, or a whole run.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Records acknowledged (for acks=0: handed to the socket).
    pub produced: u64,
    pub produced_bytes: u64,
    /// Records read by consumers.
    pub consumed: u64,
    pub consumed_bytes: u64,
    /// Sends that failed.
    pub errors: u64,
    /// When the first and the last of the `produced` records were acknowledged (kept
    /// for the measured totals only: windows do not need it).
    pub acknowledged: Option<(Instant, Instant)>,
    /// Send (intended time, in open loop) → acknowledgement.
    pub publish: Histogram<u64>,
    /// Send (intended time) → handed to the consumer's caller.
    pub end_to_end: Histogram<u64>,
    /// Open loop: actual send time − intended send time.
    pub slip: Histogram<u64>,
    /// How much longer than asked a 1 ms sleep on the load's CPUs took (see
    /// `HiccupMeter` in `run.rs`): the machine's own stalls.
    pub hiccups: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            produced: 0,
            produced_bytes: 0,
            consumed: 0,
            consumed_bytes: 0,
            errors: 0,
            acknowledged: None,
            publish: histogram(),
            end_to_end: histogram(),
            slip: histogram(),
            hiccups: histogram(),
        }
    }
}

impl Tally {
    /// Adds `other` to this one.
    pub fn merge(&mut self, other: &Tally) {
        self.produced += other.produced;
        self.produced_bytes += other.produced_bytes;
        self.consumed += other.consumed;
        self.consumed_bytes += other.consumed_bytes;
        self.errors += other.errors;
        self.acknowledged = match (self.acknowledged, other.acknowledged) {
            (Some((first, last)), Some((other_first, other_last))) => {
                Some((first.min(other_first), last.max(other_last)))
            }
            (mine, theirs) => mine.or(theirs),
        };
        for (into, from) in [
            (&mut self.publish, &other.publish),
            (&mut self.end_to_end, &other.end_to_end),
            (&mut self.slip, &other.slip),
            (&mut self.hiccups, &other.hiccups),
        ] {
            into.add(from).expect("histograms share their bounds");
        }
    }
}

fn micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US)
}

/// One task's measurements: the current window (everything) and the measured totals
/// (only what falls inside the measured period).
#[derive(Debug, Default)]
pub struct Recorder {
    window: Tally,
    total: Tally,
}

/// A recorder shared between its task and the progress task.
pub type SharedRecorder = Arc<Mutex<Recorder>>;

impl Recorder {
    /// A new shared recorder.
    pub fn shared() -> SharedRecorder {
        Arc::new(Mutex::new(Self::default()))
    }

    /// A send of `bytes` was acknowledged at `at`, `latency` after it was (meant to
    /// be) sent.
    pub fn delivered(&mut self, latency: Duration, at: Instant, bytes: usize, measured: bool) {
        let latency = micros(latency);
        for tally in self.tallies(measured) {
            tally.produced += 1;
            tally.produced_bytes += bytes as u64;
            tally.publish.saturating_record(latency);
        }
        if measured {
            self.total.acknowledged = Some(match self.total.acknowledged {
                Some((first, last)) => (first.min(at), last.max(at)),
                None => (at, at),
            });
        }
    }

    /// A send failed.
    pub fn failed(&mut self, measured: bool) {
        for tally in self.tallies(measured) {
            tally.errors += 1;
        }
    }

    /// An open-loop send went out `slip` after its intended time.
    pub fn slipped(&mut self, slip: Duration, measured: bool) {
        let slip = micros(slip);
        for tally in self.tallies(measured) {
            tally.slip.saturating_record(slip);
        }
    }

    /// A sleep of the hiccup meter took `extra` longer than asked.
    pub fn hiccup(&mut self, extra: Duration, measured: bool) {
        let extra = micros(extra);
        for tally in self.tallies(measured) {
            tally.hiccups.saturating_record(extra);
        }
    }

    /// A consumer read a record of `bytes`, `end_to_end` after it was meant to be sent.
    /// `counted`: read inside the measured period (throughput); `stamped`: sent inside
    /// it (latency).
    pub fn consumed(&mut self, end_to_end: Duration, bytes: usize, counted: bool, stamped: bool) {
        let latency = micros(end_to_end);
        self.window.consumed += 1;
        self.window.consumed_bytes += bytes as u64;
        self.window.end_to_end.saturating_record(latency);
        if counted {
            self.total.consumed += 1;
            self.total.consumed_bytes += bytes as u64;
        }
        if stamped {
            self.total.end_to_end.saturating_record(latency);
        }
    }

    fn tallies(&mut self, measured: bool) -> impl Iterator<Item = &mut Tally> {
        let total = measured.then_some(&mut self.total);
        std::iter::once(&mut self.window).chain(total)
    }

    /// Hands over the current window and starts a new one.
    pub fn take_window(&mut self) -> Tally {
        std::mem::take(&mut self.window)
    }

    /// The measured totals.
    pub fn total(&self) -> &Tally {
        &self.total
    }
}

/// Merges the windows of `recorders`, starting new ones.
pub fn take_windows(recorders: &[SharedRecorder]) -> Tally {
    let mut merged = Tally::default();
    for recorder in recorders {
        let window = recorder
            .lock()
            .expect("no task panics holding it")
            .take_window();
        merged.merge(&window);
    }
    merged
}

/// Merges the measured totals of `recorders`.
pub fn totals(recorders: &[SharedRecorder]) -> Tally {
    let mut merged = Tally::default();
    for recorder in recorders {
        merged.merge(recorder.lock().expect("no task panics holding it").total());
    }
    merged
}

/// One second of a run, as it appears in the JSON time series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Seconds since the ack mode's run started, at the end of the window.
    pub t_s: f64,
    /// Length of the window in seconds (about 1; the last one is shorter).
    pub window_s: f64,
    /// Began inside the warm-up (whose records are not part of the totals).
    pub warmup: bool,
    pub producer_msgs_per_s: f64,
    pub producer_mb_per_s: f64,
    pub consumer_msgs_per_s: f64,
    pub consumer_mb_per_s: f64,
    pub publish_p50_us: u64,
    pub publish_p99_us: u64,
    pub publish_max_us: u64,
    /// `None` when nothing was consumed in the window.
    pub end_to_end_p99_us: Option<u64>,
    pub errors: u64,
    /// The longest hiccup of the load's CPUs in the window (0 without a meter).
    pub hiccup_max_us: u64,
}

impl Point {
    /// The point for `window`, which lasted `seconds` and ended `t_s` into the run.
    pub fn of(window: &Tally, t_s: f64, seconds: f64, warmup: bool) -> Self {
        let seconds = seconds.max(1e-9);
        Self {
            t_s,
            window_s: seconds,
            warmup,
            producer_msgs_per_s: window.produced as f64 / seconds,
            producer_mb_per_s: window.produced_bytes as f64 / seconds / 1e6,
            consumer_msgs_per_s: window.consumed as f64 / seconds,
            consumer_mb_per_s: window.consumed_bytes as f64 / seconds / 1e6,
            publish_p50_us: window.publish.value_at_quantile(0.5),
            publish_p99_us: window.publish.value_at_quantile(0.99),
            publish_max_us: window.publish.max(),
            end_to_end_p99_us: (!window.end_to_end.is_empty())
                .then(|| window.end_to_end.value_at_quantile(0.99)),
            errors: window.errors,
            hiccup_max_us: window.hiccups.max(),
        }
    }
}

/// Interval histograms kept for an HdrHistogram log: `(start, length, histogram)`.
#[derive(Debug, Default)]
pub struct IntervalLog {
    /// The wall-clock time the intervals' starts count from (the log's `StartTime`).
    started: Option<std::time::SystemTime>,
    intervals: Vec<(Duration, Duration, Histogram<u64>)>,
}

impl IntervalLog {
    /// An empty log whose intervals start `started` plus their offset.
    pub fn starting_at(started: std::time::SystemTime) -> Self {
        Self {
            started: Some(started),
            intervals: Vec::new(),
        }
    }

    /// Keeps one interval.
    pub fn push(&mut self, start: Duration, length: Duration, histogram: Histogram<u64>) {
        self.intervals.push((start, length, histogram));
    }

    /// Writes the standard HdrHistogram interval log (readable by HistogramLogAnalyzer,
    /// `hdr-plot` and every HdrHistogram port), values in microseconds.
    pub fn write(&self, path: &Path, comment: &str) -> std::io::Result<()> {
        let mut text = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment("values in microseconds")
            .with_start_time(self.started.unwrap_or_else(std::time::SystemTime::now))
            .begin_log_with(&mut text, &mut serializer)?;
        for (start, length, histogram) in &self.intervals {
            writer
                .write_histogram(histogram, *start, *length, Tag::new("latency"))
                .map_err(|error| std::io::Error::other(format!("{error:?}")))?;
        }
        std::fs::write(path, text)
    }

    /// Number of intervals kept.
    pub fn len(&self) -> usize {
        self.intervals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorders filled on separate threads merge into exact counts and the same
    /// percentiles as one histogram holding every sample.
    #[test]
    fn recorders_merge_across_threads() {
        let recorders: Vec<SharedRecorder> = (0..4).map(|_| Recorder::shared()).collect();
        let threads: Vec<_> = recorders
            .iter()
            .enumerate()
            .map(|(index, recorder)| {
                let recorder = Arc::clone(recorder);
                std::thread::spawn(move || {
                    for micros in 1..=10_000u64 {
                        let latency = Duration::from_micros(micros * (index as u64 + 1));
                        let measured = micros > 1_000;
                        recorder
                            .lock()
                            .unwrap()
                            .delivered(latency, Instant::now(), 100, measured);
                        recorder
                            .lock()
                            .unwrap()
                            .consumed(latency, 100, measured, true);
                    }
                    recorder.lock().unwrap().failed(true);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut reference = histogram();
        for index in 0..4u64 {
            for micros in 1_001..=10_000u64 {
                reference.record(micros * (index + 1)).unwrap();
            }
        }
        let total = totals(&recorders);
        assert_eq!(total.produced, 4 * 9_000);
        assert_eq!(total.produced_bytes, 4 * 9_000 * 100);
        assert_eq!(total.consumed, 4 * 9_000);
        assert_eq!(total.errors, 4);
        assert_eq!(total.end_to_end.len(), 4 * 10_000, "stamped counts all");
        for quantile in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(
                total.publish.value_at_quantile(quantile),
                reference.value_at_quantile(quantile)
            );
        }
        // The windows held everything, warm-up included, and start over once taken.
        let window = take_windows(&recorders);
        assert_eq!((window.produced, window.consumed), (40_000, 40_000));
        assert_eq!(take_windows(&recorders).produced, 0);
        let point = Point::of(&window, 1.0, 2.0, false);
        assert_eq!(point.producer_msgs_per_s, 20_000.0);
        assert_eq!(point.producer_mb_per_s, 2.0);
        assert!(point.publish_p50_us <= point.publish_p99_us);
    }

    #[test]
    fn interval_logs_read_back() {
        let started = std::time::UNIX_EPOCH + Duration::from_secs(1_764_900_000);
        let mut log = IntervalLog::starting_at(started);
        for second in 0..3u64 {
            let mut interval = histogram();
            interval.record(100 * (second + 1)).unwrap();
            log.push(
                Duration::from_secs(second),
                Duration::from_secs(1),
                interval,
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publish.hlog");
        log.write(&path, "test").unwrap();
        let text = std::fs::read(&path).unwrap();
        let start_times: Vec<Duration> =
            hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&text)
                .filter_map(|entry| match entry {
                    Ok(hdrhistogram::serialization::interval_log::LogEntry::StartTime(at)) => {
                        Some(at)
                    }
                    _ => None,
                })
                .collect();
        assert_eq!(start_times, [Duration::from_secs(1_764_900_000)]);
        let maxima: Vec<f64> =
            hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&text)
                .filter_map(|entry| match entry {
                    Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(interval)) => {
                        Some(interval.max())
                    }
                    _ => None,
                })
                .collect();
        assert_eq!(maxima.len(), 3);
        assert!((maxima[2] - 300.0).abs() < 1.0, "{maxima:?}");
    }
}
