//! CPU time of loadgen and of the switch (when its pid is given) over the measured phase, from
//! /proc (Linux): on a shared machine the split says who used the cores.

/// User + system CPU seconds of a process so far, if /proc has it.
pub fn seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse(&stat)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_past_an_awkward_command_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse(stat), Some(3.0));
        assert_eq!(parse("garbage"), None);
        assert!(seconds(std::process::id()).is_some(), "this process has a /proc entry");
    }
}
