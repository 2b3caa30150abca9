//! Who is calling: the identity in the verified client certificate, and what it may do.
//!
//! Parsing an X.509 certificate costs microseconds, and every call on a connection presents
//! the same one; so the caller a certificate names is remembered, keyed by the certificate's
//! bytes (compared whole, so two certificates can never share an identity).

use std::sync::OnceLock;

use tonic::transport::CertificateDer;
use tonic::Request;

use crate::proto::Reason;
use crate::reason::Refusal;
use crate::tls::{caller_from_certificate, Caller};

/// The caller of a request, from the leaf of its (already verified) client certificate chain.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Refusal> {
    let certificates =
        request.peer_certs().ok_or_else(|| Refusal::new(Reason::NotAuthenticated, "no client certificate"))?;
    if certificates.is_empty() {
        return Err(Refusal::new(Reason::NotAuthenticated, "no client certificate"));
    }
    caller_of_certificates(&certificates)
        .ok_or_else(|| Refusal::new(Reason::NotAuthenticated, "the certificate names no PSP or operator"))
}

/// Most certificates remembered; past it the cache starts over (only the switch's CA issues
/// certificates that get this far, so this is a bound against a misissuing CA, not a workload).
const CALLERS_CACHED_MAX: usize = 100_000;

/// The caller a verified chain's leaf names, parsed once per distinct certificate.
pub fn caller_of_certificates(certificates: &[CertificateDer<'_>]) -> Option<Caller> {
    // aHash, keyed at random per process: every call hashes its whole certificate here, twice
    // (the metrics layer and the handler). Under unary payments std's SipHash was 0.39% of the
    // switch's CPU samples, aHash 0.14% (BENCHMARKS.md, twelfth session).
    static CALLERS: OnceLock<papaya::HashMap<Box<[u8]>, Option<Caller>, ahash::RandomState>> = OnceLock::new();
    let leaf: &[u8] = certificates.first()?.as_ref();
    let callers = CALLERS.get_or_init(|| papaya::HashMap::with_hasher(ahash::RandomState::new())).pin();
    if let Some(caller) = callers.get(leaf) {
        return caller.clone();
    }
    if callers.len() >= CALLERS_CACHED_MAX {
        callers.clear();
    }
    let caller = caller_from_certificate(leaf);
    callers.insert(leaf.into(), caller.clone());
    caller
}

/// The PSP id of the caller; operators may not use PSP services (they would act for nobody).
pub fn psp<T>(request: &Request<T>) -> Result<String, Refusal> {
    match caller(request)? {
        Caller::Psp(psp) => Ok(psp),
        Caller::Operator(_) => Err(Refusal::new(Reason::NotAuthorized, "operators do not act as a PSP")),
    }
}

/// The operator's name; PSPs may not use the operator service.
pub fn operator<T>(request: &Request<T>) -> Result<String, Refusal> {
    match caller(request)? {
        Caller::Operator(name) => Ok(name),
        Caller::Psp(_) => {
            Err(Refusal::new(Reason::NotAuthorized, "the operator service needs an operator certificate"))
        }
    }
}
