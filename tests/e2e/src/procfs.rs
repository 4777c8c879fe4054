//! Memory and CPU of a process, from Linux's `/proc/<pid>/status` and `/proc/<pid>/stat`.

use anyhow::{anyhow, Context, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Resident set size now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Highest resident set size so far (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// CPU time used so far in user and kernel mode (`utime + stime`), clock ticks.
    pub cpu_ticks: u64,
}

fn status_kib(status: &str, key: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc status"))
}

/// `utime + stime` from the text of `/proc/<pid>/stat`: fields 14 and 15, counted after the
/// command name, which is in parentheses and may itself contain spaces.
fn stat_ticks(stat: &str) -> Result<u64> {
    let after_comm = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("/proc stat has no command name"))?;
    // After ")": state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("/proc stat field {} is missing", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Reads process `pid`.
pub fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(Sample {
        rss_kib: status_kib(&status, "VmRSS")?,
        hwm_kib: status_kib(&status, "VmHWM")?,
        cpu_ticks: stat_ticks(&stat)?,
    })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 when it cannot be read.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_and_cpu_of_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
        let stat = "12 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0";
        assert_eq!(stat_ticks(stat).unwrap(), 280);
        assert!(ticks_per_second() >= 1);
    }
}
