//! The bytes of the replicated log: entries (a batch of ledger events, a blank leader entry, or a
//! membership), votes and log ids, in the ledger's fixed-width little-endian style
//! (`ledger::codec`). Used by the log store on disk and by the peer network on the wire, so an
//! entry is encoded once. A decoding failure is an error, never a default: an entry read back
//! wrong would be applied wrong on one node only.

use std::collections::{BTreeMap, BTreeSet};

use ledger::codec::{get_event, put_event, CodecError, Reader, Writer, EVENT_SIZE_MIN};

use crate::types::{Entry, EntryPayload, LeaderId, LogId, Membership, Proposal, SwitchNode, Vote};

/// The first byte of every entry; a new layout takes a new version.
const ENTRY_VERSION: u8 = 1;
const VOTE_VERSION: u8 = 1;

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Bytes of a log id: term, leader node, index.
pub const LOG_ID_BYTES: usize = 24;

pub fn put_log_id(writer: &mut Writer<'_>, log_id: &LogId) {
    writer.u64(log_id.leader_id.term);
    writer.u64(log_id.leader_id.node_id);
    writer.u64(log_id.index);
}

pub fn get_log_id(reader: &mut Reader<'_>) -> Result<LogId, CodecError> {
    let term = reader.u64()?;
    let node_id = reader.u64()?;
    let index = reader.u64()?;
    Ok(LogId { leader_id: LeaderId { term, node_id }, index })
}

pub fn encode_log_id(log_id: &LogId) -> Vec<u8> {
    let mut out = Vec::with_capacity(LOG_ID_BYTES);
    put_log_id(&mut Writer(&mut out), log_id);
    out
}

pub fn decode_log_id(bytes: &[u8]) -> Result<LogId, CodecError> {
    let mut reader = Reader::new(bytes);
    let log_id = get_log_id(&mut reader)?;
    reader.finish()?;
    Ok(log_id)
}

pub fn put_vote(writer: &mut Writer<'_>, vote: &Vote) {
    writer.u8(VOTE_VERSION);
    writer.u64(vote.leader_id.term);
    writer.u64(vote.leader_id.node_id);
    writer.u8(u8::from(vote.committed));
}

pub fn get_vote(reader: &mut Reader<'_>) -> Result<Vote, CodecError> {
    let version = reader.u8()?;
    if version != VOTE_VERSION {
        return Err(CodecError::Unknown { what: "vote version", value: version.into() });
    }
    let term = reader.u64()?;
    let node_id = reader.u64()?;
    let committed = get_flag(reader, "vote committed flag")?;
    Ok(Vote { leader_id: LeaderId { term, node_id }, committed })
}

/// A byte that must be 0 or 1.
pub fn get_flag(reader: &mut Reader<'_>, what: &'static str) -> Result<bool, CodecError> {
    match reader.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(CodecError::Unknown { what, value: other.into() }),
    }
}

/// An optional log id: a presence flag, then the id.
pub fn put_optional_log_id(writer: &mut Writer<'_>, log_id: Option<&LogId>) {
    writer.u8(u8::from(log_id.is_some()));
    if let Some(log_id) = log_id {
        put_log_id(writer, log_id);
    }
}

pub fn get_optional_log_id(reader: &mut Reader<'_>) -> Result<Option<LogId>, CodecError> {
    if get_flag(reader, "log id presence flag")? {
        Ok(Some(get_log_id(reader)?))
    } else {
        Ok(None)
    }
}

pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    put_vote(&mut Writer(&mut out), vote);
    out
}

pub fn decode_vote(bytes: &[u8]) -> Result<Vote, CodecError> {
    let mut reader = Reader::new(bytes);
    let vote = get_vote(&mut reader)?;
    reader.finish()?;
    Ok(vote)
}

/// Encodes an entry into `out` (cleared first).
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.clear();
    let mut writer = Writer(out);
    writer.u8(ENTRY_VERSION);
    put_log_id(&mut writer, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => writer.u8(KIND_BLANK),
        EntryPayload::Normal(proposal) => {
            writer.u8(KIND_NORMAL);
            writer.u64(proposal.timestamp);
            // A batch is bounded far below u32::MAX events by the sequencer's batch size.
            writer.u32(u32::try_from(proposal.events.len()).unwrap_or(u32::MAX));
            for event in &proposal.events {
                put_event(&mut writer, event);
            }
        }
        EntryPayload::Membership(membership) => {
            writer.u8(KIND_MEMBERSHIP);
            put_membership(&mut writer, membership);
        }
    }
}

/// Decodes an entry written by `encode_entry`; every byte must be accounted for.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    let mut reader = Reader::new(bytes);
    let version = reader.u8()?;
    if version != ENTRY_VERSION {
        return Err(CodecError::Unknown { what: "raft entry version", value: version.into() });
    }
    let log_id = get_log_id(&mut reader)?;
    let payload = match reader.u8()? {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => {
            let timestamp = reader.u64()?;
            let count = reader.u32()? as usize;
            // Refuse a count the bytes cannot hold before allocating for it.
            if count > bytes.len() / EVENT_SIZE_MIN {
                return Err(CodecError::Truncated {
                    offset: reader.offset(),
                    needed: count.saturating_mul(EVENT_SIZE_MIN),
                });
            }
            let mut events = Vec::with_capacity(count);
            for _ in 0..count {
                events.push(get_event(&mut reader)?);
            }
            EntryPayload::Normal(Proposal { timestamp, events })
        }
        KIND_MEMBERSHIP => EntryPayload::Membership(get_membership(&mut reader, bytes.len())?),
        kind => return Err(CodecError::Unknown { what: "raft entry kind", value: kind.into() }),
    };
    reader.finish()?;
    Ok(Entry { log_id, payload })
}

/// Reads only the log id of an encoded entry (the log store's state needs no more).
pub fn decode_entry_log_id(bytes: &[u8]) -> Result<LogId, CodecError> {
    let mut reader = Reader::new(bytes);
    let version = reader.u8()?;
    if version != ENTRY_VERSION {
        return Err(CodecError::Unknown { what: "raft entry version", value: version.into() });
    }
    get_log_id(&mut reader)
}

/// A membership: its (joint) voter sets, then every node's addresses.
pub fn put_membership(writer: &mut Writer<'_>, membership: &Membership) {
    let configs = membership.get_joint_config();
    writer.u32(configs.len() as u32);
    for config in configs {
        writer.u32(config.len() as u32);
        for node_id in config {
            writer.u64(*node_id);
        }
    }
    let nodes: Vec<(&u64, &SwitchNode)> = membership.nodes().collect();
    writer.u32(nodes.len() as u32);
    for (node_id, node) in nodes {
        writer.u64(*node_id);
        put_string(writer, &node.peer_address);
        put_string(writer, &node.psp_address);
    }
}

/// The membership last applied and the entry it came from, as the state machine keeps it.
pub fn encode_stored_membership(log_id: Option<&LogId>, membership: &Membership) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = Writer(&mut out);
    put_optional_log_id(&mut writer, log_id);
    put_membership(&mut writer, membership);
    out
}

pub fn decode_stored_membership(bytes: &[u8]) -> Result<(Option<LogId>, Membership), CodecError> {
    let mut reader = Reader::new(bytes);
    let log_id = get_optional_log_id(&mut reader)?;
    let membership = get_membership(&mut reader, bytes.len())?;
    reader.finish()?;
    Ok((log_id, membership))
}

fn get_membership(reader: &mut Reader<'_>, total: usize) -> Result<Membership, CodecError> {
    // Every count is checked against the bytes left before allocating (8 bytes per node id).
    let bounded = |count: u32, reader: &Reader<'_>| -> Result<usize, CodecError> {
        let count = count as usize;
        if count > total / 8 {
            return Err(CodecError::Truncated { offset: reader.offset(), needed: count.saturating_mul(8) });
        }
        Ok(count)
    };
    let config_count = reader.u32()?;
    let config_count = bounded(config_count, reader)?;
    let mut configs = Vec::with_capacity(config_count);
    for _ in 0..config_count {
        let members = reader.u32()?;
        let members = bounded(members, reader)?;
        let mut config = BTreeSet::new();
        for _ in 0..members {
            config.insert(reader.u64()?);
        }
        configs.push(config);
    }
    let node_count = reader.u32()?;
    let node_count = bounded(node_count, reader)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..node_count {
        let node_id = reader.u64()?;
        let peer_address = get_string(reader)?;
        let psp_address = get_string(reader)?;
        nodes.insert(node_id, SwitchNode { peer_address, psp_address });
    }
    // A membership whose voters lack node records is refused by openraft: an error, as on disk.
    Membership::new(configs, nodes).map_err(|_| CodecError::Unknown { what: "raft membership", value: 0 })
}

fn put_string(writer: &mut Writer<'_>, value: &str) {
    // Addresses are host:port, far below u16::MAX bytes.
    let bytes = &value.as_bytes()[..value.len().min(usize::from(u16::MAX))];
    writer.u16(bytes.len() as u16);
    writer.bytes(bytes);
}

fn get_string(reader: &mut Reader<'_>) -> Result<String, CodecError> {
    let length = usize::from(reader.u16()?);
    let bytes = reader.take(length)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::Unknown { what: "address (not UTF-8)", value: 0 })
}

#[cfg(test)]
mod tests {
    use ledger::{Account, Event, Transfer};
    use proptest::prelude::*;

    use super::*;

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId { leader_id: LeaderId { term, node_id }, index }
    }

    fn node(n: u64) -> SwitchNode {
        SwitchNode { peer_address: format!("127.0.0.1:{}", 7000 + n), psp_address: format!("127.0.0.1:{}", 5000 + n) }
    }

    fn entries() -> Vec<Entry> {
        let transfer =
            Transfer { id: 7, debit_account_id: 1, credit_account_id: 2, amount: 500, ..Transfer::default() };
        let account = Account { id: 3, ..Account::default() };
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])],
            BTreeMap::from([(1, node(1)), (2, node(2)), (3, node(3)), (4, node(4)), (5, node(5))]),
        )
        .expect("valid membership");
        vec![
            Entry { log_id: log_id(1, 1, 1), payload: EntryPayload::Blank },
            Entry {
                log_id: log_id(1, 1, 2),
                payload: EntryPayload::Normal(Proposal {
                    timestamp: 1_700_000_000_000_000_000,
                    events: vec![Event::CreateAccount(account), Event::CreateTransfer(transfer)],
                }),
            },
            Entry { log_id: log_id(2, 3, 3), payload: EntryPayload::Membership(membership) },
        ]
    }

    #[test]
    fn entries_votes_and_log_ids_read_back_as_written() {
        let mut out = Vec::new();
        for entry in entries() {
            encode_entry(&entry, &mut out);
            assert_eq!(decode_entry(&out).expect("decodes"), entry);
            assert_eq!(decode_entry_log_id(&out).expect("decodes"), entry.log_id);
        }
        let membership = match &entries()[2].payload {
            EntryPayload::Membership(membership) => membership.clone(),
            _ => unreachable!("the third entry is a membership"),
        };
        for log_id in [None, Some(log_id(4, 2, 9))] {
            let bytes = encode_stored_membership(log_id.as_ref(), &membership);
            assert_eq!(decode_stored_membership(&bytes).expect("decodes"), (log_id, membership.clone()));
            assert!(decode_stored_membership(&bytes[..bytes.len() - 1]).is_err(), "a truncated membership decoded");
        }
        for vote in [Vote { leader_id: LeaderId { term: 5, node_id: 2 }, committed: true }, Vote::new(0, 0)] {
            assert_eq!(decode_vote(&encode_vote(&vote)).expect("decodes"), vote);
        }
        assert_eq!(decode_log_id(&encode_log_id(&log_id(9, 8, 7))).expect("decodes"), log_id(9, 8, 7));
    }

    #[test]
    fn damaged_bytes_are_errors_never_defaults() {
        let mut out = Vec::new();
        for entry in entries() {
            encode_entry(&entry, &mut out);
            for cut in 0..out.len() {
                assert!(decode_entry(&out[..cut]).is_err(), "a {cut}-byte prefix decoded");
            }
            let mut trailing = out.clone();
            trailing.push(0);
            assert!(decode_entry(&trailing).is_err(), "trailing byte accepted");
            let mut version = out.clone();
            version[0] = 9;
            assert!(decode_entry(&version).is_err(), "unknown version accepted");
            let mut kind = out.clone();
            kind[1 + LOG_ID_BYTES] = 7;
            assert!(decode_entry(&kind).is_err(), "unknown kind accepted");
        }
        let mut vote = encode_vote(&Vote::new(1, 1));
        *vote.last_mut().expect("non-empty") = 2;
        assert!(decode_vote(&vote).is_err(), "a committed flag of 2 accepted");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Any bytes: an entry, vote or log id, or an error; never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_entry(&bytes);
            let _ = decode_entry_log_id(&bytes);
            let _ = decode_vote(&bytes);
            let _ = decode_log_id(&bytes);
        }

        /// A valid entry with one byte changed: decodes to something or fails; never a panic.
        #[test]
        fn flipped_bytes_never_panic(which in 0usize..3, at in any::<prop::sample::Index>(), value in any::<u8>()) {
            let mut out = Vec::new();
            encode_entry(&entries()[which], &mut out);
            let at = at.index(out.len());
            out[at] = value;
            let _ = decode_entry(&out);
        }
    }
}
