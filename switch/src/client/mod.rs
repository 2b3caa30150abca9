//! `switch client`: a command-line client for operators and for trying the switch by hand:
//! register and fund participants, register aliases, pay, and read a payment's status, each call
//! made over mutual TLS with a certificate from the development CA or from given PEM files.
//! `cluster`: `switch cluster status`, `add` and `remove` (the same connection, for the latter).

pub mod cluster;
mod show;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::proto::directory_service_client::DirectoryServiceClient;
use crate::proto::operator_service_client::OperatorServiceClient;
use crate::proto::payment_service_client::PaymentServiceClient;
use crate::proto::{self, ConfirmationMode};
use crate::tls::DevelopmentCa;

#[derive(Clone, Subcommand)]
pub enum ClientCommand {
    /// Register a participant (operator).
    RegisterParticipant {
        #[arg(long)]
        psp: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "INR")]
        currency: String,
        /// Net debit cap, minor units.
        #[arg(long, default_value_t = 0)]
        cap: u64,
        /// Ask the payee to confirm each credit instead of crediting automatically.
        #[arg(long)]
        confirmed: bool,
    },
    /// Prefund a participant's position from the settlement account (operator).
    FundIn {
        #[arg(long)]
        psp: String,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value = "INR")]
        currency: String,
        /// Transfer id (idempotency key), a decimal u128; random when omitted.
        #[arg(long)]
        id: Option<u128>,
    },
    /// Register one of the caller's aliases (PSP).
    Alias {
        #[arg(long)]
        alias: String,
        #[arg(long)]
        name: String,
    },
    /// Pay by alias (PSP).
    Pay {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value = "INR")]
        currency: String,
        #[arg(long, default_value = "")]
        note: String,
        /// Payment id (idempotency key), a decimal u128; random when omitted.
        #[arg(long)]
        id: Option<u128>,
    },
    /// The definitive state of a payment (PSP).
    Status {
        #[arg(long)]
        id: u128,
    },
    /// The caller's position (PSP).
    Position,
}

/// The client certificate a command acts with.
#[derive(Clone)]
pub enum Identity {
    /// An operator name or a PSP id of the development CA under `<data>/certs`.
    Development(String),
    /// PEM files issued by the deployment's own CA.
    Files { certificate: PathBuf, key: PathBuf },
}

/// Connection settings shared by every client command.
#[derive(Clone)]
pub struct Connection {
    pub server: String,
    pub data: PathBuf,
    pub identity: Identity,
    /// The DNS name the server's certificate must carry.
    pub domain: String,
    /// The CA certificate that issued the server's; `None`: the development CA's.
    pub ca: Option<PathBuf>,
}

impl Connection {
    async fn channel(&self) -> anyhow::Result<Channel> {
        let development = DevelopmentCa::new(self.data.join("certs"));
        let (certificate, key) = match &self.identity {
            Identity::Files { certificate, key } => (certificate.clone(), key.clone()),
            Identity::Development(name) => {
                let operator = development.operator(name);
                let pair = if operator.certificate.exists() { operator } else { development.psp(name) };
                (pair.certificate, pair.key)
            }
        };
        let ca = self.ca.clone().unwrap_or_else(|| development.ca_certificate());
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&ca)?))
            .identity(tonic::transport::Identity::from_pem(read(&certificate)?, read(&key)?))
            .domain_name(self.domain.clone());
        let endpoint = Channel::from_shared(self.server.clone()).context("server address")?.tls_config(tls)?;
        endpoint.connect().await.with_context(|| format!("connecting to {}", self.server))
    }
}

/// A fresh random id (never a reserved one).
fn random_id() -> u128 {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&blake3::hash(&crate::core::now_unix_ns().to_be_bytes()).as_bytes()[..16]);
    u128::from_be_bytes(bytes).clamp(1, u128::MAX - 1)
}

/// A node of a replicated switch that does not lead, and where the leader takes calls.
#[derive(Debug, thiserror::Error)]
#[error("this node is not the leader; the leader is at {0}")]
pub struct NotLeaderAt(pub String);

/// Most redirects followed for one command (a leader change during the command adds one).
const REDIRECTS_MAX: usize = 3;

/// Runs `command`, following NOT_LEADER's `switch-leader` trailer to the leader: the refusing
/// node recorded nothing, so the command is sent again there.
pub async fn run_following_the_leader(connection: Connection, command: ClientCommand) -> anyhow::Result<()> {
    following_the_leader(connection, |connection| run(connection, command.clone())).await
}

/// Makes `call` on `connection`'s server and again on the leader each NOT_LEADER names.
pub async fn following_the_leader<F, Call>(mut connection: Connection, call: F) -> anyhow::Result<()>
where
    F: Fn(Connection) -> Call,
    Call: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..REDIRECTS_MAX {
        match call(connection.clone()).await {
            Err(error) => match error.downcast_ref::<NotLeaderAt>() {
                Some(NotLeaderAt(leader)) => {
                    eprintln!("{} is not the leader: sending to {leader}", connection.server);
                    connection.server = format!("https://{leader}");
                }
                None => return Err(error),
            },
            done => return done,
        }
    }
    call(connection).await
}

/// A call the switch refused, with its reason.
#[derive(Debug, thiserror::Error)]
#[error("{code:?} {}: {message}", reason.map_or("-", |reason| reason.as_str_name()))]
pub struct Refused {
    pub code: tonic::Code,
    pub reason: Option<crate::proto::Reason>,
    pub message: String,
    /// `switch-retry-after-ms`, when the refusal carries it.
    pub retry_after_ms: Option<u64>,
}

fn describe(status: tonic::Status) -> anyhow::Error {
    let reason = crate::reason::reason_of(&status);
    let trailer = |name: &str| status.metadata().get(name).and_then(|value| value.to_str().ok());
    if reason == Some(crate::proto::Reason::NotLeader) {
        if let Some(leader) = trailer("switch-leader") {
            return anyhow::Error::new(NotLeaderAt(leader.to_string()));
        }
    }
    let retry_after_ms = trailer("switch-retry-after-ms").and_then(|value| value.parse().ok());
    anyhow::Error::new(Refused { code: status.code(), reason, message: status.message().to_string(), retry_after_ms })
}

pub async fn run(connection: Connection, command: ClientCommand) -> anyhow::Result<()> {
    let channel = connection.channel().await?;
    match command {
        ClientCommand::RegisterParticipant { psp, name, currency, cap, confirmed } => {
            let mode = if confirmed { ConfirmationMode::Confirmed } else { ConfirmationMode::Automatic };
            let request = proto::RegisterParticipantRequest {
                psp_id: psp,
                name,
                currency,
                net_debit_cap_minor: cap,
                confirmation_mode: mode as i32,
            };
            let participant =
                OperatorServiceClient::new(channel).register_participant(request).await.map_err(describe)?;
            print!("{}", show::participant(participant.get_ref()));
        }
        ClientCommand::FundIn { psp, amount, currency, id } => {
            let transfer_id = id.unwrap_or_else(random_id).to_be_bytes().to_vec();
            let request =
                proto::FundRequest { psp_id: psp, transfer_id, amount_minor: amount, currency, note: String::new() };
            let result = OperatorServiceClient::new(channel).fund_in(request).await.map_err(describe)?;
            print!("{}", show::fund(result.get_ref()));
        }
        ClientCommand::Alias { alias, name } => {
            let request = proto::RegisterAliasRequest { alias, display_name: name };
            let alias = DirectoryServiceClient::new(channel).register_alias(request).await.map_err(describe)?;
            print!("{}", show::alias(alias.get_ref()));
        }
        ClientCommand::Pay { from, to, amount, currency, note, id } => {
            let id = id.unwrap_or_else(random_id);
            let request = proto::PayRequest {
                payment_id: id.to_be_bytes().to_vec(),
                payer_alias: from,
                payee_alias: to,
                amount_minor: amount,
                currency,
                note,
                deadline_unix_ms: 0,
            };
            let result = PaymentServiceClient::new(channel).pay(request).await.map_err(describe)?.into_inner();
            let state = proto::PaymentState::try_from(result.state).map_or("?", |state| state.as_str_name());
            println!("payment {id}: {state}");
        }
        ClientCommand::Status { id } => {
            let request = proto::GetPaymentStatusRequest { payment_id: id.to_be_bytes().to_vec() };
            let payment = PaymentServiceClient::new(channel).get_payment_status(request).await.map_err(describe)?;
            print!("{}", show::payment(payment.get_ref()));
        }
        ClientCommand::Position => {
            let position = PaymentServiceClient::new(channel)
                .get_position(proto::GetPositionRequest {})
                .await
                .map_err(describe)?;
            print!("{}", show::participant(position.get_ref()));
        }
    }
    Ok(())
}

/// Checks a server address before connecting.
pub fn check_server(server: &str) -> anyhow::Result<()> {
    if !server.starts_with("https://") {
        bail!("--server must be an https:// address (every connection is mutual TLS)");
    }
    Ok(())
}
