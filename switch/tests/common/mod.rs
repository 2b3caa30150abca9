//! A real switch on an ephemeral port with real mutual TLS, and clients for several PSPs.

#![allow(dead_code)] // each test binary uses a different subset

pub mod chromium;
pub mod cluster;
pub mod payer;
pub mod processes;
pub mod served;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switch::config::Config;
use switch::core::Switch;
use switch::proto::directory_service_client::DirectoryServiceClient;
use switch::proto::event_service_client::EventServiceClient;
use switch::proto::operator_service_client::OperatorServiceClient;
use switch::proto::payment_service_client::PaymentServiceClient;
use switch::proto::subscribe_request::Message as Incoming;
use switch::proto::subscribe_response::Message as Outgoing;
use switch::proto::{self, ConfirmationMode};
use switch::server::Background;
use switch::tls::{DevelopmentCa, PemPair};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Streaming;

pub struct TestSwitch {
    pub dir: tempfile::TempDir,
    /// Where PSPs and the operator connect, and the CA that issues their certificates.
    pub endpoint: Endpoint,
    /// The operator HTTP port (metrics, dashboard).
    pub operator_address: SocketAddr,
    /// The plain gRPC health port.
    pub health_address: SocketAddr,
    pub switch: Arc<Switch>,
    server: Option<Background>,
}

/// The clients' side of a switch, in this process or another: its mTLS port and the development
/// CA in its data directory, which issues the PSP and operator certificates.
pub struct Endpoint {
    pub address: SocketAddr,
    pub ca: DevelopmentCa,
}

/// A test switch's clients are its endpoint's (`test.psp(..)`, `test.ca`, `test.address`).
impl std::ops::Deref for TestSwitch {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

pub fn config(data: PathBuf) -> Config {
    Config { data_dir: data, ..Config::default() }.on_ephemeral_ports()
}

impl TestSwitch {
    pub async fn start() -> TestSwitch {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in(dir).await
    }

    /// Starts a switch with a configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestSwitch {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = config(dir.path().join("data"));
        adjust(&mut config);
        Self::start_configured(dir, config).await
    }

    /// Starts (or restarts) a switch on the data in `dir`.
    pub async fn start_in(dir: tempfile::TempDir) -> TestSwitch {
        let config = config(dir.path().join("data"));
        Self::start_configured(dir, config).await
    }

    async fn start_configured(dir: tempfile::TempDir, config: Config) -> TestSwitch {
        let mut server = Background::start(config).await.expect("start switch");
        let switch = server.leading().await.expect("a cluster of one leads");
        let ca = DevelopmentCa::new(dir.path().join("data/certs"));
        TestSwitch {
            dir,
            endpoint: Endpoint { address: server.address, ca },
            operator_address: server.operator_address,
            health_address: server.health_address,
            switch,
            server: Some(server),
        }
    }

    /// Stops the server gracefully and returns its data directory, for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown().await;
        let dir = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.dir, dir)
    }

    async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("server stopped cleanly");
        }
    }

    /// Every position and the settlement accounts net to zero in the ledger.
    pub fn assert_money_conserved(&self) {
        let accounts = self.switch.ledger.store().expect("the store").all_accounts().expect("accounts");
        let debits: u128 = accounts.iter().map(|account| account.debits_posted + account.debits_pending).sum();
        let credits: u128 = accounts.iter().map(|account| account.credits_posted + account.credits_pending).sum();
        assert_eq!(debits, credits, "money created or lost");
    }
}

impl Endpoint {
    pub async fn channel(&self, pair: Option<&PemPair>) -> Result<Channel, tonic::transport::Error> {
        let ca = std::fs::read(self.ca.ca_certificate()).expect("CA certificate");
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        if let Some(pair) = pair {
            let certificate = std::fs::read(&pair.certificate).expect("certificate");
            let key = std::fs::read(&pair.key).expect("key");
            tls = tls.identity(Identity::from_pem(certificate, key));
        }
        Channel::from_shared(format!("https://{}", self.address)).expect("uri").tls_config(tls)?.connect().await
    }

    pub async fn operator(&self) -> OperatorServiceClient<Channel> {
        let pair = self.ca.operator("admin");
        OperatorServiceClient::new(self.channel(Some(&pair)).await.expect("operator connects"))
    }

    pub async fn psp(&self, psp: &str) -> Psp {
        let pair = self.ca.issue_psp(psp).expect("issue certificate");
        let channel = self.channel(Some(&pair)).await.expect("PSP connects");
        Psp { payments: PaymentServiceClient::new(channel.clone()), directory: DirectoryServiceClient::new(channel) }
    }

    /// Registers an automatic-mode PSP with a net debit cap and a prefunded position.
    pub async fn onboard(&self, psp: &str, cap: u64, funds: u64) -> Psp {
        self.onboard_in_mode(psp, cap, funds, ConfirmationMode::Automatic).await
    }

    /// Registers a PSP in the given confirmation mode.
    pub async fn onboard_in_mode(&self, psp: &str, cap: u64, funds: u64, mode: ConfirmationMode) -> Psp {
        let mut operator = self.operator().await;
        operator
            .register_participant(proto::RegisterParticipantRequest {
                psp_id: psp.into(),
                name: format!("{psp} bank"),
                currency: "INR".into(),
                net_debit_cap_minor: cap,
                confirmation_mode: mode as i32,
            })
            .await
            .expect("register participant");
        if funds > 0 {
            operator
                .fund_in(proto::FundRequest {
                    psp_id: psp.into(),
                    transfer_id: id(funding_id(psp)),
                    amount_minor: funds,
                    currency: "INR".into(),
                    note: String::new(),
                })
                .await
                .expect("fund in");
        }
        self.psp(psp).await
    }

    /// The usual pair: `bank-a` (cap and funds as given) with alias `ana@bank-a`, and an unfunded
    /// `bank-b` with alias `bo@bank-b`, both automatic.
    pub async fn payer_and_payee(&self, cap: u64, funds: u64) -> (Psp, Psp) {
        let mut bank_a = self.onboard("bank-a", cap, funds).await;
        let mut bank_b = self.onboard("bank-b", 0, 0).await;
        bank_a.alias("ana@bank-a", "Ana").await;
        bank_b.alias("bo@bank-b", "Bo").await;
        (bank_a, bank_b)
    }

    /// `bank-a` (automatic, funded as given) with alias `ana@bank-a`, and an unfunded
    /// CONFIRMED-mode `bank-c` with alias `cy@bank-c`, which decides each payment to it.
    pub async fn payer_and_confirming_payee(&self, funds: u64) -> (Psp, Psp) {
        let mut bank_a = self.onboard("bank-a", 0, funds).await;
        let mut bank_c = self.onboard_in_mode("bank-c", 0, 0, ConfirmationMode::Confirmed).await;
        bank_a.alias("ana@bank-a", "Ana").await;
        bank_c.alias("cy@bank-c", "Cy").await;
        (bank_a, bank_c)
    }
}

pub struct Psp {
    pub payments: PaymentServiceClient<Channel>,
    pub directory: DirectoryServiceClient<Channel>,
}

impl Psp {
    /// This PSP's position as the switch reports it.
    pub async fn position(&self) -> proto::Participant {
        let mut client = self.payments.clone();
        client.get_position(proto::GetPositionRequest {}).await.expect("position").into_inner()
    }

    /// `GetPaymentStatus` as this PSP, which must answer.
    pub async fn status(&self, payment: u128) -> proto::Payment {
        let mut client = self.payments.clone();
        let request = proto::GetPaymentStatusRequest { payment_id: id(payment) };
        client.get_payment_status(request).await.expect("status").into_inner()
    }

    pub async fn alias(&mut self, alias: &str, name: &str) {
        self.directory
            .register_alias(proto::RegisterAliasRequest { alias: alias.into(), display_name: name.into() })
            .await
            .expect("register alias");
    }
}

/// A funding transfer id per PSP (distinct PSPs, distinct ids).
fn funding_id(psp: &str) -> u128 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    psp.hash(&mut hasher);
    (1 << 100) | u128::from(hasher.finish())
}

pub fn id(value: u128) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

pub fn pay(payment_id: u128, payer: &str, payee: &str, amount: u64) -> proto::PayRequest {
    proto::PayRequest {
        payment_id: id(payment_id),
        payer_alias: payer.into(),
        payee_alias: payee.into(),
        amount_minor: amount,
        currency: "INR".into(),
        note: "test".into(),
        deadline_unix_ms: 0,
    }
}

/// `bo@bank-b` asks `ana@bank-a` for `amount` (expiry 0: the default).
pub fn collect_request(collect: u128, amount: u64, expiry_unix_ms: u64) -> proto::RequestCollectRequest {
    proto::RequestCollectRequest {
        collect_id: id(collect),
        payee_alias: "bo@bank-b".into(),
        payer_alias: "ana@bank-a".into(),
        amount_minor: amount,
        currency: "INR".into(),
        note: "invoice".into(),
        expiry_unix_ms,
    }
}

pub fn reason(status: &tonic::Status) -> Option<proto::Reason> {
    switch::reason::reason_of(status)
}

/// A plain HTTP/1.1 GET on the operator port: (status code, body). Enough for tests; no client
/// library needed.
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(address, path).await.unwrap_or_else(|| panic!("GET http://{address}{path} failed"))
}

/// `http_get` that answers `None` when the server is not (yet) there, is slow (10 s) or the
/// answer is garbled. Reads to the end of the body by its length when the server keeps the
/// connection open (Chromium's DevTools server does).
pub async fn try_http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(std::time::Duration::from_secs(10), get_once(address, path)).await.ok().flatten()
}

async fn get_once(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    loop {
        let read = stream.read(&mut buffer).await.ok()?;
        response.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&response);
        let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.lines()
                .find_map(|line| {
                    line.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().to_string())
                })
                .and_then(|length| length.parse::<usize>().ok())
                .is_some_and(|length| body.len() >= length)
        });
        if read == 0 || complete {
            break;
        }
    }
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok())?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Some((status, if chunked { dechunk(body) } else { body.to_string() }))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus exposition.
pub fn series(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

// The event stream, as a PSP subscribes to it.

/// Most time any test waits for one expected message.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Subscription {
    pub requests: mpsc::Sender<proto::SubscribeRequest>,
    pub responses: Streaming<proto::SubscribeResponse>,
    pub welcome: proto::Welcome,
}

pub async fn subscribe(test: &Endpoint, psp: &str, last_acknowledged: u64) -> Subscription {
    let pair = test.ca.psp(psp);
    let mut client = EventServiceClient::new(test.channel(Some(&pair)).await.expect("connects"));
    let (requests, receiver) = mpsc::channel(16);
    let hello = Incoming::Hello(proto::Hello { last_acknowledged_sequence: last_acknowledged });
    requests.send(proto::SubscribeRequest { message: Some(hello) }).await.expect("hello");
    let mut responses = client.subscribe(ReceiverStream::new(receiver)).await.expect("subscribe").into_inner();
    let welcome = match next(&mut responses).await {
        Some(Outgoing::Welcome(welcome)) => welcome,
        other => panic!("expected Welcome, got {other:?}"),
    };
    Subscription { requests, responses, welcome }
}

pub async fn next(responses: &mut Streaming<proto::SubscribeResponse>) -> Option<Outgoing> {
    let message = tokio::time::timeout(WAIT, responses.message()).await.expect("a message in time");
    message.expect("stream ok").and_then(|response| response.message)
}

pub async fn ack(subscription: &Subscription, sequence: u64) {
    let ack = Incoming::Ack(proto::Ack { sequence });
    subscription.requests.send(proto::SubscribeRequest { message: Some(ack) }).await.expect("ack");
}

/// A 16-byte id as the number the tests use.
pub fn id_of(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(bytes.try_into().expect("16 bytes"))
}
