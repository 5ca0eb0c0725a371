//! Who a certificate names: the one place the identity format is defined,
//! for the node that checks it and the tool that issues it.
//!
//! Every certificate of a billdb cluster carries one URI subject
//! alternative name:
//! - a node: `billdb://<cluster_id>/node/<node_id>`, and the DNS name
//!   [`node_dns_name`] (`node-<node_id>.<cluster_id>.billdb`), which a node
//!   dialling a peer verifies like any host name;
//! - a client: `billdb://<cluster_id>/client/<name>`, which the tokens file
//!   maps to a role (`client_cert = "<name>"`).
//!
//! A cluster id is 1–63 characters of `a-z`, `0-9` and `-`, so it is also a
//! DNS label. This module does no I/O.

use std::fmt;

pub const URI_SCHEME: &str = "billdb://";
/// Longest cluster id and client name.
pub const NAME_BYTES_MAX: usize = 63;

/// The identity one certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Node { cluster: String, id: u64 },
    Client { cluster: String, name: String },
}

impl Identity {
    pub fn cluster(&self) -> &str {
        match self {
            Identity::Node { cluster, .. } | Identity::Client { cluster, .. } => cluster,
        }
    }

    /// The URI subject alternative name that carries this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Node { cluster, id } => format!("{URI_SCHEME}{cluster}/node/{id}"),
            Identity::Client { cluster, name } => format!("{URI_SCHEME}{cluster}/client/{name}"),
        }
    }

    /// Parse a URI subject alternative name; `None` when it is not a
    /// well-formed billdb identity.
    pub fn parse_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_SCHEME)?;
        let mut parts = rest.split('/');
        let cluster = parts.next()?;
        let kind = parts.next()?;
        let value = parts.next()?;
        if parts.next().is_some() || check_name(cluster).is_err() {
            return None;
        }
        match kind {
            "node" => {
                // Digits only: no sign, no leading '+', no whitespace.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(Identity::Node {
                    cluster: cluster.to_string(),
                    id: value.parse().ok()?,
                })
            }
            "client" => {
                check_name(value).ok()?;
                Some(Identity::Client {
                    cluster: cluster.to_string(),
                    name: value.to_string(),
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The DNS subject alternative name of node `id` in `cluster`: what a node
/// dialling that peer expects the peer's certificate to name.
pub fn node_dns_name(cluster: &str, id: u64) -> String {
    format!("node-{id}.{cluster}.billdb")
}

/// A cluster id or client name: 1–63 of `a-z`, `0-9`, `-`, not starting
/// or ending with `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "{name:?} is not a valid name: 1-{NAME_BYTES_MAX} characters of a-z, 0-9 and '-', \
             not starting or ending with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        for id in [
            Identity::Node {
                cluster: "heat-north".into(),
                id: 5,
            },
            Identity::Client {
                cluster: "c1".into(),
                name: "counter-0101".into(),
            },
        ] {
            assert_eq!(Identity::parse_uri(&id.uri()), Some(id));
        }
    }

    #[test]
    fn malformed_identities_are_refused() {
        for bad in [
            "billdb://c1/node/",
            "billdb://c1/node/+5",
            "billdb://c1/node/5/x",
            "billdb://c1/node/-1",
            "billdb://C1/node/5",
            "billdb:///node/5",
            "billdb://c1/admin/x",
            "billdb://c1/client/UPPER",
            "https://c1/node/5",
            "billdb://c1/node/99999999999999999999999",
        ] {
            assert_eq!(Identity::parse_uri(bad), None, "{bad}");
        }
        assert!(check_name(&"a".repeat(64)).is_err());
        assert!(check_name("-a").is_err());
        assert!(check_name("a-1").is_ok());
    }
}
