//! The run's clock: every event (a request, a fault, a restart) is stamped in seconds since the start,
//! so the summary and the checks can relate them (was the API down when that connection dropped?).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    /// Wall-clock milliseconds at the start: the stores' times (a document's `createdAt`) are wall
    /// clock, and the datacenter drill relates them to the run's events.
    wall_start_millis: i64,
}

impl Clock {
    pub fn start() -> Clock {
        let wall_start_millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        Clock {
            start: Instant::now(),
            wall_start_millis,
        }
    }

    pub fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The run-clock time of a wall-clock time in milliseconds since the epoch (same machine).
    pub fn secs_of_wall_millis(&self, millis: i64) -> f64 {
        (millis - self.wall_start_millis) as f64 / 1000.0
    }

    /// The wall-clock milliseconds of a run-clock time (the inverse of `secs_of_wall_millis`).
    pub fn wall_millis_of_secs(&self, secs: f64) -> i64 {
        self.wall_start_millis + (secs * 1000.0) as i64
    }
}

/// A closed interval of run time, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub from: f64,
    pub to: f64,
}

impl Window {
    /// Whether `at` falls in the window widened by `slack` seconds on both sides.
    pub fn contains(&self, at: f64, slack: f64) -> bool {
        at >= self.from - slack && at <= self.to + slack
    }
}
