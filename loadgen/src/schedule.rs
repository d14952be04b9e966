//! Open-loop pacing: every send has an intended time fixed in advance by the target
//! rate, and latency is measured from that time.
//!
//! A closed-loop generator waits for the system before sending more, so when the broker
//! stalls it simply sends less and the stall shows up in a single sample: *coordinated
//! omission*. Here the schedule does not move: sends that fall behind go out as soon as
//! they can, each still timed from when it *should* have been sent, so a 100 ms stall
//! at 10,000 msgs/s is 1,000 late samples, as users would have seen it. How far the
//! actual sends slipped behind their intended times is reported separately.

use std::time::{Duration, Instant};

/// Remaining waits longer than this sleep on the runtime's (millisecond) timer first.
const SLEEP_ABOVE: Duration = Duration::from_millis(3);

/// How much earlier than the due time a sleep ends, to absorb the timer's granularity;
/// the rest is spent yielding to other tasks until the due time.
const SLEEP_MARGIN: Duration = Duration::from_millis(2);

/// Intended send times at a fixed rate from a start.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    interval_ns: f64,
}

impl Schedule {
    /// `rate_per_s` sends a second from `start`.
    pub fn new(start: Instant, rate_per_s: f64) -> Self {
        assert!(
            rate_per_s > 0.0 && rate_per_s.is_finite(),
            "the rate is positive"
        );
        Self {
            start,
            interval_ns: 1e9 / rate_per_s,
        }
    }

    /// When send number `index` (from 0) is due. Computed from the start, not from the
    /// previous send, so lateness never accumulates into the schedule.
    pub fn intended(&self, index: u64) -> Instant {
        self.start + Duration::from_nanos((index as f64 * self.interval_ns) as u64)
    }
}

/// The sends of one producer in an open-loop run: due times until the end.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    schedule: Schedule,
    next: u64,
    end: Instant,
}

impl OpenLoop {
    /// Sends on `schedule` whose intended time is before `end`.
    pub fn new(schedule: Schedule, end: Instant) -> Self {
        Self {
            schedule,
            next: 0,
            end,
        }
    }

    /// The intended time of the next send, or `None` once the schedule reaches the end.
    /// Never skips a send however late the caller is.
    pub fn next_due(&mut self) -> Option<Instant> {
        let due = self.schedule.intended(self.next);
        if due >= self.end {
            return None;
        }
        self.next += 1;
        Some(due)
    }
}

/// Waits until `due` on tokio: sleeps while it is far off, then yields until it
/// arrives, so a send starts within microseconds of its time instead of the timer's
/// millisecond. Returns at once when `due` has passed. Returns the clock's reading at
/// `due` or after it, the one that ended the wait, so the caller has the send's actual
/// time without reading the clock again (the open loop reads it for every record).
///
/// Each turn of the wait yields the thread too (`sched_yield`), not only the task: other
/// threads on the load's CPUs (the hiccup meter, the kernel's softirq and I/O
/// completion workers) then run at once instead of after this thread's time slice.
/// Without it, a 1 ms sleeper on the load's CPU woke 3–4 ms late every second at
/// 100 MB/s; with it, 0.25 ms.
pub async fn wait_until(due: Instant) -> Instant {
    let mut now = Instant::now();
    if due > now + SLEEP_ABOVE {
        tokio::time::sleep_until((due - SLEEP_MARGIN).into()).await;
        now = Instant::now();
    }
    while now < due {
        std::thread::yield_now();
        tokio::task::yield_now().await;
        now = Instant::now();
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_follow_the_rate_from_the_start() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 4_000.0);
        assert_eq!(schedule.intended(0), start);
        assert_eq!(schedule.intended(1), start + Duration::from_micros(250));
        assert_eq!(schedule.intended(4_000), start + Duration::from_secs(1));
        let mut sends = OpenLoop::new(schedule, start + Duration::from_secs(2));
        assert_eq!(std::iter::from_fn(|| sends.next_due()).count(), 8_000);
    }

    /// A simulated run at 1,000 sends a second over one second with a broker that
    /// answers in 0.5 ms, except for one 100 ms stall. Measured from the intended time,
    /// every send caught behind the stall counts it; measured the closed-loop way (from
    /// when the send actually went out) only one sample would.
    #[test]
    fn a_stall_shows_in_every_send_behind_it() {
        let start = Instant::now();
        let schedule = Schedule::new(start, 1_000.0);
        let mut sends = OpenLoop::new(schedule, start + Duration::from_secs(1));
        let service = Duration::from_micros(500);
        let stall_at = start + Duration::from_millis(500);
        let mut clock = start;
        let (mut open_loop, mut closed_loop, mut slipped) = (Vec::new(), Vec::new(), 0);
        while let Some(due) = sends.next_due() {
            // The generator sends at its due time or, when late, right away.
            let sent = clock.max(due);
            if sent > due {
                slipped += 1;
            }
            let mut answered = sent + service;
            if sent <= stall_at && stall_at < answered {
                answered += Duration::from_millis(100);
            }
            // One request at a time: the next send cannot start before this answer.
            clock = answered;
            open_loop.push(answered - due);
            closed_loop.push(answered - sent);
        }
        assert_eq!(open_loop.len(), 1_000, "no send is skipped, however late");
        let over_50ms = |samples: &[Duration]| {
            samples
                .iter()
                .filter(|latency| **latency > Duration::from_millis(50))
                .count()
        };
        assert_eq!(over_50ms(&closed_loop), 1, "closed loop hides the stall");
        assert!(
            over_50ms(&open_loop) >= 45,
            "open loop shows the stall in every send it delayed: {}",
            over_50ms(&open_loop)
        );
        assert!(
            slipped >= 99,
            "the sends behind the stall slipped: {slipped}"
        );
    }

    #[test]
    fn waiting_returns_at_or_after_the_due_time() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let due = Instant::now() + Duration::from_millis(20);
            let returned = wait_until(due).await;
            let now = Instant::now();
            assert!(returned >= due && returned <= now);
            // Already past: returns at once, with a reading taken during the call.
            let past = now - Duration::from_millis(5);
            let returned = wait_until(past).await;
            assert!(returned >= now && returned <= Instant::now());
        });
    }
}
