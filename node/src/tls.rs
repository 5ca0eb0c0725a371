//! A node's TLS material: the cluster CA bundle, this node's certificate
//! and key, checked at start and reloaded while the node runs.
//!
//! - **Start**: a node configured for TLS refuses to start when a file is
//!   missing or unreadable, when its certificate does not chain to the CA
//!   bundle, does not name this node (`billdb://<cluster>/node/<id>`,
//!   `billdb_api::identity`), or does not match the key.
//! - **Rotation**: [`Tls::reload_if_changed`] (called every second by the
//!   node) rebuilds everything when any of the three files changed. New
//!   connections use the new material; connections already open keep theirs.
//!   A bad new file is refused with a log line and the old material kept.
//! - Three rustls configurations come out of one load: the Raft port's
//!   server side (a client certificate from the CA is required), the client
//!   ports' server side (a client certificate is optional and maps to a role),
//!   and the client side of node-to-node connections (this node's
//!   certificate, the peer's verified against the CA and its node DNS name).
//!
//! Reads the three configured files and nothing else. Never logs key
//! material: only paths, fingerprints and expiry times.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use billdb_api::identity::Identity;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::NodeId;

/// `[tls]` of node.toml.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster's id, as its certificates name it (`billdb://<id>/…`).
    pub cluster_id: String,
    /// PEM bundle of the CA certificates trusted for peers and clients
    /// (two during a CA rotation: the old and the new).
    pub ca_file: PathBuf,
    /// PEM: this node's certificate (then any intermediates).
    pub cert_file: PathBuf,
    /// PEM: this node's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

/// ALPN of the gRPC ports (HTTP/2 only).
const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP port (axum serves HTTP/1.1 here).
const ALPN_HTTP1: &[u8] = b"http/1.1";
/// Largest file among the three accepted (a CA bundle of a few dozen CAs).
const FILE_BYTES_MAX: u64 = 1 << 20;

/// One consistent load of the three files.
pub struct Material {
    /// Raft port, server side: a client certificate from the CA is required.
    pub raft_server: Arc<ServerConfig>,
    /// gRPC client port: a client certificate is optional.
    pub grpc_server: Arc<ServerConfig>,
    /// HTTP client port: a client certificate is optional.
    pub http_server: Arc<ServerConfig>,
    /// Node-to-node connections, client side.
    pub peer_client: Arc<ClientConfig>,
    /// 1 for the material loaded at start, +1 on every reload.
    pub generation: u64,
    /// SHA-256 of this node's certificate (DER), hex.
    pub cert_sha256: String,
    /// This node's certificate expires at (unix seconds).
    pub cert_not_after_unix_s: i64,
    /// CA certificates in the bundle.
    pub ca_count: usize,
}

/// Size and modification time of a file: a change of either means reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: m.len(),
        modified: m.modified().ok(),
    })
}

pub struct Tls {
    config: TlsConfig,
    node_id: NodeId,
    current: RwLock<Arc<Material>>,
    stamps: Mutex<Vec<Option<FileStamp>>>,
    /// The last reload refused (`None` after a good one), for status.
    last_error: Mutex<Option<String>>,
}

/// rustls over *ring* (not aws-lc-rs: no second large C build beside
/// RocksDB's). rustls marks it deprecated only for lacking post-quantum key
/// exchange; its TLS 1.3 and 1.2 suites are the standard ones.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_bounded(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= FILE_BYTES_MAX,
        "{what} {}: {} bytes, more than {FILE_BYTES_MAX}",
        path.display(),
        meta.len()
    );
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read_bounded(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{what} {}: not PEM certificates: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} {}: holds no certificate",
        path.display()
    );
    Ok(certs)
}

/// The billdb identity a certificate (DER) names in its URI subject
/// alternative names, if any.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Identity::parse_uri(u),
        _ => None,
    })
}

fn not_after_unix_s(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

impl Tls {
    /// Load and check the files; any problem is an error naming the file.
    pub fn load(config: &TlsConfig, node_id: NodeId) -> anyhow::Result<Tls> {
        billdb_api::identity::check_name(&config.cluster_id)
            .map_err(|e| anyhow::anyhow!("tls.cluster_id: {e}"))?;
        let material = build(config, node_id, 1)?;
        Ok(Tls {
            config: config.clone(),
            node_id,
            current: RwLock::new(Arc::new(material)),
            stamps: Mutex::new(Self::stamps_of(config)),
            last_error: Mutex::new(None),
        })
    }

    fn stamps_of(config: &TlsConfig) -> Vec<Option<FileStamp>> {
        [&config.ca_file, &config.cert_file, &config.key_file]
            .into_iter()
            .map(|p| stamp(p))
            .collect()
    }

    pub fn cluster_id(&self) -> &str {
        &self.config.cluster_id
    }

    pub fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuild when any file changed since the last look. `None`: nothing
    /// changed; `Some(Ok(generation))`: the new material is in use;
    /// `Some(Err(reason))`: refused, the old material stays.
    pub fn reload_if_changed(&self) -> Option<Result<u64, String>> {
        let now = Self::stamps_of(&self.config);
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        let generation = self.current().generation + 1;
        let outcome = match build(&self.config, self.node_id, generation) {
            Ok(m) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
                Ok(generation)
            }
            Err(e) => Err(format!("{e:#}")),
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = outcome.clone().err();
        Some(outcome)
    }

    /// What status shows: no key material, only what an operator checks.
    pub fn status(&self) -> serde_json::Value {
        let m = self.current();
        serde_json::json!({
            "cluster_id": self.config.cluster_id,
            "generation": m.generation,
            "cert_sha256": m.cert_sha256,
            "cert_not_after_unix_s": m.cert_not_after_unix_s,
            "ca_count": m.ca_count,
            "ca_file": self.config.ca_file,
            "cert_file": self.config.cert_file,
            "key_file": self.config.key_file,
            "last_reload_error": self.last_error(),
        })
    }
}

fn build(config: &TlsConfig, node_id: NodeId, generation: u64) -> anyhow::Result<Material> {
    let provider = provider();
    let cas = read_certs(&config.ca_file, "tls.ca_file")?;
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.iter().enumerate() {
        roots.add(ca.clone()).map_err(|e| {
            anyhow::anyhow!(
                "tls.ca_file {}: certificate {i} is not a usable CA: {e}",
                config.ca_file.display()
            )
        })?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&config.cert_file, "tls.cert_file")?;
    let key_pem = read_bounded(&config.key_file, "tls.key_file")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "tls.key_file {}: no private key in PEM form: {e}",
            config.key_file.display()
        )
    })?;
    let leaf = chain[0].clone();
    let want = Identity::Node {
        cluster: config.cluster_id.clone(),
        id: node_id,
    };
    match identity_of(&leaf) {
        Some(found) if found == want => {}
        Some(found) => anyhow::bail!(
            "tls.cert_file {}: the certificate names {found}, not this node ({want})",
            config.cert_file.display()
        ),
        None => anyhow::bail!(
            "tls.cert_file {}: the certificate names no billdb identity (expected a URI \
             subject alternative name {want})",
            config.cert_file.display()
        ),
    }
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| {
            anyhow::anyhow!(
                "tls.key_file {} does not go with tls.cert_file {}: {e}",
                config.key_file.display(),
                config.cert_file.display()
            )
        },
    )?;
    let required = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .context("building the peer certificate verifier")?;
    // Our own certificate must be one the peers will accept.
    required
        .verify_client_cert(&leaf, &chain[1..], UnixTime::now())
        .map_err(|e| {
            anyhow::anyhow!(
                "tls.cert_file {}: not valid under tls.ca_file {}: {e}",
                config.cert_file.display(),
                config.ca_file.display()
            )
        })?;
    let optional = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let server = |verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
                  alpn: &[u8]|
     -> anyhow::Result<Arc<ServerConfig>> {
        let mut c = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    let mut peer_client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())?;
    peer_client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Material {
        raft_server: server(required, ALPN_H2)?,
        grpc_server: server(optional.clone(), ALPN_H2)?,
        http_server: server(optional, ALPN_HTTP1)?,
        peer_client: Arc::new(peer_client),
        generation,
        cert_sha256: hex::encode(Sha256::digest(leaf.as_ref())),
        cert_not_after_unix_s: not_after_unix_s(&leaf).unwrap_or(0),
        ca_count: cas.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn leaf(ca: &Ca, uri: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, ca_pem: &str, cert: &str, key: &str) -> TlsConfig {
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.join("node.pem"), cert).unwrap();
        std::fs::write(dir.join("node.key"), key).unwrap();
        TlsConfig {
            cluster_id: "c1".into(),
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("node.pem"),
            key_file: dir.join("node.key"),
        }
    }

    fn err(config: &TlsConfig, id: NodeId) -> String {
        match Tls::load(config, id) {
            Ok(_) => panic!("loaded"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_node_refuses_material_that_is_missing_wrong_or_mismatched() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = ca();
        let (cert, key) = leaf(&ca1, "billdb://c1/node/3");
        let good = files(dir.path(), &ca1.pem, &cert, &key);
        let tls = Tls::load(&good, 3).unwrap();
        assert_eq!(tls.current().generation, 1);
        assert!(!tls.status().to_string().contains("PRIVATE KEY"));
        // Another node's id, another cluster.
        assert!(err(&good, 4).contains("not this node"), "{}", err(&good, 4));
        let (c2, k2) = leaf(&ca1, "billdb://c2/node/3");
        let other = files(dir.path(), &ca1.pem, &c2, &k2);
        assert!(err(&other, 3).contains("billdb://c2/node/3"));
        // A key that is not the certificate's.
        let (_, k3) = leaf(&ca1, "billdb://c1/node/3");
        let mismatched = files(dir.path(), &ca1.pem, &cert, &k3);
        assert!(err(&mismatched, 3).contains("does not go with"));
        // A certificate from another CA.
        let ca2 = ca();
        let foreign = files(dir.path(), &ca2.pem, &cert, &key);
        assert!(err(&foreign, 3).contains("not valid under"));
        // A missing file.
        let mut missing = good.clone();
        missing.key_file = dir.path().join("nope.key");
        assert!(err(&missing, 3).contains("nope.key"));
        // Garbage.
        let garbage = files(dir.path(), "not pem", &cert, &key);
        assert!(err(&garbage, 3).contains("tls.ca_file"));
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = ca();
        let (cert, key) = leaf(&ca1, "billdb://c1/node/1");
        let config = files(dir.path(), &ca1.pem, &cert, &key);
        let tls = Tls::load(&config, 1).unwrap();
        assert!(tls.reload_if_changed().is_none());
        let before = tls.current().cert_sha256.clone();
        // A new certificate and key: taken.
        let (cert2, key2) = leaf(&ca1, "billdb://c1/node/1");
        files(dir.path(), &ca1.pem, &cert2, &key2);
        assert_eq!(tls.reload_if_changed(), Some(Ok(2)));
        assert_ne!(tls.current().cert_sha256, before);
        // A key that does not match: refused, generation 2 stays.
        let (_, key3) = leaf(&ca1, "billdb://c1/node/1");
        std::fs::write(&config.key_file, format!("{key3}\n")).unwrap();
        assert!(matches!(tls.reload_if_changed(), Some(Err(e)) if e.contains("does not go with")));
        assert_eq!(tls.current().generation, 2);
        assert!(tls.last_error().is_some());
        // Both CAs trusted during a CA rotation.
        let ca2 = ca();
        let (cert4, key4) = leaf(&ca2, "billdb://c1/node/1");
        files(
            dir.path(),
            &format!("{}{}", ca1.pem, ca2.pem),
            &cert4,
            &key4,
        );
        assert_eq!(tls.reload_if_changed(), Some(Ok(3)));
        assert_eq!(tls.current().ca_count, 2);
        assert!(tls.last_error().is_none());
    }

    #[test]
    fn identities_are_read_from_the_uri_san() {
        let ca1 = ca();
        let (cert, _) = leaf(&ca1, "billdb://c1/client/counter-7");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(
            identity_of(&der),
            Some(Identity::Client {
                cluster: "c1".into(),
                name: "counter-7".into()
            })
        );
        assert_eq!(identity_of(b"junk"), None);
    }
}
