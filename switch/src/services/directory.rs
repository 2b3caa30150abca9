//! `DirectoryService`: PSPs register and remove their customers' aliases; anyone resolves them.
//!
//! A registration is durable (a ledger record) before the alias becomes visible. Writes are
//! serialised by one lock so that the map always shows the last committed value; they are not on
//! the payment path, and bulk loading goes through `RegisterAliasBatch` (8,190 per call, one
//! durable write per ledger batch).
//!
//! A suspended PSP keeps its directory (directory.proto): registering, removing and resolving
//! aliases move no money, and payments to or from its aliases are refused while it is suspended
//! anyway. So these calls ask only that the caller be registered.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::payments::RateLimiter;
use super::{status_code, BATCH_SIZE_MAX};
use crate::auth;
use crate::core::{now_unix_ns, record, tables, AliasRecord, Switch};
use crate::directory::{alias_owner, check_text, AliasEntry, DISPLAY_NAME_BYTES_MAX};
use crate::proto::directory_service_server::DirectoryService;
use crate::proto::{self, Reason};
use crate::reason::Refusal;

pub struct Directory {
    pub switch: Arc<Switch>,
    pub write_lock: tokio::sync::Mutex<()>,
    /// Directory calls per PSP per second (`limits.directory_calls_per_second`).
    limiter: RateLimiter,
}

/// An alias checked and ready to record.
struct Registration {
    alias: String,
    record: AliasRecord,
}

impl Directory {
    pub fn new(switch: Arc<Switch>) -> Self {
        let limiter = RateLimiter::new(switch.config.limits.directory_calls_per_second);
        Directory { switch, write_lock: tokio::sync::Mutex::new(()), limiter }
    }

    /// The calling PSP, which must be registered (suspended or not) and within its directory
    /// rate: every call counts, which also bounds alias enumeration through ResolveAlias.
    fn caller<T>(&self, request: &Request<T>) -> Result<String, Refusal> {
        let psp = auth::psp(request)?;
        if self.switch.participants.get(&psp).is_none() {
            return Err(Refusal::new(Reason::CallerNotRegistered, format!("{psp} is not a registered participant")));
        }
        if !self.limiter.allow(&psp) {
            return Err(RateLimiter::refusal("directory calls are rate limited; back off"));
        }
        Ok(psp)
    }

    /// An alias as the ledger recorded it (the directory map has no registration time), or
    /// `None` if it is not registered.
    fn stored(&self, alias: &str) -> Result<Option<proto::Alias>, Refusal> {
        let Some(record) = self.switch.read::<AliasRecord>(tables::ALIASES, alias.as_bytes())? else {
            return Ok(None);
        };
        Ok(Some(proto::Alias {
            alias: alias.to_string(),
            psp_id: record.psp_id,
            display_name: record.display_name,
            registered_at_unix_ns: record.registered_at_unix_ns,
        }))
    }

    /// Checks one registration, `pending` others of the same call being about to be added.
    /// `Ok(None)`: already registered exactly so (idempotent).
    fn check(
        &self,
        psp: &str,
        request: &proto::RegisterAliasRequest,
        pending: usize,
    ) -> Result<Option<Registration>, Refusal> {
        let owner = alias_owner(&request.alias, "alias")?;
        if owner != psp {
            return Err(Refusal::field(Reason::AliasOwnedByOtherPsp, "alias", "the alias belongs to another PSP"));
        }
        check_text(&request.display_name, "display_name", DISPLAY_NAME_BYTES_MAX, true)?;
        if let Some(existing) = self.switch.directory.resolve(&request.alias) {
            return if *existing.display_name == *request.display_name {
                Ok(None)
            } else {
                Err(Refusal::field(Reason::AliasAlreadyRegistered, "alias", "registered with another display name"))
            };
        }
        if !self.switch.directory.has_room_for(pending + 1) {
            return Err(Refusal::new(Reason::DirectoryFull, "the directory holds its maximum of aliases"));
        }
        let record = AliasRecord {
            psp_id: psp.to_string(),
            display_name: request.display_name.clone(),
            registered_at_unix_ns: now_unix_ns(),
        };
        Ok(Some(Registration { alias: request.alias.clone(), record }))
    }

    /// Records registrations durably, then shows them. One result per registration.
    async fn commit(&self, registrations: Vec<Registration>) -> Result<Vec<Result<(), Refusal>>, Refusal> {
        let mut outcomes = Vec::with_capacity(registrations.len());
        for chunk in registrations.chunks(self.switch.config.ledger.batch_size_max) {
            let events = chunk
                .iter()
                .map(|registration| {
                    record(tables::ALIASES, registration.alias.as_bytes(), registration.record.encode_to_vec(), false)
                })
                .collect();
            let results = self.switch.submit(events).await?;
            for (registration, code) in chunk.iter().zip(results.iter()) {
                if *code == ledger::ResultCode::Ok {
                    let entry = AliasEntry {
                        psp: registration.record.psp_id.as_str().into(),
                        display_name: registration.record.display_name.as_str().into(),
                    };
                    // Registration checked the alias's length before committing it.
                    if self.switch.directory.insert(&registration.alias, entry) {
                        outcomes.push(Ok(()));
                    } else {
                        outcomes.push(Err(Refusal::new(Reason::Internal, "alias committed but too long to index")));
                    }
                } else {
                    outcomes.push(Err(Refusal::new(Reason::Internal, format!("ledger answered {code}"))));
                }
            }
        }
        Ok(outcomes)
    }
}

/// A batch item repeating an alias registered earlier in the same batch as `first_display_name`:
/// the same display name is a retry, another one is refused as RegisterAlias would refuse it.
fn repeated(first_display_name: &str, item: &proto::RegisterAliasRequest) -> Result<(), Refusal> {
    check_text(&item.display_name, "display_name", DISPLAY_NAME_BYTES_MAX, true)?;
    if item.display_name != first_display_name {
        return Err(Refusal::field(Reason::AliasAlreadyRegistered, "alias", "registered with another display name"));
    }
    Ok(())
}

#[tonic::async_trait]
impl DirectoryService for Directory {
    async fn register_alias(
        &self,
        request: Request<proto::RegisterAliasRequest>,
    ) -> Result<Response<proto::Alias>, Status> {
        let psp = self.caller(&request)?;
        let request = request.into_inner();
        let _serial = self.write_lock.lock().await;
        if let Some(registration) = self.check(&psp, &request, 0)? {
            if let Some(Err(refusal)) = self.commit(vec![registration]).await?.pop() {
                return Err(refusal.into());
            }
        }
        // New or a retry: the registration as recorded, with its original time.
        let stored = self.stored(&request.alias)?;
        Ok(Response::new(stored.ok_or_else(|| Refusal::new(Reason::Internal, "a registered alias has no record"))?))
    }

    async fn register_alias_batch(
        &self,
        request: Request<proto::RegisterAliasBatchRequest>,
    ) -> Result<Response<proto::RegisterAliasBatchResponse>, Status> {
        let psp = self.caller(&request)?;
        let aliases = request.into_inner().aliases;
        if aliases.is_empty() || aliases.len() > BATCH_SIZE_MAX {
            let message = format!("a batch holds 1 to {BATCH_SIZE_MAX} aliases");
            return Err(Refusal::field(Reason::BatchSizeOutOfRange, "aliases", message).into());
        }
        let _serial = self.write_lock.lock().await;
        let mut outcomes: Vec<Option<Result<(), Refusal>>> = Vec::with_capacity(aliases.len());
        let mut registrations = Vec::new();
        let mut positions = Vec::new();
        // Aliases this call registers, with their display names.
        let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for (position, item) in aliases.iter().enumerate() {
            if let Some(first) = seen.get(&item.alias) {
                // A repeat inside the batch answers like a retry of its first occurrence.
                outcomes.push(Some(repeated(first, item)));
                continue;
            }
            match self.check(&psp, item, registrations.len()) {
                Ok(Some(registration)) => {
                    seen.insert(item.alias.clone(), item.display_name.clone());
                    registrations.push(registration);
                    positions.push(position);
                    outcomes.push(None);
                }
                Ok(None) => outcomes.push(Some(Ok(()))),
                Err(refusal) => outcomes.push(Some(Err(refusal))),
            }
        }
        for (position, outcome) in positions.into_iter().zip(self.commit(registrations).await?) {
            outcomes[position] = Some(outcome);
        }
        let results = aliases
            .iter()
            .zip(outcomes)
            .map(|(item, outcome)| {
                let (reason, status) = match outcome {
                    Some(Err(refusal)) => (refusal.reason, status_code(&refusal)),
                    _ => (Reason::Unspecified, 0),
                };
                proto::RegisterAliasResult { alias: item.alias.clone(), reason: reason as i32, status_code: status }
            })
            .collect();
        Ok(Response::new(proto::RegisterAliasBatchResponse { results }))
    }

    async fn remove_alias(
        &self,
        request: Request<proto::RemoveAliasRequest>,
    ) -> Result<Response<proto::RemoveAliasResponse>, Status> {
        let psp = self.caller(&request)?;
        let alias = request.into_inner().alias;
        if alias_owner(&alias, "alias")? != psp {
            return Err(
                Refusal::field(Reason::AliasOwnedByOtherPsp, "alias", "the alias belongs to another PSP").into()
            );
        }
        let _serial = self.write_lock.lock().await;
        if self.switch.directory.resolve(&alias).is_none() {
            return Ok(Response::new(proto::RemoveAliasResponse { existed: false }));
        }
        // An empty value removes the record.
        let results = self.switch.submit(vec![record(tables::ALIASES, alias.as_bytes(), Vec::new(), false)]).await?;
        if results[0] != ledger::ResultCode::Ok {
            return Err(Refusal::new(Reason::Internal, format!("ledger answered {}", results[0])).into());
        }
        let existed = self.switch.directory.remove(&alias);
        Ok(Response::new(proto::RemoveAliasResponse { existed }))
    }

    async fn resolve_alias(
        &self,
        request: Request<proto::ResolveAliasRequest>,
    ) -> Result<Response<proto::Alias>, Status> {
        self.caller(&request)?;
        let alias = &request.get_ref().alias;
        alias_owner(alias, "alias")?;
        self.switch.read_barrier().await?;
        let stored = self.stored(alias)?;
        Ok(Response::new(stored.ok_or_else(|| Refusal::field(Reason::UnknownAlias, "alias", "no such alias"))?))
    }
}
