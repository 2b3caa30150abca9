//! The ledger's `Proposer` on openraft: a batch the ledger formed becomes one `client_write`; the
//! batch as applied on this node (the leader) is the answer. A node that is not the leader (or a
//! leader that has lost its quorum lease) refuses before anything is appended: `NotLeader`, safe
//! to send again elsewhere. Anything else leaves the outcome unknown (`Replication`): the
//! submission's ids say later whether it was applied.

use ledger::{Event, LedgerError, ProposalDone, Proposer};
use openraft::error::{ClientWriteError, RaftError};

use crate::service::SwitchRaft;
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
            let outcome = match raft.client_write(Proposal { timestamp, events }).await {
                Ok(response) => match response.data {
                    Applied(Some(batch)) => Ok(batch),
                    Applied(None) => Err(LedgerError::Replication("a batch of events applied as none".into())),
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    Err(LedgerError::NotLeader { leader: forward.leader_id })
                }
                Err(error) => Err(LedgerError::Replication(error.to_string())),
            };
            done(outcome);
        });
    }
}
