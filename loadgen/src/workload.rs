//! What the load looks like: record sizes, keys, and the clock stamp every value
//! carries so consumers can measure end-to-end latency.
//!
//! Everything random comes from one seeded [`Rng`] per producer, so a workload is the
//! same from run to run.

use std::f64::consts::PI;
use std::io::Write;

/// Bytes at the front of every value: the intended send time, in microseconds since the
/// run's epoch, little-endian. Values are never shorter than this.
pub const STAMP_BYTES: usize = 8;

/// Largest value the load generator makes (the broker's default batch limit is 1 MiB).
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Most distinct keys a workload may name (the zipf table costs 8 bytes per key).
pub const KEYS_MAX: u64 = 10_000_000;

/// SplitMix64: small, fast and good enough to shape a workload; seeded for repeatable
/// runs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }
}

/// How big each value is (`--message-size`).
#[derive(Debug, Clone, PartialEq)]
pub enum SizeDistribution {
    /// Every value this many bytes: `1024`.
    Fixed(usize),
    /// Uniform between two sizes, both included: `uniform:512-2048`.
    Uniform { min: usize, max: usize },
    /// Normal, cut to `[STAMP_BYTES, VALUE_BYTES_MAX]`: `normal:1024,256`.
    Normal { mean: usize, stddev: usize },
}

impl SizeDistribution {
    /// Parses `N`, `uniform:MIN-MAX` or `normal:MEAN,STDDEV` (bytes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| format!("--message-size: {part:?} is not a number of bytes"))
        };
        let distribution = if let Some(range) = text.strip_prefix("uniform:") {
            let (min, max) = range
                .split_once('-')
                .ok_or("--message-size uniform:MIN-MAX, e.g. uniform:512-2048")?;
            let (min, max) = (number(min)?, number(max)?);
            if min > max {
                return Err("--message-size uniform: MIN exceeds MAX".into());
            }
            Self::Uniform { min, max }
        } else if let Some(shape) = text.strip_prefix("normal:") {
            let (mean, stddev) = shape
                .split_once(',')
                .ok_or("--message-size normal:MEAN,STDDEV, e.g. normal:1024,256")?;
            Self::Normal {
                mean: number(mean)?,
                stddev: number(stddev)?,
            }
        } else {
            Self::Fixed(number(text)?)
        };
        let (low, high) = distribution.bounds();
        if low < STAMP_BYTES || high > VALUE_BYTES_MAX {
            return Err(format!(
                "--message-size must stay between {STAMP_BYTES} bytes (the latency stamp) \
                 and {VALUE_BYTES_MAX}"
            ));
        }
        Ok(distribution)
    }

    /// Smallest and largest size this names (for the normal one, its mean: its samples
    /// are clamped to the value limits).
    fn bounds(&self) -> (usize, usize) {
        match *self {
            Self::Fixed(size) => (size, size),
            Self::Uniform { min, max } => (min, max),
            Self::Normal { mean, .. } => (mean, mean),
        }
    }

    /// One size.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        match *self {
            Self::Fixed(size) => size,
            Self::Uniform { min, max } => min + rng.below((max - min) as u64 + 1) as usize,
            Self::Normal { mean, stddev } => {
                let size = mean as f64 + rng.normal() * stddev as f64;
                (size.round().max(0.0) as usize).clamp(STAMP_BYTES, VALUE_BYTES_MAX)
            }
        }
    }

    /// The mean size, for turning a MB/s rate into records per second. For the normal
    /// one, the mean of its clamped samples: `normal:64,512` averages about 240 bytes,
    /// not 64.
    pub fn mean(&self) -> f64 {
        match *self {
            Self::Fixed(size) => size as f64,
            Self::Uniform { min, max } => (min + max) as f64 / 2.0,
            Self::Normal { mean, stddev } => clamped_normal_mean(mean as f64, stddev as f64),
        }
    }
}

/// The mean of a normal distribution's samples clamped to `[STAMP_BYTES,
/// VALUE_BYTES_MAX]`, integrated numerically over ±8 standard deviations.
fn clamped_normal_mean(mean: f64, stddev: f64) -> f64 {
    let clamp = |x: f64| x.clamp(STAMP_BYTES as f64, VALUE_BYTES_MAX as f64);
    if stddev == 0.0 {
        return clamp(mean);
    }
    const STEPS: u32 = 20_000;
    let width = 16.0 * stddev / f64::from(STEPS);
    let (mut weighted, mut weights) = (0.0, 0.0);
    for step in 0..STEPS {
        let x = mean - 8.0 * stddev + (f64::from(step) + 0.5) * width;
        let z = (x - mean) / stddev;
        let density = (-0.5 * z * z).exp();
        weighted += density * clamp(x);
        weights += density;
    }
    weighted / weights
}

/// Which key each record gets (`--keys`, `--key-distribution`).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyDistribution {
    /// No keys: the producer spreads records with its sticky partitioner.
    None,
    /// Each of `keys` keys equally likely.
    Uniform { keys: u64 },
    /// Key `k` (from 1) with probability proportional to `1 / k^exponent`: a few hot
    /// keys, a long tail.
    Zipf { keys: u64, exponent: f64 },
}

impl KeyDistribution {
    /// From `--keys N` (0: keyless) and `--key-distribution uniform|zipf[:EXPONENT]`.
    pub fn parse(keys: u64, distribution: &str) -> Result<Self, String> {
        if keys > KEYS_MAX {
            return Err(format!("--keys takes at most {KEYS_MAX}"));
        }
        if keys == 0 {
            return Ok(Self::None);
        }
        match distribution {
            "uniform" => Ok(Self::Uniform { keys }),
            "zipf" => Ok(Self::Zipf {
                keys,
                exponent: 1.0,
            }),
            other => match other.strip_prefix("zipf:").map(str::parse::<f64>) {
                Some(Ok(exponent)) if exponent > 0.0 && exponent.is_finite() => {
                    Ok(Self::Zipf { keys, exponent })
                }
                _ => Err(format!(
                    "--key-distribution takes uniform, zipf or zipf:EXPONENT (> 0), not {other:?}"
                )),
            },
        }
    }
}

/// Draws keys from a [`KeyDistribution`].
#[derive(Debug, Clone)]
pub struct KeyChooser {
    distribution: KeyDistribution,
    /// Zipf: cumulative probabilities of keys `0..keys`.
    cumulative: Vec<f64>,
}

impl KeyChooser {
    /// Prepares `distribution` (the zipf table is built once).
    pub fn new(distribution: KeyDistribution) -> Self {
        let cumulative = match distribution {
            KeyDistribution::Zipf { keys, exponent } => {
                let weights: Vec<f64> = (1..=keys).map(|k| (k as f64).powf(-exponent)).collect();
                let total: f64 = weights.iter().sum();
                let mut running = 0.0;
                weights
                    .iter()
                    .map(|weight| {
                        running += weight / total;
                        running
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Self {
            distribution,
            cumulative,
        }
    }

    /// The next key's index, or `None` for keyless workloads.
    pub fn next_index(&self, rng: &mut Rng) -> Option<u64> {
        match self.distribution {
            KeyDistribution::None => None,
            KeyDistribution::Uniform { keys } => Some(rng.below(keys)),
            KeyDistribution::Zipf { keys, .. } => {
                let draw = rng.next_f64();
                let index = self.cumulative.partition_point(|&below| below <= draw) as u64;
                Some(index.min(keys - 1))
            }
        }
    }

    /// Writes the next key's bytes (`key-<index>`) into `key` (reused from record to
    /// record); false if records are keyless.
    pub fn next_key_into(&self, rng: &mut Rng, key: &mut Vec<u8>) -> bool {
        let Some(index) = self.next_index(rng) else {
            return false;
        };
        key.clear();
        write!(key, "key-{index}").expect("writing to memory does not fail");
        true
    }
}

/// A value of `size` bytes (at least [`STAMP_BYTES`]) stamped with `micros`, written
/// into `buffer`, which is reused from record to record (the bytes after the stamp stay
/// as they are).
pub fn stamped_value(buffer: &mut Vec<u8>, size: usize, micros: u64) -> &[u8] {
    let size = size.max(STAMP_BYTES);
    if buffer.len() < size {
        buffer.resize(size, b'x');
    }
    buffer[..STAMP_BYTES].copy_from_slice(&micros.to_le_bytes());
    &buffer[..size]
}

/// The stamp of a value made by [`stamped_value`].
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    let stamp: [u8; STAMP_BYTES] = value.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_stay_in_their_range() {
        assert_eq!(
            SizeDistribution::parse("1024").unwrap(),
            SizeDistribution::Fixed(1024)
        );
        let uniform = SizeDistribution::parse("uniform:100-200").unwrap();
        let normal = SizeDistribution::parse("normal:1000,100").unwrap();
        let mut rng = Rng::new(7);
        let (mut low, mut high, mut sum) = (usize::MAX, 0, 0.0);
        for _ in 0..100_000 {
            let size = uniform.sample(&mut rng);
            low = low.min(size);
            high = high.max(size);
            sum += normal.sample(&mut rng) as f64;
        }
        assert_eq!(
            (low, high),
            (100, 200),
            "both ends are reached, none passed"
        );
        let mean = sum / 100_000.0;
        assert!((mean - 1000.0).abs() < 5.0, "normal mean {mean}");
        assert!((normal.mean() - 1000.0).abs() < 0.5, "{}", normal.mean());
        // Mostly clamped up to the 8-byte floor: the samples' mean is far above 64.
        let skewed = SizeDistribution::parse("normal:64,512").unwrap();
        let sampled = (0..100_000)
            .map(|_| skewed.sample(&mut rng) as f64)
            .sum::<f64>()
            / 100_000.0;
        let computed = skewed.mean();
        assert!(computed > 200.0, "{computed}");
        assert!(
            (computed - sampled).abs() < 0.02 * sampled,
            "{computed} {sampled}"
        );
        for bad in ["4", "uniform:300-200", "normal:1000", "big", "2000000"] {
            assert!(SizeDistribution::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn zipf_keys_are_skewed_and_uniform_keys_are_not() {
        let mut rng = Rng::new(11);
        let zipf = KeyChooser::new(KeyDistribution::parse(1_000, "zipf").unwrap());
        let uniform = KeyChooser::new(KeyDistribution::parse(1_000, "uniform").unwrap());
        let (mut zipf_counts, mut uniform_counts) = (vec![0u32; 1_000], vec![0u32; 1_000]);
        for _ in 0..200_000 {
            zipf_counts[zipf.next_index(&mut rng).unwrap() as usize] += 1;
            uniform_counts[uniform.next_index(&mut rng).unwrap() as usize] += 1;
        }
        // With exponent 1 over 1,000 keys, key 0 has 1/H(1000) ≈ 13.4 % of the draws and
        // key 1 half of that.
        let hottest = f64::from(zipf_counts[0]) / 200_000.0;
        assert!((0.12..0.15).contains(&hottest), "hottest key {hottest}");
        assert!(zipf_counts[0] > zipf_counts[1] && zipf_counts[1] > zipf_counts[9]);
        let (min, max) = (
            *uniform_counts.iter().min().unwrap(),
            *uniform_counts.iter().max().unwrap(),
        );
        assert!(min > 120 && max < 290, "uniform counts {min}..{max}");
        let mut key = Vec::new();
        assert!(!KeyChooser::new(KeyDistribution::None).next_key_into(&mut rng, &mut key));
        let keyed = KeyChooser::new(KeyDistribution::parse(10, "uniform").unwrap());
        assert!(keyed.next_key_into(&mut rng, &mut key));
        assert!(key.starts_with(b"key-") && key.len() == 5, "{key:?}");
        assert!(KeyDistribution::parse(10, "zipf:0").is_err());
        assert!(KeyDistribution::parse(10, "pareto").is_err());
    }

    #[test]
    fn values_carry_their_stamp() {
        let mut buffer = Vec::new();
        let value = stamped_value(&mut buffer, 64, 123_456_789);
        assert_eq!(value.len(), 64);
        assert_eq!(read_stamp(value), Some(123_456_789));
        assert_eq!(read_stamp(&value[..4]), None);
        // The buffer is reused: a shorter value after a longer one, a new stamp.
        let value = stamped_value(&mut buffer, 16, 7);
        assert_eq!((value.len(), read_stamp(value)), (16, Some(7)));
        assert_eq!(stamped_value(&mut buffer, 2, 5).len(), STAMP_BYTES);
    }
}
