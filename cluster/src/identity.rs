//! Who a peer is: a node of the cluster is known by its certificate's SAN URI
//! `spiffe://switch/node/<id>`, issued by the cluster's CA (`switch certs issue --node N`). The
//! peer service serves nodes only: a PSP's or operator's certificate from the same CA is refused,
//! so no participant can vote or append to the log.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const NODE_URI_PREFIX: &str = "spiffe://switch/node/";

/// The SAN URI naming node `id`.
pub fn node_uri(id: u64) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

/// The node a DER certificate names, or `None` if it names none (or does not parse).
pub fn node_of_certificate(der: &[u8]) -> Option<u64> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let names = certificate.subject_alternative_name().ok()??;
    names.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            let id = uri.strip_prefix(NODE_URI_PREFIX)?;
            // Canonical decimal only: "007" and "+7" are not node 7.
            let parsed: u64 = id.parse().ok()?;
            (parsed.to_string() == id).then_some(parsed)
        }
        _ => None,
    })
}
