//! openraft's type configuration for the switch: an entry's application data is one batch of
//! ledger events with the timestamp the leader stamped (`Proposal`), node ids are `u64`, and a
//! node is known by its peer address and the address PSPs connect to (so a follower can name the
//! leader's PSP address to a client it turns away).

use std::fmt;

use ledger::Event;

/// One batch as the leader's sequencer formed it: the unit of replication. Applying it is
/// deterministic: its sequence number comes from the applied state, and its timestamp is this
/// one clamped to the state's next timestamp, never a follower's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Nanoseconds since the Unix epoch on the leader when the batch was formed.
    pub timestamp: u64,
    pub events: Vec<Event>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "batch of {} events at {}", self.events.len(), self.timestamp)
    }
}

/// What applying an entry gave: the ledger's batch (its sequence number, timestamp, one result
/// per event, hash) for an entry of events; nothing for a blank or membership entry. The leader
/// releases each submission's results from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied(pub Option<ledger::AppliedBatch>);

/// A member of the cluster: where its peers reach it, and where PSPs do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchNode {
    /// host:port of the node-to-node (Raft) listener.
    pub peer_address: String,
    /// host:port of the PSP API, named to clients that reach a follower.
    pub psp_address: String,
}

impl fmt::Display for SwitchNode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "peer {} psp {}", self.peer_address, self.psp_address)
    }
}

openraft::declare_raft_types!(
    /// The switch's Raft types; the rest are openraft's defaults (u64 terms, the advanced leader
    /// id of term and node, tokio).
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = SwitchNode,
);

/// Concrete names for the types the storage and network code handle.
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
pub type LogId = openraft::LogId<LeaderId>;
pub type Vote = openraft::impls::Vote<LeaderId>;
pub type Entry = openraft::impls::Entry<LeaderId, openraft::impls::EntryPayload<Proposal, u64, SwitchNode>>;
pub type Membership = openraft::Membership<u64, SwitchNode>;
pub type EntryPayload = openraft::impls::EntryPayload<Proposal, u64, SwitchNode>;
