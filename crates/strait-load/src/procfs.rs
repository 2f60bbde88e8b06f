//! Memory and CPU of a process from `/proc`: `VmRSS` and `VmHWM` from `status`, user and
//! system time from `stat`.

use std::path::PathBuf;

use crate::{Error, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kb: u64,
    /// Peak resident set size so far (high water mark), KiB.
    pub hwm_kb: u64,
    /// User + system CPU time of all its threads, in clock ticks.
    pub cpu_ticks: u64,
}

/// `VmRSS` and `VmHWM` (KiB) from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `utime + stime` (clock ticks) from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy clock ticks of the whole machine (all CPUs: user, nice, system, irq, softirq,
/// steal) from the text of `/proc/stat`.
pub fn parse_machine_busy(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

/// Busy clock ticks of the whole machine so far (0 when unreadable).
pub fn machine_busy_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_machine_busy(&t))
        .unwrap_or(0)
}

/// Reads `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> Result<ProcSample> {
    let dir = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}")),
        None => PathBuf::from("/proc/self"),
    };
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })
    };
    let (rss, hwm) = parse_status(&read("status")?);
    let cpu = parse_stat_cpu(&read("stat")?);
    Ok(ProcSample {
        rss_kb: rss.unwrap_or(0),
        hwm_kb: hwm.unwrap_or(0),
        cpu_ticks: cpu.unwrap_or(0),
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every common Linux when that fails).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let text = "Name:\tstrait\nVmPeak:\t  900 kB\nVmHWM:\t   81234 kB\nVmRSS:\t   70000 kB\n";
        assert_eq!(parse_status(text), (Some(70000), Some(81234)));
        assert_eq!(parse_status("Name: x\n"), (None, None));
    }

    #[test]
    fn stat_cpu_after_a_name_with_spaces() {
        let text =
            "1234 (tokio (rt) w) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 37 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu(text), Some(287));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn machine_busy_time() {
        let text = "cpu  100 5 50 1000 7 3 2 1 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_machine_busy(text), Some(161));
        assert_eq!(parse_machine_busy("intr 1"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let s = sample(None).expect("own /proc");
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        assert!(clock_ticks_per_second() > 0);
    }
}
