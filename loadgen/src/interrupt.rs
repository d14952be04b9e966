//! Ctrl-C and `SIGTERM`. The first stops the load where it is: producers send no more,
//! consumers read what was sent but wait at most a second for the rest, the run reports
//! what it measured so far, deletes the topics it made and stops the embedded broker,
//! whose data directory goes with it. Ack modes not reached are skipped. A second
//! signal, or a run still not finished [`GRACE`] after the first (a broker that no
//! longer answers), exits at once, after removing the embedded broker's data directory.
//!
//! Both signals are blocked in every thread (the mask is set before any thread starts,
//! and threads inherit it) and taken by one thread with `sigwait`, so nothing runs in a
//! signal handler.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a run may take to wind down after the first signal.
pub const GRACE: Duration = Duration::from_secs(10);

/// The exit status of an interrupted run (128 + SIGINT, as shells report it).
pub const EXIT_STATUS: u8 = 130;

/// Set by the first signal.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// When the first signal came.
static REQUESTED_AT: OnceLock<Instant> = OnceLock::new();

/// The embedded broker's data directory, removed on a hard exit.
static DATA_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Takes `SIGINT` and `SIGTERM` from now on. Call before any other thread starts.
pub fn install() -> Result<(), String> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the mask
    // applies to the calling thread and is inherited by the threads it starts.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let error = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if error != 0 {
            return Err(format!(
                "cannot block SIGINT and SIGTERM: {}",
                std::io::Error::from_raw_os_error(error)
            ));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` and `signal` outlive the call.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            let _ = REQUESTED_AT.set(Instant::now());
            if REQUESTED.swap(true, Ordering::AcqRel) {
                exit_now("a second signal");
            }
            eprintln!(
                "\nstopping (signal {signal}): finishing what is in flight; \
                 signal again to quit at once"
            );
            std::thread::spawn(|| {
                std::thread::sleep(GRACE);
                exit_now("the run did not wind down in time");
            });
        })
        .map(drop)
        .map_err(|error| format!("cannot start the signal thread: {error}"))
}

/// Removes the embedded broker's data (if any) and exits with [`EXIT_STATUS`].
fn exit_now(why: &str) -> ! {
    let dir = DATA_DIR.lock().map_or(None, |dir| dir.clone());
    if let Some(dir) = dir {
        // The broker still runs meanwhile: a file it creates in a directory being
        // removed fails that pass (not empty), so a few passes are allowed.
        for _ in 0..5 {
            match std::fs::remove_dir_all(&dir) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => continue,
                _ => break,
            }
        }
    }
    eprintln!("stopped: {why}");
    std::process::exit(i32::from(EXIT_STATUS))
}

/// Registers the embedded broker's data directory, for a hard exit to remove.
pub fn remove_on_exit(dir: PathBuf) {
    if let Ok(mut slot) = DATA_DIR.lock() {
        *slot = Some(dir);
    }
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Acquire)
}

/// When the stop was requested, if it was.
pub fn requested_at() -> Option<Instant> {
    requested().then(|| REQUESTED_AT.get().copied()).flatten()
}
