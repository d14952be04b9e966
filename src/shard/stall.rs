//! Stall reports: when a shard was held up, for how long, and where the time went.
//!
//! A shard is one thread running every task of its partitions and connections, so
//! anything that holds the thread holds them all: a task computing too long, a blocking
//! system call, another thread on the same CPU, or (in a VM) the host not running the
//! CPU at all. [`watch`] ticks every [`TICK`]; a tick that comes more than the
//! threshold late is logged with the thread's own accounting of the interval, from its
//! scheduler statistics (`/proc/thread-self/schedstat`):
//!
//! - `on_cpu_ms`: the thread ran (our code, or the kernel working for it): a task that
//!   does not yield, or an expensive system call;
//! - `runnable_ms`: it was ready but another thread had the CPU;
//! - `off_cpu_ms`: neither: asleep waiting for I/O or a timer, blocked in a system call,
//!   or the CPU itself not running (a VM's host preempting it; `steal` in `/proc/stat`).
//!
//! [`note_disk_wait`] reports single disk operations that kept their caller waiting
//! longer than the threshold. Both are limited to one warning per second per shard and
//! kind; the ones in between are logged at debug level and counted into the next
//! warning, and [`summary`] gives a shard's totals when it stops. The threshold is per thread, set by [`set_threshold`]
//! when a shard starts (`stall_warn_ms`; none set, nothing is reported).

use std::cell::{Cell, RefCell};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often [`watch`] checks on its shard.
pub const TICK: Duration = Duration::from_millis(10);

/// At most one report per kind per this interval; the rest are counted.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

thread_local! {
    static THRESHOLD: Cell<Option<Duration>> = const { Cell::new(None) };
    static TOTALS: RefCell<Totals> = RefCell::new(Totals::default());
}

/// A shard's stall counts since it started.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    /// Ticks that came later than the threshold.
    pub stalls: Tally,
    /// Disk operations that kept their caller waiting longer than the threshold.
    pub slow_disk_ops: Tally,
}

/// One kind of report: how many, the longest, and the pace of warnings.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Reports so far.
    pub count: u64,
    /// The longest of them.
    pub worst: Duration,
    last_warning: Option<Instant>,
    unwarned: u64,
}

impl Tally {
    /// Counts one report of `duration` at `now`. Returns whether it is to be a warning
    /// (at most one a [`REPORT_INTERVAL`]) and if so, how many were not since the last.
    fn record(&mut self, duration: Duration, now: Instant) -> Option<u64> {
        self.count += 1;
        self.worst = self.worst.max(duration);
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < REPORT_INTERVAL)
        {
            self.unwarned += 1;
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unwarned))
    }
}

/// Counts a report of `duration` in the tally `kind` picks; see [`Tally::record`].
fn record(kind: fn(&mut Totals) -> &mut Tally, duration: Duration) -> Option<u64> {
    let now = Instant::now();
    TOTALS.with(|totals| kind(&mut totals.borrow_mut()).record(duration, now))
}

/// Logs a report: at warn level with the count of reports held back since the last one
/// when `due` says so (`Some(count)`), at debug level otherwise.
macro_rules! log_at {
    ($due:expr, $($field:tt)+) => {
        match $due {
            Some(unreported) => tracing::warn!(earlier_unreported = unreported, $($field)+),
            None => tracing::debug!($($field)+),
        }
    };
}

/// Sets the threshold for this thread's reports (`None`: report nothing).
pub fn set_threshold(threshold: Option<Duration>) {
    THRESHOLD.with(|cell| cell.set(threshold.filter(|threshold| !threshold.is_zero())));
}

/// This thread's totals so far.
pub fn summary() -> Totals {
    TOTALS.with(|totals| totals.borrow().clone())
}

/// Records a disk operation on the file `path` names that kept its caller waiting
/// `waited`; logs it if that is over the threshold.
pub fn note_disk_wait(
    operation: &'static str,
    path: impl FnOnce() -> PathBuf,
    bytes: usize,
    waited: Duration,
) {
    let Some(threshold) = THRESHOLD.with(Cell::get) else {
        return;
    };
    if waited < threshold {
        return;
    }
    let report = record(|totals| &mut totals.slow_disk_ops, waited);
    log_at!(
        report,
        operation,
        path = %path().display(),
        bytes,
        waited_ms = millis(waited),
        "slow disk operation"
    );
}

fn millis(duration: Duration) -> f64 {
    (duration.as_micros() as f64 / 1_000.0 * 10.0).round() / 10.0
}

/// The thread's scheduler accounting: nanoseconds on the CPU and runnable but waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThreadTimes {
    /// Time the thread ran.
    pub on_cpu: Duration,
    /// Time the thread was ready to run but did not get the CPU.
    pub runnable: Duration,
}

impl ThreadTimes {
    /// Parses `/proc/<tid>/schedstat`: run time, run-queue wait (both in ns), slices.
    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let on_cpu = fields.next()?.ok()?;
        let runnable = fields.next()?.ok()?;
        Some(Self {
            on_cpu: Duration::from_nanos(on_cpu),
            runnable: Duration::from_nanos(runnable),
        })
    }
}

/// Where one interval of `elapsed` went, from the thread times at its two ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breakdown {
    /// Of the interval, on the CPU.
    pub on_cpu: Duration,
    /// Runnable, waiting for the CPU.
    pub runnable: Duration,
    /// The rest: asleep, blocked, or the CPU not running.
    pub off_cpu: Duration,
}

impl Breakdown {
    /// The breakdown of `elapsed` between `before` and `after`.
    pub fn between(before: ThreadTimes, after: ThreadTimes, elapsed: Duration) -> Self {
        let on_cpu = after.on_cpu.saturating_sub(before.on_cpu).min(elapsed);
        let runnable = after
            .runnable
            .saturating_sub(before.runnable)
            .min(elapsed - on_cpu);
        Self {
            on_cpu,
            runnable,
            off_cpu: elapsed - on_cpu - runnable,
        }
    }
}

/// This thread's scheduler statistics file, kept open and reread.
struct SchedStat(Option<std::fs::File>);

impl SchedStat {
    fn open() -> Self {
        Self(std::fs::File::open("/proc/thread-self/schedstat").ok())
    }

    fn read(&self) -> Option<ThreadTimes> {
        let mut buffer = [0u8; 128];
        let read = self.0.as_ref()?.read_at(&mut buffer, 0).ok()?;
        ThreadTimes::parse(std::str::from_utf8(&buffer[..read]).ok()?)
    }
}

/// Ticks every [`TICK`] on the calling shard and reports each tick later than the
/// threshold, until dropped. Returns at once when no threshold is set.
pub async fn watch(shard: u32) {
    let Some(threshold) = THRESHOLD.with(Cell::get) else {
        return;
    };
    let schedstat = SchedStat::open();
    let mut last = (Instant::now(), schedstat.read());
    loop {
        super::sleep(TICK).await;
        let now = (Instant::now(), schedstat.read());
        let elapsed = now.0.duration_since(last.0);
        let late = elapsed.saturating_sub(TICK);
        if late >= threshold {
            report_stall(shard, late, elapsed, last.1.zip(now.1));
        }
        last = now;
    }
}

fn report_stall(
    shard: u32,
    late: Duration,
    elapsed: Duration,
    times: Option<(ThreadTimes, ThreadTimes)>,
) {
    let report = record(|totals| &mut totals.stalls, late);
    match times {
        Some((before, after)) => {
            let breakdown = Breakdown::between(before, after, elapsed);
            log_at!(
                report,
                shard,
                late_ms = millis(late),
                on_cpu_ms = millis(breakdown.on_cpu),
                runnable_ms = millis(breakdown.runnable),
                off_cpu_ms = millis(breakdown.off_cpu),
                "shard stalled"
            );
        }
        None => log_at!(report, shard, late_ms = millis(late), "shard stalled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_lines_parse_and_bad_ones_do_not() {
        let times = ThreadTimes::parse("2500000 700000 12\n").unwrap();
        assert_eq!(times.on_cpu, Duration::from_micros(2_500));
        assert_eq!(times.runnable, Duration::from_micros(700));
        assert_eq!(ThreadTimes::parse(""), None);
        assert_eq!(ThreadTimes::parse("12"), None);
        assert_eq!(ThreadTimes::parse("x 1 2"), None);
    }

    #[test]
    fn a_breakdown_splits_the_interval_and_never_exceeds_it() {
        let ms = Duration::from_millis;
        let before = ThreadTimes {
            on_cpu: ms(100),
            runnable: ms(10),
        };
        let after = ThreadTimes {
            on_cpu: ms(130),
            runnable: ms(50),
        };
        let breakdown = Breakdown::between(before, after, ms(100));
        assert_eq!(
            (breakdown.on_cpu, breakdown.runnable, breakdown.off_cpu),
            (ms(30), ms(40), ms(30))
        );
        // Counters read a little apart from the clock can exceed the interval.
        let breakdown = Breakdown::between(before, after, ms(50));
        assert_eq!(
            (breakdown.on_cpu, breakdown.runnable, breakdown.off_cpu),
            (ms(30), ms(20), ms(0))
        );
    }

    #[test]
    fn reports_are_limited_to_one_a_second_and_count_the_rest() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut tally = Tally::default();
        let long = Duration::from_millis(70);
        assert_eq!(tally.record(long, start), Some(0));
        assert_eq!(tally.record(Duration::from_millis(90), at(300)), None);
        assert_eq!(tally.record(long, at(900)), None);
        assert_eq!(tally.record(long, at(1_000)), Some(2));
        assert_eq!(tally.record(long, at(2_500)), Some(0));
        assert_eq!((tally.count, tally.worst), (5, Duration::from_millis(90)));
    }

    #[test]
    fn slow_disk_operations_are_counted_over_the_threshold_only() {
        let path = || PathBuf::from("/data/t-0/00000000000000000000.log");
        set_threshold(None);
        note_disk_wait("write", path, 4096, Duration::from_secs(1));
        assert_eq!(
            summary().slow_disk_ops.count,
            0,
            "no threshold: nothing counted"
        );
        set_threshold(Some(Duration::from_millis(50)));
        note_disk_wait("write", path, 4096, Duration::from_millis(49));
        note_disk_wait("fdatasync", path, 0, Duration::from_millis(80));
        note_disk_wait("fdatasync", path, 0, Duration::from_millis(60));
        let totals = summary();
        assert_eq!(totals.slow_disk_ops.count, 2);
        assert_eq!(totals.slow_disk_ops.worst, Duration::from_millis(80));
        set_threshold(None);
    }

    #[test]
    fn this_threads_schedstat_is_readable_and_grows_with_work() {
        let schedstat = SchedStat::open();
        let Some(before) = schedstat.read() else {
            // Kernels without CONFIG_SCHED_INFO have no schedstat; reports then give only
            // how late a tick was.
            return;
        };
        let mut spin = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(20) {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        let after = schedstat.read().unwrap();
        assert!(
            after.on_cpu > before.on_cpu,
            "{before:?} -> {after:?} ({spin})"
        );
    }

    #[test]
    fn a_shard_held_up_by_a_task_is_reported() {
        let totals = crate::shard::run_for_test(async {
            set_threshold(Some(Duration::from_millis(40)));
            let watcher = crate::shard::spawn(watch(0));
            crate::shard::sleep(Duration::from_millis(30)).await;
            // Hold the thread for 150 ms, computing: no tick can come in between.
            let start = Instant::now();
            let mut spin = 0u64;
            while start.elapsed() < Duration::from_millis(150) {
                spin = spin.wrapping_add(std::hint::black_box(1));
            }
            std::hint::black_box(spin);
            crate::shard::sleep(Duration::from_millis(30)).await;
            drop(watcher);
            let totals = summary();
            set_threshold(None);
            totals
        });
        // One stall at least (a noisy machine may add its own).
        assert!(totals.stalls.count >= 1, "{totals:?}");
        assert!(
            totals.stalls.worst >= Duration::from_millis(130),
            "{totals:?}"
        );
    }
}
