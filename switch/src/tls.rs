//! Mutual TLS: the development certificate authority, and who a connection is.
//!
//! Every connection presents a client certificate issued by the configured CA; rustls refuses a
//! handshake without one. The participant is named in the certificate by a SAN URI:
//! `spiffe://switch/psp/<psp id>` for a PSP, `spiffe://switch/operator/<name>` for an operator.
//! (The common name repeats the id for people reading certificates; only the URI is trusted.)
//!
//! `switch certs` creates a development CA and certificates under `data/certs`; production
//! deployments point the config at their own PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const URI_PREFIX_PSP: &str = "spiffe://switch/psp/";
const URI_PREFIX_OPERATOR: &str = "spiffe://switch/operator/";
/// Development certificates last a year; production ones come from the bank's own PKI.
const DEVELOPMENT_VALIDITY_DAYS: i64 = 365;
/// Certificates are public: readable by all, written by the owner.
const CERTIFICATE_MODE: u32 = 0o644;

/// Who is calling, from the verified client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Caller {
    Psp(String),
    Operator(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid name {0:?}: use 2-32 of a-z, 0-9 and '-'")]
    BadName(String),
}

/// A participant or operator name: 2-32 characters of `a-z`, `0-9`, `-`, not starting with `-`.
pub fn valid_name(name: &str) -> bool {
    (2..=32).contains(&name.len())
        && !name.starts_with('-')
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// The caller named by a DER certificate, or `None` if it names no PSP or operator.
pub fn caller_from_certificate(der: &[u8]) -> Option<Caller> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let names = certificate.subject_alternative_name().ok()??;
    names.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            if let Some(psp) = uri.strip_prefix(URI_PREFIX_PSP) {
                valid_name(psp).then(|| Caller::Psp(psp.to_string()))
            } else if let Some(operator) = uri.strip_prefix(URI_PREFIX_OPERATOR) {
                valid_name(operator).then(|| Caller::Operator(operator.to_string()))
            } else {
                None
            }
        }
        _ => None,
    })
}

/// PEM files of one identity.
#[derive(Clone, Debug)]
pub struct PemPair {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// The development CA's directory: `ca.pem`/`ca.key`, `server.pem`/`server.key`, and one pair per
/// PSP (`psp-<id>.*`) or operator (`operator-<name>.*`).
#[derive(Clone, Debug)]
pub struct DevelopmentCa {
    pub dir: PathBuf,
}

/// A file next to `path` holding `contents` (with `mode`), synced, under a name no other writer
/// uses: the first half of every write here, so that `path` itself only ever names a whole file.
fn write_temporary(path: &Path, contents: &str, mode: u32) -> Result<PathBuf, TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let temporary = path.with_file_name(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()));
    match written {
        Ok(()) => Ok(temporary),
        Err(source) => {
            let _ = std::fs::remove_file(&temporary);
            Err(TlsError::Io { path: temporary, source })
        }
    }
}

/// Makes a rename or link in `path`'s directory durable.
fn sync_directory(path: &Path) -> Result<(), TlsError> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(directory)
        .and_then(|file| file.sync_all())
        .map_err(|source| TlsError::Io { path: directory.to_path_buf(), source })
}

/// Replaces `path` whole: a reader finds the old file or the new one, never a part of either,
/// and a crash leaves one of the two (a stray temporary file at worst).
fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let temporary = write_temporary(path, contents, mode)?;
    if let Err(source) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(TlsError::Io { path: path.to_path_buf(), source });
    }
    sync_directory(path)
}

/// The private key at `path` (0600, readable by its owner only from the moment it exists),
/// created if there is none. A key, once there, is kept: a certificate re-issued for it matches
/// whichever version of the certificate file a reader picks up, so no reader ever pairs a key
/// with a certificate for another key. Of two processes creating it at once the first one's
/// key stands and both use it (published by a link, which never replaces a file).
fn key_at(path: &Path) -> Result<KeyPair, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => match KeyPair::from_pem(&pem) {
            Ok(key) => return Ok(key),
            // Torn or foreign (never by this code, which publishes whole files): replaced.
            Err(_) => {
                let key = KeyPair::generate()?;
                replace(path, &key.serialize_pem(), 0o600)?;
                return Ok(key);
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TlsError::Io { path: path.to_path_buf(), source }),
    }
    let key = KeyPair::generate()?;
    let temporary = write_temporary(path, &key.serialize_pem(), 0o600)?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            sync_directory(path)?;
            Ok(key)
        }
        // Another process published its key first: use that one.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            KeyPair::from_pem(&read(path)?).map_err(TlsError::from)
        }
        Err(source) => Err(TlsError::Io { path: path.to_path_buf(), source }),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

/// From now (less a day, for clocks a little behind) for `DEVELOPMENT_VALIDITY_DAYS`.
fn set_validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(DEVELOPMENT_VALIDITY_DAYS);
}

fn leaf_params(common_name: &str, uri: Option<String>, dns: &[&str]) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(dns.iter().map(|name| name.to_string()).collect::<Vec<_>>())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    if let Some(uri) = uri {
        params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    }
    set_validity(&mut params);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

impl DevelopmentCa {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DevelopmentCa { dir: dir.into() }
    }

    pub fn ca_certificate(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server(&self) -> PemPair {
        self.pair("server")
    }

    pub fn psp(&self, psp: &str) -> PemPair {
        self.pair(&format!("psp-{psp}"))
    }

    pub fn operator(&self, name: &str) -> PemPair {
        self.pair(&format!("operator-{name}"))
    }

    pub fn node(&self, id: u64) -> PemPair {
        self.pair(&format!("node-{id}"))
    }

    fn pair(&self, stem: &str) -> PemPair {
        PemPair { certificate: self.dir.join(format!("{stem}.pem")), key: self.dir.join(format!("{stem}.key")) }
    }

    /// Creates the CA, a server certificate (for `localhost` and 127.0.0.1) and the `admin`
    /// operator certificate, unless the CA exists already. Returns whether it created them.
    pub fn ensure(&self) -> Result<bool, TlsError> {
        if self.ca_certificate().exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| TlsError::Io { path: self.dir.clone(), source })?;
        let key = key_at(&self.dir.join("ca.key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "switch development CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params);
        let certificate = params.self_signed(&key)?;
        replace(&self.ca_certificate(), &certificate.pem(), CERTIFICATE_MODE)?;

        let mut server = leaf_params("switch", None, &["localhost", "127.0.0.1"])?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(server, &self.server())?;
        self.issue_operator("admin")?;
        Ok(true)
    }

    /// Issues (or re-issues, for the key it already has) a PSP's client certificate.
    pub fn issue_psp(&self, psp: &str) -> Result<PemPair, TlsError> {
        if !valid_name(psp) {
            return Err(TlsError::BadName(psp.into()));
        }
        let mut params = leaf_params(psp, Some(format!("{URI_PREFIX_PSP}{psp}")), &[])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let pair = self.psp(psp);
        self.issue(params, &pair)?;
        Ok(pair)
    }

    /// Issues (or re-issues, for the key it already has) an operator's client certificate.
    pub fn issue_operator(&self, name: &str) -> Result<PemPair, TlsError> {
        if !valid_name(name) {
            return Err(TlsError::BadName(name.into()));
        }
        let mut params = leaf_params(name, Some(format!("{URI_PREFIX_OPERATOR}{name}")), &[])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let pair = self.operator(name);
        self.issue(params, &pair)?;
        Ok(pair)
    }

    /// Issues (or re-issues, for the key it already has) node `id`'s certificate: its identity to
    /// the other nodes (SAN URI `spiffe://switch/node/<id>`, as a client) and its name to them
    /// (`hosts`, as a server), for the node-to-node port of a replicated switch.
    pub fn issue_node(&self, id: u64, hosts: &[&str]) -> Result<PemPair, TlsError> {
        let mut params = leaf_params(&format!("node-{id}"), Some(cluster::identity::node_uri(id)), hosts)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let pair = self.node(id);
        self.issue(params, &pair)?;
        Ok(pair)
    }

    /// Issues a client certificate that chains to the CA but names no PSP and no operator (no
    /// SAN URI): what a misissued certificate looks like. The switch accepts its handshake and
    /// answers every call UNAUTHENTICATED / REASON_NOT_AUTHENTICATED (common.proto); tests use it
    /// to check that promise.
    pub fn issue_nameless(&self, stem: &str) -> Result<PemPair, TlsError> {
        if !valid_name(stem) {
            return Err(TlsError::BadName(stem.into()));
        }
        let mut params = leaf_params(stem, None, &[])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let pair = self.pair(&format!("nameless-{stem}"));
        self.issue(params, &pair)?;
        Ok(pair)
    }

    fn issue(&self, params: CertificateParams, pair: &PemPair) -> Result<(), TlsError> {
        let ca_key = KeyPair::from_pem(&read(&self.dir.join("ca.key"))?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(&self.ca_certificate())?, ca_key)?;
        // The key first: a certificate file never names a key that is not there yet.
        let key = key_at(&pair.key)?;
        let certificate = params.signed_by(&key, &issuer)?;
        replace(&pair.certificate, &certificate.pem(), CERTIFICATE_MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert!(valid_name("bank-a"));
        assert!(valid_name("b2"));
        assert!(!valid_name("a"));
        assert!(!valid_name("-bank"));
        assert!(!valid_name("Bank"));
        assert!(!valid_name("bank_a"));
        assert!(!valid_name(&"a".repeat(33)));
    }

    #[test]
    fn issued_certificates_name_their_holder() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = DevelopmentCa::new(dir.path());
        assert!(ca.ensure().expect("create CA"));
        assert!(!ca.ensure().expect("second call finds it"), "an existing CA is kept");
        let pair = ca.issue_psp("bank-a").expect("issue");
        let pem = std::fs::read_to_string(&pair.certificate).expect("read");
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        assert_eq!(caller_from_certificate(&der), Some(Caller::Psp("bank-a".into())));
        let pem = std::fs::read_to_string(ca.operator("admin").certificate).expect("read");
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        assert_eq!(caller_from_certificate(&der), Some(Caller::Operator("admin".into())));
        let pem = std::fs::read_to_string(ca.server().certificate).expect("read");
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        assert_eq!(caller_from_certificate(&der), None, "the server certificate names no caller");
        assert!(matches!(ca.issue_psp("Bad Name"), Err(TlsError::BadName(_))));
        // A node's certificate names the node to the cluster, and no caller to the PSP API.
        let pair = ca.issue_node(3, &["localhost", "127.0.0.1"]).expect("issue a node certificate");
        let pem = std::fs::read_to_string(&pair.certificate).expect("read");
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        assert_eq!(cluster::identity::node_of_certificate(&der), Some(3));
        assert_eq!(caller_from_certificate(&der), None, "a node is no PSP and no operator");
    }

    /// The public key a PEM certificate was issued for, and the one in a PEM private key.
    fn public_keys(pair: &PemPair) -> (Vec<u8>, Vec<u8>) {
        let pem = std::fs::read_to_string(&pair.certificate).expect("read certificate");
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents;
        let (_, certificate) = X509Certificate::from_der(&der).expect("der");
        let key = KeyPair::from_pem(&std::fs::read_to_string(&pair.key).expect("read key")).expect("key");
        (certificate.public_key().subject_public_key.data.to_vec(), key.public_key_raw().to_vec())
    }

    /// A development CA in a temporary directory, and bank-a's certificate issued by it.
    fn ca_with_bank_a() -> (tempfile::TempDir, DevelopmentCa, PemPair) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = DevelopmentCa::new(dir.path());
        ca.ensure().expect("create CA");
        let pair = ca.issue_psp("bank-a").expect("issue");
        (dir, ca, pair)
    }

    #[test]
    fn a_reissued_certificate_is_for_the_key_already_there() {
        let (dir, ca, pair) = ca_with_bank_a();
        let key = std::fs::read(&pair.key).expect("key");
        let (issued_for, held) = public_keys(&pair);
        assert_eq!(issued_for, held, "the certificate is for the key beside it");
        ca.issue_psp("bank-a").expect("re-issue");
        assert_eq!(std::fs::read(&pair.key).expect("key"), key, "re-issuing keeps the key");
        let (issued_for, held) = public_keys(&pair);
        assert_eq!(issued_for, held, "the re-issued certificate is for the same key");

        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&pair.key), 0o600, "a private key is its owner's alone");
        assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
        // The process's umask may take bits away from a certificate's mode, never add any.
        assert_eq!(mode(&pair.certificate) & !CERTIFICATE_MODE, 0, "a certificate is written by its owner only");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let expected = [
            "ca.key",
            "ca.pem",
            "operator-admin.key",
            "operator-admin.pem",
            "psp-bank-a.key",
            "psp-bank-a.pem",
            "server.key",
            "server.pem",
        ];
        assert_eq!(names, expected, "no temporary file is left behind");
    }

    #[test]
    fn readers_never_see_a_torn_or_mismatched_pair_while_it_is_reissued() {
        let (_dir, ca, pair) = ca_with_bank_a();
        let issuer = {
            let ca = ca.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    ca.issue_psp("bank-a").expect("re-issue");
                }
            })
        };
        let mut reads = 0;
        while !issuer.is_finished() || reads < 50 {
            // Each read parses both files whole; a torn file fails to parse and panics here.
            let (issued_for, held) = public_keys(&pair);
            assert_eq!(issued_for, held, "read {reads}: certificate and key belong together");
            reads += 1;
        }
        issuer.join().expect("issuer");
    }

    #[test]
    fn a_torn_key_is_replaced_when_its_certificate_is_issued() {
        let (_dir, ca, pair) = ca_with_bank_a();
        std::fs::write(&pair.key, "-----BEGIN PRIVATE KEY-----\nMIGH").expect("write a torn key");
        ca.issue_psp("bank-a").expect("issue over it");
        let (issued_for, held) = public_keys(&pair);
        assert_eq!(issued_for, held);
    }
}
