//! The reason catalogue (errors.proto) against the code and these tests, so that the three cannot
//! drift apart:
//! - every reason's comment names the gRPC status it travels with, and `code_of` agrees;
//! - every reason the generated code knows is in the catalogue, and the reverse;
//! - every reason but REASON_UNSPECIFIED is asserted by at least one contract test.

use switch::proto::Reason;
use switch::reason::code_of;
use tonic::Code;

const ERRORS_PROTO: &str = include_str!("../../../proto/paymentswitch/v1/errors.proto");

/// The contract modules whose assertions count (not this file, not the shared checks).
const AREAS: &[(&str, &str)] = &[
    ("cluster.rs", include_str!("cluster.rs")),
    ("directory.rs", include_str!("directory.rs")),
    ("events.rs", include_str!("events.rs")),
    ("fuzz.rs", include_str!("fuzz.rs")),
    ("membership.rs", include_str!("membership.rs")),
    ("operator.rs", include_str!("operator.rs")),
    ("overload.rs", include_str!("overload.rs")),
    ("payments.rs", include_str!("payments.rs")),
    ("records.rs", include_str!("records.rs")),
    ("settlement.rs", include_str!("settlement.rs")),
];

/// The gRPC status names a reason's comment may give, as the catalogue spells them.
const STATUS_NAMES: &[(&str, Code)] = &[
    ("INVALID_ARGUMENT", Code::InvalidArgument),
    ("UNAUTHENTICATED", Code::Unauthenticated),
    ("PERMISSION_DENIED", Code::PermissionDenied),
    ("NOT_FOUND", Code::NotFound),
    ("ALREADY_EXISTS", Code::AlreadyExists),
    ("FAILED_PRECONDITION", Code::FailedPrecondition),
    ("OUT_OF_RANGE", Code::OutOfRange),
    ("ABORTED", Code::Aborted),
    ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
    ("UNAVAILABLE", Code::Unavailable),
    ("INTERNAL", Code::Internal),
];

/// One value of `enum Reason` as errors.proto writes it.
struct Entry {
    name: String,
    number: i32,
    /// The comment lines just above the value, joined.
    comment: String,
}

/// The values of `enum Reason`, each with its comment. Panics (a test failure) on a line of the
/// enum this parser does not understand, so a new form of entry cannot slip past unchecked.
fn catalogue() -> Vec<Entry> {
    let body = ERRORS_PROTO
        .split_once("enum Reason {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .map(|(body, _)| body)
        .expect("errors.proto has `enum Reason { ... }`");
    let mut entries = Vec::new();
    let mut comment = String::new();
    for line in body.lines().map(str::trim) {
        if line.is_empty() {
            comment.clear();
        } else if let Some(text) = line.strip_prefix("//") {
            comment.push_str(text);
            comment.push(' ');
        } else {
            let (name, number) = line
                .strip_suffix(';')
                .and_then(|entry| entry.split_once('='))
                .unwrap_or_else(|| panic!("not a `NAME = NUMBER;` line in enum Reason: {line:?}"));
            let number = number.trim().parse().unwrap_or_else(|_| panic!("number of {line:?}"));
            entries.push(Entry { name: name.trim().to_string(), number, comment: std::mem::take(&mut comment) });
        }
    }
    entries
}

/// The status names a comment mentions, in order (whole words only: `REASON_X_NOT_FOUND` is no
/// mention of NOT_FOUND).
fn statuses_named(comment: &str) -> Vec<Code> {
    comment
        .split(|character: char| !(character.is_ascii_uppercase() || character == '_'))
        .filter_map(|word| STATUS_NAMES.iter().find(|(name, _)| *name == word).map(|(_, code)| *code))
        .collect()
}

#[test]
fn every_reason_names_the_status_code_travels_with() {
    let entries = catalogue();
    assert!(entries.len() > 40, "parsed {} reasons: the parser lost the catalogue", entries.len());
    for entry in &entries {
        let reason = Reason::from_str_name(&entry.name).unwrap_or_else(|| panic!("{} is not generated", entry.name));
        assert_eq!(reason as i32, entry.number, "{}", entry.name);
        if reason == Reason::Unspecified {
            continue;
        }
        let named = statuses_named(&entry.comment);
        match named.last() {
            // The status a value travels with is the last one its comment names ("... INVALID_ARGUMENT.").
            Some(code) => assert_eq!(code_of(reason), *code, "{}: comment {:?}", entry.name, entry.comment),
            // Outcomes (500-599) travel in-band; as a DecisionReceipt reason, FAILED_PRECONDITION.
            None => {
                assert!((500..600).contains(&entry.number), "{} names no status: {:?}", entry.name, entry.comment);
                assert_eq!(code_of(reason), Code::FailedPrecondition, "{}", entry.name);
            }
        }
    }
}

#[test]
fn the_catalogue_and_the_generated_enum_are_the_same_set() {
    let entries = catalogue();
    let generated: Vec<Reason> = (0..1_000).filter_map(|number| Reason::try_from(number).ok()).collect();
    assert_eq!(entries.len(), generated.len(), "errors.proto and the generated Reason differ");
    for reason in generated {
        assert!(entries.iter().any(|entry| entry.number == reason as i32), "{reason:?} is not in errors.proto");
        // The trailer's text maps back to the reason (errors.proto: "the full proto name").
        assert_eq!(Reason::from_str_name(reason.as_str_name()), Some(reason));
    }
}

/// Whether `source` writes `Reason::Variant` (not as a prefix of a longer name).
fn written_in(source: &str, variant: &str) -> bool {
    let needle = format!("Reason::{variant}");
    source.match_indices(&needle).any(|(at, _)| {
        let after = source[at + needle.len()..].chars().next();
        !after.is_some_and(|character| character.is_ascii_alphanumeric() || character == '_')
    })
}

/// The contract modules that write `Reason::Variant`.
fn asserted_in(variant: &str) -> Vec<&'static str> {
    AREAS.iter().filter(|(_, source)| written_in(source, variant)).map(|(file, _)| *file).collect()
}

#[test]
fn every_reason_is_asserted_by_a_contract_test() {
    let missing: Vec<String> = catalogue()
        .iter()
        .filter(|entry| entry.number != 0)
        .filter_map(|entry| {
            let reason = Reason::from_str_name(&entry.name)?;
            let variant = format!("{reason:?}");
            asserted_in(&variant).is_empty().then_some(entry.name.clone())
        })
        .collect();
    assert!(missing.is_empty(), "reasons no contract test asserts: {missing:?}");
}

#[test]
fn the_walk_finds_what_is_written_and_only_that() {
    assert!(written_in("assert_refused(&status, Reason::AmountZero, None)", "AmountZero"));
    assert!(!written_in("Reason::AmountZeroOrLess", "AmountZero"), "a longer name is another reason");
    assert!(!written_in("Reason::Amount", "AmountZero"));
    assert_eq!(statuses_named("RESOURCE_EXHAUSTED."), vec![Code::ResourceExhausted]);
    assert!(statuses_named("REASON_PAYMENT_NOT_FOUND").is_empty(), "a reason name is not a status name");
    assert_eq!(
        statuses_named("(state DECLINED) ... (FAILED_PRECONDITION) INVALID_ARGUMENT."),
        vec![Code::FailedPrecondition, Code::InvalidArgument]
    );
}
