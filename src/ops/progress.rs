//! How far a long verb (`dlq replay`, `dlq purge`) is, for whoever watches it, and the watcher's
//! way to stop it between two records. The command line passes [`Progress::unwatched`]; the
//! console's jobs keep one per job, read it for their progress bar and stop it on shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, RwLock};
use tokio_util::sync::CancellationToken;

/// A verb was told to stop between two records (the console shutting down); what it did before
/// stays done (recorded in the replay or purge log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped after {done} of {total} dead letter(s), because the console shut down")]
pub struct Stopped {
    pub done: usize,
    pub total: usize,
}

/// The counters of one run, shared between the verb (which writes) and its watcher (which reads).
#[derive(Debug)]
pub struct Progress {
    /// How many records the run works through: unknown (`None`) until the verb has listed them.
    /// A watch, so a watcher can wait for the listing (the console answers once it is done).
    total: watch::Sender<Option<usize>>,
    /// Records worked through so far (replayed or skipped; purged or skipped).
    done: AtomicUsize,
    /// Cancelled: stop before the next record.
    stop: CancellationToken,
    /// While someone holds this for writing, the run waits before each record. Tests hold it to
    /// see a run in progress without racing it; nothing else takes it.
    hold: Option<Arc<RwLock<()>>>,
}

impl Progress {
    /// A run nobody watches or stops (the command line).
    pub fn unwatched() -> Progress {
        Progress::new(CancellationToken::new(), None)
    }

    /// A run that stops between records once `stop` is cancelled, and waits before each record
    /// while `hold` is held for writing.
    pub fn new(stop: CancellationToken, hold: Option<Arc<RwLock<()>>>) -> Progress {
        Progress {
            total: watch::Sender::new(None),
            done: AtomicUsize::new(0),
            stop,
            hold,
        }
    }

    /// The verb has listed what it works through.
    pub fn listed(&self, total: usize) {
        self.total.send_replace(Some(total));
    }

    /// The verb is about to work on its next record: waits while held, and says whether to stop.
    pub async fn next_record(&self) -> Result<(), Stopped> {
        if let Some(hold) = &self.hold {
            // A held run still stops at once when told to.
            tokio::select! {
                held = hold.read() => drop(held),
                () = self.stop.cancelled() => {}
            }
        }
        if self.stop.is_cancelled() {
            return Err(Stopped {
                done: self.done(),
                total: self.total().unwrap_or(0),
            });
        }
        Ok(())
    }

    /// One more record worked through.
    pub fn advance(&self) {
        self.advance_by(1);
    }

    /// `records` more worked through (a chunk done at once).
    pub fn advance_by(&self, records: usize) {
        self.done.fetch_add(records, Ordering::Relaxed);
    }

    pub fn total(&self) -> Option<usize> {
        *self.total.borrow()
    }

    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Resolves once the verb has listed its records (at once if it has).
    pub async fn wait_listed(&self) {
        let mut total = self.total.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we borrow it.
        let _ = total.wait_for(Option::is_some).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_stops_between_records() {
        let stop = CancellationToken::new();
        let progress = Progress::new(stop.clone(), None);
        assert_eq!(progress.total(), None);
        progress.listed(3);
        progress.wait_listed().await;
        assert_eq!(progress.total(), Some(3));
        progress.next_record().await.unwrap();
        progress.advance();
        stop.cancel();
        assert_eq!(
            progress.next_record().await,
            Err(Stopped { done: 1, total: 3 })
        );
    }

    #[tokio::test]
    async fn a_held_run_waits_before_its_next_record() {
        let hold = Arc::new(RwLock::new(()));
        let progress = Arc::new(Progress::new(
            CancellationToken::new(),
            Some(Arc::clone(&hold)),
        ));
        let held = Arc::clone(&hold).write_owned().await;
        let next = tokio::spawn({
            let progress = Arc::clone(&progress);
            async move { progress.next_record().await }
        });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        drop(held);
        assert_eq!(next.await.unwrap(), Ok(()));
    }
}
