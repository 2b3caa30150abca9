//! Whether another process has a store open. RocksDB holds a POSIX write lock on the directory's
//! `LOCK` file while a store is open for writing. A read-only open (the audit) takes no lock,
//! so against a live ledger it would read files the writer is still appending to, flushing and
//! deleting: its findings would describe no state the ledger was ever in. The audit asks here
//! first and refuses.
//!
//! The check reads `/proc/locks` and never opens `LOCK`. Closing any descriptor of a file drops
//! every POSIX lock this process holds on it, so opening `LOCK` here would silently unlock a
//! store that this same process has open.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The id of another process holding the store's lock, if the kernel lists one. `None` also
/// when it cannot tell: no `LOCK` file (no store yet), no `/proc`, or a filesystem whose
/// device numbers `stat` and `/proc/locks` report differently.
pub(super) fn holder(dir: &Path) -> Option<u32> {
    // `metadata` is a `stat`: it opens nothing.
    let lock = std::fs::metadata(dir.join("LOCK")).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, lock.dev(), lock.ino(), std::process::id())
}

/// `/proc/locks` lines read `1: POSIX  ADVISORY  WRITE 4242 fd:01:1837 0 EOF`: the holder's
/// pid, then the file as `major:minor:inode` (device numbers in hex). A waiter's line reads
/// `1: -> POSIX ...`, with the same fields after the arrow.
fn holder_in(locks: &str, device: u64, inode: u64, own_pid: u32) -> Option<u32> {
    let file = format!("{:02x}:{:02x}:{inode}", rustix::fs::major(device), rustix::fs::minor(device));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|field| *field == file)?;
        let kind = fields.get(1..at)?;
        if kind.first() == Some(&"->") || !kind.contains(&"POSIX") {
            return None; // a waiter, or a kind of lock RocksDB does not take
        }
        let pid: u32 = fields.get(at.checked_sub(1)?)?.parse().ok()?;
        (pid != own_pid).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: u64 = (0xfd << 8) | 0x01; // major 0xfd, minor 1 (Linux's old encoding)

    #[test]
    fn another_process_holding_the_lock_is_named() {
        let locks = "1: POSIX  ADVISORY  WRITE 4242 fd:01:1837 0 EOF\n2: FLOCK  ADVISORY  WRITE 77 fd:01:99 0 EOF\n";
        assert_eq!(holder_in(locks, DEVICE, 1837, 1), Some(4242));
    }

    #[test]
    fn this_process_waiters_and_other_files_are_not_holders() {
        let own = "1: POSIX  ADVISORY  WRITE 4242 fd:01:1837 0 EOF\n";
        assert_eq!(holder_in(own, DEVICE, 1837, 4242), None);
        let waiter = "1: -> POSIX  ADVISORY  WRITE 5151 fd:01:1837 0 EOF\n";
        assert_eq!(holder_in(waiter, DEVICE, 1837, 1), None);
        let other_file = "1: POSIX  ADVISORY  WRITE 4242 fd:01:1838 0 EOF\n";
        assert_eq!(holder_in(other_file, DEVICE, 1837, 1), None);
        let flock = "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1837 0 EOF\n";
        assert_eq!(holder_in(flock, DEVICE, 1837, 1), None);
    }
}
