//! Refusals: every error a client can see is a gRPC status plus a stable reason from the one
//! catalogue (`proto/paymentswitch/v1/errors.proto`), carried in the `switch-reason` trailer.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::proto::Reason;

/// A refusal: the reason, the field at fault (for INVALID_ARGUMENT), and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub field: Option<&'static str>,
    pub message: String,
    /// When the refusing mechanism knows when its condition clears (a per-second window ends),
    /// the `switch-retry-after-ms` it sends instead of the reason's usual figure
    /// (`retry_after_ms`).
    pub retry_after_ms: Option<u64>,
    /// With NOT_LEADER: the leader's PSP address, sent as the `switch-leader` trailer.
    pub leader: Option<String>,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal { reason, field: None, message: message.into(), retry_after_ms: None, leader: None }
    }

    pub fn field(reason: Reason, field: &'static str, message: impl Into<String>) -> Self {
        Refusal { reason, field: Some(field), message: message.into(), retry_after_ms: None, leader: None }
    }

    /// The same refusal, telling the client to retry after `milliseconds`.
    pub fn retry_after(self, milliseconds: u64) -> Self {
        Refusal { retry_after_ms: Some(milliseconds), ..self }
    }

    /// A refusal by a node that is not the leader, naming the leader (`leader`: its id, `address`:
    /// its PSP address) as far as it is known: NOT_LEADER with the `switch-leader` trailer, NOT_LEADER
    /// without it when only the id is known, NO_LEADER when no leader is.
    pub fn not_leader(leader: Option<u64>, address: Option<String>) -> Self {
        match (leader, address) {
            (Some(_), Some(address)) => Refusal {
                leader: Some(address.clone()),
                ..Refusal::new(Reason::NotLeader, format!("this node is not the leader; the leader is {address}"))
            },
            (Some(leader), None) => Refusal::new(
                Reason::NotLeader,
                format!("this node is not the leader; the leader is node {leader}, whose address is not known here"),
            ),
            (None, _) => Refusal::new(
                Reason::NoLeader,
                "no node is the leader now: an election is under way, or a majority of the cluster is unreachable",
            ),
        }
    }

    pub fn code(&self) -> Code {
        code_of(self.reason)
    }
}

/// The gRPC status each reason travels with, as the catalogue documents it.
pub fn code_of(reason: Reason) -> Code {
    use Reason as R;
    match reason {
        R::Unspecified | R::Internal => Code::Internal,
        R::FieldRequired
        | R::FieldTooLong
        | R::TextInvalid
        | R::IdMalformed
        | R::IdReserved
        | R::PspIdMalformed
        | R::AliasMalformed
        | R::AmountZero
        | R::AmountOverLimit
        | R::UnknownCurrency
        | R::DeadlinePassed
        | R::DeadlineTooFar
        | R::BatchSizeOutOfRange
        | R::PageInvalid
        | R::RequestMalformed
        | R::AddressMalformed => Code::InvalidArgument,
        R::NotAuthenticated => Code::Unauthenticated,
        R::NotAuthorized | R::CallerNotRegistered | R::AliasOwnedByOtherPsp | R::RefundNotByPayee => {
            Code::PermissionDenied
        }
        R::UnknownAlias
        | R::OwnAliasNotRegistered
        | R::PaymentNotFound
        | R::ParticipantNotFound
        | R::SettlementWindowNotFound
        | R::NodeNotFound => Code::NotFound,
        R::PaymentIdConflict | R::AliasAlreadyRegistered | R::ParticipantAlreadyRegistered | R::NodeIdTaken => {
            Code::AlreadyExists
        }
        R::ParticipantSuspended
        | R::CounterpartySuspended
        | R::InsufficientLiquidity
        | R::BalanceOverflow
        | R::CurrencyMismatch
        | R::OnUsNotSupported
        | R::AlreadyDecided
        | R::NoDecisionPending
        | R::RefundExceedsRemaining
        | R::PaymentNotRefundable
        | R::RefundCountExceeded
        | R::NetDebitCapBelowUsage
        | R::FundOutExceedsAvailable
        | R::PayeeDeclined
        | R::PayeeTimeout
        | R::PayerDeclined
        | R::CollectExpired
        | R::NodeRemovalUnsafe => Code::FailedPrecondition,
        R::RateLimited
        | R::SwitchBusy
        | R::EventBacklogFull
        | R::DirectoryFull
        | R::CollectsPendingLimit
        | R::ParticipantsLimit => Code::ResourceExhausted,
        R::ShuttingDown | R::LedgerUnavailable | R::NotLeader | R::NoLeader | R::MembershipChangePending => {
            Code::Unavailable
        }
        R::StreamProtocolViolation => Code::InvalidArgument,
        R::SequenceOutOfRange => Code::OutOfRange,
        R::SubscriptionReplaced => Code::Aborted,
    }
}

/// How long a client should wait before retrying a refusal, in milliseconds, for the codes
/// errors.proto promises the `switch-retry-after-ms` trailer for (RESOURCE_EXHAUSTED and
/// UNAVAILABLE); `None` for every other code. The figures are the time the condition usually
/// takes to clear: in-flight budgets drain within a few ledger batches, backlogs and restarts
/// within seconds, capacity limits only when an operator acts.
pub fn retry_after_ms(reason: Reason) -> Option<u64> {
    use Reason as R;
    if !matches!(code_of(reason), Code::ResourceExhausted | Code::Unavailable) {
        return None;
    }
    Some(match reason {
        // An admission budget frees as admitted payments commit: a few group commits.
        R::RateLimited | R::SwitchBusy => 20,
        R::EventBacklogFull | R::CollectsPendingLimit => 1_000,
        R::ShuttingDown | R::LedgerUnavailable => 1_000,
        // The leader is known: go there at once. None is: an election takes about a second.
        R::NotLeader => 0,
        R::NoLeader => 500,
        // A node catching up, or a change committing: seconds.
        R::MembershipChangePending => 5_000,
        R::DirectoryFull | R::ParticipantsLimit => 60_000,
        _ => 1_000,
    })
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        let mut status = Status::new(refusal.code(), refusal.message);
        let metadata = status.metadata_mut();
        metadata.insert("switch-reason", MetadataValue::from_static(refusal.reason.as_str_name()));
        if let Some(field) = refusal.field {
            metadata.insert("switch-field", MetadataValue::from_static(field));
        }
        if let Some(milliseconds) = refusal.retry_after_ms.or_else(|| retry_after_ms(refusal.reason)) {
            metadata.insert("switch-retry-after-ms", MetadataValue::from(milliseconds));
        }
        // An address that is not a valid header value (it never is: host:port) is left out
        // rather than failing the refusal.
        if let Some(leader) = refusal.leader.and_then(|leader| MetadataValue::try_from(leader).ok()) {
            metadata.insert("switch-leader", leader);
        }
        status
    }
}

/// The reason a status carries, if the switch produced it (clients and tests use this).
pub fn reason_of(status: &Status) -> Option<Reason> {
    let value = status.metadata().get("switch-reason")?.to_str().ok()?;
    Reason::from_str_name(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_travels_as_status_and_trailer() {
        let status = Status::from(Refusal::field(Reason::AmountZero, "amount_minor", "amount must be positive"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status), Some(Reason::AmountZero));
        assert_eq!(status.metadata().get("switch-field").and_then(|value| value.to_str().ok()), Some("amount_minor"));
    }

    /// errors.proto: `switch-retry-after-ms` for RESOURCE_EXHAUSTED and UNAVAILABLE, and only
    /// for them (RATE_LIMITED lacked it).
    #[test]
    fn capacity_and_availability_refusals_say_when_to_retry() {
        for number in 0..1_000 {
            let Ok(reason) = Reason::try_from(number) else { continue };
            let status = Status::from(Refusal::new(reason, "refused"));
            let trailer = status.metadata().get("switch-retry-after-ms").and_then(|value| value.to_str().ok());
            let promised = matches!(status.code(), Code::ResourceExhausted | Code::Unavailable);
            assert_eq!(trailer.is_some(), promised, "{reason:?}: {status:?}");
            if let Some(trailer) = trailer {
                // NOT_LEADER names the leader: the call goes there at once (0).
                let least = u64::from(reason != Reason::NotLeader);
                assert!(
                    trailer.parse::<u64>().is_ok_and(|milliseconds| milliseconds >= least),
                    "{reason:?}: {trailer}"
                );
            }
        }
    }

    #[test]
    fn every_reason_has_a_code_and_a_round_trip_name() {
        for number in 0..1_000 {
            let Ok(reason) = Reason::try_from(number) else { continue };
            let _ = code_of(reason);
            assert_eq!(Reason::from_str_name(reason.as_str_name()), Some(reason));
        }
    }
}
