//! The run's clock: every event (a request, a fault, a restart) is stamped in seconds since the start,
//! so the summary and the checks can relate them (was the API down when that connection dropped?).

use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
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
