//! Certificates for a billdb cluster (rcgen): a cluster CA, node
//! certificates that name their node (`billdb_api::identity`), and client
//! certificates that the tokens file maps to roles. Writes only the files
//! it is asked to; private keys are written mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use billdb_api::identity::{Identity, check_name, node_dns_name};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA is valid this long.
pub const CA_VALIDITY_DAYS: u64 = 3_650;
/// Node and client certificates are valid this long (rotate before).
pub const LEAF_VALIDITY_DAYS: u64 = 397;
/// Validity starts this long before now (clocks of the nodes differ).
const BACKDATE_S: u64 = 3_600;

/// A CA: its certificate and key, PEM.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca { .. }")
    }
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, days: u64) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(BACKDATE_S)).into();
    params.not_after = (now + Duration::from_secs(days * 86_400)).into();
}

/// A new self-signed CA for cluster `cluster_id`.
pub fn new_ca(cluster_id: &str) -> Result<Ca> {
    check_name(cluster_id).map_err(anyhow::Error::msg)?;
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut p = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("billdb {cluster_id} CA"));
    dn.push(DnType::OrganizationName, "billdb");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, CA_VALIDITY_DAYS);
    let cert = p.self_signed(&key).context("signing the CA")?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue(ca: &Ca, identity: &Identity, sans: Vec<SanType>, server: bool) -> Result<Leaf> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("reading the CA key")?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("reading the CA certificate")?;
    let key = KeyPair::generate().context("generating a key")?;
    let mut p = CertificateParams::new(Vec::<String>::new()).context("parameters")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.uri());
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.subject_alt_names.push(SanType::URI(
        identity.uri().try_into().context("identity URI")?,
    ));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, LEAF_VALIDITY_DAYS);
    let cert = p.signed_by(&key, &issuer).context("signing")?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Node `id`'s certificate: its identity, its peer DNS name, and `hosts`
/// (names or IP addresses clients and peers reach it by).
pub fn node_cert(ca: &Ca, cluster_id: &str, id: u64, hosts: &[String]) -> Result<Leaf> {
    check_name(cluster_id).map_err(anyhow::Error::msg)?;
    let mut sans = vec![SanType::DnsName(
        node_dns_name(cluster_id, id)
            .try_into()
            .context("node DNS name")?,
    )];
    for h in hosts {
        sans.push(match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.clone()
                    .try_into()
                    .with_context(|| format!("host {h:?}"))?,
            ),
        });
    }
    issue(
        ca,
        &Identity::Node {
            cluster: cluster_id.to_string(),
            id,
        },
        sans,
        true,
    )
}

/// A client certificate named `name` (map it to a role in the tokens file
/// with `client_cert = "<name>"`).
pub fn client_cert(ca: &Ca, cluster_id: &str, name: &str) -> Result<Leaf> {
    check_name(cluster_id).map_err(anyhow::Error::msg)?;
    check_name(name).map_err(anyhow::Error::msg)?;
    issue(
        ca,
        &Identity::Client {
            cluster: cluster_id.to_string(),
            name: name.to_string(),
        },
        Vec::new(),
        false,
    )
}

/// Write `contents` to `path` atomically (temp file + rename), with
/// `mode` (0600 for keys). Readers never see a half-written file.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(contents)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Write a leaf's certificate (0644) and key (0600) as `<stem>.pem` and
/// `<stem>.key` in `dir`: key first, so a watcher that sees the new
/// certificate finds its key already there.
pub fn write_leaf(dir: &Path, stem: &str, leaf: &Leaf) -> Result<()> {
    write_file(
        &dir.join(format!("{stem}.key")),
        leaf.key_pem.as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join(format!("{stem}.pem")),
        leaf.cert_pem.as_bytes(),
        0o644,
    )
}

/// Write a CA into `dir` as `ca.key` (0600) and `ca.pem`, the layout
/// [`read_ca`] reads.
pub fn write_ca(dir: &Path, ca: &Ca) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_file(&dir.join("ca.key"), ca.key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join("ca.pem"), ca.cert_pem.as_bytes(), 0o644)
}

/// Read a CA (`ca.pem` certificate, `ca.key` key) from `dir`.
pub fn read_ca(dir: &Path) -> Result<Ca> {
    let read = |n: &str| {
        std::fs::read_to_string(dir.join(n))
            .with_context(|| format!("reading {}", dir.join(n).display()))
    };
    Ok(Ca {
        cert_pem: read("ca.pem")?,
        key_pem: read("ca.key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_carry_their_identity() {
        let ca = new_ca("c1").unwrap();
        let node = node_cert(&ca, "c1", 3, &["127.0.0.1".into(), "db3.example".into()]).unwrap();
        assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(node.key_pem.contains("PRIVATE KEY"));
        let client = client_cert(&ca, "c1", "counter-7").unwrap();
        assert_ne!(client.cert_pem, node.cert_pem);
        assert!(new_ca("Bad Name").is_err());
        assert!(client_cert(&ca, "c1", "no/slash").is_err());
    }
}
