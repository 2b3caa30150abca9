//! The bodies of the node-to-node frames (`proto/paymentswitch/cluster/v1/raft.proto`): openraft's
//! requests and replies in the cluster's binary encoding. Entries travel as the log stores them.
//! Every decoder consumes its whole body and refuses anything else: a peer's bytes are input.

use ledger::codec::{CodecError, Reader, Writer};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use crate::codec::{self, get_flag, get_optional_log_id, get_vote, put_optional_log_id, put_vote};
use crate::types::{TypeConfig, Vote};

const APPEND_SUCCESS: u8 = 0;
const APPEND_PARTIAL: u8 = 1;
const APPEND_CONFLICT: u8 = 2;
const APPEND_HIGHER_VOTE: u8 = 3;

const SNAPSHOT_HEADER: u8 = 1;
const SNAPSHOT_CHUNK: u8 = 2;
const SNAPSHOT_END: u8 = 3;

/// Longest file name accepted in a snapshot (RocksDB's are ~20 bytes).
pub const SNAPSHOT_FILE_NAME_BYTES_MAX: usize = 255;

pub fn encode_append_request(request: &AppendEntriesRequest<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = Vec::new();
    let mut writer = Writer(&mut out);
    put_vote(&mut writer, &request.vote);
    put_optional_log_id(&mut writer, request.prev_log_id.as_ref());
    put_optional_log_id(&mut writer, request.leader_commit.as_ref());
    writer.u32(request.entries.len() as u32);
    for each in &request.entries {
        codec::encode_entry(each, &mut entry);
        writer.u32(entry.len() as u32);
        writer.bytes(&entry);
    }
    out
}

pub fn decode_append_request(bytes: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    let mut reader = Reader::new(bytes);
    let vote = get_vote(&mut reader)?;
    let prev_log_id = get_optional_log_id(&mut reader)?;
    let leader_commit = get_optional_log_id(&mut reader)?;
    let count = reader.u32()? as usize;
    // Each entry takes at least its 4-byte length: refuse a count the body cannot hold.
    if count > bytes.len() / 4 {
        return Err(CodecError::Truncated { offset: reader.offset(), needed: count.saturating_mul(4) });
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let length = reader.u32()? as usize;
        entries.push(codec::decode_entry(reader.take(length)?)?);
    }
    reader.finish()?;
    Ok(AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
}

pub fn encode_append_reply(reply: &AppendEntriesResponse<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = Writer(&mut out);
    match reply {
        AppendEntriesResponse::Success => writer.u8(APPEND_SUCCESS),
        AppendEntriesResponse::PartialSuccess(matched) => {
            writer.u8(APPEND_PARTIAL);
            put_optional_log_id(&mut writer, matched.as_ref());
        }
        AppendEntriesResponse::Conflict => writer.u8(APPEND_CONFLICT),
        AppendEntriesResponse::HigherVote(vote) => {
            writer.u8(APPEND_HIGHER_VOTE);
            put_vote(&mut writer, vote);
        }
    }
    out
}

pub fn decode_append_reply(bytes: &[u8]) -> Result<AppendEntriesResponse<TypeConfig>, CodecError> {
    let mut reader = Reader::new(bytes);
    let reply = match reader.u8()? {
        APPEND_SUCCESS => AppendEntriesResponse::Success,
        APPEND_PARTIAL => AppendEntriesResponse::PartialSuccess(get_optional_log_id(&mut reader)?),
        APPEND_CONFLICT => AppendEntriesResponse::Conflict,
        APPEND_HIGHER_VOTE => AppendEntriesResponse::HigherVote(get_vote(&mut reader)?),
        kind => return Err(CodecError::Unknown { what: "append reply kind", value: kind.into() }),
    };
    reader.finish()?;
    Ok(reply)
}

pub fn encode_vote_request(request: &VoteRequest<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = Writer(&mut out);
    put_vote(&mut writer, &request.vote);
    put_optional_log_id(&mut writer, request.last_log_id.as_ref());
    writer.u8(u8::from(request.leadership_transfer));
    out
}

pub fn decode_vote_request(bytes: &[u8]) -> Result<VoteRequest<TypeConfig>, CodecError> {
    let mut reader = Reader::new(bytes);
    let vote = get_vote(&mut reader)?;
    let last_log_id = get_optional_log_id(&mut reader)?;
    let leadership_transfer = get_flag(&mut reader, "leadership transfer flag")?;
    reader.finish()?;
    Ok(VoteRequest { vote, last_log_id, leadership_transfer })
}

pub fn encode_vote_reply(reply: &VoteResponse<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = Writer(&mut out);
    put_vote(&mut writer, &reply.vote);
    writer.u8(u8::from(reply.vote_granted));
    put_optional_log_id(&mut writer, reply.last_log_id.as_ref());
    out
}

pub fn decode_vote_reply(bytes: &[u8]) -> Result<VoteResponse<TypeConfig>, CodecError> {
    let mut reader = Reader::new(bytes);
    let vote = get_vote(&mut reader)?;
    let vote_granted = get_flag(&mut reader, "vote granted flag")?;
    let last_log_id = get_optional_log_id(&mut reader)?;
    reader.finish()?;
    Ok(VoteResponse { vote, vote_granted, last_log_id })
}

pub fn encode_snapshot_reply(reply: &SnapshotResponse<TypeConfig>) -> Vec<u8> {
    codec::encode_vote(&reply.vote)
}

pub fn decode_snapshot_reply(bytes: &[u8]) -> Result<SnapshotResponse<TypeConfig>, CodecError> {
    Ok(SnapshotResponse { vote: codec::decode_vote(bytes)? })
}

/// One frame of a snapshot stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotFrame {
    /// First: the sender's vote and the snapshot's metadata (`state_machine::encode_meta`).
    Header { vote: Vote, meta: Vec<u8> },
    /// Then: the next bytes of one of the checkpoint's files.
    Chunk { file: String, data: Vec<u8> },
    /// Last: how many files were sent. A stream that ends without it (the sender failed to read
    /// a file, or went away) is incomplete and is not installed.
    End { files: u32 },
}

pub fn encode_snapshot_frame(frame: &SnapshotFrame) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = Writer(&mut out);
    match frame {
        SnapshotFrame::Header { vote, meta } => {
            writer.u8(SNAPSHOT_HEADER);
            put_vote(&mut writer, vote);
            writer.u32(meta.len() as u32);
            writer.bytes(meta);
        }
        SnapshotFrame::Chunk { file, data } => {
            writer.u8(SNAPSHOT_CHUNK);
            writer.u16(file.len() as u16);
            writer.bytes(file.as_bytes());
            writer.u32(data.len() as u32);
            writer.bytes(data);
        }
        SnapshotFrame::End { files } => {
            writer.u8(SNAPSHOT_END);
            writer.u32(*files);
        }
    }
    out
}

pub fn decode_snapshot_frame(bytes: &[u8]) -> Result<SnapshotFrame, CodecError> {
    let mut reader = Reader::new(bytes);
    let frame = match reader.u8()? {
        SNAPSHOT_HEADER => {
            let vote = get_vote(&mut reader)?;
            let length = reader.u32()? as usize;
            SnapshotFrame::Header { vote, meta: reader.take(length)?.to_vec() }
        }
        SNAPSHOT_CHUNK => {
            let length = usize::from(reader.u16()?);
            let file = String::from_utf8(reader.take(length)?.to_vec())
                .map_err(|_| CodecError::Unknown { what: "snapshot file name (not UTF-8)", value: 0 })?;
            if !is_plain_file_name(&file) {
                return Err(CodecError::Unknown { what: "snapshot file name (not a plain name)", value: 0 });
            }
            let length = reader.u32()? as usize;
            SnapshotFrame::Chunk { file, data: reader.take(length)?.to_vec() }
        }
        SNAPSHOT_END => SnapshotFrame::End { files: reader.u32()? },
        kind => return Err(CodecError::Unknown { what: "snapshot frame kind", value: kind.into() }),
    };
    reader.finish()?;
    Ok(frame)
}

/// A name the receiver may create in its own directory: no path separators, no `.`/`..`, no
/// control characters. A peer must not be able to write outside the snapshot's directory.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SNAPSHOT_FILE_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name.chars().all(|character| character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::types::{Entry, EntryPayload, LeaderId, LogId};

    fn log_id(index: u64) -> LogId {
        LogId { leader_id: LeaderId { term: 2, node_id: 3 }, index }
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let vote = Vote { leader_id: LeaderId { term: 2, node_id: 3 }, committed: true };
        let request = AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(4)),
            entries: vec![Entry { log_id: log_id(5), payload: EntryPayload::Blank }],
            leader_commit: None,
        };
        let decoded = decode_append_request(&encode_append_request(&request)).expect("decodes");
        assert_eq!(
            (decoded.vote, decoded.prev_log_id, decoded.entries, decoded.leader_commit),
            (request.vote, request.prev_log_id, request.entries, request.leader_commit)
        );
        for reply in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(9))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote),
        ] {
            assert_eq!(decode_append_reply(&encode_append_reply(&reply)).expect("decodes"), reply);
        }
        let request = VoteRequest { vote, last_log_id: Some(log_id(7)), leadership_transfer: true };
        assert_eq!(decode_vote_request(&encode_vote_request(&request)).expect("decodes"), request);
        let reply = VoteResponse { vote, vote_granted: true, last_log_id: None };
        assert_eq!(decode_vote_reply(&encode_vote_reply(&reply)).expect("decodes"), reply);
        for frame in [
            SnapshotFrame::Header { vote, meta: vec![1, 2, 3] },
            SnapshotFrame::Chunk { file: "000012.sst".into(), data: vec![9; 100] },
            SnapshotFrame::End { files: 7 },
        ] {
            assert_eq!(decode_snapshot_frame(&encode_snapshot_frame(&frame)).expect("decodes"), frame);
        }
    }

    #[test]
    fn a_snapshot_file_name_cannot_leave_its_directory() {
        for name in ["../etc/passwd", "/etc/passwd", "a/b", "..", ".", "", "name\\x", "x\u{0}"] {
            let frame = SnapshotFrame::Chunk { file: name.into(), data: vec![] };
            assert!(decode_snapshot_frame(&encode_snapshot_frame(&frame)).is_err(), "{name:?} accepted");
        }
        assert!(is_plain_file_name("MANIFEST-000005") && is_plain_file_name("OPTIONS-000007"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// A peer's arbitrary bytes: a message or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_append_request(&bytes);
            let _ = decode_append_reply(&bytes);
            let _ = decode_vote_request(&bytes);
            let _ = decode_vote_reply(&bytes);
            let _ = decode_snapshot_frame(&bytes);
            let _ = decode_snapshot_reply(&bytes);
        }
    }
}
