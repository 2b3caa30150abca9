//! The ledger's codec fuzzed: every decoder of bytes read back from disk (accounts, stored
//! transfers, pending resolutions, batch log entries) answers any bytes with a value or a
//! `CodecError`, never a panic, and decoding what was encoded gives back the same value.
//!
//! Bounded so `cargo test` stays fast (`CASES`, 256 cases a property). To fuzz longer:
//! `PROPTEST_CASES=100000 cargo test --release -p ledger --test codec_fuzz`.

use ledger::codec::{self, CodecError, LogEntry, HASH_SIZE};
use ledger::{
    Account, AccountFlags, Batch, Event, PendingResolution, PendingStatus, Record, ResultCode, StoredTransfer,
    Transfer, TransferFlags,
};
use proptest::prelude::*;

/// Cases a property runs: `PROPTEST_CASES`, else a number that keeps the suite fast.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn account() -> impl Strategy<Value = Account> {
    (any::<[u128; 7]>(), any::<(u64, u32, u32, u16, u16, u64)>()).prop_map(
        |(wide, (data_64, data_32, ledger, code, flags, timestamp))| Account {
            id: wide[0],
            debits_pending: wide[1],
            debits_posted: wide[2],
            credits_pending: wide[3],
            credits_posted: wide[4],
            debit_limit: wide[5],
            user_data_128: wide[6],
            user_data_64: data_64,
            user_data_32: data_32,
            ledger,
            code,
            flags: AccountFlags(flags),
            timestamp,
        },
    )
}

fn transfer() -> impl Strategy<Value = Transfer> {
    (any::<[u128; 6]>(), any::<(u64, u32, u32, u32, u16, u16, u64)>()).prop_map(
        |(wide, (data_64, data_32, timeout, ledger, code, flags, timestamp))| Transfer {
            id: wide[0],
            debit_account_id: wide[1],
            credit_account_id: wide[2],
            amount: wide[3],
            pending_id: wide[4],
            user_data_128: wide[5],
            user_data_64: data_64,
            user_data_32: data_32,
            timeout,
            ledger,
            code,
            flags: TransferFlags(flags),
            timestamp,
        },
    )
}

fn result_code() -> impl Strategy<Value = ResultCode> {
    proptest::sample::select(ResultCode::ALL.to_vec())
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        account().prop_map(Event::CreateAccount),
        transfer().prop_map(Event::CreateTransfer),
        (any::<u128>(), any::<u128>(), any::<bool>())
            .prop_map(|(account_id, debit_limit, linked)| Event::SetDebitLimit { account_id, debit_limit, linked }),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..200))
            .prop_flat_map(|(table, key, value)| (Just(table), Just(key), Just(value), any::<bool>(), any::<bool>()))
            .prop_map(|(table, key, value, linked, sequenced)| {
                Event::Record(Record { table, key, value, linked, sequenced })
            }),
    ]
}

fn pending_status() -> impl Strategy<Value = PendingStatus> {
    proptest::sample::select(vec![
        PendingStatus::Pending,
        PendingStatus::Posted,
        PendingStatus::Voided,
        PendingStatus::Expired,
    ])
}

/// `body` made a log entry the decoder parses: the hash that closes every entry appended.
fn with_hash(mut body: Vec<u8>) -> Vec<u8> {
    let hash: [u8; HASH_SIZE] = blake3::hash(&body).into();
    body.extend_from_slice(&hash);
    body
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_decode_to_a_value_or_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode_account(&bytes);
        let _ = codec::decode_stored_transfer(&bytes);
        let _ = codec::decode_resolution(&bytes);
        // Past the hash check, so the parser itself sees the random bytes.
        let _ = codec::decode_log_entry(&bytes);
        let _ = codec::decode_log_entry(&with_hash(bytes));
    }

    #[test]
    fn a_log_entry_header_with_random_events_never_panics(
        sequence in any::<u64>(),
        count in any::<u32>(),
        events in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        // A valid header (version, sequence, timestamp, previous hash) then any count and bytes:
        // the event parser and the count bound see arbitrary input.
        let mut body = vec![codec::LOG_VERSION];
        body.extend_from_slice(&sequence.to_be_bytes());
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&[0; HASH_SIZE]);
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(&events);
        let _ = codec::decode_log_entry(&with_hash(body));
    }

    #[test]
    fn records_round_trip(account in account(), transfer in transfer(), result in result_code(), resolved_by in any::<u128>(), timestamp in any::<u64>(), status in pending_status()) {
        prop_assert_eq!(codec::decode_account(&codec::encode_account(&account)), Ok(account));
        let stored = StoredTransfer { transfer, result };
        let mut bytes = Vec::new();
        codec::encode_stored_transfer(&stored, &mut bytes);
        prop_assert_eq!(codec::decode_stored_transfer(&bytes), Ok(stored));
        let resolution = PendingResolution { status, timestamp, resolved_by };
        prop_assert_eq!(codec::decode_resolution(&codec::encode_resolution(&resolution)), Ok(resolution));
    }

    #[test]
    fn log_entries_round_trip(
        sequence in any::<u64>(),
        timestamp in any::<u64>(),
        previous_hash in any::<[u8; HASH_SIZE]>(),
        events in proptest::collection::vec((event(), result_code()), 0..8),
    ) {
        let (events, results): (Vec<Event>, Vec<ResultCode>) = events.into_iter().unzip();
        let batch = Batch { sequence, timestamp, events };
        let mut bytes = Vec::new();
        let hash = codec::encode_log_entry(&batch, &results, &previous_hash, &mut bytes);
        let decoded = codec::decode_log_entry(&bytes);
        prop_assert_eq!(decoded, Ok(LogEntry { batch, results, previous_hash, hash }));
        // Any truncation is an error, never a shorter entry.
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            let truncated = codec::decode_log_entry(&bytes[..cut]);
            prop_assert!(truncated.is_err(), "truncated at {} decoded", cut);
        }
    }

    #[test]
    fn fixed_size_records_refuse_any_other_length(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if bytes.len() != codec::ACCOUNT_SIZE {
            let length_error =
                matches!(codec::decode_account(&bytes), Err(CodecError::Truncated { .. } | CodecError::Trailing(_)));
            prop_assert!(length_error, "an account of {} bytes", bytes.len());
        }
        if bytes.len() != codec::STORED_TRANSFER_SIZE {
            prop_assert!(codec::decode_stored_transfer(&bytes).is_err());
        }
    }
}
