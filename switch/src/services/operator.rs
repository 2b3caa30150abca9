//! `OperatorService`: participants, funding, net debit caps, suspension. Operator certificate only.
//! Settlement, funding and cluster membership have modules of their own.
//!
//! Every change is one ledger submission, so it is durable and atomic with its money movement:
//! registration is `[participant record, create account]`; a cap change is `[record, set debit
//! limit]`. Funding is its own module (`funding`).

use std::sync::Arc;

use ledger::{Account, AccountFlags, Event, ResultCode};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{parse_id, participant_view, BATCH_SIZE_MAX, NOTE_BYTES_MAX};
use crate::auth;
use crate::core::{codes, record, tables, Switch};
use crate::directory::check_text;
use crate::participants::{accounts, Participant};
use crate::proto::operator_service_server::OperatorService;
use crate::proto::{self, ConfirmationMode, ParticipantStatus, Reason};
use crate::reason::Refusal;
use crate::tls::valid_name;

/// Longest participant legal name, in UTF-8 bytes.
const PARTICIPANT_NAME_BYTES_MAX: usize = 100;
/// Most participants per listing page.
const PAGE_SIZE_MAX: u32 = 1_000;
const PAGE_SIZE_DEFAULT: u32 = 100;

pub struct Operator {
    pub switch: Arc<Switch>,
}

/// A PSP id as a request names it: present (FIELD_REQUIRED) and of the PSP id grammar.
pub(super) fn check_psp_id(psp_id: &str) -> Result<(), Refusal> {
    if psp_id.is_empty() {
        return Err(Refusal::field(Reason::FieldRequired, "psp_id", "psp_id is required"));
    }
    if !valid_name(psp_id) {
        return Err(Refusal::field(
            Reason::PspIdMalformed,
            "psp_id",
            "psp_id must be 2-32 of [a-z0-9-], not starting with '-'",
        ));
    }
    Ok(())
}

/// The participant a request names: a well-formed PSP id of a registered participant.
pub(super) fn participant(switch: &Switch, psp_id: &str) -> Result<Arc<Participant>, Refusal> {
    check_psp_id(psp_id)?;
    switch
        .participants
        .get(psp_id)
        .ok_or_else(|| Refusal::field(Reason::ParticipantNotFound, "psp_id", format!("no participant {psp_id:?}")))
}

/// A listing's page token: `after:` and the last PSP id of the previous page. Anything else
/// was not produced by the switch.
const PAGE_TOKEN_PREFIX: &str = "after:";

/// The PSP id a page token continues after (`""` for the first page).
fn page_start(page_token: &str) -> Result<&str, Refusal> {
    if page_token.is_empty() {
        return Ok("");
    }
    match page_token.strip_prefix(PAGE_TOKEN_PREFIX) {
        Some(after) if valid_name(after) => Ok(after),
        _ => Err(Refusal::field(Reason::PageInvalid, "page_token", "not a page token of this listing")),
    }
}

fn below_usage() -> Refusal {
    Refusal::new(
        Reason::NetDebitCapBelowUsage,
        "the participant already uses more than the new cap; suspend it instead",
    )
}

impl Operator {
    fn participant(&self, psp_id: &str) -> Result<Arc<Participant>, Refusal> {
        participant(&self.switch, psp_id)
    }

    /// Suspends or reactivates the participant a request names, with its audit note checked.
    async fn set_status(&self, psp_id: &str, note: &str, status: ParticipantStatus) -> Result<Participant, Refusal> {
        let participant = self.participant(psp_id)?;
        check_text(note, "note", NOTE_BYTES_MAX, false)?;
        let changed = Participant { status, ..Participant::clone(&participant) };
        self.change(changed.clone(), None).await?;
        Ok(changed)
    }

    fn view(&self, participant: &Participant) -> Result<Response<proto::Participant>, Status> {
        Ok(Response::new(participant_view(&self.switch, participant)?))
    }

    /// Writes a changed participant record (and any events chained after it), then publishes it.
    async fn change(&self, changed: Participant, then: Option<Event>) -> Result<Vec<ResultCode>, Refusal> {
        let mut events = vec![record(
            tables::PARTICIPANTS,
            changed.psp_id.as_bytes(),
            changed.to_record().encode_to_vec(),
            then.is_some(),
        )];
        events.extend(then);
        let results = self.switch.submit(events).await?.to_vec();
        if results.iter().all(|code| *code == ResultCode::Ok) {
            self.switch.participants.publish(changed);
        }
        Ok(results)
    }

    async fn register(&self, request: proto::RegisterParticipantRequest) -> Result<Participant, Refusal> {
        check_psp_id(&request.psp_id)?;
        check_text(&request.name, "name", PARTICIPANT_NAME_BYTES_MAX, true)?;
        let currency = self.switch.config.currency(&request.currency).ok_or_else(|| {
            Refusal::field(
                Reason::UnknownCurrency,
                "currency",
                format!("currency {:?} is not settled here", request.currency),
            )
        })?;
        let mode = match ConfirmationMode::try_from(request.confirmation_mode) {
            Ok(ConfirmationMode::Automatic) => ConfirmationMode::Automatic,
            Ok(ConfirmationMode::Confirmed) => ConfirmationMode::Confirmed,
            _ => {
                return Err(Refusal::field(Reason::FieldRequired, "confirmation_mode", "confirmation_mode is required"))
            }
        };
        if i64::try_from(request.net_debit_cap_minor).is_err() {
            return Err(Refusal::field(Reason::AmountOverLimit, "net_debit_cap_minor", "cap above 2^63-1"));
        }
        let participant = Participant {
            psp_id: request.psp_id.as_str().into(),
            name: request.name.clone(),
            currency: currency.code.clone(),
            ledger: currency.ledger,
            account_id: accounts::participant(currency.ledger, &request.psp_id),
            net_debit_cap_minor: request.net_debit_cap_minor,
            confirmation_mode: mode,
            status: ParticipantStatus::Active,
            registered_at_unix_ns: crate::core::now_unix_ns(),
        };
        if let Some(existing) = self.switch.participants.get(&request.psp_id) {
            // The cap is not compared: SetNetDebitCap may have changed it since (operator.proto).
            let same = existing.name == participant.name
                && existing.currency == participant.currency
                && existing.confirmation_mode == participant.confirmation_mode;
            return if same {
                Ok(Participant::clone(&existing))
            } else {
                Err(Refusal::field(Reason::ParticipantAlreadyRegistered, "psp_id", "registered with other details"))
            };
        }
        if self.switch.participants.len() >= self.switch.config.limits.participants_max {
            return Err(Refusal::new(Reason::ParticipantsLimit, "the switch holds its maximum of participants"));
        }
        // The outbox exists before the participant can be paid (exact event counts).
        self.switch.events.outbox(&self.switch.ledger, &request.psp_id).map_err(crate::core::ledger_refusal)?;
        let account = Account {
            id: participant.account_id,
            ledger: participant.ledger,
            code: codes::PARTICIPANT_ACCOUNT,
            // Its position is reported as int64 (common.proto): the ledger keeps it within.
            flags: AccountFlags(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::BALANCES_WITHIN_I64),
            debit_limit: u128::from(participant.net_debit_cap_minor),
            ..Account::default()
        };
        let results = self.change(participant.clone(), Some(Event::CreateAccount(account))).await?;
        match results.as_slice() {
            [ResultCode::Ok, ResultCode::Ok] => Ok(participant),
            [_, ResultCode::Exists | ResultCode::ExistsWithDifferentDebitLimit] => {
                Err(Refusal::field(Reason::ParticipantAlreadyRegistered, "psp_id", "the participant's account exists"))
            }
            other => Err(Refusal::new(Reason::Internal, format!("ledger answered {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl OperatorService for Operator {
    async fn register_participant(
        &self,
        request: Request<proto::RegisterParticipantRequest>,
    ) -> Result<Response<proto::Participant>, Status> {
        auth::operator(&request)?;
        let _serial = self.switch.operator_lock.lock().await;
        let participant = self.register(request.into_inner()).await?;
        tracing::info!(psp = %participant.psp_id, "participant registered");
        self.view(&participant)
    }

    async fn get_participant(
        &self,
        request: Request<proto::GetParticipantRequest>,
    ) -> Result<Response<proto::Participant>, Status> {
        auth::operator(&request)?;
        let participant = self.participant(&request.get_ref().psp_id)?;
        self.switch.read_barrier().await?;
        self.view(&participant)
    }

    async fn list_participants(
        &self,
        request: Request<proto::ListParticipantsRequest>,
    ) -> Result<Response<proto::ListParticipantsResponse>, Status> {
        auth::operator(&request)?;
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => PAGE_SIZE_DEFAULT,
            size if size <= PAGE_SIZE_MAX => size,
            _ => return Err(Refusal::field(Reason::PageInvalid, "page_size", "page_size above 1000").into()),
        } as usize;
        // Ids are listed in order, so a page continues after the last id of the previous one.
        let after = page_start(&request.page_token)?;
        self.switch.read_barrier().await?;
        let all = self.switch.participants.all();
        let start = all.iter().position(|participant| *participant.psp_id > *after).unwrap_or(all.len());
        let page: Vec<_> = all[start..].iter().take(page_size).collect();
        let next_page_token = match (page.last(), start + page.len() < all.len()) {
            (Some(last), true) => format!("{PAGE_TOKEN_PREFIX}{}", last.psp_id),
            _ => String::new(),
        };
        let participants =
            page.iter().map(|participant| participant_view(&self.switch, participant)).collect::<Result<_, _>>()?;
        Ok(Response::new(proto::ListParticipantsResponse { participants, next_page_token }))
    }

    async fn fund_in(&self, request: Request<proto::FundRequest>) -> Result<Response<proto::FundResult>, Status> {
        auth::operator(&request)?;
        let _serial = self.switch.operator_lock.lock().await;
        Ok(Response::new(super::funding::fund(&self.switch, request.into_inner(), true).await?))
    }

    async fn fund_out(&self, request: Request<proto::FundRequest>) -> Result<Response<proto::FundResult>, Status> {
        auth::operator(&request)?;
        let _serial = self.switch.operator_lock.lock().await;
        Ok(Response::new(super::funding::fund(&self.switch, request.into_inner(), false).await?))
    }

    async fn set_net_debit_cap(
        &self,
        request: Request<proto::SetNetDebitCapRequest>,
    ) -> Result<Response<proto::Participant>, Status> {
        auth::operator(&request)?;
        let _serial = self.switch.operator_lock.lock().await;
        let request = request.into_inner();
        check_psp_id(&request.psp_id)?;
        if i64::try_from(request.net_debit_cap_minor).is_err() {
            return Err(Refusal::field(Reason::AmountOverLimit, "net_debit_cap_minor", "cap above 2^63-1").into());
        }
        let participant = self.participant(&request.psp_id)?;
        // Checked before anything is written, so that the refusal changes nothing; the ledger
        // checks again atomically against payments running meanwhile.
        let position = participant_view(&self.switch, &participant)?;
        let own_minor = i128::from(position.balance_minor) - i128::from(position.reserved_minor);
        if own_minor + i128::from(request.net_debit_cap_minor) < 0 {
            return Err(below_usage().into());
        }
        let changed =
            Participant { net_debit_cap_minor: request.net_debit_cap_minor, ..Participant::clone(&participant) };
        let limit = Event::SetDebitLimit {
            account_id: participant.account_id,
            debit_limit: u128::from(request.net_debit_cap_minor),
            linked: false,
        };
        let results = self.change(changed.clone(), Some(limit)).await?;
        match results.as_slice() {
            [ResultCode::Ok, ResultCode::Ok] => self.view(&changed),
            [_, ResultCode::DebitLimitBelowCurrentDebits] => Err(below_usage().into()),
            other => Err(Refusal::new(Reason::Internal, format!("ledger answered {other:?}")).into()),
        }
    }

    async fn suspend_participant(
        &self,
        request: Request<proto::SuspendParticipantRequest>,
    ) -> Result<Response<proto::Participant>, Status> {
        auth::operator(&request)?;
        let _serial = self.switch.operator_lock.lock().await;
        let request = request.get_ref();
        let changed = self.set_status(&request.psp_id, &request.note, ParticipantStatus::Suspended).await?;
        tracing::warn!(psp = %changed.psp_id, "participant suspended");
        self.view(&changed)
    }

    async fn reactivate_participant(
        &self,
        request: Request<proto::ReactivateParticipantRequest>,
    ) -> Result<Response<proto::Participant>, Status> {
        auth::operator(&request)?;
        let _serial = self.switch.operator_lock.lock().await;
        let request = request.get_ref();
        let changed = self.set_status(&request.psp_id, &request.note, ParticipantStatus::Active).await?;
        tracing::info!(psp = %changed.psp_id, "participant reactivated");
        self.view(&changed)
    }

    async fn close_settlement_window(
        &self,
        request: Request<proto::CloseSettlementWindowRequest>,
    ) -> Result<Response<proto::SettlementReport>, Status> {
        auth::operator(&request)?;
        let _serial = self.switch.operator_lock.lock().await;
        Ok(Response::new(super::settlement::close(&self.switch, request.get_ref().window_id).await?))
    }

    async fn get_settlement_report(
        &self,
        request: Request<proto::GetSettlementReportRequest>,
    ) -> Result<Response<proto::SettlementReport>, Status> {
        auth::operator(&request)?;
        self.switch.read_barrier().await?;
        Ok(Response::new(super::settlement::report(&self.switch, request.get_ref().window_id)?))
    }

    async fn get_payment(
        &self,
        request: Request<proto::GetPaymentRequest>,
    ) -> Result<Response<proto::Payment>, Status> {
        auth::operator(&request)?;
        let payment_id = parse_id(&request.get_ref().payment_id, "payment_id")?;
        self.switch.read_barrier().await?;
        Ok(Response::new(super::payments::payment_status(&self.switch, payment_id, None)?))
    }

    async fn get_payments(
        &self,
        request: Request<proto::GetPaymentsRequest>,
    ) -> Result<Response<proto::GetPaymentsResponse>, Status> {
        auth::operator(&request)?;
        let ids = request.into_inner().payment_ids;
        if ids.is_empty() || ids.len() > BATCH_SIZE_MAX {
            let message = format!("a lookup holds 1 to {BATCH_SIZE_MAX} ids");
            return Err(Refusal::field(Reason::BatchSizeOutOfRange, "payment_ids", message).into());
        }
        // Every id is checked before any is looked up: a malformed id refuses the whole call.
        let parsed = ids.iter().map(|id| parse_id(id, "payment_ids")).collect::<Result<Vec<_>, _>>()?;
        self.switch.read_barrier().await?;
        // Batched reads of every transfer, metadata and refunds record of the call.
        let transfers = super::payments::lookup_payments(&self.switch, &parsed)?;
        let mut payments = Vec::with_capacity(parsed.len());
        for ((bytes, id), stored) in ids.into_iter().zip(parsed).zip(transfers) {
            let lookup = match super::payments::status_of(&self.switch, id, stored, None) {
                Ok(payment) => proto::PaymentLookup { payment_id: bytes, found: true, payment: Some(payment) },
                Err(refusal) if refusal.reason == Reason::PaymentNotFound => {
                    proto::PaymentLookup { payment_id: bytes, found: false, payment: None }
                }
                Err(refusal) => return Err(refusal.into()),
            };
            payments.push(lookup);
        }
        Ok(Response::new(proto::GetPaymentsResponse { payments }))
    }

    async fn add_node(
        &self,
        request: Request<proto::AddNodeRequest>,
    ) -> Result<Response<proto::ClusterMembership>, Status> {
        let operator = auth::operator(&request)?;
        Ok(Response::new(super::membership::add(&self.switch, &operator, request.into_inner()).await?))
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::ClusterMembership>, Status> {
        let operator = auth::operator(&request)?;
        Ok(Response::new(super::membership::remove(&self.switch, &operator, request.get_ref().node_id).await?))
    }
}
