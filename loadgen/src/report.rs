//! The report: a human table and a versioned JSON document.
//!
//! JSON schema, version 1: `schema_version`, `machine` (`cpu_model`, `cores`, `kernel`,
//! `memory_bytes`), `config` (every flag), and `runs`, one per ack mode in the order run:
//! `acks` (`"0"`, `"1"`, `"all"`), `producer.msgs_per_s`, `producer.mb_per_s`,
//! `consumer` (`null` until consumers exist), `publish_latency_us` and
//! `end_to_end_latency_us` (`null` until consumers exist), each with `p50 p90 p99 p999
//! p9999 max` (microseconds), `errors`, `retries`, and `messages` (acknowledged in the
//! measured window).

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Args;

/// The JSON schema version.
pub const SCHEMA_VERSION: u32 = 1;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            p9999: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
        }
    }
}

/// Throughput of one side.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Throughput {
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
}

/// One ack mode's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AckRun {
    pub acks: String,
    pub messages: u64,
    pub producer: Throughput,
    pub consumer: Option<Throughput>,
    pub publish_latency_us: Percentiles,
    pub end_to_end_latency_us: Option<Percentiles>,
    pub errors: u64,
    pub retries: u64,
}

impl AckRun {
    /// From what the producers measured over `seconds`.
    pub fn new(
        acks: &str,
        messages: u64,
        bytes: f64,
        seconds: f64,
        histogram: &Histogram<u64>,
        errors: u64,
        retries: u64,
    ) -> Self {
        Self {
            acks: acks.to_owned(),
            messages,
            producer: Throughput {
                msgs_per_s: messages as f64 / seconds,
                mb_per_s: bytes / seconds / 1e6,
            },
            consumer: None,
            publish_latency_us: Percentiles::of(histogram),
            end_to_end_latency_us: None,
            errors,
            retries,
        }
    }
}

/// The machine the run came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_bytes: u64,
}

impl Machine {
    fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or_else(String::new, |(_, model)| model.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            kernel,
            memory_bytes,
        }
    }
}

/// The workload as run.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub embedded: bool,
    pub bootstrap: String,
    pub mode: &'static str,
    pub partitions: u32,
    pub producers: usize,
    pub message_size: usize,
    pub batch_size: usize,
    pub linger_ms: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub client_version: &'static str,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub machine: Machine,
    pub config: Config,
    pub runs: Vec<AckRun>,
}

impl Report {
    /// The report of `runs` made with `args`.
    pub fn new(args: &Args, embedded: bool, runs: Vec<AckRun>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            machine: Machine::here(),
            config: Config {
                embedded,
                bootstrap: if embedded {
                    String::new()
                } else {
                    args.bootstrap.clone()
                },
                mode: "max-rate",
                partitions: args.partitions,
                producers: args.producers,
                message_size: args.message_size,
                batch_size: args.batch_size,
                linger_ms: args.linger_ms,
                duration_s: args.duration,
                warmup_s: args.warmup,
                client_version: env!("CARGO_PKG_VERSION"),
            },
            runs,
        }
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<5} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
            "acks",
            "msgs/s",
            "MB/s",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9",
            "p99.99",
            "max us",
            "errors",
            "retries"
        );
        for run in &self.runs {
            let latency = &run.publish_latency_us;
            out.push_str(&format!(
                "{:<5} {:>12.0} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
                run.acks,
                run.producer.msgs_per_s,
                run.producer.mb_per_s,
                latency.p50,
                latency.p90,
                latency.p99,
                latency.p999,
                latency.p9999,
                latency.max,
                run.errors,
                run.retries
            ));
        }
        out
    }

    /// The JSON document.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_histograms_merge() {
        let mut first = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        let mut second = first.clone();
        for micros in 1..=1_000u64 {
            first.record(micros).unwrap();
            second.record(micros * 10).unwrap();
        }
        first.add(&second).unwrap();
        assert_eq!(first.len(), 2_000);
        let percentiles = Percentiles::of(&first);
        let ordered = [
            percentiles.p50,
            percentiles.p90,
            percentiles.p99,
            percentiles.p999,
            percentiles.p9999,
            percentiles.max,
        ];
        assert!(
            ordered.windows(2).all(|pair| pair[0] <= pair[1]),
            "{ordered:?}"
        );
        assert!((9_990..=10_010).contains(&percentiles.max));
        let run = AckRun::new("all", 2_000, 2e6, 2.0, &first, 1, 2);
        assert_eq!(
            (run.producer.msgs_per_s, run.producer.mb_per_s),
            (1_000.0, 1.0)
        );
    }
}
