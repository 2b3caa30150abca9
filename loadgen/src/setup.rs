//! Before the load: register the simulated PSPs (operator API), fund them, connect each with its own
//! certificate, and register the population's aliases in batches. Idempotent, so a second run
//! against the same switch reuses what the first one created.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use switch::proto::directory_service_client::DirectoryServiceClient;
use switch::proto::operator_service_client::OperatorServiceClient;
use switch::proto::{self, ConfirmationMode, ParticipantStatus, Reason};
use tonic::transport::Channel;

use crate::connect::{describe, Connector};
use crate::workload::{IdSpace, Population};

/// Aliases per RegisterAliasBatch (the API's BATCH_SIZE_MAX).
const ALIAS_BATCH: usize = 8_190;

/// How the PSPs are registered.
#[derive(Clone, Debug)]
pub struct Onboarding {
    pub currency: String,
    pub mode: ConfirmationMode,
    pub net_debit_cap: u64,
    pub funding: u64,
}

/// One simulated PSP, connected.
pub struct Psp {
    pub index: u32,
    pub id: String,
    /// Its connections (HTTP/2), used round-robin.
    pub channels: Vec<Channel>,
}

/// Every participant's ledger view, by PSP id.
pub type Positions = std::collections::HashMap<String, proto::Participant>;

pub async fn operator(connector: &Connector, name: &str) -> anyhow::Result<OperatorServiceClient<Channel>> {
    let pair = connector.operator_certificate(name)?;
    let channel = connector.connect(&pair).await?;
    Ok(OperatorServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Lists every participant (all pages).
pub async fn positions(operator: &mut OperatorServiceClient<Channel>) -> anyhow::Result<Positions> {
    let mut all = Positions::new();
    let mut page_token = String::new();
    loop {
        let page = operator
            .list_participants(proto::ListParticipantsRequest { page_size: 1_000, page_token })
            .await
            .map_err(|status| anyhow::anyhow!("listing participants: {}", describe(&status)))?
            .into_inner();
        for participant in page.participants {
            all.insert(participant.psp_id.clone(), participant);
        }
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// Registers the PSPs that are missing, checks the ones that exist, and funds each.
pub async fn participants(
    operator: &mut OperatorServiceClient<Channel>,
    population: &Population,
    onboarding: &Onboarding,
    ids: IdSpace,
) -> anyhow::Result<()> {
    let existing = positions(operator).await?;
    for (index, psp) in population.psp_ids.iter().enumerate() {
        match existing.get(psp) {
            Some(participant) => {
                if participant.confirmation_mode != onboarding.mode as i32 {
                    bail!(
                        "PSP {psp} is registered already in another confirmation mode; use another --psp-prefix for a {} run",
                        onboarding.mode.as_str_name()
                    );
                }
                if participant.status != ParticipantStatus::Active as i32 {
                    bail!("PSP {psp} is suspended in the switch; reactivate it or use another --psp-prefix");
                }
                if participant.currency != onboarding.currency {
                    bail!("PSP {psp} holds {} but the run uses {}", participant.currency, onboarding.currency);
                }
            }
            None => {
                let request = proto::RegisterParticipantRequest {
                    psp_id: psp.clone(),
                    name: format!("loadgen PSP {}", index + 1),
                    currency: onboarding.currency.clone(),
                    net_debit_cap_minor: onboarding.net_debit_cap,
                    confirmation_mode: onboarding.mode as i32,
                };
                operator
                    .register_participant(request)
                    .await
                    .map_err(|status| anyhow::anyhow!("registering PSP {psp}: {}", describe(&status)))?;
            }
        }
        if onboarding.funding > 0 {
            let request = proto::FundRequest {
                psp_id: psp.clone(),
                transfer_id: ids.id(index as u64).to_be_bytes().to_vec(),
                amount_minor: onboarding.funding,
                currency: onboarding.currency.clone(),
                note: "loadgen funding".into(),
            };
            operator
                .fund_in(request)
                .await
                .map_err(|status| anyhow::anyhow!("funding PSP {psp}: {}", describe(&status)))?;
        }
    }
    Ok(())
}

/// Connects every PSP with its own certificate.
pub async fn connect(connector: &Connector, population: &Population, connections: usize) -> anyhow::Result<Vec<Psp>> {
    let mut psps = Vec::with_capacity(population.psp_ids.len());
    for (index, id) in population.psp_ids.iter().enumerate() {
        let pair = connector.psp_certificate(id)?;
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            channels.push(connector.connect(&pair).await.with_context(|| format!("connecting as PSP {id}"))?);
        }
        psps.push(Psp { index: index as u32, id: id.clone(), channels });
    }
    Ok(psps)
}

/// Registers every user's alias, PSPs in parallel, batches of 8,190. Prints progress to stderr.
pub async fn aliases(psps: &[Psp], population: &Population, quiet: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let population = Arc::new(population.clone());
    let mut tasks = Vec::new();
    for psp in psps {
        let mut directory = DirectoryServiceClient::new(psp.channels[0].clone());
        let (population, done, index, id) = (population.clone(), done.clone(), psp.index, psp.id.clone());
        tasks.push(tokio::spawn(async move {
            let users = population.users_of(index);
            let mut first = users.start;
            while first < users.end {
                let end = (first + ALIAS_BATCH as u64).min(users.end);
                let aliases: Vec<proto::RegisterAliasRequest> = (first..end)
                    .map(|user| proto::RegisterAliasRequest {
                        alias: population.alias(user),
                        display_name: format!("User {user}"),
                    })
                    .collect();
                let response = loop {
                    match directory
                        .register_alias_batch(proto::RegisterAliasBatchRequest { aliases: aliases.clone() })
                        .await
                    {
                        Ok(response) => break response.into_inner(),
                        // Rate limited or busy: back off and retry the same (idempotent) batch.
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(status) => bail!("registering aliases of {id}: {}", describe(&status)),
                    }
                };
                if let Some(refused) = response.results.iter().find(|result| result.status_code != 0) {
                    let reason = Reason::try_from(refused.reason).map_or("?", |reason| reason.as_str_name());
                    bail!("registering alias {} of {id}: refused, {reason}", refused.alias);
                }
                done.fetch_add(end - first, std::sync::atomic::Ordering::Relaxed);
                first = end;
            }
            Ok(())
        }));
    }
    let progress = {
        let (done, total) = (done.clone(), population.users);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !quiet {
                    let done = done.load(std::sync::atomic::Ordering::Relaxed);
                    eprintln!("  aliases registered: {done} / {total}");
                }
            }
        })
    };
    let mut result = Ok(());
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => result = Err(error),
            Err(error) => result = Err(anyhow::anyhow!("alias registration task failed: {error}")),
        }
    }
    progress.abort();
    result?;
    if !quiet {
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "  {} aliases registered in {elapsed:.1} s ({:.0}/s)",
            population.users,
            population.users as f64 / elapsed
        );
    }
    Ok(())
}
