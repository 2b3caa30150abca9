//! How `switch client` prints the switch's answers: one `field: value` line per field, named as in
//! the proto. Ids are shown in the decimal form the commands take (`--id 42`), enums by their proto
//! names, and times in UTC. The generated `Debug` printed ids as lists of bytes and times as
//! nanosecond counts, which a person at a terminal cannot read back.

use std::fmt::Display;

use crate::proto;

/// Lines of `field: value`.
#[derive(Default)]
struct Lines(String);

impl Lines {
    fn field(&mut self, name: &str, value: impl Display) -> &mut Self {
        self.0.push_str(&format!("{name}: {value}\n"));
        self
    }

    fn done(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

/// An id as the commands take it: a 16-byte id as its decimal number, anything else in hex,
/// and no id as `-`.
pub fn id(bytes: &[u8]) -> String {
    match <[u8; 16]>::try_from(bytes) {
        Ok(id) => u128::from_be_bytes(id).to_string(),
        Err(_) if bytes.is_empty() => "-".into(),
        Err(_) => bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
    }
}

/// A time given in nanoseconds since the Unix epoch, in UTC to the millisecond. 0 means "not
/// yet" and is shown as `-`.
pub fn time(unix_ns: u64) -> String {
    if unix_ns == 0 {
        return "-".into();
    }
    match ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns)) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} UTC",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond()
        ),
        // Out of the calendar's range: the number itself rather than nothing.
        Err(_) => unix_ns.to_string(),
    }
}

/// An enum field by its proto name, or its number if this client does not know it (a newer
/// server).
macro_rules! name {
    ($enum:ty, $value:expr) => {
        <$enum>::try_from($value).map_or_else(|_| $value.to_string(), |known| known.as_str_name().to_string())
    };
}

pub fn payment(payment: &proto::Payment) -> String {
    let refunds: Vec<String> = payment.refund_ids.iter().map(|refund| id(refund)).collect();
    Lines::default()
        .field("payment_id", id(&payment.payment_id))
        .field("kind", name!(proto::PaymentKind, payment.kind))
        .field("state", name!(proto::PaymentState, payment.state))
        .field("reason", name!(proto::Reason, payment.reason))
        .field("decline_reason", name!(proto::DeclineReason, payment.decline_reason))
        .field("payer_alias", &payment.payer_alias)
        .field("payer_psp_id", &payment.payer_psp_id)
        .field("payee_alias", &payment.payee_alias)
        .field("payee_psp_id", &payment.payee_psp_id)
        .field("amount_minor", payment.amount_minor)
        .field("currency", &payment.currency)
        .field("note", &payment.note)
        .field("deadline", time(payment.deadline_unix_ms.saturating_mul(1_000_000)))
        .field("accepted_at", time(payment.accepted_at_unix_ns))
        .field("finalized_at", time(payment.finalized_at_unix_ns))
        .field("original_payment_id", id(&payment.original_payment_id))
        .field("refunded_amount_minor", payment.refunded_amount_minor)
        .field("refund_ids", if refunds.is_empty() { "-".into() } else { refunds.join(", ") })
        .field("settlement_window_id", payment.settlement_window_id)
        .done()
}

pub fn participant(participant: &proto::Participant) -> String {
    Lines::default()
        .field("psp_id", &participant.psp_id)
        .field("name", &participant.name)
        .field("currency", &participant.currency)
        .field("confirmation_mode", name!(proto::ConfirmationMode, participant.confirmation_mode))
        .field("status", name!(proto::ParticipantStatus, participant.status))
        .field("net_debit_cap_minor", participant.net_debit_cap_minor)
        .field("balance_minor", participant.balance_minor)
        .field("reserved_minor", participant.reserved_minor)
        .field("incoming_pending_minor", participant.incoming_pending_minor)
        .field("available_minor", participant.available_minor)
        .field("window_net_position_minor", participant.window_net_position_minor)
        .field("registered_at", time(participant.registered_at_unix_ns))
        .field("as_of", time(participant.as_of_unix_ns))
        .done()
}

/// The funding transfer, then the participant's position after it.
pub fn fund(result: &proto::FundResult) -> String {
    let mut text = Lines::default()
        .field("transfer_id", id(&result.transfer_id))
        .field("recorded_at", time(result.recorded_at_unix_ns))
        .done();
    if let Some(after) = &result.participant {
        text.push_str(&participant(after));
    }
    text
}

pub fn alias(alias: &proto::Alias) -> String {
    Lines::default()
        .field("alias", &alias.alias)
        .field("psp_id", &alias.psp_id)
        .field("display_name", &alias.display_name)
        .field("registered_at", time(alias.registered_at_unix_ns))
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_as_the_commands_take_them() {
        assert_eq!(id(&42u128.to_be_bytes()), "42");
        assert_eq!(id(&u128::MAX.to_be_bytes()), u128::MAX.to_string());
        assert_eq!(id(&[]), "-");
        assert_eq!(id(&[0xab, 0x01]), "ab01");
    }

    #[test]
    fn times_are_utc_to_the_millisecond() {
        // 2026-11-23 08:40:05.123456789 UTC
        assert_eq!(time(1_795_423_205_123_456_789), "2026-11-23 08:40:05.123 UTC");
        assert_eq!(time(0), "-");
    }

    #[test]
    fn a_payment_prints_its_id_state_and_amount_readably() {
        let paid = proto::Payment {
            payment_id: 42u128.to_be_bytes().to_vec(),
            state: proto::PaymentState::Completed as i32,
            amount_minor: 2500,
            currency: "INR".into(),
            refund_ids: vec![7u128.to_be_bytes().to_vec(), 8u128.to_be_bytes().to_vec()],
            reason: 9_999, // unknown to this client
            ..Default::default()
        };
        let text = payment(&paid);
        for line in [
            "payment_id: 42",
            "state: PAYMENT_STATE_COMPLETED",
            "amount_minor: 2500",
            "refund_ids: 7, 8",
            "reason: 9999",
            "finalized_at: -",
        ] {
            assert!(text.lines().any(|printed| printed == line), "{line:?} not in\n{text}");
        }
    }
}
