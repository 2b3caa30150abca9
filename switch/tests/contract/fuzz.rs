//! Bytes a client controls, fuzzed through the real service: no panic, no INTERNAL.
//!
//! Requests are sent as raw bytes (`RawCodec`) over the real mutual-TLS channel, so the switch's
//! own request codec (`switch::codec`) sees exactly what a faulty or hostile client could send:
//! bytes that do not decode are refused with INVALID_ARGUMENT and `REASON_REQUEST_MALFORMED` and
//! change nothing; random protobuf messages get whatever answer the contract gives them, never
//! INTERNAL, and leave a switch that still serves with money summing to zero.
//!
//! The property test runs `CASES` cases (64) so the suite stays fast. To fuzz longer:
//! `PROPTEST_CASES=100000 cargo test --release -p switch --test contract fuzz::`.

use http::uri::PathAndQuery;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::bytes::{Buf, BufMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use switch::proto::Reason;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::{pay, TestSwitch, WAIT};
use crate::support::{assert_refused, Unchanged};

/// Sends and receives messages as the bytes they are, unchecked.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buffer.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buffer.copy_to_bytes(buffer.remaining()).to_vec()))
    }
}

/// How a method is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Unary,
    /// A request stream and a response stream (`PayStream`, `Subscribe`).
    Streaming,
}

/// Every method of the API, with the caller it needs: PSP methods as `bank-a`, operator methods
/// as the operator.
pub const METHODS: &[(&str, Shape)] = &[
    ("/paymentswitch.v1.PaymentService/Pay", Shape::Unary),
    ("/paymentswitch.v1.PaymentService/PayBatch", Shape::Unary),
    ("/paymentswitch.v1.PaymentService/PayStream", Shape::Streaming),
    ("/paymentswitch.v1.PaymentService/GetPaymentStatus", Shape::Unary),
    ("/paymentswitch.v1.PaymentService/RequestCollect", Shape::Unary),
    ("/paymentswitch.v1.PaymentService/Refund", Shape::Unary),
    ("/paymentswitch.v1.PaymentService/GetPosition", Shape::Unary),
    ("/paymentswitch.v1.DirectoryService/RegisterAlias", Shape::Unary),
    ("/paymentswitch.v1.DirectoryService/RegisterAliasBatch", Shape::Unary),
    ("/paymentswitch.v1.DirectoryService/RemoveAlias", Shape::Unary),
    ("/paymentswitch.v1.DirectoryService/ResolveAlias", Shape::Unary),
    ("/paymentswitch.v1.EventService/Subscribe", Shape::Streaming),
    ("/paymentswitch.v1.OperatorService/RegisterParticipant", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/GetParticipant", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/ListParticipants", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/FundIn", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/FundOut", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/SetNetDebitCap", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/SuspendParticipant", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/ReactivateParticipant", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/CloseSettlementWindow", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/GetSettlementReport", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/GetPayment", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/GetPayments", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/AddNode", Shape::Unary),
    ("/paymentswitch.v1.OperatorService/RemoveNode", Shape::Unary),
];

/// Bytes no request message decodes: a truncated tag.
pub const GARBAGE: &[u8] = &[0xff, 0xff];

/// The channels of `bank-a` and of the operator.
pub struct Callers {
    pub psp: Channel,
    pub operator: Channel,
}

impl Callers {
    pub async fn of(test: &TestSwitch) -> Callers {
        let psp = test.channel(Some(&test.ca.psp("bank-a"))).await.expect("PSP connects");
        let operator = test.channel(Some(&test.ca.operator("admin"))).await.expect("operator connects");
        Callers { psp, operator }
    }

    fn for_method(&self, path: &str) -> Channel {
        if path.contains("OperatorService") {
            self.operator.clone()
        } else {
            self.psp.clone()
        }
    }

    /// Calls `path` with `messages` as raw bytes: the answers, or the status the call ended with
    /// (for a stream, after the answers that came before it).
    pub async fn call(
        &self,
        path: &'static str,
        shape: Shape,
        messages: Vec<Vec<u8>>,
    ) -> (Vec<Vec<u8>>, Option<Status>) {
        let mut grpc = tonic::client::Grpc::new(self.for_method(path));
        grpc.ready().await.expect("channel ready");
        let path = PathAndQuery::from_static(path);
        match shape {
            Shape::Unary => {
                let body = messages.into_iter().next().unwrap_or_default();
                match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
                    Ok(answer) => (vec![answer.into_inner()], None),
                    Err(status) => (Vec::new(), Some(status)),
                }
            }
            Shape::Streaming => {
                let requests = tonic::Request::new(tokio_stream::iter(messages));
                let mut responses = match grpc.streaming(requests, path, RawCodec).await {
                    Ok(responses) => responses.into_inner(),
                    Err(status) => return (Vec::new(), Some(status)),
                };
                let mut answers = Vec::new();
                loop {
                    // A hang detector, not a timing assertion: the request stream has ended.
                    let next = tokio::time::timeout(WAIT, responses.message()).await.expect("the stream ends");
                    match next {
                        Ok(Some(answer)) => answers.push(answer),
                        Ok(None) => return (answers, None),
                        Err(status) => return (answers, Some(status)),
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bytes_are_refused_with_request_malformed_on_every_method() {
    let test = TestSwitch::start().await;
    let _pair = test.payer_and_payee(0, 1_000).await;
    let callers = Callers::of(&test).await;
    let unchanged = Unchanged::take(&test);
    for &(path, shape) in METHODS {
        let (answers, status) = callers.call(path, shape, vec![GARBAGE.to_vec()]).await;
        assert!(answers.is_empty(), "{path} answered garbage");
        let status = status.unwrap_or_else(|| panic!("{path} accepted garbage"));
        assert_refused(&status, Reason::RequestMalformed, None);
    }
    unchanged.assert_still(&test, "undecodable requests");
    assert!(!*test.switch.failed.borrow(), "a client's bytes never fail the switch");
    test.assert_money_conserved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_stream_answers_the_items_before_a_malformed_one_then_ends_with_request_malformed() {
    use prost::Message;
    let test = TestSwitch::start().await;
    let (bank_a, _bank_b) = test.payer_and_payee(0, 1_000).await;
    let callers = Callers::of(&test).await;
    let item =
        switch::proto::PayStreamRequest { correlation_id: 7, payment: Some(pay(1, "ana@bank-a", "bo@bank-b", 100)) };
    let messages = vec![item.encode_to_vec(), GARBAGE.to_vec()];
    let (answers, status) =
        callers.call("/paymentswitch.v1.PaymentService/PayStream", Shape::Streaming, messages).await;
    let answers: Vec<switch::proto::PayStreamResponse> =
        answers.iter().map(|answer| Message::decode(answer.as_slice()).expect("an answer")).collect();
    assert_eq!(answers.len(), 1, "the payment before the malformed item is answered");
    let result = answers[0].result.clone().expect("a result");
    assert_eq!((answers[0].correlation_id, result.state), (7, switch::proto::PaymentState::Completed as i32));
    assert_refused(&status.expect("the stream ends with the refusal"), Reason::RequestMalformed, None);
    assert_eq!(bank_a.position().await.balance_minor, 900);
    test.assert_money_conserved();
}

/// One protobuf field with a value of its wire type, drawn so that many land on real fields
/// with plausible values (aliases, currency, 16-byte ids, small amounts).
fn field() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![
        Just(b"ana@bank-a".to_vec()),
        Just(b"bo@bank-b".to_vec()),
        Just(b"INR".to_vec()),
        Just(b"bank-a".to_vec()),
        Just(b"bank-b".to_vec()),
        (0u128..8).prop_map(|id| id.to_be_bytes().to_vec()),
        "[ -~]{0,24}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    let nested = proptest::collection::vec((1u32..8, 0u64..2_000), 0..4).prop_map(|fields| {
        let mut bytes = Vec::new();
        for (tag, value) in fields {
            encode_key(tag, WireType::Varint, &mut bytes);
            encode_varint(value, &mut bytes);
        }
        bytes
    });
    let value = prop_oneof![
        prop_oneof![0u64..2_000, any::<u64>()].prop_map(|value| (WireType::Varint, value.to_be_bytes().to_vec())),
        text.prop_map(|bytes| (WireType::LengthDelimited, bytes)),
        nested.prop_map(|bytes| (WireType::LengthDelimited, bytes)),
        any::<u64>().prop_map(|value| (WireType::SixtyFourBit, value.to_le_bytes().to_vec())),
        any::<u32>().prop_map(|value| (WireType::ThirtyTwoBit, value.to_le_bytes().to_vec())),
    ];
    (1u32..9, value).prop_map(|(tag, (wire_type, payload))| {
        let mut bytes = Vec::new();
        encode_key(tag, wire_type, &mut bytes);
        match wire_type {
            WireType::Varint => encode_varint(u64::from_be_bytes(payload.try_into().unwrap_or_default()), &mut bytes),
            WireType::LengthDelimited => {
                encode_varint(payload.len() as u64, &mut bytes);
                bytes.extend_from_slice(&payload);
            }
            _ => bytes.extend_from_slice(&payload),
        }
        bytes
    })
}

/// A request message: random bytes, or a sequence of well-formed protobuf fields.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        3 => proptest::collection::vec(field(), 0..6).prop_map(|fields| fields.concat()),
    ]
}

/// Cases of the property test: `PROPTEST_CASES`, else 64.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(64)
}

#[test]
fn random_requests_to_every_method_never_answer_internal_and_leave_a_serving_switch() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let (test, callers) = runtime.block_on(async {
        let test = TestSwitch::start().await;
        let _pair = test.payer_and_payee(0, 1_000_000).await;
        let callers = Callers::of(&test).await;
        (test, callers)
    });
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    let strategy = (0..METHODS.len(), proptest::collection::vec(message(), 1..4));
    let outcome = TestRunner::new(config).run(&strategy, |(method, messages)| {
        let (path, shape) = METHODS[method];
        let (_, status) = runtime.block_on(callers.call(path, shape, messages));
        let Some(status) = status else { return Ok(()) };
        if matches!(status.code(), Code::Internal | Code::Unknown) {
            return Err(TestCaseError::fail(format!("{path}: {status:?}")));
        }
        if let Some(reason) = switch::reason::reason_of(&status) {
            prop_assert_eq!(status.code(), switch::reason::code_of(reason), "{}: {:?}", path, status);
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
    runtime.block_on(async {
        assert!(!*test.switch.failed.borrow(), "client bytes failed the switch");
        test.assert_money_conserved();
        // Still serving (random operator calls may have suspended or drained bank-a, so the
        // check is one that any state answers).
        let mut operator = test.operator().await;
        let request = switch::proto::ListParticipantsRequest::default();
        operator.list_participants(request).await.expect("the switch still serves");
    });
}
