//! CPU time of loadgen and of the switch (when its pid is given) over the measured phase, from
//! /proc (Linux): on a shared machine the split says who used the cores. Also the switch's
//! resident memory, which an overload sweep records per level (it must plateau).

/// User + system CPU seconds of a process so far, if /proc has it.
pub fn seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse(&stat)
}

/// CPU seconds so far of several processes together (the nodes of a replicated switch), if /proc
/// has every one of them (and `None` for none).
pub fn total_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| seconds(*pid)).sum()
}

/// Resident memory of several processes together, bytes, if /proc has every one of them.
pub fn total_rss_bytes(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| rss_bytes(*pid)).sum()
}

/// Fields 14 and 15 of /proc/<pid>/stat (utime, stime) in clock ticks; the command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its closing parenthesis.
fn parse(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ")": field 3 is at index 0, so utime (14) is at 11 and stime (15) at 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture loadgen runs on.
    Some((utime + stime) as f64 / 100.0)
}

/// Resident memory of a process now, bytes (`VmRSS` of /proc/<pid>/status), if /proc has it.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_past_an_awkward_command_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse(stat), Some(3.0));
        assert_eq!(parse("garbage"), None);
        assert!(seconds(std::process::id()).is_some(), "this process has a /proc entry");
        assert_eq!(total_seconds(&[]), None);
        assert!(total_seconds(&[std::process::id(), std::process::id()]).is_some());
        assert_eq!(total_seconds(&[std::process::id(), u32::MAX]), None, "one gone: not measured");
    }

    #[test]
    fn reads_resident_memory() {
        assert_eq!(parse_rss("Name:\tswitch\nVmRSS:\t  123456 kB\nThreads:\t9\n"), Some(123_456 * 1024));
        assert_eq!(parse_rss("VmRSS: lots"), None);
        assert!(rss_bytes(std::process::id()).is_some_and(|bytes| bytes > 0), "this process has memory");
    }
}
