//! The ledger's `Proposer` on openraft: a batch the ledger formed becomes one `client_write`; the
//! batch as applied on this node (the leader) is the answer. A node that is not the leader (or a
//! leader that has lost its quorum lease) refuses before anything is appended: `NotLeader`, safe
//! to send again elsewhere. Anything else leaves the outcome unknown (`Replication`): the
//! submission's ids say later whether it was applied.
//!
//! openraft keeps a write it appended waiting while its leader cannot reach a quorum, and does
//! not answer it when that leader steps down (measured: a payment waited over a minute). So a
//! proposal also ends, outcome unknown, as soon as this node stops leading, or after
//! `OUTCOME_WAIT_MAX` at most: a client is never left waiting on a leader that cannot commit.

use ledger::{Event, LedgerError, ProposalDone, Proposer};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};

use openraft::ServerState;

use crate::service::SwitchRaft;

/// Longest a proposal waits for its outcome. Far beyond a commit on a healthy cluster
/// (milliseconds), and beyond an election (about a second): past it the quorum is not coming back
/// soon, and the client is better told so (it asks for the outcome by id later).
pub const OUTCOME_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(5);
use crate::types::{Applied, Proposal};

pub struct RaftProposer {
    raft: SwitchRaft,
    runtime: tokio::runtime::Handle,
}

impl RaftProposer {
    /// Proposes through `raft` on `runtime` (the ledger's thread is not a runtime thread).
    pub fn new(raft: SwitchRaft, runtime: tokio::runtime::Handle) -> RaftProposer {
        RaftProposer { raft, runtime }
    }
}

impl Proposer for RaftProposer {
    fn propose(&self, timestamp: u64, events: Vec<Event>, done: ProposalDone) {
        let raft = self.raft.clone();
        self.runtime.spawn(async move {
            let id = raft.metrics().borrow_watched().id;
            let leads = move |metrics: &openraft::RaftMetrics<crate::TypeConfig>| {
                metrics.state == ServerState::Leader && metrics.current_leader == Some(id)
            };
            // Only a node that leads now can lose the lead; any other answers NotLeader at once.
            let leading = leads(&raft.metrics().borrow_watched());
            let lost = async {
                if !leading {
                    std::future::pending::<()>().await;
                }
                let _ = raft.wait(None).metrics(|metrics| !leads(metrics), "the lead lost").await;
            };
            let written = tokio::select! {
                written = tokio::time::timeout(OUTCOME_WAIT_MAX, raft.client_write(Proposal { timestamp, events })) => written,
                () = lost => {
                    done(Err(LedgerError::Replication("this node stopped leading before the batch committed; its outcome is unknown".into())));
                    return;
                }
            };
            let Ok(written) = written else {
                done(Err(LedgerError::Replication(format!("no outcome within {OUTCOME_WAIT_MAX:?} (no quorum?)"))));
                return;
            };
            let outcome = match written {
                Ok(response) => match response.data {
                    Applied(Some(batch)) => Ok(batch),
                    Applied(None) => Err(LedgerError::Replication("a batch of events applied as none".into())),
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    let address = forward.leader_node.map(|node| node.psp_address).filter(|address| !address.is_empty());
                    Err(LedgerError::NotLeader { leader: forward.leader_id, address })
                }
                Err(error) => Err(LedgerError::Replication(error.to_string())),
            };
            done(outcome);
        });
    }
}
