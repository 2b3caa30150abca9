//! `OperatorService.AddNode` and `RemoveNode`: changing the members of the replicated switch, on
//! the leader, through the replicated log (openraft's `change_membership`: a joint membership of
//! the old and the new voters, committed by a majority of both, then the new one alone).
//!
//! Adding is two steps, so that a new node never counts towards a quorum before it holds the
//! log: it becomes a *learner* (openraft sends it a snapshot of the ledger and then the log),
//! and once it is within `CATCH_UP_ENTRIES_MAX` entries of the leader's log it is made a voter.
//! Promoting a node far behind would stall commits until it caught up whenever the others are
//! not a majority of the new membership without it (one node of three down, as when replacing
//! a dead one).
//!
//! A node id names one node and its log for the cluster's whole life (openraft's rule: a wiped
//! node back under its old id would have forgotten what it voted and acknowledged, and could
//! make a second quorum). So a removal is recorded first, in the ledger (`REMOVED_NODES`, a
//! record of its addresses, when and by whom), and AddNode refuses a removed id for ever.
//!
//! A removal the cluster could not commit or survive is refused before anything changes: the
//! last voter, or one that leaves fewer reachable voters than a majority of those that remain
//! (the joint membership would wait for them). Every wait is bounded by
//! `cluster.catch_up_wait_ms`; past it the caller is told MEMBERSHIP_CHANGE_PENDING and the same
//! call again carries on from where the change stands (both calls are idempotent).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use cluster::{Membership, SwitchNode, TypeConfig};
use ledger::ResultCode;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use prost::Message;

use crate::core::{record, tables, Switch};
use crate::proto::{self, Reason};
use crate::reason::Refusal;

/// How close to the leader's last log entry a learner must be before it is made a voter.
pub const CATCH_UP_ENTRIES_MAX: u64 = 100;
/// Longest address accepted (a DNS name is at most 253 bytes, plus a port).
const ADDRESS_BYTES_MAX: usize = 255;

/// The durable record of a node removed from the cluster (table `REMOVED_NODES`, keyed by its id
/// as 8 big-endian bytes).
#[derive(Clone, PartialEq, Message)]
pub struct RemovedNode {
    #[prost(string, tag = "1")]
    pub peer_address: String,
    #[prost(string, tag = "2")]
    pub psp_address: String,
    #[prost(uint64, tag = "3")]
    pub removed_at_unix_ns: u64,
    /// The operator certificate's name that removed it.
    #[prost(string, tag = "4")]
    pub operator: String,
}

/// A node id as a request names it: positive.
fn check_node_id(node_id: u64) -> Result<u64, Refusal> {
    if node_id == 0 {
        return Err(Refusal::field(Reason::FieldRequired, "node_id", "node_id is required (ids start at 1)"));
    }
    Ok(node_id)
}

/// `host:port`: a host name or IPv4 address, or an IPv6 address in brackets; a port 1-65535.
pub fn check_address(address: &str, field: &'static str) -> Result<(), Refusal> {
    if address.is_empty() {
        return Err(Refusal::field(Reason::FieldRequired, field, format!("{field} is required")));
    }
    let malformed = || {
        Refusal::field(
            Reason::AddressMalformed,
            field,
            format!("{field} must be host:port (a host name or IP address, a port 1-65535)"),
        )
    };
    if address.len() > ADDRESS_BYTES_MAX || !address.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(malformed());
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(malformed)?;
    let port_valid = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|byte| byte.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port > 0);
    let host_valid = match host.strip_prefix('[').and_then(|inner| inner.strip_suffix(']')) {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-')
                && !host.starts_with(['.', '-'])
        }
    };
    if port_valid && host_valid {
        Ok(())
    } else {
        Err(malformed())
    }
}

/// The membership as this node (the leader) knows it now.
fn current(switch: &Switch) -> Membership {
    switch.leadership.raft().metrics().borrow_watched().membership_config.membership().clone()
}

/// The membership as the API shows it.
pub fn view(membership: &Membership) -> proto::ClusterMembership {
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let nodes = membership
        .nodes()
        .map(|(id, node)| proto::ClusterNode {
            node_id: *id,
            peer_address: node.peer_address.clone(),
            psp_address: node.psp_address.clone(),
            voter: voters.contains(id),
        })
        .collect();
    proto::ClusterMembership { nodes }
}

/// Whether removing voter `removed` leaves a membership that can commit the change and go on:
/// a majority of the old voters and of the remaining ones reachable (joint consensus needs both).
fn removal_is_safe(voters: &BTreeSet<u64>, removed: u64, reachable: &BTreeSet<u64>) -> Result<(), String> {
    let remaining: BTreeSet<u64> = voters.iter().copied().filter(|id| *id != removed).collect();
    if remaining.is_empty() {
        return Err(format!("node {removed} is the last voter: the cluster cannot do without it"));
    }
    for (what, set) in [("the voters now", voters), ("the voters that would remain", &remaining)] {
        let up = set.intersection(reachable).count();
        if up * 2 <= set.len() {
            return Err(format!(
                "only {up} of {what} ({}) are reachable from the leader, not a majority: bring nodes back first",
                ids(set)
            ));
        }
    }
    Ok(())
}

fn ids(set: &BTreeSet<u64>) -> String {
    set.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The members the leader heard from within `within` (their last acknowledged heartbeat or
/// append), and the leader itself.
fn reachable(metrics: &RaftMetrics<TypeConfig>, within: Duration) -> BTreeSet<u64> {
    use openraft::Instant;
    let now = openraft::TokioInstant::now();
    let mut reachable = BTreeSet::from([metrics.id]);
    if let Some(heartbeats) = &metrics.heartbeat {
        for (node, acked) in heartbeats {
            if acked.as_ref().is_some_and(|acked| now.saturating_duration_since(**acked) <= within) {
                reachable.insert(*node);
            }
        }
    }
    reachable
}

/// Whether `node` (a learner) is within `CATCH_UP_ENTRIES_MAX` of the leader's log, and holds
/// the membership that added it; otherwise how far it has got.
fn caught_up(metrics: &RaftMetrics<TypeConfig>, node: u64) -> Result<(), (Option<u64>, u64)> {
    let last = metrics.last_log_index.unwrap_or(0);
    let matched = metrics
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&node).cloned().flatten())
        .map(|log_id| log_id.index);
    let membership = metrics.membership_config.log_id().as_ref().map_or(0, |log_id| log_id.index);
    match matched {
        Some(index) if index >= membership && last.saturating_sub(index) <= CATCH_UP_ENTRIES_MAX => Ok(()),
        _ => Err((matched, last)),
    }
}

fn leads(metrics: &RaftMetrics<TypeConfig>) -> bool {
    metrics.state == ServerState::Leader && metrics.current_leader == Some(metrics.id)
}

/// What a failed membership write tells the caller.
fn change_refusal(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Refusal {
    match error {
        RaftError::APIError(
            ClientWriteError::ForwardToLeader(forward) | ClientWriteError::LogEntryDiscarded(forward),
        ) => {
            let address = forward.leader_node.map(|node| node.psp_address).filter(|address| !address.is_empty());
            Refusal::not_leader(forward.leader_id, address)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(progress))) => {
            Refusal::new(
                Reason::MembershipChangePending,
                format!("an earlier membership change is still being committed ({progress}); send the call again"),
            )
        }
        RaftError::APIError(other) => Refusal::new(Reason::Internal, format!("the membership change failed: {other}")),
        RaftError::Fatal(fatal) => {
            Refusal::new(Reason::LedgerUnavailable, format!("the replicated log stopped: {fatal}"))
        }
    }
}

/// Runs a membership write, at most `wait`: past it the change may still commit.
async fn bounded<T>(
    wait: Duration,
    write: impl Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>,
) -> Result<T, Refusal> {
    match tokio::time::timeout(wait, write).await {
        Ok(written) => written.map_err(change_refusal),
        Err(_) => Err(Refusal::new(
            Reason::MembershipChangePending,
            format!(
                "the membership change was proposed but not committed within {wait:?} (no quorum?); it may still \
                 commit: check `switch cluster status` and send the call again"
            ),
        )),
    }
}

fn taken(message: String) -> Refusal {
    Refusal::field(Reason::NodeIdTaken, "node_id", message)
}

/// AddNode: the node as a learner, then, once it has caught up, a voter.
pub async fn add(
    switch: &Switch,
    operator: &str,
    request: proto::AddNodeRequest,
) -> Result<proto::ClusterMembership, Refusal> {
    let id = check_node_id(request.node_id)?;
    check_address(&request.peer_address, "peer_address")?;
    check_address(&request.psp_address, "psp_address")?;
    let node = SwitchNode { peer_address: request.peer_address, psp_address: request.psp_address };
    let wait = Duration::from_millis(switch.config.cluster.catch_up_wait_ms);
    let _turn = switch.membership_lock.lock().await;
    // Everything committed is applied here, removals by earlier leaders included.
    switch.read_barrier().await?;
    if let Some(removed) = switch.read::<RemovedNode>(tables::REMOVED_NODES, &id.to_be_bytes())? {
        return Err(taken(format!(
            "node {id} was removed from the cluster (it was at peer {}); ids are never reused: start the node under a new id",
            removed.peer_address
        )));
    }
    let membership = current(switch);
    let voter = membership.voter_ids().any(|voter| voter == id);
    match membership.get_node(&id) {
        Some(known) if *known != node => {
            return Err(taken(format!("node {id} is a member at {known}; remove it first, or use a new id")));
        }
        Some(_) if voter => return Ok(view(&membership)),
        Some(_) => tracing::info!(node = id, operator, "node is a learner already: waiting for it to catch up"),
        None => {
            bounded(wait, switch.leadership.raft().add_learner(id, node.clone(), false)).await?;
            tracing::info!(node = id, operator, member = %node, "node added as a learner: catching up");
        }
    }
    wait_for_catch_up(switch, id, wait).await?;
    let promote = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    bounded(wait, switch.leadership.raft().change_membership(promote, false)).await?;
    tracing::info!(node = id, operator, "node is a voter");
    Ok(view(&current(switch)))
}

/// Waits, at most `wait`, until learner `id` has caught up with this leader's log.
async fn wait_for_catch_up(switch: &Switch, id: u64, wait: Duration) -> Result<(), Refusal> {
    let raft = switch.leadership.raft();
    // Ends at the bound, or early when the lead is lost or the node is in line.
    let _ = raft
        .wait(Some(wait))
        .metrics(|metrics| !leads(metrics) || caught_up(metrics, id).is_ok(), "a learner catching up")
        .await;
    let metrics = raft.metrics().borrow_watched().clone();
    if !leads(&metrics) {
        return Err(switch.leadership.refusal());
    }
    caught_up(&metrics, id).map_err(|(matched, last)| {
        let has = matched.map_or_else(|| "nothing yet".to_string(), |index| format!("the log to index {index}"));
        Refusal::new(
            Reason::MembershipChangePending,
            format!(
                "node {id} is a learner catching up: it has {has}, the leader's log ends at {last}; send the same \
                 AddNode again to wait more (is it running, and reachable at its peer address?)"
            ),
        )
    })
}

/// RemoveNode: recorded as removed, then out of the membership.
pub async fn remove(switch: &Switch, operator: &str, node_id: u64) -> Result<proto::ClusterMembership, Refusal> {
    let id = check_node_id(node_id)?;
    let wait = Duration::from_millis(switch.config.cluster.catch_up_wait_ms);
    let _turn = switch.membership_lock.lock().await;
    switch.read_barrier().await?;
    let membership = current(switch);
    let key = id.to_be_bytes();
    let Some(node) = membership.get_node(&id).cloned() else {
        return match switch.read::<RemovedNode>(tables::REMOVED_NODES, &key)? {
            Some(_) => Ok(view(&membership)),
            None => Err(Refusal::field(Reason::NodeNotFound, "node_id", format!("node {id} is not a member"))),
        };
    };
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let voter = voters.contains(&id);
    if voter {
        let raft = switch.leadership.raft();
        let within = Duration::from_millis(raft.config().election_timeout_max);
        let reachable = reachable(&raft.metrics().borrow_watched(), within);
        removal_is_safe(&voters, id, &reachable).map_err(|why| Refusal::new(Reason::NodeRemovalUnsafe, why))?;
    }
    // Recorded before the change: a removed id can never be added again, even if the change
    // is interrupted (the same call again finishes it).
    let removed = RemovedNode {
        peer_address: node.peer_address.clone(),
        psp_address: node.psp_address.clone(),
        removed_at_unix_ns: crate::core::now_unix_ns(),
        operator: operator.to_string(),
    };
    let results =
        switch.submit(vec![record(tables::REMOVED_NODES, key.to_vec(), removed.encode_to_vec(), false)]).await?;
    if results.iter().any(|code| *code != ResultCode::Ok) {
        return Err(Refusal::new(Reason::Internal, format!("the ledger answered {results:?} to the removal record")));
    }
    let change = if voter {
        ChangeMembers::RemoveVoters(BTreeSet::from([id]))
    } else {
        ChangeMembers::RemoveNodes(BTreeSet::from([id]))
    };
    bounded(wait, switch.leadership.raft().change_membership(change, false)).await?;
    tracing::warn!(node = id, operator, member = %node, "node removed from the cluster");
    Ok(view(&current(switch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn addresses_are_host_and_port() {
        for good in ["10.0.0.4:50061", "node-4.example:1", "localhost:65535", "[::1]:50061", "[fe80::1]:9"] {
            assert_eq!(check_address(good, "peer_address"), Ok(()), "{good}");
        }
        let refused = |address: &str| check_address(address, "peer_address").map_err(|refusal| refusal.reason);
        assert_eq!(refused(""), Err(Reason::FieldRequired));
        for bad in [
            "10.0.0.4",
            "10.0.0.4:",
            ":50061",
            "host:0",
            "host:65536",
            "host:+80",
            "host:123456",
            "ho st:80",
            "host\n:80",
            "::1:80",
            "[::1:80",
            "[nothost]:80",
            "-host:80",
            "https://host:80",
            "é:80",
        ] {
            assert_eq!(refused(bad), Err(Reason::AddressMalformed), "{bad:?}");
        }
        assert_eq!(refused(&format!("{}:80", "a".repeat(253))), Err(Reason::AddressMalformed));
        assert_eq!(refused(&format!("{}:80", "a".repeat(252))), Ok(()), "255 bytes is the bound");
    }

    #[test]
    fn a_removal_keeps_a_reachable_majority_or_is_refused() {
        // A dead node leaves: the two others are a majority of the three and of the two.
        assert_eq!(removal_is_safe(&set(&[1, 2, 3]), 3, &set(&[1, 2])), Ok(()));
        // A live follower, with the other one dead: one of the two that remain is reachable.
        assert!(removal_is_safe(&set(&[1, 2, 3]), 2, &set(&[1, 2])).is_err());
        // The last voter.
        assert!(removal_is_safe(&set(&[1]), 1, &set(&[1])).unwrap_err().contains("last voter"));
        // Four voters, one dead: removing a live one leaves 2 of 3 reachable.
        assert_eq!(removal_is_safe(&set(&[1, 2, 3, 4]), 2, &set(&[1, 2, 4])), Ok(()));
        // Two of two must both be reachable.
        assert!(removal_is_safe(&set(&[1, 2, 3]), 1, &set(&[1, 2])).is_err());
        // The leader removing itself, the others up.
        assert_eq!(removal_is_safe(&set(&[1, 2, 3]), 1, &set(&[1, 2, 3])), Ok(()));
    }

    #[test]
    fn the_removed_node_record_round_trips() {
        let record = RemovedNode {
            peer_address: "10.0.0.3:50061".into(),
            psp_address: "10.0.0.3:50051".into(),
            removed_at_unix_ns: 7,
            operator: "admin".into(),
        };
        assert_eq!(RemovedNode::decode(record.encode_to_vec().as_slice()).expect("decodes"), record);
    }
}
