//! Mutual-TLS connections to the switch: one certificate per simulated PSP and one for the operator,
//! from the switch's development CA directory (issued on the spot when the CA key is there) or
//! from PEM files an operator issued for a real deployment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use switch::tls::{DevelopmentCa, PemPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Receive windows of every connection to the switch (hyper's client defaults, set here because
/// the connection window also sets h2's budget for small DATA frames: half of it).
const CONNECTION_WINDOW: u32 = 5 << 20;
const STREAM_WINDOW: u32 = 2 << 20;

/// Where the certificates are and how to reach the switch.
#[derive(Clone, Debug)]
pub struct Connector {
    pub server: String,
    pub ca: DevelopmentCa,
    /// The server certificate's DNS name to check (the development CA issues `localhost`).
    pub domain: String,
}

impl Connector {
    pub fn new(server: &str, certs: &Path, domain: &str) -> anyhow::Result<Connector> {
        if !server.starts_with("https://") {
            bail!(
                "--server must be an https:// address (every connection to the switch is mutual TLS), got {server:?}"
            );
        }
        let ca = DevelopmentCa::new(certs);
        if !ca.ca_certificate().exists() {
            bail!(
                "no CA certificate at {}: start the switch once (it creates its development CA there) or pass --certs DIR",
                ca.ca_certificate().display()
            );
        }
        Ok(Connector { server: server.into(), ca, domain: domain.into() })
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

    /// Connects with one identity; fails fast and clearly when the switch is not there.
    pub async fn connect(&self, pair: &PemPair) -> anyhow::Result<Channel> {
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca.ca_certificate())?))
            .identity(Identity::from_pem(read(&pair.certificate)?, read(&pair.key)?))
            .domain_name(self.domain.clone());
        let endpoint = Channel::from_shared(self.server.clone())
            .with_context(|| format!("bad --server address {:?}", self.server))?
            .tls_config(tls)
            .context("TLS configuration")?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // Fixed, large receive windows. h2 closes a connection (GOAWAY ENHANCE_YOUR_CALM,
            // "too_many_data_frames") when unread small DATA frames exceed a budget of half the
            // connection window; the adaptive window kept that window near 64 KiB on loopback, so
            // a payee simulator falling ~200 events behind took its PSP's payments down with it.
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW);
        endpoint
            .connect()
            .await
            .map_err(|error| anyhow::anyhow!("cannot connect to the switch at {}: {}", self.server, chain(&error)))
    }
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
