//! Dead-letter alerts to a Slack-compatible webhook, grouped and rate-limited: per error class, the
//! first dead letter of a window is announced at once and the rest of the window is summed into one
//! message when it ends. Sending happens on a task of its own; processing only drops an event into a
//! bounded queue, so a slow or failing webhook never holds up a batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::ConsumerMetrics;
use crate::config::AlertSettings;

/// Handed to the processor; cheap to clone. Does nothing when alerts are off.
#[derive(Clone, Default)]
pub struct AlertSender {
    queue: Option<mpsc::Sender<DeadLetterEvent>>,
    metrics: Option<Arc<ConsumerMetrics>>,
}

#[derive(Debug)]
struct DeadLetterEvent {
    class: String,
    error: String,
}

impl AlertSender {
    /// Reports one dead letter. Never waits: if the queue is full the event is dropped and counted.
    pub fn dead_lettered(&self, class: &str, error: &str) {
        let Some(queue) = &self.queue else { return };
        let event = DeadLetterEvent {
            class: class.to_owned(),
            error: error.to_owned(),
        };
        if queue.try_send(event).is_err() {
            if let Some(metrics) = &self.metrics {
                metrics.alerts.with_label_values(&["dropped"]).inc();
            }
        }
    }
}

/// Starts the alert task if `settings.webhook_url` is set; it stops with `shutdown`, after sending
/// any summary still owed.
pub fn spawn(
    settings: &AlertSettings,
    source: &str,
    metrics: Arc<ConsumerMetrics>,
    shutdown: CancellationToken,
) -> AlertSender {
    let url = settings.webhook_url.expose_secret().to_owned();
    if url.is_empty() {
        return AlertSender::default();
    }
    let (queue, events) = mpsc::channel(1024);
    let notifier = Notifier {
        url,
        source: source.to_owned(),
        window: Duration::from_secs(settings.window_secs),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with rustls builds"),
        metrics: metrics.clone(),
    };
    tokio::spawn(notifier.run(events, shutdown));
    AlertSender {
        queue: Some(queue),
        metrics: Some(metrics),
    }
}

struct Notifier {
    url: String,
    /// Names the pipeline in messages (the DLQ topic), so one channel can serve several deployments.
    source: String,
    window: Duration,
    client: reqwest::Client,
    metrics: Arc<ConsumerMetrics>,
}

/// One error class's current window.
struct Window {
    ends_at: Instant,
    /// Dead letters seen since the window's first, announced one.
    suppressed: u64,
    last_error: String,
}

impl Notifier {
    async fn run(self, mut events: mpsc::Receiver<DeadLetterEvent>, shutdown: CancellationToken) {
        let mut windows: HashMap<String, Window> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some(event) = event else { break };
                    let now = Instant::now();
                    match windows.get_mut(&event.class) {
                        Some(window) if window.ends_at > now => {
                            window.suppressed += 1;
                            window.last_error = event.error;
                        }
                        _ => {
                            let text = format!(
                                ":rotating_light: {}: a record was dead-lettered (class `{}`): {}",
                                self.source, event.class, event.error
                            );
                            self.send(text).await;
                            windows.insert(event.class, Window { ends_at: now + self.window, suppressed: 0, last_error: event.error });
                        }
                    }
                }
                _ = tick.tick() => self.flush(&mut windows, false).await,
                _ = shutdown.cancelled() => break,
            }
        }
        self.flush(&mut windows, true).await;
    }

    /// Sends the summary of every window that ended (or all of them, at shutdown).
    async fn flush(&self, windows: &mut HashMap<String, Window>, all: bool) {
        let now = Instant::now();
        let mut ended: Vec<String> = windows
            .iter()
            .filter(|(_, window)| all || window.ends_at <= now)
            .map(|(class, _)| class.clone())
            .collect();
        ended.sort();
        for class in ended {
            let Some(window) = windows.remove(&class) else {
                continue;
            };
            if window.suppressed > 0 {
                let text = format!(
                    ":rotating_light: {}: {} more record(s) dead-lettered (class `{class}`) in the last {} s; last error: {}",
                    self.source,
                    window.suppressed,
                    self.window.as_secs(),
                    window.last_error
                );
                self.send(text).await;
                // Keep rate-limiting: the summary opens a new window.
                windows.insert(
                    class,
                    Window {
                        ends_at: now + self.window,
                        suppressed: 0,
                        last_error: window.last_error,
                    },
                );
            }
        }
    }

    async fn send(&self, text: String) {
        let result = self
            .client
            .post(&self.url)
            .json(&json!({ "text": text }))
            .send()
            .await;
        let outcome = match result {
            Ok(response) if response.status().is_success() => "sent",
            Ok(response) => {
                tracing::warn!(status = %response.status(), "the alert webhook refused a message");
                "failed"
            }
            Err(error) => {
                tracing::warn!(%error, "the alert webhook could not be reached");
                "failed"
            }
        };
        self.metrics.alerts.with_label_values(&[outcome]).inc();
    }
}
