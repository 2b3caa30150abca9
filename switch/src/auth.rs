//! Who is calling: the identity in the verified client certificate, and what it may do.

use tonic::Request;

use crate::proto::Reason;
use crate::reason::Refusal;
use crate::tls::{caller_from_certificate, Caller};

/// The caller of a request, from the leaf of its (already verified) client certificate chain.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Refusal> {
    let certificates =
        request.peer_certs().ok_or_else(|| Refusal::new(Reason::NotAuthenticated, "no client certificate"))?;
    let leaf = certificates.first().ok_or_else(|| Refusal::new(Reason::NotAuthenticated, "no client certificate"))?;
    caller_from_certificate(leaf.as_ref())
        .ok_or_else(|| Refusal::new(Reason::NotAuthenticated, "the certificate names no PSP or operator"))
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
