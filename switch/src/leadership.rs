//! What the switch's calls need to know of the replicated log under it: whether this node leads,
//! where the leader takes calls when it does not, and a read barrier that makes a read
//! linearizable (the leader confirms its lease and has applied everything committed before the
//! read began). Also the cluster's state as operators see it (`/cluster`, `/metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cluster::service::SwitchRaft;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use serde::Serialize;

use crate::reason::Refusal;

/// This node's view of the cluster.
#[derive(Clone)]
pub struct Leadership {
    raft: SwitchRaft,
    id: u64,
    /// Times this node saw the leader change to another known leader (metrics).
    leader_changes: Arc<AtomicU64>,
}

/// One node's state in the cluster, as operators read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    /// leader, follower, candidate, learner or shutdown.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    /// The leader's PSP address, when one is known.
    pub leader_address: Option<String>,
    /// Highest log index this node has durably (its last log entry).
    pub last_log_index: u64,
    /// Highest index known committed (on a quorum).
    pub committed_index: u64,
    /// Highest index applied to this node's ledger.
    pub applied_index: u64,
    /// Highest index included in this node's last snapshot.
    pub snapshot_index: u64,
    /// Highest index purged from this node's log (its log starts after it; a node that caught up
    /// from a snapshot starts after the snapshot). 0: nothing purged.
    #[serde(default)]
    pub purged_index: u64,
    /// Members: voters' ids.
    pub voters: Vec<u64>,
    /// Members that receive the log but do not vote: nodes being added (`switch cluster add`).
    #[serde(default)]
    pub learners: Vec<u64>,
    /// On the leader: per follower, the highest index it has (None: not yet known).
    pub replication: Vec<FollowerProgress>,
    /// Milliseconds since this node last heard of a quorum acknowledging it, on the leader.
    pub quorum_acked_ms_ago: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct FollowerProgress {
    pub node_id: u64,
    pub matched_index: Option<u64>,
    /// Entries the follower is behind the leader's last log entry.
    pub lag: Option<u64>,
}

impl Leadership {
    /// This node's view, and a task counting leader changes until Raft stops.
    pub fn start(raft: SwitchRaft, id: u64) -> Leadership {
        let leader_changes = Arc::new(AtomicU64::new(0));
        let (counted, mut metrics) = (Arc::clone(&leader_changes), raft.metrics());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let leader = metrics.borrow_watched().current_leader;
                if leader.is_some() && leader != last {
                    counted.fetch_add(1, Ordering::Relaxed);
                    last = leader;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        Leadership { raft, id, leader_changes }
    }

    /// Leaders this node has seen take over (the first one included).
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn raft(&self) -> &SwitchRaft {
        &self.raft
    }

    /// Whether this node is the leader now (as far as it knows: a read barrier confirms it).
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics().borrow_watched().clone();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.id)
    }

    /// The leader as this node knows it: its id, and its PSP address when the membership has one.
    pub fn leader(&self) -> (Option<u64>, Option<String>) {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let Some(leader) = metrics.current_leader else { return (None, None) };
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.psp_address.clone())
            .filter(|address| !address.is_empty());
        (Some(leader), address)
    }

    /// The refusal of a node that is not the leader: NOT_LEADER naming where the leader takes
    /// calls, or NO_LEADER when there is none.
    pub fn refusal(&self) -> Refusal {
        match self.leader() {
            // Still leader by its metrics, but without a lease or a quorum: no usable leader.
            (Some(leader), _) if leader == self.id => Refusal::not_leader(None, None),
            (leader, address) => Refusal::not_leader(leader, address),
        }
    }

    /// Returns once a read on this node is linearizable: it holds the leader's lease (a quorum
    /// acknowledged it within the election timeout, so no other leader can have been elected)
    /// and has applied everything committed before now. Refused when it is not the leader.
    pub async fn read_barrier(&self) -> Result<(), Refusal> {
        match self.raft.ensure_linearizable(ReadPolicy::LeaseRead).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.refusal()),
        }
    }

    /// Returns once this node, as leader, has applied every entry committed before its term
    /// (the read index protocol: a quorum confirms it still leads): its state is the cluster's.
    pub async fn caught_up(&self) -> bool {
        self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.is_ok()
    }

    pub fn status(&self) -> ClusterStatus {
        status_of(&self.raft.metrics().borrow_watched().clone(), self.id)
    }
}

fn status_of(metrics: &openraft::RaftMetrics<cluster::TypeConfig>, id: u64) -> ClusterStatus {
    let role = match metrics.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let membership = metrics.membership_config.membership();
    let leader_address = metrics
        .current_leader
        .and_then(|leader| membership.get_node(&leader))
        .map(|node| node.psp_address.clone())
        .filter(|address| !address.is_empty());
    let last_log_index = metrics.last_log_index.unwrap_or(0);
    let replication = metrics
        .replication
        .as_ref()
        .map(|progress| {
            progress
                .iter()
                .filter(|(node, _)| **node != id)
                .map(|(node, matched)| {
                    let matched_index = matched.as_ref().map(|log_id| log_id.index);
                    FollowerProgress {
                        node_id: *node,
                        matched_index,
                        lag: Some(last_log_index.saturating_sub(matched_index.unwrap_or(0))),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    ClusterStatus {
        node_id: id,
        role: role.into(),
        term: metrics.current_term,
        leader: metrics.current_leader,
        leader_address,
        last_log_index,
        committed_index: metrics.cluster_committed.as_ref().map_or(0, |log_id| log_id.index),
        applied_index: metrics.last_applied.as_ref().map_or(0, |log_id| log_id.index),
        snapshot_index: metrics.snapshot.as_ref().map_or(0, |log_id| log_id.index),
        purged_index: metrics.purged.as_ref().map_or(0, |log_id| log_id.index),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        replication,
        // A node alone is its own quorum: no acknowledgement to age.
        quorum_acked_ms_ago: metrics.last_quorum_acked.as_ref().filter(|_| membership.voter_ids().count() > 1).map(
            |acked| {
                use openraft::Instant;
                let elapsed = openraft::TokioInstant::now().saturating_duration_since(**acked);
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            },
        ),
    }
}
