//! Configuration: one TOML file (every option documented in `switch.example.toml`), embedded
//! defaults that work out of the box, and command-line flags that override both.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration. Unknown keys are an error, so a misspelt option never silently
/// falls back to its default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the ledger, the development CA and everything else durable lives.
    pub data_dir: PathBuf,
    /// The PSP-facing gRPC port (mutual TLS).
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    pub operator: OperatorSection,
    pub ledger: LedgerSection,
    pub limits: Limits,
    pub cluster: ClusterSection,
    /// The currencies the switch settles; each is one ledger.
    pub currencies: Vec<Currency>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA that issues PSP and operator certificates (PEM). Empty: the development CA under
    /// `<data_dir>/certs`, created on first start.
    pub ca_certificate: Option<PathBuf>,
    /// The server's certificate and key (PEM). Empty: the development CA's server pair.
    pub server_certificate: Option<PathBuf>,
    pub server_key: Option<PathBuf>,
}

/// The operator-facing ports: plain (no TLS), for the operations network only.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorSection {
    /// HTTP: Prometheus metrics at `/metrics`, the live dashboard at `/`, `/healthz`.
    pub http_listen: SocketAddr,
    /// gRPC health checking alone, without TLS, for orchestrators' probes (which cannot present
    /// a client certificate to the mutual-TLS port).
    pub health_listen: SocketAddr,
}

impl Default for OperatorSection {
    fn default() -> Self {
        OperatorSection {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSection {
    /// Most payments in one durable batch (one fsync).
    pub batch_size_max: usize,
    /// Most ledger events accepted but not yet durable; beyond it callers get SWITCH_BUSY.
    pub events_in_flight_max: usize,
    /// Recent transfers kept in memory for idempotency checks without a disk read.
    pub recent_transfers_max: usize,
    /// RocksDB block cache.
    pub block_cache_bytes: usize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Furthest a payment deadline may be from now, in milliseconds.
    pub payment_deadline_ms_max: u64,
    /// Deadline used when a request leaves it at 0, in milliseconds.
    pub payment_deadline_ms_default: u64,
    /// Most aliases the directory holds (memory bound: ~120 bytes each).
    pub aliases_max: usize,
    /// Most participants.
    pub participants_max: usize,
    /// Directory calls per second per PSP (register, remove, resolve; a batch is one call):
    /// bounds alias enumeration through ResolveAlias. Beyond it RATE_LIMITED.
    pub directory_calls_per_second: u32,
    /// Status queries per second per PSP (UPI's April 2025 outage was a status-query flood).
    pub status_queries_per_second: u32,
    /// Payments per second per payer PSP (single, batch and stream together): a runaway PSP
    /// cannot take the whole switch.
    pub payments_per_second_per_psp: u32,
    /// Collect expiry used when a request leaves it at 0, in milliseconds
    /// (`COLLECT_EXPIRY_MS_DEFAULT`).
    pub collect_expiry_ms_default: u64,
    /// Furthest a collect expiry may be from now, in milliseconds (`COLLECT_EXPIRY_MS_MAX`).
    pub collect_expiry_ms_max: u64,
    /// Most collects of one requesting PSP awaiting approval (`COLLECTS_PENDING_MAX`); beyond it
    /// REASON_COLLECTS_PENDING_LIMIT. Each holds a record and an expiry timer.
    pub collects_pending_max: usize,
    /// Most unacknowledged events per PSP (`EVENT_BACKLOG_MAX`); beyond it requests that would
    /// add an event for that PSP are refused (REASON_EVENT_BACKLOG_FULL).
    pub event_backlog_max: u64,
    /// Admission: most payments in flight in the whole switch (admitted, not yet committed or
    /// refused by the ledger); beyond it new payments are refused at once with SWITCH_BUSY. It
    /// bounds the queue in front of the ledger, so the latency of what is admitted.
    pub payments_in_flight_max: u64,
    /// Admission: most payments in flight per payer PSP; beyond it RATE_LIMITED. Below the
    /// global bound, so that one PSP's flood leaves room for the others. A PayBatch larger than
    /// either bound is admitted when that budget is otherwise empty. Defaults: 4,096 per PSP,
    /// one full PayStream window (PAY_STREAM_IN_FLIGHT_MAX), so a PSP carrying most of a
    /// country's traffic on one stream is never refused below its stream's own bound; 16,384 in
    /// all, so one PSP's flood takes at most a quarter of the switch.
    pub payments_in_flight_max_per_psp: u64,
}

/// The replicated switch: this node and the others. With no members listed, the switch is a
/// cluster of this node alone (the default): the same code path, every batch through a Raft log
/// of one, nothing to set up.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// This node's id: a positive integer, never reused for another machine (a wiped or replaced
    /// node joins under a new id).
    pub node_id: u64,
    /// The node-to-node port (Raft over gRPC, mutual TLS with node certificates).
    pub peer_listen: SocketAddr,
    /// The nodes of the cluster when it first starts (every node lists the same members). Empty:
    /// this node alone. Nodes added or removed later change the membership in the replicated log;
    /// this list is read only by a node that has never started (docs/cluster.md). A node joining
    /// a running cluster lists the current members, not itself: it forms nothing and waits until
    /// the leader adds it (`switch cluster add`).
    pub members: Vec<Member>,
    /// This node's certificate and key for the peer port (PEM, SAN URI
    /// `spiffe://switch/node/<node_id>`), issued by `tls.ca_certificate`'s CA. Empty: issued by
    /// the development CA under `<data_dir>/certs` (`switch certs issue --node N`).
    pub node_certificate: Option<PathBuf>,
    pub node_key: Option<PathBuf>,
    /// The DNS name (or address) peers' certificates are checked against when this node dials
    /// them: every node certificate must carry it. The development CA's node certificates carry
    /// `localhost` and `127.0.0.1`.
    pub peer_server_name: String,
    /// The address of this host that its connections to peers leave from. Unset: the system
    /// chooses by its routing table. For a host with several interfaces whose replication must
    /// use one of them, or firewalls that admit peers by source address. A node that cannot
    /// bind it does not start.
    pub peer_source_address: Option<IpAddr>,
    /// Entries between two snapshots of the state (RocksDB checkpoints), from which a node that
    /// is far behind, or new, catches up.
    pub snapshot_every_entries: u64,
    /// Longest the leader waits, in an AddNode call, for the new node to catch up before it
    /// answers MEMBERSHIP_CHANGE_PENDING (the node stays a learner and keeps catching up; the
    /// same call again carries on); also the longest a membership change waits to commit.
    pub catch_up_wait_ms: u64,
}

/// One node of the cluster, as the others reach it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: u64,
    /// host:port of its peer port.
    pub peer_address: String,
    /// host:port of its PSP port: where a follower sends clients (the `switch-leader` trailer).
    pub psp_address: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            node_id: 1,
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 50061)),
            members: Vec::new(),
            node_certificate: None,
            node_key: None,
            peer_server_name: "localhost".into(),
            peer_source_address: None,
            snapshot_every_entries: 50_000,
            catch_up_wait_ms: 30_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Currency {
    /// ISO 4217 alphabetic code, e.g. "INR".
    pub code: String,
    /// ISO 4217 numeric code, used as the ledger number, e.g. 356.
    pub ledger: u32,
    /// Largest amount of one payment, in minor units.
    pub amount_minor_max: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: TlsConfig::default(),
            operator: OperatorSection::default(),
            ledger: LedgerSection::default(),
            limits: Limits::default(),
            cluster: ClusterSection::default(),
            currencies: vec![Currency { code: "INR".into(), ledger: 356, amount_minor_max: 1_000_000_000 }],
        }
    }
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            batch_size_max: ledger::BATCH_SIZE_MAX_DEFAULT,
            events_in_flight_max: 1 << 20,
            recent_transfers_max: 1 << 20,
            block_cache_bytes: 512 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            payment_deadline_ms_max: 60_000,
            payment_deadline_ms_default: 30_000,
            aliases_max: 20_000_000,
            participants_max: 1_000,
            directory_calls_per_second: 1_000,
            status_queries_per_second: 1_000,
            payments_per_second_per_psp: 200_000,
            collect_expiry_ms_default: crate::services::collect::EXPIRY_MS_DEFAULT,
            collect_expiry_ms_max: crate::services::collect::EXPIRY_MS_MAX,
            collects_pending_max: crate::services::collect::COLLECTS_PENDING_MAX,
            event_backlog_max: crate::events::EVENT_BACKLOG_MAX,
            payments_in_flight_max: 16_384,
            payments_in_flight_max_per_psp: 4_096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; every option it leaves out keeps its default.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&text).map_err(|error| match error {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.to_path_buf(), source },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: PathBuf::new(), source: Box::new(source) })?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.currencies.is_empty() {
            return invalid("at least one currency is needed".into());
        }
        for currency in &self.currencies {
            if currency.code.len() != 3 || !currency.code.bytes().all(|byte| byte.is_ascii_uppercase()) {
                return invalid(format!("currency code {:?} is not three upper-case letters", currency.code));
            }
            if currency.ledger == 0 || currency.amount_minor_max == 0 {
                return invalid(format!("currency {}: ledger and amount_minor_max must be positive", currency.code));
            }
        }
        let mut ledgers: Vec<u32> = self.currencies.iter().map(|currency| currency.ledger).collect();
        ledgers.sort_unstable();
        ledgers.dedup();
        if ledgers.len() != self.currencies.len() {
            return invalid("two currencies share a ledger number".into());
        }
        if self.limits.payment_deadline_ms_default > self.limits.payment_deadline_ms_max {
            return invalid("payment_deadline_ms_default exceeds payment_deadline_ms_max".into());
        }
        if self.limits.collect_expiry_ms_default > self.limits.collect_expiry_ms_max {
            return invalid("collect_expiry_ms_default exceeds collect_expiry_ms_max".into());
        }
        if self.limits.payments_in_flight_max == 0 || self.limits.payments_in_flight_max_per_psp == 0 {
            return invalid("payments_in_flight_max and payments_in_flight_max_per_psp must be positive".into());
        }
        let tls = &self.tls;
        if tls.server_certificate.is_some() != tls.server_key.is_some() {
            return invalid("tls.server_certificate and tls.server_key go together".into());
        }
        let cluster = &self.cluster;
        if cluster.node_id == 0 {
            return invalid("cluster.node_id must be positive".into());
        }
        if cluster.node_certificate.is_some() != cluster.node_key.is_some() {
            return invalid("cluster.node_certificate and cluster.node_key go together".into());
        }
        if cluster.snapshot_every_entries == 0 {
            return invalid("cluster.snapshot_every_entries must be positive".into());
        }
        let mut ids: Vec<u64> = cluster.members.iter().map(|member| member.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != cluster.members.len() || ids.contains(&0) {
            return invalid("cluster.members: ids must be positive and distinct".into());
        }
        // The same check an AddNode's addresses pass: these become the membership in the log.
        for member in &cluster.members {
            for (address, field) in [(&member.peer_address, "peer_address"), (&member.psp_address, "psp_address")] {
                if let Err(refusal) = crate::services::membership::check_address(address, field) {
                    return invalid(format!(
                        "cluster.members, node {}: {}, got {address:?}",
                        member.id, refusal.message
                    ));
                }
            }
        }
        if cluster.catch_up_wait_ms == 0 {
            return invalid("cluster.catch_up_wait_ms must be positive".into());
        }
        if cluster.members.len() > 1 && tls.ca_certificate.is_some() && cluster.node_certificate.is_none() {
            return invalid(
                "a cluster of several nodes with a configured CA needs cluster.node_certificate and node_key".into(),
            );
        }
        Ok(())
    }

    /// The same configuration with every port ephemeral on loopback: for tests and tools that
    /// run switches side by side.
    pub fn on_ephemeral_ports(mut self) -> Config {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        self.listen = loopback;
        self.operator.http_listen = loopback;
        self.operator.health_listen = loopback;
        self.cluster.peer_listen = loopback;
        self
    }

    pub fn currency(&self, code: &str) -> Option<&Currency> {
        self.currencies.iter().find(|currency| currency.code == code)
    }

    pub fn ledger_config(&self) -> ledger::LedgerConfig {
        let mut config = ledger::LedgerConfig::new(self.data_dir.join("ledger"));
        config.batch_size_max = self.ledger.batch_size_max;
        config.events_in_flight_max = self.ledger.events_in_flight_max;
        config.recent_transfers_max = self.ledger.recent_transfers_max;
        config.store.block_cache_bytes = self.ledger.block_cache_bytes;
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults() {
        let example = include_str!("../switch.example.toml");
        assert_eq!(Config::parse(example).expect("example parses"), Config::default());
    }

    #[test]
    fn misspelt_and_invalid_options_are_errors() {
        assert!(matches!(Config::parse("listn = \"127.0.0.1:1\""), Err(ConfigError::Parse { .. })));
        assert!(matches!(Config::parse("currencies = []"), Err(ConfigError::Invalid(_))));
        let bad_code = "[[currencies]]\ncode = \"inr\"\nledger = 356\namount_minor_max = 5\n";
        assert!(matches!(Config::parse(bad_code), Err(ConfigError::Invalid(_))));
        let partial = "listen = \"127.0.0.1:6000\"\n[limits]\naliases_max = 5\n";
        let config = Config::parse(partial).expect("partial config");
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.limits.aliases_max, 5);
        assert_eq!(config.limits.participants_max, Limits::default().participants_max);
    }

    #[test]
    fn members_addresses_are_host_and_port() {
        let member = |peer: &str| {
            format!("[[cluster.members]]\nid = 1\npeer_address = \"{peer}\"\npsp_address = \"127.0.0.1:50051\"\n")
        };
        assert!(Config::parse(&member("node-1.example:50061")).is_ok());
        assert!(Config::parse(&member("[::1]:50061")).is_ok());
        for bad in ["node-1.example", "127.0.0.1:0", "", "a b:1"] {
            assert!(matches!(Config::parse(&member(bad)), Err(ConfigError::Invalid(_))), "{bad:?} is refused");
        }
    }

    #[test]
    fn the_peer_source_address_is_an_ip_address_without_a_port() {
        let config = Config::parse("[cluster]\npeer_source_address = \"10.0.0.1\"\n").expect("an address");
        assert_eq!(config.cluster.peer_source_address, Some(IpAddr::from([10, 0, 0, 1])));
        for bad in ["\"10.0.0.1:50061\"", "\"node-1.example\"", "1"] {
            let text = format!("[cluster]\npeer_source_address = {bad}\n");
            assert!(matches!(Config::parse(&text), Err(ConfigError::Parse { .. })), "{bad} is refused");
        }
    }
}

/// The configuration file fuzzed: any text parses to a configuration that passes its checks, or
/// is an error; never a panic. Bounded so `cargo test` stays fast; to fuzz longer:
/// `PROPTEST_CASES=100000 cargo test --release -p switch --lib config::fuzz`.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const EXAMPLE: &str = include_str!("../switch.example.toml");

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// A parsed configuration is a checked one, and the ledger's part of it can be built.
    fn parse_holds(text: &str) -> Result<(), TestCaseError> {
        if let Ok(config) = Config::parse(text) {
            prop_assert!(config.check().is_ok());
            let _ = config.ledger_config();
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn random_text_is_a_configuration_or_an_error(text in any::<String>()) {
            parse_holds(&text)?;
        }

        #[test]
        fn the_example_with_a_part_replaced_is_a_configuration_or_an_error(
            start in 0..EXAMPLE.len(),
            length in 0usize..64,
            replacement in "[ -~\n]{0,24}",
        ) {
            // Byte offsets rounded down to character boundaries, so the text stays text.
            let floor = |mut index: usize| { while !EXAMPLE.is_char_boundary(index) { index -= 1; } index };
            let (start, end) = (floor(start), floor((start + length).min(EXAMPLE.len())));
            let text = format!("{}{replacement}{}", &EXAMPLE[..start], &EXAMPLE[end..]);
            parse_holds(&text)?;
        }

        #[test]
        fn numbers_of_any_size_in_the_limits_are_values_or_errors(
            option in proptest::sample::select(vec!["aliases_max", "participants_max", "payment_deadline_ms_max", "payment_deadline_ms_default"]),
            value in any::<i64>(),
        ) {
            parse_holds(&format!("[limits]\n{option} = {value}\n"))?;
        }
    }
}
