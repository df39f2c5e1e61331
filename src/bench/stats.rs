//! Figures: latency percentiles over µs samples, CPU over a measurement window (this process,
//! the server's process, the whole machine) and a server's resident memory.
//!
//! Everything here reads `/proc` or calls `getrusage`; nothing talks to the server.

use std::time::Instant;

use serde::Serialize;

/// Latency percentiles in µs over a set of samples (nearest-rank method).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub p999: u32,
    pub max: u32,
    pub mean: f64,
}

impl Percentiles {
    /// Sorts `samples` in place and summarises them; all zero when there are none.
    pub fn of(samples: &mut [u32]) -> Self {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let sum: u64 = samples.iter().map(|&s| s as u64).sum();
        Percentiles {
            count: samples.len() as u64,
            p50: rank(samples, 50.0),
            p90: rank(samples, 90.0),
            p99: rank(samples, 99.0),
            p999: rank(samples, 99.9),
            max: samples[samples.len() - 1],
            mean: (sum as f64 / samples.len() as f64 * 100.0).round() / 100.0,
        }
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of sorted, non-empty `sorted`: the smallest
/// sample such that at least p % of the samples are at or below it.
pub fn rank(sorted: &[u32], p: f64) -> u32 {
    let n = sorted.len();
    // The epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001) from adding a rank.
    let r = (p * n as f64 / 100.0 - 1e-9).ceil() as usize;
    sorted[r.clamp(1, n) - 1]
}

/// Nanoseconds since the first call in this process: the clock stamped into every payload.
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Microseconds between two `now_ns` stamps, saturating at `u32::MAX` (71 minutes).
pub fn micros_between(from_ns: u64, to_ns: u64) -> u32 {
    (to_ns.saturating_sub(from_ns) / 1000).min(u32::MAX as u64) as u32
}

/// CPU used during a window by this process, a server process and the machine.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub window_s: f64,
    /// This process, user + system (getrusage); 100 = one full core.
    pub client_pct_of_core: f64,
    /// The `--pid` process, utime + stime from /proc/PID/stat; 100 = one full core.
    pub server_pct_of_core: Option<f64>,
    /// The server's CPU time over the window, in seconds.
    pub server_cpu_s: Option<f64>,
    /// All cores (from /proc/stat); 100 = every core busy.
    pub machine_busy_pct: f64,
    pub cores: usize,
    /// How long the server's threads were runnable but waited for a CPU (the kernel's
    /// schedstat), in ms over the window: time a busy machine takes from every message.
    pub server_runqueue_wait_ms: Option<f64>,
    /// The same for this client's threads.
    pub client_runqueue_wait_ms: Option<f64>,
}

/// Starts measuring CPU at `start` and reports the usage since at `finish`.
#[derive(Debug, Clone)]
pub struct CpuWindow {
    at: Instant,
    client_us: u64,
    machine: (u64, u64),
    server: Option<(u32, u64)>,
    /// Run-queue wait (ns) of the server's and this process's threads at the start.
    server_wait: Option<u64>,
    client_wait: Option<u64>,
}

impl CpuWindow {
    pub fn start(pid: Option<u32>) -> Self {
        CpuWindow {
            at: Instant::now(),
            client_us: self_cpu_us(),
            machine: machine_ticks().unwrap_or((0, 0)),
            server: pid.and_then(|p| process_cpu_us(p).map(|us| (p, us))),
            server_wait: pid.and_then(|p| runqueue_wait_ns(&p.to_string())),
            client_wait: runqueue_wait_ns("self"),
        }
    }

    pub fn finish(&self) -> CpuReport {
        let window = self.at.elapsed().as_secs_f64().max(1e-9);
        let client = (self_cpu_us() - self.client_us) as f64 / 1e6;
        let (busy0, total0) = self.machine;
        let (busy1, total1) = machine_ticks().unwrap_or((busy0, total0));
        let machine = if total1 > total0 {
            (busy1 - busy0) as f64 / (total1 - total0) as f64 * 100.0
        } else {
            0.0
        };
        let server_s = self.server.and_then(|(pid, us0)| {
            process_cpu_us(pid).map(|us1| us1.saturating_sub(us0) as f64 / 1e6)
        });
        CpuReport {
            window_s: round2(window),
            client_pct_of_core: round2(client / window * 100.0),
            server_pct_of_core: server_s.map(|s| round2(s / window * 100.0)),
            server_cpu_s: server_s.map(|s| (s * 1e6).round() / 1e6),
            machine_busy_pct: round2(machine),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            server_runqueue_wait_ms: self.server.and_then(|(pid, _)| {
                waited_ms(self.server_wait, runqueue_wait_ns(&pid.to_string()))
            }),
            client_runqueue_wait_ms: waited_ms(self.client_wait, runqueue_wait_ns("self")),
        }
    }
}

fn waited_ms(before: Option<u64>, after: Option<u64>) -> Option<f64> {
    Some(round2(after?.saturating_sub(before?) as f64 / 1e6))
}

/// Time the threads of process `pid` ("self" for this one) spent runnable but not running, in
/// ns: the second field of each `/proc/PID/task/TID/schedstat` (threads that ended drop out).
fn runqueue_wait_ns(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for t in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// This process's user + system CPU time in µs.
pub fn self_cpu_us() -> u64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to our struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime of `pid` in µs, from /proc/PID/stat; None when the process is gone.
pub fn process_cpu_us(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat_ticks(&text).map(|t| t * 1_000_000 / clock_ticks_per_s())
}

/// utime + stime in clock ticks from the text of /proc/PID/stat. The command name may hold
/// spaces and parentheses, so fields are counted from the last ')': utime and stime are fields
/// 14 and 15 (proc(5)).
pub fn parse_proc_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) ticks of all cores from /proc/stat; idle and iowait are not busy.
fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(text.lines().next()?)
}

pub fn parse_machine_ticks(cpu_line: &str) -> Option<(u64, u64)> {
    let mut it = cpu_line.split_whitespace();
    if it.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let v: Vec<u64> = it.take(8).filter_map(|f| f.parse().ok()).collect();
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// VmRSS of `pid` in bytes, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&text)
}

pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_hundred() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(p.count, 100);
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (50, 90, 99, 100, 100));
        assert_eq!(p.mean, 50.5);
    }

    #[test]
    fn percentiles_of_one_sample_are_that_sample() {
        let p = Percentiles::of(&mut [7]);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (7, 7, 7, 7));
    }

    #[test]
    fn percentiles_of_nothing_are_zero() {
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn p999_of_a_thousand_samples_is_the_999th() {
        let mut v: Vec<u32> = (1..=1000).collect();
        assert_eq!(Percentiles::of(&mut v).p999, 999);
        let mut v: Vec<u32> = (1..=10).collect();
        assert_eq!(rank(&v, 99.9), 10);
        assert_eq!(rank(&v, 10.0), 1);
        v.reverse();
        v.sort_unstable();
        assert_eq!(rank(&v, 0.0), 1);
    }

    #[test]
    fn proc_stat_with_spaces_and_parens_in_the_name() {
        let line = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_proc_stat_ticks(line), Some(300));
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let line = "cpu  100 0 50 800 50 0 0 0 0 0";
        assert_eq!(parse_machine_ticks(line), Some((150, 1000)));
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn vmrss_in_bytes() {
        let status = "Name:\twsgate\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\n";
        assert_eq!(parse_vmrss(status), Some(4321 * 1024));
    }

    #[test]
    fn micros_between_saturates() {
        assert_eq!(micros_between(1_000, 3_500), 2);
        assert_eq!(micros_between(5, 1), 0);
        assert_eq!(micros_between(0, u64::MAX), u32::MAX);
    }
}
