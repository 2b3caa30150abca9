//! DirectoryService: RegisterAlias, RegisterAliasBatch, RemoveAlias, ResolveAlias (directory.proto).

use switch::proto::{self, Reason};

use crate::common::{pay, TestSwitch};
use crate::support::{assert_refusal, Unchanged};

fn alias(alias: &str, display_name: &str) -> proto::RegisterAliasRequest {
    proto::RegisterAliasRequest { alias: alias.into(), display_name: display_name.into() }
}

fn resolve(alias: &str) -> proto::ResolveAliasRequest {
    proto::ResolveAliasRequest { alias: alias.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_checked_field_by_field() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 0, 0).await;
    let unchanged = Unchanged::take(&test);
    let cases = [
        (alias("Ana@bank-a", "Ana"), Reason::AliasMalformed, "alias"),
        (alias("ana", "Ana"), Reason::AliasMalformed, "alias"),
        (alias("ana@Bank-A", "Ana"), Reason::AliasMalformed, "alias"),
        (alias(&format!("{}@bank-a", "a".repeat(58)), "Ana"), Reason::FieldTooLong, "alias"),
        (alias("", "Ana"), Reason::FieldRequired, "alias"),
        (alias("ana@bank-a", ""), Reason::FieldRequired, "display_name"),
        (alias("ana@bank-a", &"d".repeat(101)), Reason::FieldTooLong, "display_name"),
        (alias("ana@bank-a", "Ana\u{0}"), Reason::TextInvalid, "display_name"),
    ];
    for (request, reason, field) in cases {
        assert_refusal(bank_a.directory.register_alias(request).await, reason, Some(field));
    }
    unchanged.assert_still(&test, "refused registrations");
    // Both bounds exactly: a 64-byte alias and a 100-byte display name.
    let longest = format!("{}@bank-a", "a".repeat(57));
    assert_eq!(longest.len(), 64);
    let registered = bank_a.directory.register_alias(alias(&longest, &"é".repeat(50))).await.expect("at the bounds");
    assert_eq!(registered.into_inner().display_name.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_registration_returns_the_original_and_another_name_is_refused() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 0, 0).await;
    let first = bank_a.directory.register_alias(alias("ana@bank-a", "Ana K")).await.expect("register").into_inner();
    assert_eq!(
        (first.alias.as_str(), first.psp_id.as_str(), first.display_name.as_str()),
        ("ana@bank-a", "bank-a", "Ana K")
    );
    assert!(first.registered_at_unix_ns > 0);
    let unchanged = Unchanged::take(&test);
    let again = bank_a.directory.register_alias(alias("ana@bank-a", "Ana K")).await.expect("idempotent").into_inner();
    assert_eq!(again, first, "the original registration, with its time");
    unchanged.assert_still(&test, "an identical registration");
    let refused = bank_a.directory.register_alias(alias("ana@bank-a", "Ana Other")).await;
    assert_refusal(refused, Reason::AliasAlreadyRegistered, Some("alias"));
    unchanged.assert_still(&test, "a registration with another display name");
    // Anyone resolves it to the same record.
    let bank_b = test.onboard("bank-b", 0, 0).await;
    let resolved = bank_b.directory.clone().resolve_alias(resolve("ana@bank-a")).await.expect("resolve").into_inner();
    assert_eq!(resolved, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolving_checks_the_grammar_then_the_directory() {
    let test = TestSwitch::start().await;
    let bank_a = test.onboard("bank-a", 0, 0).await;
    let mut directory = bank_a.directory.clone();
    let unchanged = Unchanged::take(&test);
    assert_refusal(directory.resolve_alias(resolve("nobody@bank-b")).await, Reason::UnknownAlias, Some("alias"));
    assert_refusal(directory.resolve_alias(resolve("no at sign")).await, Reason::AliasMalformed, Some("alias"));
    assert_refusal(directory.resolve_alias(resolve("")).await, Reason::FieldRequired, Some("alias"));
    let remove = proto::RemoveAliasRequest { alias: "nobody@bank-b".into() };
    assert_refusal(directory.remove_alias(remove).await, Reason::AliasOwnedByOtherPsp, Some("alias"));
    let removed = directory.remove_alias(proto::RemoveAliasRequest { alias: "nobody@bank-a".into() }).await;
    assert!(!removed.expect("idempotent removal").into_inner().existed);
    unchanged.assert_still(&test, "resolving and removing what is not there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_psp_keeps_its_directory_but_moves_no_money() {
    let test = TestSwitch::start().await;
    let (mut bank_a, mut bank_b) = test.payer_and_payee(0, 1_000).await;
    let mut operator = test.operator().await;
    let suspend = proto::SuspendParticipantRequest { psp_id: "bank-b".into(), note: "review".into() };
    operator.suspend_participant(suspend).await.expect("suspend");
    // Directory calls move no money: allowed while suspended (directory.proto, common.proto).
    let registered = bank_b.directory.register_alias(alias("cy@bank-b", "Cy")).await.expect("register").into_inner();
    let batch = proto::RegisterAliasBatchRequest { aliases: vec![alias("dee@bank-b", "Dee")] };
    let results = bank_b.directory.register_alias_batch(batch).await.expect("batch").into_inner().results;
    assert_eq!(results[0].reason, Reason::Unspecified as i32);
    let resolved = bank_b.directory.resolve_alias(resolve("ana@bank-a")).await.expect("resolve").into_inner();
    assert_eq!(resolved.psp_id, "bank-a");
    assert_eq!(bank_a.directory.resolve_alias(resolve("cy@bank-b")).await.expect("resolve").into_inner(), registered);
    let remove = proto::RemoveAliasRequest { alias: "dee@bank-b".into() };
    assert!(bank_b.directory.remove_alias(remove).await.expect("remove").into_inner().existed);
    // Money still may not move to it.
    let unchanged = Unchanged::take(&test);
    let refused = bank_a.payments.pay(pay(1, "ana@bank-a", "cy@bank-b", 10)).await;
    assert_refusal(refused, Reason::CounterpartySuspended, None);
    unchanged.assert_still(&test, "a payment to a suspended PSP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_directory_refuses_a_new_alias_but_answers_retries() {
    let test = TestSwitch::start_with(|config| config.limits.aliases_max = 2).await;
    let mut bank_a = test.onboard("bank-a", 0, 0).await;
    bank_a.alias("ana@bank-a", "Ana").await;
    bank_a.alias("bo@bank-a", "Bo").await;
    let unchanged = Unchanged::take(&test);
    let refused = bank_a.directory.register_alias(alias("cy@bank-a", "Cy")).await;
    assert_refusal(refused, Reason::DirectoryFull, None);
    let batch = proto::RegisterAliasBatchRequest { aliases: vec![alias("cy@bank-a", "Cy")] };
    let results = bank_a.directory.register_alias_batch(batch).await.expect("batch").into_inner().results;
    let full = (Reason::DirectoryFull as i32, tonic::Code::ResourceExhausted as i32);
    assert_eq!((results[0].reason, results[0].status_code), full);
    bank_a.directory.register_alias(alias("ana@bank-a", "Ana")).await.expect("a retry is not a new alias");
    unchanged.assert_still(&test, "registrations beyond DIRECTORY_ALIASES_MAX");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_counts_its_own_aliases_against_the_capacity_and_its_repeats_as_retries() {
    let test = TestSwitch::start_with(|config| config.limits.aliases_max = 3).await;
    let mut bank_a = test.onboard("bank-a", 0, 0).await;
    bank_a.alias("ana@bank-a", "Ana").await;
    let items = vec![
        alias("bo@bank-a", "Bo"),
        alias("cy@bank-a", "Cy"),
        alias("dee@bank-a", "Dee"),
        alias("bo@bank-a", "Bo"),
        alias("cy@bank-a", "Cyril"),
        alias("ana@bank-a", "Ana"),
    ];
    let batch = proto::RegisterAliasBatchRequest { aliases: items };
    let results = bank_a.directory.register_alias_batch(batch).await.expect("batch").into_inner().results;
    let reasons: Vec<(String, i32)> = results.into_iter().map(|result| (result.alias, result.reason)).collect();
    let expected = [
        ("bo@bank-a", Reason::Unspecified),
        ("cy@bank-a", Reason::Unspecified),
        ("dee@bank-a", Reason::DirectoryFull),
        ("bo@bank-a", Reason::Unspecified),
        ("cy@bank-a", Reason::AliasAlreadyRegistered),
        ("ana@bank-a", Reason::Unspecified),
    ];
    let expected: Vec<(String, i32)> =
        expected.into_iter().map(|(alias, reason)| (alias.into(), reason as i32)).collect();
    assert_eq!(reasons, expected);
    assert_eq!(test.switch.directory.len(), 3, "never beyond DIRECTORY_ALIASES_MAX");
    let cy = bank_a.directory.resolve_alias(resolve("cy@bank-a")).await.expect("resolve").into_inner();
    assert_eq!(cy.display_name, "Cy", "the first of the batch's two names");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_directory_call_counts_against_the_callers_rate() {
    let test = TestSwitch::start_with(|config| config.limits.directory_calls_per_second = 3).await;
    let bank_a = test.onboard("bank-a", 0, 0).await;
    let bank_b = test.onboard("bank-b", 0, 0).await;
    let mut directory = bank_a.directory.clone();
    let unchanged = Unchanged::take(&test);
    // Ten calls at once: at most 3 per second pass, so even across a second boundary some wait.
    let mut limited = 0;
    for _ in 0..10 {
        match directory.resolve_alias(resolve("nobody@bank-b")).await {
            Err(status) if crate::common::reason(&status) == Some(Reason::RateLimited) => {
                crate::support::assert_refused(&status, Reason::RateLimited, None);
                limited += 1;
            }
            other => assert_refusal(other, Reason::UnknownAlias, Some("alias")),
        }
    }
    assert!(limited >= 4, "10 calls at 3 per second: {limited} limited");
    unchanged.assert_still(&test, "rate-limited directory calls");
    // Another PSP has its own budget.
    let other = bank_b.directory.clone().resolve_alias(resolve("nobody@bank-a")).await;
    assert_refusal(other, Reason::UnknownAlias, Some("alias"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_psps_use_the_directory_and_a_batch_holds_1_to_8190_items() {
    let test = TestSwitch::start().await;
    let mut bank_a = test.onboard("bank-a", 0, 0).await;
    let unregistered = test.psp("bank-z").await;
    let mut directory = unregistered.directory.clone();
    let unchanged = Unchanged::take(&test);
    assert_refusal(directory.register_alias(alias("zed@bank-z", "Zed")).await, Reason::CallerNotRegistered, None);
    assert_refusal(directory.resolve_alias(resolve("ana@bank-a")).await, Reason::CallerNotRegistered, None);
    let remove = proto::RemoveAliasRequest { alias: "zed@bank-z".into() };
    assert_refusal(directory.remove_alias(remove).await, Reason::CallerNotRegistered, None);
    let empty = proto::RegisterAliasBatchRequest { aliases: Vec::new() };
    let refused = bank_a.directory.register_alias_batch(empty).await;
    assert_refusal(refused, Reason::BatchSizeOutOfRange, Some("aliases"));
    let too_many = proto::RegisterAliasBatchRequest { aliases: vec![alias("ana@bank-a", "Ana"); 8_191] };
    let refused = bank_a.directory.register_alias_batch(too_many).await;
    assert_refusal(refused, Reason::BatchSizeOutOfRange, Some("aliases"));
    unchanged.assert_still(&test, "directory calls of an unregistered PSP and batches out of range");
}
