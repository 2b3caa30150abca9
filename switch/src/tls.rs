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

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

/// A private key: readable by its owner only (0600), from the moment it exists.
fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
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
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "switch development CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params);
        let certificate = params.self_signed(&key)?;
        write_private(&self.dir.join("ca.key"), &key.serialize_pem())?;
        write(&self.ca_certificate(), &certificate.pem())?;

        let mut server = leaf_params("switch", None, &["localhost", "127.0.0.1"])?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(server, &self.server())?;
        self.issue_operator("admin")?;
        Ok(true)
    }

    /// Issues (or re-issues) a PSP's client certificate.
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

    /// Issues (or re-issues) an operator's client certificate.
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

    fn issue(&self, params: CertificateParams, pair: &PemPair) -> Result<(), TlsError> {
        let ca_key = KeyPair::from_pem(&read(&self.dir.join("ca.key"))?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(&self.ca_certificate())?, ca_key)?;
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &issuer)?;
        write_private(&pair.key, &key.serialize_pem())?;
        write(&pair.certificate, &certificate.pem())
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
    }
}
