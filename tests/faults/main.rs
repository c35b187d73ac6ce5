//! The fault-injection suite (`make faults`; the short profile also runs in `make test`).
//!
//! Jepsen-style: a workload, injected faults and an independent checker. It starts a private stack
//! (Kafka, FerretDB, Redis on free ports, in a directory of the run) behind Toxiproxy, the roles as
//! separate processes of the real binary (one `produce`, two `consume` in one group), runs clients
//! of several tenants for a set time while faults hit on a schedule drawn from the seed, lets the
//! consumers drain, then checks MongoDB, Redis and the DLQ topic directly against what the clients
//! were told, and prints one summary. It exits non-zero on any violation.
//!
//! `--profile cluster-drill` (`make cluster-drill`) runs the same workload, ledger, live clients and
//! checker against a private cluster of three brokers, two APIs and two consumers, and instead of
//! the proxy's faults takes the cluster apart step by step (`drill`).
//!
//! `--profile dc-drill` (`make dc-drill`) runs the same workload (its clients homed in a datacenter,
//! failing over), ledger, live clients and checker against two datacenters over MirrorMaker 2,
//! kills one and MirrorMaker 2, races keys in both, and compares the datacenters (`datacenters`).
//!
//! # Layout
//! - `options`: the command line (`--profile`, `--seed`, `--duration`, `--faults`, ...).
//! - `env`, `stack`, `toxiproxy`, `roles`: the private stack, the fault proxy and the role processes;
//!   `cluster`: the drill's private cluster (scripts/cluster.sh at a port offset of its own).
//! - `workload`: the clients; `ledger`: what each activity and invalid request got (the workload
//!   writes it, the checker reads it); `invalid_requests`: the requests the API must refuse;
//!   `poison`: records written straight into the topic.
//! - `live`: live clients per tenant (SSE, or a stand-in until the endpoint exists).
//! - `faults`: the fault kinds, the seeded schedule, applying and undoing a fault.
//! - `drill`: the cluster drill's steps, their heal checks and the statistics per step.
//! - `datacenters`: the datacenter drill: its private two-datacenter stack (`scripts/dc.sh` at a
//!   port offset), its phases, the cross-datacenter checks, RPO, RTO and replication lag.
//! - `checker`: reads the stores with its own clients and holds them to the ledger.
//! - `report`: the summary.

mod checker;
mod clock;
mod cluster;
mod datacenters;
mod drill;
mod env;
mod faults;
mod invalid_requests;
mod ledger;
mod live;
mod options;
mod poison;
mod report;
mod roles;
mod sabotage;
mod stack;
mod toxiproxy;
mod workload;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Window};
use crate::drill::StepReport;
use crate::env::{Env, TENANTS};
use crate::faults::{FaultKind, FaultRecord, Injected};
use crate::options::{Invocation, Options, Profile};

/// How long clients may keep retrying after the load stops, and how long the consumers get to drain.
const CLIENT_DRAIN_BUDGET: Duration = Duration::from_secs(60);
const CONSUMER_DRAIN_BUDGET: Duration = Duration::from_secs(300);
/// Runs kept under the output directory (older ones are deleted).
const RUNS_KEPT: usize = 5;
/// The drill's load goes on this long after the last step healed (the last heal's aftermath).
const DRILL_COOLDOWN: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let options = match options::parse() {
        Invocation::Run(options) => options,
        Invocation::Skip(message) => {
            println!("{message}");
            return ExitCode::SUCCESS;
        }
    };
    // The pure parts are checked on every run (a few milliseconds), so `cargo test` keeps them.
    self_checks();
    if options.self_checks {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("faults: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(*options) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    // Whatever is still running (after an error or Ctrl-C) is stopped by the drops of the runtime's
    // tasks: role processes and Toxiproxy are killed on drop, the stack is stopped by its Drop.
    drop(runtime);
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("faults: the run could not complete: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> anyhow::Result<bool> {
    let seed = options
        .seed
        .unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    let mix = options.fault_mix()?;
    options.proxy_targets()?;
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let binary = options
        .binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_activity-pipeline")));
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| repo.join("target/faults"));
    let drill = options.profile == Profile::ClusterDrill;
    let dc_drill = options.profile == Profile::DcDrill;
    let out = if drill && options.out.is_none() {
        repo.join("target/cluster-drill")
    } else if dc_drill && options.out.is_none() {
        repo.join("target/dc-drill")
    } else {
        out
    };
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let run_dir = out.join(format!("{stamp}-seed{seed}"));
    prune_runs(&out, RUNS_KEPT - 1);
    std::fs::create_dir_all(&run_dir)?;
    let profile = profile_name(options.profile);
    let command = if dc_drill {
        format!(
            "make dc-drill SEED={seed} DURATION={}s",
            options.duration().as_secs()
        )
    } else if drill {
        format!(
            "make cluster-drill SEED={seed} DURATION={}s REDIS={}",
            options.duration().as_secs(),
            format!("{:?}", options.redis).to_lowercase()
        )
    } else {
        format!(
            "make faults PROFILE={profile} SEED={seed} DURATION={}s FAULTS={}",
            options.duration().as_secs(),
            if mix.len() == FaultKind::ALL.len() {
                "all".to_owned()
            } else {
                mix.iter()
                    .map(|kind| kind.name())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        )
    };
    println!(
        "faults: seed {seed}, profile {profile}, load {:?}; repeat with: {command}",
        options.duration()
    );
    println!("faults: run directory {}", run_dir.display());
    if dc_drill {
        return datacenters::run(&options, seed, &repo, &binary, &run_dir, &command).await;
    }

    let clock = Clock::start();
    let env = if drill {
        Env::start_cluster(
            &repo,
            &binary,
            run_dir.clone(),
            clock,
            options.redis == options::DrillRedis::Cluster,
        )
        .await?
    } else {
        Env::start(&repo, &binary, run_dir.clone(), seed, clock).await?
    };
    println!("faults: stack and roles up after {:.1} s", clock.secs());
    let env = Arc::new(env);
    let outcome = exercise(&env, &options, seed, &mix, &command, &run_dir).await;
    let green = matches!(outcome, Ok(true));
    match Arc::try_unwrap(env) {
        // A sabotaged store is of no use to anyone, but keep it for a look if the self-test failed.
        Ok(env) => env.stop(green && !options.keep).await,
        Err(_) => eprintln!("faults: the environment is still shared; it is stopped on exit"),
    }
    outcome
}

async fn exercise(
    env: &Arc<Env>,
    options: &Options,
    seed: u64,
    mix: &[FaultKind],
    command: &str,
    run_dir: &Path,
) -> anyhow::Result<bool> {
    let clock = env.clock;
    let features = workload::detect_features(&env.api_url).await?;
    println!(
        "faults: batch endpoint {}; live clients {}",
        if features.batch {
            "present"
        } else {
            "absent (404): single posts only"
        },
        if features.sse {
            "over SSE"
        } else {
            "via the Redis stand-in (GET /activities/stream answered 404)"
        }
    );

    // Live clients and a watchdog of the role processes run until the very end.
    let end = CancellationToken::new();
    let live = live::start(
        features.sse,
        false,
        &env.api_urls,
        &env.redis_url(),
        &env.mongo_uri(),
        &TENANTS,
        &end,
    );
    let watchdog = {
        let env = env.clone();
        let end = end.clone();
        tokio::spawn(async move {
            while !end.is_cancelled() {
                env.roles.lock().await.watch(&env.clock);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // The load, and poison straight into the topic, until the load stops.
    let drill = options.profile == Profile::ClusterDrill;
    let load_stop = CancellationToken::new();
    let load_started = clock.secs();
    let workload = tokio::spawn(workload::run(
        workload::LoadPlan {
            apis: env.api_urls.clone(),
            datacenters: None,
            features,
            seed,
            clients: options.clients,
            rate: options.rate(),
            drain_budget: CLIENT_DRAIN_BUDGET,
        },
        clock,
        load_stop.clone(),
    ));
    let poison = tokio::spawn(poison::inject(
        env.kafka_brokers(),
        seed,
        Duration::from_secs(12),
        clock,
        load_stop.clone(),
    ));

    let (records, skipped, steps) = if drill {
        let (records, steps) = run_drill(env, options, seed, load_started).await;
        (records, 0, Some(steps))
    } else {
        let (records, skipped) = run_faults(env, options, seed, mix, load_started).await?;
        (records, skipped, None)
    };
    println!(
        "faults: t={:>6.1}s  load stops; clients finish what they have in hand",
        clock.secs()
    );
    load_stop.cancel();
    // The drill's load lasts as long as its steps took; the suite's the set duration.
    let load_secs = if drill {
        clock.secs() - load_started
    } else {
        options.duration().as_secs_f64()
    };
    // Whatever a failed fault step left behind is undone before the drain.
    env.restore().await?;
    let workload = workload.await??;
    let poison = poison.await??;
    let last_fault_end = records
        .last()
        .map_or(load_started, |record| record.recovered);

    println!(
        "faults: t={:>6.1}s  waiting for the consumers to drain",
        clock.secs()
    );
    let load_stopped = clock.secs();
    let failover = records
        .iter()
        .any(|record| record.kind == Injected::Drill(drill::DrillKind::RedisMasterKill));
    let drain_until = if failover {
        checker::DrainUntil::StoreSettled
    } else {
        checker::DrainUntil::CountersMatch
    };
    let drained = checker::wait_for_drain(env, CONSUMER_DRAIN_BUDGET, drain_until).await;
    let drain_secs = clock.secs() - last_fault_end;
    let drain_after_load_secs = clock.secs() - load_stopped;
    println!("faults: t={:>6.1}s  drained: {drained}", clock.secs());
    wait_for_live(env, &live, Duration::from_secs(30)).await;
    end.cancel();
    let _ = watchdog.await;

    let mut failover = failover;
    if options.lose_like_a_failover > 0 {
        let lost =
            sabotage::lose_like_a_failover(env, &workload, options.lose_like_a_failover).await?;
        println!("faults: lost like a failover (the drill must account for each):");
        for line in &lost {
            println!("  - {line}");
        }
        failover = true;
    }
    let sabotaged = if options.sabotage {
        let done = sabotage::sabotage(env, &workload, &live).await?;
        println!("faults: sabotage (the checker must catch each):");
        for step in &done {
            println!("  - {step}");
        }
        true
    } else {
        false
    };
    let api_down: Vec<Window> = records
        .iter()
        .filter(|record| record.kind == Injected::Fault(FaultKind::ApiKill))
        .map(|record| Window {
            from: record.started,
            to: record.recovered,
        })
        .collect();
    println!("faults: t={:>6.1}s  checking", clock.secs());
    let no_conflicts = HashSet::new();
    let inputs = checker::Inputs {
        workload: &workload,
        poison: &poison,
        live: &live,
        api_down: &api_down,
        conflicts: &no_conflicts,
    };
    let mut checked = checker::check(&env.stores(), inputs).await?;
    let failover_finding = if failover {
        let (finding, rechecked) = account_for_failover(env, checked, inputs).await?;
        checked = rechecked;
        Some(finding)
    } else {
        None
    };
    let exits = env.roles.lock().await.unexpected_exits.clone();
    let steps = steps.map(|steps| {
        steps
            .into_iter()
            .map(|(record, notes)| StepReport {
                stats: drill::window_stats(
                    &workload.post_samples,
                    Window {
                        from: record.started,
                        to: record.recovered,
                    },
                ),
                record,
                notes,
            })
            .collect::<Vec<_>>()
    });
    let summary = report::Summary {
        command: command.to_owned(),
        seed,
        profile: profile_name(options.profile),
        load_secs,
        total_secs: clock.secs(),
        rate: options.rate(),
        clients: options.clients,
        features,
        workload: &workload,
        faults: &records,
        skipped_faults: skipped,
        poison_injected: poison.len(),
        poison_acknowledged: poison.iter().filter(|poison| poison.acknowledged).count(),
        checked: &checked,
        drained,
        drain_secs,
        drain_after_load_secs,
        unexpected_exits: &exits,
        drill_steps: steps.as_deref(),
        failover_finding,
        run_dir,
    };
    summary.print();
    summary.write_json(&run_dir.join("summary.json"))?;
    if sabotaged {
        let verdict = sabotage::verdict(&checked);
        println!("faults: checker self-test:");
        for (check, fired) in &verdict {
            println!(
                "  {:<30} {}",
                check,
                if *fired { "caught" } else { "MISSED" }
            );
        }
        let caught = verdict.iter().all(|(_, fired)| *fired);
        println!(
            "faults: self-test {}",
            if caught {
                "PASS: every sabotage was caught"
            } else {
                "FAIL: the checker missed a sabotage"
            }
        );
        return Ok(caught);
    }
    Ok(summary.green())
}

/// After a Redis master failover: what Redis lost, said as found. Marks and counts lost together
/// (per tenant and type, the counter short by exactly the activities without a mark) are what an
/// asynchronous replica may lose; then the counters are re-derived from MongoDB with the product's
/// own `analytics rebuild`, checked again (they must be exact), and the activities left without a
/// mark are reported, not failed: MongoDB's unique key still guards them. Anything else (a count
/// lost without its mark, a mark of another value) stays a violation.
async fn account_for_failover(
    env: &Arc<Env>,
    checked: checker::Checked,
    inputs: checker::Inputs<'_>,
) -> anyhow::Result<(String, checker::Checked)> {
    let unmarked: i64 = checked.unmarked.values().sum();
    let short: i64 = checked.counter_gaps.values().sum();
    if checked.counter_mismatches.count == 0 && checked.mark_mismatches.count == 0 {
        return Ok((
            "nothing lost: every mark and every count survived the failover".to_owned(),
            checked,
        ));
    }
    if !checker::lost_together(&checked) {
        return Ok((
            format!(
                "NOT lost together: counters short by {short} in all, {unmarked} activities without a mark, {} marks wrong (see the violations)",
                checked.mark_mismatches.count
            ),
            checked,
        ));
    }
    env.role_template
        .run_once(&["analytics", "rebuild"], "analytics-rebuild")
        .await?;
    let mut rechecked = checker::check(&env.stores(), inputs).await?;
    let still_unmarked: i64 = rechecked.unmarked.values().sum();
    let explained =
        still_unmarked == unmarked && rechecked.mark_mismatches.count as i64 == still_unmarked;
    if explained {
        rechecked.mark_mismatches = checker::Violations::default();
    }
    Ok((
        format!(
            "lost together: {unmarked} marks with their {short} counts (per tenant and type equal); counters re-derived with `analytics rebuild`: {} mismatches after; the {unmarked} activities stay stored once, without a mark",
            rechecked.counter_mismatches.count
        ),
        rechecked,
    ))
}

/// The suite's faults, one after another, on the seeded schedule, until `duration` after the load
/// started; returns what ran and how many planned faults found no time left.
async fn run_faults(
    env: &Arc<Env>,
    options: &Options,
    seed: u64,
    mix: &[FaultKind],
    load_started: f64,
) -> anyhow::Result<(Vec<FaultRecord>, usize)> {
    let clock = env.clock;
    let duration = options.duration();
    // The faults, one after another, on the seeded schedule.
    let plan = faults::plan(
        seed,
        mix,
        &options.proxy_targets()?,
        duration,
        options.gap_secs(),
    );
    println!("faults: schedule ({} faults):", plan.len());
    for fault in &plan {
        println!(
            "  t+{:>6.1}s  {:<26} hold {:.1} s {}",
            fault.at,
            fault.label(),
            fault.hold.as_secs_f64(),
            if fault
                .attributes
                .as_object()
                .is_some_and(|map| !map.is_empty())
            {
                fault.attributes.to_string()
            } else {
                String::new()
            }
        );
    }
    let load_end = load_started + duration.as_secs_f64();
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut skipped = 0;
    for fault in &plan {
        let due = load_started + fault.at;
        if due > clock.secs() {
            tokio::time::sleep(Duration::from_secs_f64(due - clock.secs())).await;
        }
        if clock.secs() + fault.hold.as_secs_f64() > load_end - 5.0 {
            skipped += 1;
            continue;
        }
        println!("faults: t={:>6.1}s  {} ...", clock.secs(), fault.label());
        let record = faults::execute(env, fault).await;
        match &record.error {
            None => println!(
                "faults: t={:>6.1}s  {} recovered after {:.1} s",
                clock.secs(),
                record.label,
                record.recovered - record.started
            ),
            Some(error) => println!(
                "faults: t={:>6.1}s  {} FAILED: {error}",
                clock.secs(),
                record.label
            ),
        }
        records.push(record);
    }
    if load_end > clock.secs() {
        tokio::time::sleep(Duration::from_secs_f64(load_end - clock.secs())).await;
    }
    Ok((records, skipped))
}

/// The drill's steps in order, each after its gap, each waiting for the heal; then the cool-down.
/// A step that fails is recorded with its error (a harness failure, reported) and the drill goes
/// on after restoring the cluster; past `--duration` the remaining steps are recorded as not run.
async fn run_drill(
    env: &Arc<Env>,
    options: &Options,
    seed: u64,
    load_started: f64,
) -> (Vec<FaultRecord>, Vec<(FaultRecord, drill::StepNotes)>) {
    let clock = env.clock;
    let plan = drill::plan(seed, options.redis == options::DrillRedis::Cluster);
    let deadline = load_started + options.duration().as_secs_f64();
    println!("faults: drill steps ({}):", plan.len());
    for step in &plan {
        println!(
            "  after {:>4.1}s  {:<18} hold {:.1} s",
            step.gap.as_secs_f64(),
            step.kind.name(),
            step.hold.as_secs_f64()
        );
    }
    let mut records = Vec::new();
    let mut steps = Vec::new();
    for step in &plan {
        tokio::time::sleep(step.gap).await;
        if clock.secs() > deadline - DRILL_COOLDOWN.as_secs_f64() {
            let at = clock.secs();
            let record = FaultRecord {
                label: step.kind.name().to_owned(),
                kind: Injected::Drill(step.kind),
                started: at,
                recovered: at,
                error: Some(format!(
                    "not run: the load's {:?} were over",
                    options.duration()
                )),
            };
            records.push(record.clone());
            steps.push((record, drill::StepNotes::default()));
            continue;
        }
        println!("faults: t={:>6.1}s  {} ...", clock.secs(), step.kind.name());
        let (record, notes) = drill::execute(env, step).await;
        for line in &notes.lines {
            println!("faults:             {line}");
        }
        match &record.error {
            None => println!(
                "faults: t={:>6.1}s  {} healed after {:.1} s",
                clock.secs(),
                record.label,
                record.recovered - record.started
            ),
            Some(error) => {
                println!(
                    "faults: t={:>6.1}s  {} FAILED: {error}",
                    clock.secs(),
                    record.label
                );
                if let Err(error) = env.restore().await {
                    println!("faults: restoring the cluster failed: {error:#}");
                }
            }
        }
        records.push(record.clone());
        steps.push((record, notes));
    }
    let cooldown_end = (clock.secs() + DRILL_COOLDOWN.as_secs_f64()).min(deadline);
    if cooldown_end > clock.secs() {
        tokio::time::sleep(Duration::from_secs_f64(cooldown_end - clock.secs())).await;
    }
    (records, steps)
}

fn profile_name(profile: Profile) -> String {
    match profile {
        Profile::Short => "short",
        Profile::Long => "long",
        Profile::ClusterDrill => "cluster-drill",
        Profile::DcDrill => "dc-drill",
    }
    .to_owned()
}

/// The pure parts of the suite, as `--self-checks` runs them (and every run first).
fn self_checks() {
    let checks: &[(&str, fn())] = &[
        ("options: drill", options::checks::drill_options_are_parsed),
        ("options: durations", options::checks::durations_are_parsed),
        (
            "cluster: quorum leader",
            cluster::checks::quorum_leader_is_parsed,
        ),
        (
            "cluster: CLUSTER NODES",
            cluster::checks::cluster_nodes_are_parsed,
        ),
        (
            "cluster: port offsets",
            cluster::checks::offsets_keep_ports_in_range,
        ),
        ("drill: plan", drill::checks::plan_is_seeded_and_ordered),
        (
            "drill: full strength",
            drill::checks::full_strength_needs_every_partition_led_and_in_sync,
        ),
        (
            "drill: caught up",
            drill::checks::catching_up_compares_every_partition,
        ),
        (
            "drill: window statistics",
            drill::checks::window_stats_count_and_rank,
        ),
        (
            "datacenters: port offsets",
            datacenters::checks::offsets_keep_ports_clear,
        ),
        ("datacenters: plan", datacenters::checks::plan_is_seeded),
        (
            "datacenters: RPO",
            datacenters::checks::rpo_counts_the_window,
        ),
        (
            "datacenters: RTO",
            datacenters::checks::rto_times_east_clients,
        ),
        (
            "datacenters: compared",
            datacenters::checks::datacenters_are_compared,
        ),
        (
            "datacenters: conflict rule",
            datacenters::checks::conflicts_follow_the_rule,
        ),
        (
            "datacenters: replication lag",
            datacenters::checks::lag_is_split_and_ranked,
        ),
        (
            "checker: lost together",
            checker::checks::losses_together_are_told_from_drift,
        ),
    ];
    for (_, check) in checks {
        check();
    }
    println!("faults: {} self-checks passed", checks.len());
}

/// Gives the live clients time to receive the last events (the drain ended when the consumers did).
async fn wait_for_live(env: &Env, live: &[live::LiveClient], within: Duration) {
    let _ = tokio::time::timeout(within, wait_for_live_unbounded(env, live)).await;
}

async fn wait_for_live_unbounded(env: &Env, live: &[live::LiveClient]) {
    loop {
        if let Ok(stored) = checker::read_ids(&env.stores()).await {
            let complete = live.iter().all(|client| {
                let seen = client.seen.lock().expect("seen");
                stored
                    .iter()
                    .filter(|(tenant, _)| tenant == client.tenant.id)
                    .all(|(_, id)| seen.ids.contains(id))
            });
            if complete {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Deletes all but the newest `keep` run directories under `out`.
fn prune_runs(out: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(out) else {
        return;
    };
    let mut runs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && path.join("logs").is_dir())
        .collect();
    runs.sort();
    let excess = runs.len().saturating_sub(keep);
    for run in &runs[..excess] {
        let _ = std::fs::remove_dir_all(run);
    }
}
