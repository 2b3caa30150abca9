//! Mutual-TLS connections to the switch: one certificate per simulated PSP and one for the operator,
//! from the switch's development CA directory (issued on the spot when the CA key is there) or
//! from PEM files an operator issued for a real deployment. Given several nodes of a replicated
//! switch, every connection follows its leader (`leader`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use switch::tls::{DevelopmentCa, PemPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::leader::{following_channel, Leader};

/// Receive windows of every connection to the switch (hyper's client defaults, set here because
/// the connection window also sets h2's budget for small DATA frames: half of it).
const CONNECTION_WINDOW: u32 = 5 << 20;
const STREAM_WINDOW: u32 = 2 << 20;

/// Where the certificates are and how to reach the switch: one node, or the nodes of a
/// replicated switch, whose leader every connection then follows (`leader`).
#[derive(Clone)]
pub struct Connector {
    /// The switch's gRPC addresses, as given (https://).
    pub servers: Vec<String>,
    pub ca: DevelopmentCa,
    /// The server certificate's DNS name to check (the development CA issues `localhost`).
    pub domain: String,
    /// With several nodes: who leads, followed by every connection made after `follow`.
    pub leader: Option<Arc<Leader>>,
}

impl Connector {
    pub fn new(servers: &[String], certs: &Path, domain: &str) -> anyhow::Result<Connector> {
        if servers.is_empty() {
            bail!("--server names no address");
        }
        for server in servers {
            if !server.starts_with("https://") {
                bail!(
                    "--server must be https:// addresses (every connection to the switch is mutual TLS), got {server:?}"
                );
            }
        }
        let ca = DevelopmentCa::new(certs);
        if !ca.ca_certificate().exists() {
            bail!(
                "no CA certificate at {}: start the switch once (it creates its development CA there) or pass --certs DIR",
                ca.ca_certificate().display()
            );
        }
        Ok(Connector { servers: servers.to_vec(), ca, domain: domain.into(), leader: None })
    }

    /// With several `--server` nodes, finds the leader (asking as operator `operator`) and makes
    /// every later connection follow it. With one, connects to it directly, as always.
    pub async fn follow(&mut self, operator: &str) -> anyhow::Result<()> {
        if self.servers.len() < 2 {
            return Ok(());
        }
        let pair = self.operator_certificate(operator)?;
        let tls = self.tls(&pair)?;
        let probe = Arc::new(move |address: &str| endpoint(address, tls.clone()));
        self.leader = Some(Leader::find(self.servers.clone(), probe).await?);
        Ok(())
    }

    /// Where connections go now: the one node, or the current leader.
    pub fn target(&self) -> String {
        match &self.leader {
            Some(leader) => leader.address(),
            None => self.servers[0].clone(),
        }
    }

    /// A PSP's certificate, issued by the development CA when missing and the CA key is at hand.
    pub fn psp_certificate(&self, psp: &str) -> anyhow::Result<PemPair> {
        let pair = self.ca.psp(psp);
        if pair.certificate.exists() && pair.key.exists() {
            return Ok(pair);
        }
        if !self.ca.dir.join("ca.key").exists() {
            bail!(
                "no certificate for PSP {psp} at {} and no CA key to issue one: issue it with `switch certs issue --psp {psp}`",
                pair.certificate.display()
            );
        }
        self.ca.issue_psp(psp).with_context(|| format!("issuing a certificate for PSP {psp}"))
    }

    pub fn operator_certificate(&self, name: &str) -> anyhow::Result<PemPair> {
        let pair = self.ca.operator(name);
        if !pair.certificate.exists() {
            bail!(
                "no operator certificate {} (the switch's development CA issues `admin`)",
                pair.certificate.display()
            );
        }
        Ok(pair)
    }

    fn tls(&self, pair: &PemPair) -> anyhow::Result<ClientTlsConfig> {
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca.ca_certificate())?))
            .identity(Identity::from_pem(read(&pair.certificate)?, read(&pair.key)?))
            .domain_name(self.domain.clone()))
    }

    /// Connects with one identity; fails fast and clearly when the switch is not there. Following
    /// a leader, the connection is made to the current one and moves with it.
    pub async fn connect(&self, pair: &PemPair) -> anyhow::Result<Channel> {
        let tls = self.tls(pair)?;
        if let Some(leader) = &self.leader {
            return following_channel(leader, move |address| endpoint(address, tls.clone()));
        }
        let server = &self.servers[0];
        endpoint(server, tls)?
            .connect()
            .await
            .map_err(|error| anyhow::anyhow!("cannot connect to the switch at {server}: {}", chain(&error)))
    }
}

/// An endpoint for one node with one identity.
fn endpoint(server: &str, tls: ClientTlsConfig) -> anyhow::Result<Endpoint> {
    Ok(Channel::from_shared(server.to_string())
        .with_context(|| format!("bad --server address {server:?}"))?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Fixed, large receive windows. h2 closes a connection (GOAWAY ENHANCE_YOUR_CALM,
        // "too_many_data_frames") when unread small DATA frames exceed a budget of half the
        // connection window; the adaptive window kept that window near 64 KiB on loopback, so
        // a payee simulator falling ~200 events behind took its PSP's payments down with it.
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW))
}

/// An error with its sources, on one line: tonic's transport errors hide the cause (connection
/// refused, certificate unknown) in the chain.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// A failed call, described with its reason code when the switch gave one.
pub fn describe(status: &tonic::Status) -> String {
    match switch::reason::reason_of(status) {
        Some(reason) => format!("{:?} {}: {}", status.code(), reason.as_str_name(), status.message()),
        None => {
            let mut text = format!("{:?}: {}", status.code(), status.message());
            if let Some(source) = std::error::Error::source(status) {
                text.push_str(" (");
                text.push_str(&chain(source));
                text.push(')');
            }
            text
        }
    }
}
