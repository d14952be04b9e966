//! Error handling for consumers: a reusable [`ErrorHandler`] around the application's
//! processing function, so that one bad record does not stop its partition.
//!
//! For each record the handler runs the function. A [`ProcessError::Retriable`] failure
//! is retried with backoff (fixed or exponential) up to `max_attempts`; when the attempts
//! are exhausted the record is published to a retry topic (to be consumed again later,
//! not before a delay) or to a dead-letter topic. A [`ProcessError::Fatal`] failure goes
//! to the dead-letter topic at once. Either way the handler returns, the application
//! commits as usual, and the partition moves on.
//!
//! Published copies keep the key, value and headers and add:
//! `flumen.original.topic`, `flumen.original.partition`, `flumen.original.offset`,
//! `flumen.error`, `flumen.attempts`, and for the retry topic `flumen.retry.not-before`
//! (ms since the epoch). A record read from a retry topic is not processed before that
//! time; its attempts keep counting, so it ends in the dead-letter topic if it keeps
//! failing.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::runtime::{Runtime, Tokio};
use crate::{ConsumerRecordView, ProduceError, Producer, Record};

/// Header: the topic the record was first consumed from.
pub const ORIGINAL_TOPIC: &str = "flumen.original.topic";
/// Header: its partition there.
pub const ORIGINAL_PARTITION: &str = "flumen.original.partition";
/// Header: its offset there.
pub const ORIGINAL_OFFSET: &str = "flumen.original.offset";
/// Header: the last error.
pub const ERROR: &str = "flumen.error";
/// Header: attempts made so far.
pub const ATTEMPTS: &str = "flumen.attempts";
/// Header: not to be processed before this time (ms since the epoch).
pub const NOT_BEFORE: &str = "flumen.retry.not-before";

/// How a processing attempt failed, as the application classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessError {
    /// Might work later (a timeout, a dependency down): retry.
    Retriable(String),
    /// Will never work (bad data): straight to the dead-letter topic.
    Fatal(String),
}

/// The pause between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// The same pause every time.
    Fixed(Duration),
    /// Doubling from `initial` up to `max`.
    Exponential {
        /// First pause.
        initial: Duration,
        /// Longest pause.
        max: Duration,
    },
}

impl Backoff {
    /// The pause after failed attempt `attempt` (1-based).
    pub fn pause(&self, attempt: u32) -> Duration {
        match *self {
            Backoff::Fixed(pause) => pause,
            Backoff::Exponential { initial, max } => initial
                .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
                .min(max),
        }
    }
}

/// Where a record goes when its retries are exhausted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// To a retry topic, consumed again no sooner than `delay` later.
    RetryTopic {
        /// The retry topic.
        topic: String,
        /// The delay. The retry topic's consumer waits it out inside
        /// [`ErrorHandler::handle`], so keep it below that consumer's
        /// `max_poll_interval`, or the member is presumed stuck and leaves its group.
        delay: Duration,
    },
    /// To the dead-letter topic.
    DeadLetter,
}

/// The handler's settings.
#[derive(Debug, Clone)]
pub struct RecoveryConfig {
    /// Attempts in total (the first included) before the record is given up on here.
    pub max_attempts: u32,
    /// Pause between attempts.
    pub backoff: Backoff,
    /// After the last attempt.
    pub exhausted: Exhausted,
    /// The dead-letter topic.
    pub dead_letter_topic: String,
    /// Attempts (counted across retry-topic rounds) after which a record goes to the
    /// dead-letter topic even from a retry topic.
    pub max_total_attempts: u32,
}

/// What happened to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Processed (after this many attempts).
    Processed {
        /// Attempts it took.
        attempts: u32,
    },
    /// Published to the retry topic.
    SentToRetry,
    /// Published to the dead-letter topic.
    SentToDeadLetter,
}

/// Runs the processing function with retries and routes failures (see the module docs).
#[derive(Debug)]
pub struct ErrorHandler<R: Runtime = Tokio> {
    config: RecoveryConfig,
    producer: Producer<R>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

fn header<'a>(record: &ConsumerRecordView<'a>, name: &str) -> Option<&'a str> {
    record
        .headers()
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

impl<R: Runtime> ErrorHandler<R> {
    /// A handler publishing with `producer`.
    pub fn new(config: RecoveryConfig, producer: Producer<R>) -> Self {
        Self { config, producer }
    }

    /// Handles one record: processes it (waiting first if it came from a retry topic
    /// with a `not-before` time), retries, and routes it if it cannot be processed. Fails
    /// only if publishing to the retry or dead-letter topic fails (then the record must
    /// not be committed).
    pub async fn handle<F, Fut>(
        &self,
        record: &ConsumerRecordView<'_>,
        mut process: F,
    ) -> Result<Handled, ProduceError>
    where
        F: FnMut(&ConsumerRecordView<'_>) -> Fut,
        Fut: Future<Output = Result<(), ProcessError>>,
    {
        if let Some(not_before) =
            header(record, NOT_BEFORE).and_then(|time| time.parse::<i64>().ok())
        {
            let wait = not_before - now_ms();
            if wait > 0 {
                R::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        let earlier: u32 = header(record, ATTEMPTS)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        let mut attempt = 0;
        let (error, fatal) = loop {
            attempt += 1;
            match process(record).await {
                Ok(()) => return Ok(Handled::Processed { attempts: attempt }),
                Err(ProcessError::Fatal(error)) => break (error, true),
                Err(ProcessError::Retriable(error))
                    if attempt >= self.config.max_attempts.max(1) =>
                {
                    break (error, false)
                }
                Err(ProcessError::Retriable(_)) => {
                    R::sleep(self.config.backoff.pause(attempt)).await
                }
            }
        };
        let attempts = earlier + attempt;
        let retry = match &self.config.exhausted {
            Exhausted::RetryTopic { topic, delay }
                if !fatal && attempts < self.config.max_total_attempts =>
            {
                Some((topic.clone(), *delay))
            }
            _ => None,
        };
        let (topic, handled) = match &retry {
            Some((topic, _)) => (topic.clone(), Handled::SentToRetry),
            None => (
                self.config.dead_letter_topic.clone(),
                Handled::SentToDeadLetter,
            ),
        };
        let mut copy = Record {
            topic,
            partition: None,
            key: record.key().map(<[u8]>::to_vec),
            value: record.value().map(<[u8]>::to_vec),
            headers: record
                .headers()
                .filter(|(name, _)| !name.starts_with("flumen."))
                .map(|(name, value)| (name.to_owned(), value.to_vec()))
                .collect(),
            timestamp_ms: Some(record.timestamp_ms()),
        };
        // The first consumption's coordinates survive any number of retry rounds.
        let original_topic = header(record, ORIGINAL_TOPIC)
            .unwrap_or(record.topic())
            .to_owned();
        let original_partition = header(record, ORIGINAL_PARTITION)
            .map_or_else(|| record.partition().to_string(), str::to_owned);
        let original_offset = header(record, ORIGINAL_OFFSET)
            .map_or_else(|| record.offset().to_string(), str::to_owned);
        copy = copy
            .with_header(ORIGINAL_TOPIC, original_topic)
            .with_header(ORIGINAL_PARTITION, original_partition)
            .with_header(ORIGINAL_OFFSET, original_offset)
            .with_header(ERROR, error)
            .with_header(ATTEMPTS, attempts.to_string());
        if let Some((_, delay)) = retry {
            let not_before = now_ms() + delay.as_millis() as i64;
            copy = copy.with_header(NOT_BEFORE, not_before.to_string());
        }
        self.producer.send(copy).await.await?;
        Ok(handled)
    }
}
