//! When the Raft log may be purged. openraft's own rule purges up to its snapshot less a margin,
//! even while a follower that is catching up still needs those entries (which then forces a whole
//! snapshot on it: minutes and gigabytes for a national ledger). Here automatic purging is off
//! (`max_in_snapshot_log_to_keep` at its maximum, `node::raft_config`) and the leader purges
//! only below both its newest snapshot and the lowest entry every member has acknowledged; a
//! follower purges below its own snapshot. A member that never comes back holds the leader's log
//! until an operator removes it (the log's size is the alert to watch).

use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use crate::service::SwitchRaft;

/// Entries kept below the purge point: a follower slightly behind is sent entries, not a snapshot.
pub const KEEP_ENTRIES: u64 = 1_024;

/// How far this node may purge its log now, from its own metrics (`None`: nothing to purge).
pub fn purge_point(metrics: &openraft::RaftMetrics<crate::TypeConfig>, keep: u64) -> Option<u64> {
    let snapshot = metrics.snapshot?.index;
    let mut upto = snapshot;
    if metrics.state == ServerState::Leader {
        // Every member the leader replicates to, by what it has acknowledged; one that has
        // acknowledged nothing yet holds everything.
        let replication = metrics.replication.as_ref()?;
        for matched in replication.values() {
            upto = upto.min(matched.map_or(0, |log_id| log_id.index));
        }
    }
    let upto = upto.checked_sub(keep)?;
    let purged = metrics.purged.map_or(0, |log_id| log_id.index);
    (upto > purged).then_some(upto)
}

/// Checks every `interval` and purges as far as `purge_point` allows, until the node shuts down.
pub fn spawn(raft: SwitchRaft, interval: Duration, keep: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let point = purge_point(&raft.metrics().borrow_watched(), keep);
            if let Some(upto) = point {
                if raft.trigger().purge_log(upto).await.is_err() {
                    return; // the node has stopped
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::{LeaderId, LogId};

    fn log_id(index: u64) -> Option<LogId> {
        Some(LogId { leader_id: LeaderId { term: 1, node_id: 1 }, index })
    }

    fn leader(
        snapshot: u64,
        matched: &[(u64, Option<u64>)],
        purged: Option<u64>,
    ) -> openraft::RaftMetrics<crate::TypeConfig> {
        let mut metrics = openraft::RaftMetrics::new_initial(1);
        metrics.state = ServerState::Leader;
        metrics.snapshot = log_id(snapshot);
        metrics.purged = purged.and_then(log_id);
        metrics.replication =
            Some(matched.iter().map(|(node, index)| (*node, index.and_then(log_id))).collect::<BTreeMap<_, _>>());
        metrics
    }

    #[test]
    fn the_leader_never_purges_what_a_member_has_not_acknowledged() {
        // Node 3 is behind at 40: the purge stops below it, less the margin.
        assert_eq!(purge_point(&leader(100, &[(1, Some(120)), (2, Some(90)), (3, Some(40))], None), 10), Some(30));
        // Everyone is past the snapshot: up to the snapshot, less the margin.
        assert_eq!(purge_point(&leader(100, &[(1, Some(120)), (2, Some(110))], None), 10), Some(90));
        // A member that acknowledged nothing holds the whole log.
        assert_eq!(purge_point(&leader(100, &[(1, Some(120)), (2, None)], None), 10), None);
        // Already purged that far: nothing to do.
        assert_eq!(purge_point(&leader(100, &[(1, Some(120)), (2, Some(110))], Some(90)), 10), None);
        // No snapshot: nothing may be purged.
        let mut no_snapshot = leader(100, &[(1, Some(120))], None);
        no_snapshot.snapshot = None;
        assert_eq!(purge_point(&no_snapshot, 10), None);
    }

    #[test]
    fn a_follower_purges_below_its_own_snapshot() {
        let mut follower = openraft::RaftMetrics::new_initial(2);
        follower.state = ServerState::Follower;
        follower.snapshot = log_id(100);
        assert_eq!(purge_point(&follower, 10), Some(90));
        follower.purged = log_id(95);
        assert_eq!(purge_point(&follower, 10), None);
    }
}
