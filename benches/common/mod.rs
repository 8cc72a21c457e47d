//! Helpers shared by the benchmarks (each bench binary includes this module).
#![allow(dead_code)] // each benchmark uses its own part

use anyhow::Context;

/// A whole-number setting from the environment, or `default` when unset.
pub fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .with_context(|| format!("{name}={raw:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// The median (0 for no values).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// A target's verdict in the reports.
pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// KiB (as /proc reports memory) in MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU seconds (user + system) a process has used, and those of its children it waited for
/// (from /proc/<pid>/stat, in USER_HZ = 100 ticks per second).
pub fn cpu_of(pid: u32) -> (f64, f64) {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The fields after the command name, which is in parentheses: utime is field 14.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<f64> = rest
                .split_whitespace()
                .skip(11)
                .take(4)
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            (fields.len() == 4).then(|| ((fields[0] + fields[1]) / 100.0, (fields[2] + fields[3]) / 100.0))
        })
        .unwrap_or((0.0, 0.0))
}

/// Busy and total CPU seconds of the whole machine, all CPUs together (from /proc/stat).
pub fn machine_cpu() -> (f64, f64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().find(|l| l.starts_with("cpu "))?;
            let ticks: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .take(8)
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            let total: f64 = ticks.iter().sum();
            let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
            Some(((total - idle) / 100.0, total / 100.0))
        })
        .unwrap_or((0.0, 0.0))
}

/// The machine in one line: CPUs, CPU model, kernel, memory and OS.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or_else(
            || "?".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        );
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs, {cpu}, Linux {kernel}, {memory} RAM, {os}")
}
