//! The roles as separate processes of the release binary (so their memory is their own), and what
//! the bench reads about processes and the machine: peak RSS, CPU time, load, free ports, metrics.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running `produce` or `consume` process. Killed if dropped without `stop` (a failed bench
/// leaves nothing running).
pub struct Role {
    pub name: String,
    child: tokio::process::Child,
    pub pid: u32,
    pub log: PathBuf,
    /// Whether `perf record` is to be attached once the role is ready (`--perf`).
    pub profile_when_ready: bool,
    profiler: Option<tokio::process::Child>,
}

impl Role {
    /// Starts `binary --config <config> --set ... <args>`, its output going to `log`.
    pub fn spawn(
        name: &str,
        binary: &Path,
        config: &Path,
        overrides: &[String],
        args: &[&str],
        log: PathBuf,
    ) -> anyhow::Result<Role> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {log:?}"))?;
        let mut command = tokio::process::Command::new(binary);
        command.arg("--config").arg(config);
        for set in overrides {
            command.arg("--set").arg(set);
        }
        command
            .args(args)
            .env_remove("AP_CONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {binary:?} {args:?}"))?;
        let pid = child.id().context("the child has a pid")?;
        // The pid lets one attach a profiler (`perf record -g -p <pid>`) while a phase runs.
        println!("     ({name}: pid {pid}, log {log:?})");
        Ok(Role {
            name: name.to_owned(),
            child,
            pid,
            log,
            profile_when_ready: false,
            profiler: None,
        })
    }

    /// Attaches `perf record` (call graphs from DWARF, 99 Hz) until the role stops; the samples go
    /// to `<log>.perf.data` (see `scripts/flamegraph.sh`). Only once the role is ready: `perf record
    /// -p` follows the threads that exist when it attaches, not those started later.
    fn record_with_perf(&mut self) -> anyhow::Result<()> {
        let data = self.log.with_extension("perf.data");
        let perf_log = std::fs::File::create(self.log.with_extension("perf.log"))?;
        let child = tokio::process::Command::new("perf")
            .args([
                "record",
                "--quiet",
                "-F",
                "99",
                "--call-graph",
                "dwarf,16384",
            ])
            .arg("-p")
            .arg(self.pid.to_string())
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::from(perf_log.try_clone()?))
            .stderr(Stdio::from(perf_log))
            .kill_on_drop(true)
            .spawn()
            .context("starting `perf record` (Debian: apt-get install linux-perf)")?;
        println!("     ({}: recorded by perf into {data:?})", self.name);
        self.profiler = Some(child);
        Ok(())
    }

    /// Peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        peak_rss_kib(self.pid)
    }

    /// Fails when the process has exited (with the tail of its log).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited early ({status}); last lines of {:?}:\n{}",
                self.name,
                self.log,
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// SIGTERM (graceful), then SIGKILL after `grace`. Returns the peak RSS read just before.
    pub async fn stop(mut self, grace: Duration) -> Option<u64> {
        let peak = self.peak_rss_kib();
        if let Some(mut profiler) = self.profiler.take() {
            // SIGINT: perf stops sampling and finishes its file.
            if let Some(pid) = profiler.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-INT")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(60), profiler.wait())
                .await
                .is_err()
            {
                eprintln!("perf record of {} did not finish; killing it", self.name);
                let _ = profiler.kill().await;
            }
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} did not stop within {grace:?}; killing it", self.name);
                let _ = self.child.kill().await;
            }
        }
        peak
    }
}

pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, "VmHWM:")
}

/// Resident set size now (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, "VmRSS:")
}

/// A `kB` field of /proc/<pid>/status.
pub fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// CPU seconds so far of a process and of its children: its own, that of the children it has
/// waited for, and that of the children still running. Redis writes its AOF rewrites and RDB
/// snapshots from a forked child, which took about a third of Redis's CPU in the batch phase
/// (BENCHMARKS.md); the process's own time leaves that out. A child's time moves from "running" to
/// "waited for" when it is reaped, so the sum stays continuous between two samples.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if pid == std::process::id() {
        // The bench's children are the roles, measured on their own, and the tools it runs.
        return Some(stat_own_cpu_ticks(&stat)? / clock_ticks_per_second());
    }
    let own_and_waited = stat_cpu_ticks(&stat)?;
    let running: f64 = running_children(pid)
        .into_iter()
        .filter_map(|child| std::fs::read_to_string(format!("/proc/{child}/stat")).ok())
        .filter_map(|stat| stat_cpu_ticks(&stat))
        .sum();
    Some((own_and_waited + running) / clock_ticks_per_second())
}

/// utime + stime + cutime + cstime of a /proc/<pid>/stat line, in clock ticks: the process's own
/// CPU and that of the children it has waited for.
fn stat_cpu_ticks(stat: &str) -> Option<f64> {
    stat_ticks(stat, 11..15)
}

/// utime + stime: the process's own CPU, in clock ticks.
fn stat_own_cpu_ticks(stat: &str) -> Option<f64> {
    stat_ticks(stat, 11..13)
}

/// The sum of the fields `after_command` of a /proc/<pid>/stat line, counted from the first field
/// after the command: utime, stime, cutime and cstime are fields 14 to 17 of the whole line, 11 to
/// 14 from there.
fn stat_ticks(stat: &str, after_command: std::ops::Range<usize>) -> Option<f64> {
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    after_command
        .map(|field| fields.get(field)?.parse::<f64>().ok())
        .sum()
}

/// The children of every thread of `pid` that are still running (or not yet reaped).
fn running_children(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    threads
        .filter_map(|thread| std::fs::read_to_string(thread.ok()?.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// CPU seconds so far of each observed process (None when unreadable).
pub fn cpu_of(observed: &[(String, u32)]) -> Vec<Option<f64>> {
    observed.iter().map(|(_, pid)| cpu_seconds(*pid)).collect()
}

/// Cores each observed process used since `before` was sampled, `elapsed` ago.
pub fn cores_since(
    observed: &[(String, u32)],
    before: &[Option<f64>],
    elapsed: Duration,
) -> Vec<(String, f64)> {
    let seconds = elapsed.as_secs_f64().max(1e-6);
    observed
        .iter()
        .zip(before)
        .filter_map(|((name, pid), before)| {
            Some((name.clone(), (cpu_seconds(*pid)? - (*before)?) / seconds))
        })
        .collect()
}

/// Asked once: every CPU sample of every process needs it.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The machine's CPU counters (/proc/stat, first line): busy and total jiffies.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    busy: u64,
    total: u64,
}

impl CpuSample {
    pub fn now() -> CpuSample {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        parse_cpu_line(text.lines().next().unwrap_or_default())
    }

    /// Percentage of all cores busy between `self` and `later`.
    pub fn busy_percent_until(&self, later: &CpuSample) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        later.busy.saturating_sub(self.busy) as f64 * 100.0 / total as f64
    }
}

pub fn parse_cpu_line(line: &str) -> CpuSample {
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    CpuSample {
        busy: total.saturating_sub(idle),
        total,
    }
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `url` until it answers 200, the role dies, or `timeout` passes.
pub async fn wait_ready(
    http: &reqwest::Client,
    role: &mut Role,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        role.ensure_running()?;
        if let Ok(response) = http.get(url).send().await {
            if response.status().is_success() {
                if role.profile_when_ready && role.profiler.is_none() {
                    role.record_with_perf()?;
                }
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} did not answer {url} within {timeout:?}; last lines of {:?}:\n{}",
                role.name,
                role.log,
                tail(&role.log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of every sample of the Prometheus metric `name` (all label sets), from a text exposition.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A Prometheus histogram summed over its label sets: observations, their sum, and the cumulative
/// bucket counts by upper bound (ascending, `+Inf` last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSample {
    pub count: f64,
    pub sum: f64,
    pub buckets: Vec<(f64, f64)>,
}

impl HistogramSample {
    /// Reads the histogram `name` from a text exposition (empty if absent).
    pub fn read(text: &str, name: &str) -> HistogramSample {
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if series.split('{').next() != Some(bucket_name.as_str()) {
                continue;
            }
            let (Some(bound), Ok(value)) = (bucket_bound(series), value.parse::<f64>()) else {
                continue;
            };
            match buckets.iter_mut().find(|(known, _)| *known == bound) {
                Some((_, total)) => *total += value,
                None => buckets.push((bound, value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        HistogramSample {
            count: metric_sum(text, &format!("{name}_count")),
            sum: metric_sum(text, &format!("{name}_sum")),
            buckets,
        }
    }

    /// What was observed between `earlier` and this sample.
    pub fn since(&self, earlier: &HistogramSample) -> HistogramSample {
        let before = |bound: f64| {
            earlier
                .buckets
                .iter()
                .find(|(known, _)| *known == bound)
                .map_or(0.0, |(_, count)| *count)
        };
        HistogramSample {
            count: self.count - earlier.count,
            sum: self.sum - earlier.sum,
            buckets: self
                .buckets
                .iter()
                .map(|&(bound, count)| (bound, count - before(bound)))
                .collect(),
        }
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The upper bound of the bucket holding quantile `q`: the quantile is at most this (a bucket's
    /// width is its precision). `None` without observations or when it is past the last finite bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map(|(bound, _)| *bound)
            .filter(|bound| bound.is_finite())
    }
}

/// The `le` label of a bucket series, as a number (`+Inf` is infinity).
fn bucket_bound(series: &str) -> Option<f64> {
    let start = series.find("le=\"")? + 4;
    let end = start + series[start..].find('"')?;
    match &series[start..end] {
        "+Inf" => Some(f64::INFINITY),
        bound => bound.parse().ok(),
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub mod checks {
    use super::*;

    pub fn proc_files_are_parsed() {
        let status = "Name:\tx\nVmPeak:\t  1000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(51234));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
        let before = parse_cpu_line("cpu  100 0 100 700 100 0 0 0 0 0");
        let after = parse_cpu_line("cpu  200 0 200 800 100 0 0 0 0 0");
        assert!((before.busy_percent_until(&after) - 66.666).abs() < 0.01);
        // This very process has a peak RSS and has used some CPU.
        assert!(peak_rss_kib(std::process::id()).unwrap() > 0);
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        // Own, own in the kernel, waited-for children, their kernel time; the command may hold
        // spaces and parentheses.
        let stat = "42 (redis (x) y) S 1 42 42 0 -1 4194560 900 0 0 0 150 30 700 20 20 0 4 0 9";
        assert_eq!(stat_cpu_ticks(stat), Some(900.0));
        assert_eq!(stat_own_cpu_ticks(stat), Some(180.0));
        assert_eq!(stat_cpu_ticks("42 (truncated) S 1 42"), None);
    }

    /// What a forked child (Redis's AOF rewrite) spends is counted for its parent, while the child
    /// runs and after it was reaped; the bench's own figure leaves its children out.
    pub fn children_cpu_is_counted() {
        use std::io::Write as _;
        // The parent forks a subshell that burns CPU, reaps it, then waits for a line on stdin.
        let mut parent = std::process::Command::new("sh")
            .args([
                "-c",
                "(i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done); read finished",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let me = std::process::id();
        let (bench_before, before) = (cpu_seconds(me).unwrap(), cpu_seconds(parent.id()).unwrap());
        // Sampled until the subshell has been seen running and then reaped (a bound, not a
        // measure: it takes well under a second).
        let (mut while_running, mut seen_running) = (None, false);
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let now = cpu_seconds(parent.id()).unwrap();
            let running = !running_children(parent.id()).is_empty();
            seen_running |= running;
            if running && while_running.is_none() && now - before >= 0.05 {
                while_running = Some(now);
            }
            if seen_running && !running {
                break;
            }
            assert!(Instant::now() < give_up, "the subshell never ran and ended");
            std::thread::sleep(Duration::from_millis(20));
        }
        let after = cpu_seconds(parent.id()).unwrap();
        let bench_after = cpu_seconds(me).unwrap();
        parent.stdin.take().unwrap().write_all(b"done\n").unwrap();
        assert!(parent.wait().unwrap().success());
        let while_running = while_running.unwrap_or_else(|| {
            panic!("a running child's CPU is counted: {before} s, and {after} s once reaped")
        });
        assert!(
            after >= while_running && after - before >= 0.1,
            "a reaped child's CPU stays counted: {before} s, {while_running} s, then {after} s"
        );
        assert!(
            bench_after - bench_before < (after - before) / 2.0,
            "the bench's children are not the bench's: {bench_before} s, then {bench_after} s, \
             while its child's child ran {} s",
            after - before
        );
    }

    pub fn metrics_are_summed_over_labels() {
        let text = "# HELP activity_pipeline_consumer_records_total x\n\
            # TYPE activity_pipeline_consumer_records_total counter\n\
            activity_pipeline_consumer_records_total{outcome=\"duplicate\"} 2\n\
            activity_pipeline_consumer_records_total{outcome=\"inserted\"} 40\n\
            activity_pipeline_consumer_records_total_other 7\n";
        assert_eq!(
            metric_sum(text, "activity_pipeline_consumer_records_total"),
            42.0
        );
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    pub fn histograms_are_read_and_subtracted() {
        let sample = |fast: f64, slow: f64, sum: f64| {
            format!(
                "# TYPE h histogram\n\
                h_bucket{{stage=\"main\",le=\"0.01\"}} {fast}\n\
                h_bucket{{stage=\"main\",le=\"0.1\"}} {slow}\n\
                h_bucket{{stage=\"main\",le=\"+Inf\"}} {slow}\n\
                h_sum{{stage=\"main\"}} {sum}\n\
                h_count{{stage=\"main\"}} {slow}\n\
                h_bucket{{stage=\"retry\",le=\"0.01\"}} 1\n\
                h_bucket{{stage=\"retry\",le=\"0.1\"}} 1\n\
                h_bucket{{stage=\"retry\",le=\"+Inf\"}} 1\n\
                h_sum{{stage=\"retry\"}} 0.005\n\
                h_count{{stage=\"retry\"}} 1\n"
            )
        };
        let before = HistogramSample::read(&sample(10.0, 10.0, 0.05), "h");
        assert_eq!(before.count, 11.0);
        assert_eq!(
            before.buckets,
            [(0.01, 11.0), (0.1, 11.0), (f64::INFINITY, 11.0)]
        );
        // Then 90 more observations: 80 under 10 ms, 10 between 10 and 100 ms.
        let after = HistogramSample::read(&sample(90.0, 100.0, 1.45), "h");
        let window = after.since(&before);
        assert_eq!(window.count, 90.0);
        assert!((window.mean().unwrap() - 1.4 / 90.0).abs() < 1e-9);
        assert_eq!(window.quantile_bound(0.5), Some(0.01));
        assert_eq!(window.quantile_bound(0.99), Some(0.1));
        assert_eq!(HistogramSample::default().quantile_bound(0.5), None);
        assert_eq!(HistogramSample::read("", "h").mean(), None);
    }
}
