//! The one summary of a run: what was sent, what broke, what the checker found; printed, and written
//! as JSON next to the run's logs.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::checker::Checked;
use crate::drill::StepReport;
use crate::faults::FaultRecord;
use crate::ledger::{Outcome, WorkloadReport};
use crate::roles::UnexpectedExit;
use crate::workload::Features;

pub struct Summary<'a> {
    pub command: String,
    pub seed: u64,
    pub profile: String,
    pub load_secs: f64,
    pub total_secs: f64,
    pub rate: u32,
    pub clients: usize,
    pub features: Features,
    pub workload: &'a WorkloadReport,
    pub faults: &'a [FaultRecord],
    pub skipped_faults: usize,
    pub poison_injected: usize,
    pub poison_acknowledged: usize,
    pub checked: &'a Checked,
    pub drained: bool,
    /// Seconds from the end of the last fault until the consumers had committed everything.
    pub drain_secs: f64,
    /// Seconds from the end of the load (clients' retries included) until drained.
    pub drain_after_load_secs: f64,
    pub unexpected_exits: &'a [UnexpectedExit],
    /// The cluster drill's steps with their statistics (`None` for the suite's profiles).
    pub drill_steps: Option<&'a [StepReport]>,
    /// What a Redis master failover lost, as the checker found it.
    pub failover_finding: Option<String>,
    pub run_dir: &'a Path,
}

impl Summary<'_> {
    /// Failures of the harness itself: a fault that could not be applied or undone.
    fn harness_errors(&self) -> Vec<String> {
        self.faults
            .iter()
            .filter_map(|fault| {
                fault
                    .error
                    .as_ref()
                    .map(|error| format!("{} at t={:.1}s: {error}", fault.label, fault.started))
            })
            .collect()
    }

    pub fn violations(&self) -> usize {
        self.checked
            .checks()
            .iter()
            .map(|(_, violations)| violations.count)
            .sum::<usize>()
            + self.workload.unexpected.len()
            + self.unexpected_exits.len()
            + self.harness_errors().len()
            + self.drill_violations().len()
            + usize::from(!self.drained)
    }

    fn drill_violations(&self) -> Vec<String> {
        self.drill_steps
            .unwrap_or_default()
            .iter()
            .filter_map(StepReport::violation)
            .collect()
    }

    pub fn green(&self) -> bool {
        self.violations() == 0
    }

    fn faults_by_kind(&self) -> BTreeMap<String, usize> {
        crate::faults::count_by_kind(self.faults)
    }

    pub fn print(&self) {
        let workload = self.workload;
        let checked = self.checked;
        let count = |outcome: &Outcome| {
            workload
                .activities
                .iter()
                .filter(|activity| &activity.outcome == outcome)
                .count()
        };
        let refused = workload
            .activities
            .iter()
            .filter(|activity| matches!(activity.outcome, Outcome::Refused(_)))
            .count();
        let keyless = workload
            .activities
            .iter()
            .filter(|activity| activity.nonce.starts_with("nokey"))
            .count();
        let batched = workload
            .activities
            .iter()
            .filter(|activity| activity.batched)
            .count();
        let answers: Vec<String> = workload
            .answers
            .iter()
            .map(|(answer, count)| format!("{answer}={count}"))
            .collect();
        let faults: Vec<String> = self
            .faults_by_kind()
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        let invalid: Vec<String> = checked
            .invalid_by_status
            .iter()
            .map(|(status, count)| format!("{status}={count}"))
            .collect();
        let line = |name: &str, value: String| println!("  {name:<34} {value}");
        println!();
        println!(
            "==== {}: summary ====",
            if self.drill_steps.is_some() {
                "cluster drill"
            } else {
                "faults"
            }
        );
        line("command", self.command.clone());
        line(
            "seed / profile / load",
            format!(
                "{} / {} / {:.0} s at {} req/s from {} clients (whole run {:.0} s)",
                self.seed, self.profile, self.load_secs, self.rate, self.clients, self.total_secs
            ),
        );
        line(
            "batch posts",
            if self.features.batch {
                "yes (POST /activities/batch)".to_owned()
            } else {
                "skipped: POST /activities/batch answered 404".to_owned()
            },
        );
        line(
            "live clients",
            if self.features.sse {
                "SSE (GET /activities/stream, resume with Last-Event-ID)".to_owned()
            } else {
                "stand-in: GET /activities/stream answered 404, so Redis Pub/Sub + MongoDB resume"
                    .to_owned()
            },
        );
        line(
            "requests sent",
            format!("{} ({})", workload.requests, answers.join(", ")),
        );
        line(
            "activities",
            format!(
                "{} (202: {}, never answered: {}, refused: {refused}; keyless {keyless}, in batches {batched}, batches {})",
                workload.activities.len(),
                count(&Outcome::Acked),
                count(&Outcome::Unanswered),
                workload.batches
            ),
        );
        line(
            "client retries with the same key",
            format!(
                "{} after no answer/503, {} re-sends after a 202, {} concurrent pairs; {} answered duplicate:true",
                workload.same_key_retries,
                workload.resends_after_ack,
                workload.concurrent_sends,
                workload.duplicate_answers
            ),
        );
        line(
            "invalid requests",
            format!("{} ({})", workload.invalid.len(), invalid.join(", ")),
        );
        line(
            "faults injected",
            format!(
                "{} ({}){}",
                self.faults.len(),
                faults.join(", "),
                if self.skipped_faults > 0 {
                    format!("; {} planned but no time left", self.skipped_faults)
                } else {
                    String::new()
                }
            ),
        );
        if let Some(steps) = self.drill_steps {
            println!("  drill steps (healed: every partition three in sync / the group caught up / the old master a replica):");
            for step in steps {
                let record = &step.record;
                let stats = &step.stats;
                println!(
                    "    {:<38} {} | POST p99 {:>6.0} ms over {:>5} posts, 503: {:>3}, no answer: {:>3}, 202: {:>5}",
                    record.label,
                    match &record.error {
                        None => format!("healed {:>5.1} s", record.recovered - record.started),
                        Some(_) => "FAILED      ".to_owned(),
                    },
                    stats.p99_secs * 1000.0,
                    stats.posts,
                    stats.unavailable,
                    stats.no_answer,
                    stats.accepted,
                );
                for note in &step.notes.lines {
                    println!("      {note}");
                }
            }
        }
        line(
            "poison injected",
            format!(
                "{} ({} acknowledged by the broker)",
                self.poison_injected, self.poison_acknowledged
            ),
        );
        line(
            "stored",
            format!(
                "{} (of which {} never answered to the client)",
                checked.stored, checked.stored_unanswered
            ),
        );
        line("lost", checked.lost.count.to_string());
        line("duplicated", checked.duplicated.count.to_string());
        line(
            "counter mismatches",
            checked.counter_mismatches.count.to_string(),
        );
        line("cross-tenant leaks", checked.live_leaks.count.to_string());
        if let Some(finding) = &self.failover_finding {
            line("Redis master failover", finding.clone());
        }
        let refusals: Vec<String> = checked
            .live_refusals
            .iter()
            .map(|(status, count)| format!("{status}={count}"))
            .collect();
        line(
            "live events",
            format!(
                "{} received ({} fetched with GET /activities after a truncated replay, {} duplicates dropped by id, {} reconnects, {} refused reconnects{}, {} truncated replays), {} missed",
                checked.live_events,
                checked.live_backfilled,
                checked.live_duplicates_dropped,
                checked.live_reconnects,
                checked.live_refusals.values().sum::<usize>(),
                if refusals.is_empty() { String::new() } else { format!(" ({})", refusals.join(", ")) },
                checked.live_truncated,
                checked.live_missed.count
            ),
        );
        line(
            "DLQ entries",
            format!(
                "{} ({} duplicate dead letters of one poison record)",
                checked.dlq_entries, checked.dlq_duplicates
            ),
        );
        line(
            "time to drain after the last fault",
            if self.drained {
                format!(
                    "{:.1} s ({:.1} s after the load and the clients' last retries)",
                    self.drain_secs, self.drain_after_load_secs
                )
            } else {
                format!("did not drain within {:.0} s", self.drain_secs)
            },
        );
        line(
            "unexpected process exits",
            self.unexpected_exits.len().to_string(),
        );
        let violations = self.violations();
        line(
            "violations",
            format!(
                "{violations} -> {}",
                if violations == 0 { "PASS" } else { "FAIL" }
            ),
        );
        if violations > 0 {
            println!();
            println!("  violations:");
            for (name, found) in checked.checks() {
                if found.count > 0 {
                    println!("    {name}: {}", found.count);
                    for example in &found.examples {
                        println!("      - {example}");
                    }
                }
            }
            if !workload.unexpected.is_empty() {
                println!(
                    "    unexpected answers to valid requests: {}",
                    workload.unexpected.len()
                );
                for example in workload.unexpected.iter().take(8) {
                    println!("      - {example}");
                }
            }
            for exit in self.unexpected_exits {
                println!(
                    "    {} exited on its own at t={:.1}s ({}); last lines:\n{}",
                    exit.role, exit.at_secs, exit.status, exit.log_tail
                );
            }
            for error in self.harness_errors() {
                println!("    harness: {error}");
            }
            for violation in self.drill_violations() {
                println!("    drill: {violation}");
            }
            if !self.drained {
                println!("    the consumers did not drain (lag or counters never settled)");
            }
        }
        println!(
            "  logs, stack data and summary.json: {}",
            self.run_dir.display()
        );
        println!();
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checked
            .checks()
            .into_iter()
            .map(|(name, found)| {
                (
                    name.to_owned(),
                    json!({"count": found.count, "examples": found.examples}),
                )
            })
            .collect();
        let faults: Vec<serde_json::Value> = self
            .faults
            .iter()
            .map(|fault| {
                json!({"fault": fault.label, "started": fault.started, "recovered": fault.recovered, "error": fault.error})
            })
            .collect();
        let steps: Vec<serde_json::Value> = self
            .drill_steps
            .unwrap_or_default()
            .iter()
            .map(|step| {
                json!({
                    "step": step.record.label,
                    "healSecs": step.record.recovered - step.record.started,
                    "error": step.record.error,
                    "notes": step.notes.lines,
                    "posts": step.stats.posts,
                    "postP99Ms": step.stats.p99_secs * 1000.0,
                    "answered503": step.stats.unavailable,
                    "noAnswer": step.stats.no_answer,
                    "accepted": step.stats.accepted,
                })
            })
            .collect();
        let summary = json!({
            "command": self.command,
            "seed": self.seed,
            "profile": self.profile,
            "loadSecs": self.load_secs,
            "totalSecs": self.total_secs,
            "features": {"batch": self.features.batch, "sse": self.features.sse},
            "requests": self.workload.requests,
            "answers": self.workload.answers,
            "activities": self.workload.activities.len(),
            "acked": self.workload.acked(),
            "sameKeyRetries": self.workload.same_key_retries,
            "invalidRequests": self.workload.invalid.len(),
            "faultsByKind": self.faults_by_kind(),
            "faults": faults,
            "poisonInjected": self.poison_injected,
            "stored": self.checked.stored,
            "lost": self.checked.lost.count,
            "duplicated": self.checked.duplicated.count,
            "counterMismatches": self.checked.counter_mismatches.count,
            "crossTenantLeaks": self.checked.live_leaks.count,
            "dlqEntries": self.checked.dlq_entries,
            "drained": self.drained,
            "drainSecs": self.drain_secs,
            "drainAfterLoadSecs": self.drain_after_load_secs,
            "unexpectedExits": self.unexpected_exits.len(),
            "unexpectedAnswers": self.workload.unexpected,
            "checks": checks,
            "drillSteps": steps,
            "redisFailover": self.failover_finding,
            "violations": self.violations(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)?;
        Ok(())
    }
}
