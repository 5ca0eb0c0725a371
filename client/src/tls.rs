//! Client-side TLS: the CA a client trusts and, optionally, the client
//! certificate it presents, turned into the configurations of the HTTP
//! client (ureq) and the gRPC client (tonic). Reads only the files it is
//! given.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Largest PEM file read.
const PEM_BYTES_MAX: u64 = 1 << 20;

/// What a client needs to speak TLS to a billdb cluster.
#[derive(Clone)]
pub struct ClientTls {
    /// PEM bundle of trusted CA certificates.
    pub ca_pem: Vec<u8>,
    /// PEM certificate and key presented to the node (mutual TLS).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    ureq: ureq::tls::TlsConfig,
}

impl std::fmt::Debug for ClientTls {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_cert", &self.identity.is_some())
            .finish()
    }
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{what} {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= PEM_BYTES_MAX,
        "{what} {}: {len} bytes, more than {PEM_BYTES_MAX}",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("{what} {}", path.display()))
}

/// Paths as given on a command line (`--ca`, `--cert`, `--key`).
#[derive(Debug, Clone, Default)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsPaths {
    /// `None` when no CA is given (plaintext endpoints only).
    pub fn load(&self) -> Result<Option<ClientTls>> {
        let Some(ca) = &self.ca else {
            anyhow::ensure!(
                self.cert.is_none() && self.key.is_none(),
                "--cert/--key need --ca (the cluster's CA certificate)"
            );
            return Ok(None);
        };
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => anyhow::bail!("--cert and --key go together"),
        };
        ClientTls::from_files(ca, identity).map(Some)
    }
}

impl ClientTls {
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls> {
        let ca_pem = read_pem(ca, "CA file")?;
        let identity = match identity {
            Some((c, k)) => Some((
                read_pem(c, "client certificate")?,
                read_pem(k, "client key")?,
            )),
            None => None,
        };
        Self::from_pem(ca_pem, identity).with_context(|| format!("CA file {}", ca.display()))
    }

    /// From PEM bytes; every certificate and the key are parsed here.
    pub fn from_pem(ca_pem: Vec<u8>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Result<ClientTls> {
        let ureq = Self::build_ureq(&ca_pem, identity.as_ref())?;
        Ok(ClientTls {
            ca_pem,
            identity,
            ureq,
        })
    }

    /// The HTTP client's TLS settings: only this CA is trusted.
    pub fn ureq_config(&self) -> ureq::tls::TlsConfig {
        self.ureq.clone()
    }

    fn build_ureq(
        ca_pem: &[u8],
        identity: Option<&(Vec<u8>, Vec<u8>)>,
    ) -> Result<ureq::tls::TlsConfig> {
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(ca_pem) {
            if let ureq::tls::PemItem::Certificate(c) = item.context("parsing the CA file")? {
                roots.push(c);
            }
        }
        anyhow::ensure!(!roots.is_empty(), "holds no PEM certificate");
        let mut b = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
        if let Some((cert, key)) = identity {
            let mut chain = Vec::new();
            for item in ureq::tls::parse_pem(cert) {
                if let ureq::tls::PemItem::Certificate(c) =
                    item.context("parsing the client certificate")?
                {
                    chain.push(c);
                }
            }
            anyhow::ensure!(
                !chain.is_empty(),
                "the client certificate file holds no certificate"
            );
            let key = ureq::tls::PrivateKey::from_pem(key).context("parsing the client key")?;
            b = b.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        Ok(b.build())
    }

    /// The gRPC client's TLS settings: only this CA is trusted.
    pub fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        c
    }
}
