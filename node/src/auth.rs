//! Bearer-token and client-certificate authentication, and role checks.
//! The tokens file holds only SHA-256 hashes of tokens (and names of client
//! certificates); it is read at start and again whenever it changes.
//! Nothing here logs a token. May read the tokens file and nothing else.
//!
//! ```toml
//! [[token]]
//! sha256 = "…64 hex…"
//! role = "counter"        # counter | bank | ops | auditor
//! operator_id = "C-0101"  # who the records name (counter: required)
//! branch = "B01"          # counter: required
//! bank_code = "ICBC"      # bank: required
//!
//! [[token]]
//! client_cert = "counter-0101"  # instead of sha256: the client certificate
//! role = "counter"              # billdb://<cluster>/client/counter-0101
//! operator_id = "C-0101"
//! branch = "B01"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use billdb_api::error::{ApiError, ErrorCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A cashier at a counter: bound to one operator and branch.
    Counter,
    /// A bank front-end: payments for its own bank_code.
    Bank,
    /// Operations staff: administration and everything else.
    Ops,
    /// Read-only.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Counter => "counter",
            Role::Bank => "bank",
            Role::Ops => "ops",
            Role::Auditor => "auditor",
        }
    }
}

/// Who is calling, from their credentials (never from the request body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub operator_id: String,
    pub branch: String,
    pub bank_code: String,
}

impl Caller {
    /// The caller when authentication is off (development only).
    pub fn anonymous_ops() -> Caller {
        Caller {
            role: Role::Ops,
            operator_id: "anonymous".into(),
            branch: String::new(),
            bank_code: String::new(),
        }
    }

    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "role {} may not do this (needs one of {names:?})",
                self.role.as_str()
            ),
        ))
    }

    /// A bank may post only its own payments.
    pub fn check_bank(&self, bank_code: &str) -> Result<(), ApiError> {
        if self.role == Role::Bank && self.bank_code != bank_code {
            return Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("this token is for bank {}, not {bank_code}", self.bank_code),
            ));
        }
        Ok(())
    }

    /// The operator recorded on what this caller writes.
    pub fn operator(&self) -> String {
        match self.role {
            Role::Bank => format!("bank:{}", self.bank_code),
            _ => self.operator_id.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// SHA-256 (hex) of a bearer token…
    #[serde(default)]
    sha256: Option<String>,
    /// …or the name of a client certificate (`billdb://<cluster>/client/<name>`).
    #[serde(default)]
    client_cert: Option<String>,
    role: Role,
    #[serde(default)]
    operator_id: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    bank_code: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// Most tokens a file may hold.
const TOKENS_MAX: usize = 10_000;
/// Largest tokens file read.
const TOKENS_FILE_BYTES_MAX: u64 = 16 << 20;

/// One load of the tokens file.
#[derive(Debug, Default)]
struct Table {
    tokens: BTreeMap<[u8; 32], Caller>,
    certs: BTreeMap<String, Caller>,
}

/// Who may call, from the tokens file; reloaded when the file changes, so
/// a revoked token stops working within seconds without a restart.
#[derive(Debug)]
pub struct Auth {
    /// `None`: authentication off (no tokens file configured).
    path: Option<PathBuf>,
    table: RwLock<Arc<Table>>,
    stamp: Mutex<Option<(u64, Option<SystemTime>)>>,
    enabled: bool,
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn file_stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()))
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= TOKENS_FILE_BYTES_MAX,
        "{}: {len} bytes, more than {TOKENS_FILE_BYTES_MAX}",
        path.display()
    );
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

impl Auth {
    pub fn disabled() -> Auth {
        Auth {
            path: None,
            table: RwLock::default(),
            stamp: Mutex::new(None),
            enabled: false,
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<Auth> {
        let stamp = file_stamp(path);
        let text = read_file(path)?;
        let table = parse_table(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Auth {
            path: Some(path.to_path_buf()),
            table: RwLock::new(Arc::new(table)),
            stamp: Mutex::new(stamp),
            enabled: true,
        })
    }

    pub fn parse(text: &str) -> anyhow::Result<Auth> {
        Ok(Auth {
            path: None,
            table: RwLock::new(Arc::new(parse_table(text)?)),
            stamp: Mutex::new(None),
            enabled: true,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-read the tokens file when it changed. `None`: unchanged (or no
    /// file); `Some(Ok(entries))`: the new table is in use; `Some(Err)`:
    /// refused, the old table stays.
    pub fn reload_if_changed(&self) -> Option<Result<usize, String>> {
        let path = self.path.as_ref()?;
        let now = file_stamp(path);
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        let loaded = read_file(path).and_then(|t| parse_table(&t));
        Some(match loaded {
            Ok(table) => {
                let n = table.tokens.len() + table.certs.len();
                *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
                Ok(n)
            }
            Err(e) => Err(format!("{}: {e:#}", path.display())),
        })
    }

    /// Resolve an `Authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        self.authenticate_with(header, None)
    }

    /// Resolve the caller from a bearer token, or when there is none, from
    /// the name of the client certificate the connection presented (a
    /// certificate of this cluster; the caller checks the cluster).
    pub fn authenticate_with(
        &self,
        header: Option<&str>,
        client_cert: Option<&str>,
    ) -> Result<Caller, ApiError> {
        if !self.enabled {
            return Ok(Caller::anonymous_ops());
        }
        let table = self.table();
        let unauth = |m: &str| ApiError::new(ErrorCode::Unauthenticated, m.to_string());
        let Some(header) = header else {
            if let Some(name) = client_cert {
                return table.certs.get(name).cloned().ok_or_else(|| {
                    unauth("this client certificate maps to no role (tokens file: client_cert)")
                });
            }
            return Err(unauth(
                "missing Authorization: Bearer <token> (or a client certificate with a role)",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauth("Authorization must be a Bearer token"))?
            .trim();
        table
            .tokens
            .get(&token_hash(token))
            .cloned()
            .ok_or_else(|| unauth("unknown token"))
    }
}

fn parse_table(text: &str) -> anyhow::Result<Table> {
    let file: TokensFile = toml::from_str(text)?;
    anyhow::ensure!(
        file.token.len() <= TOKENS_MAX,
        "more than {TOKENS_MAX} tokens"
    );
    let mut table = Table::default();
    for (i, t) in file.token.into_iter().enumerate() {
        match t.role {
            Role::Counter => anyhow::ensure!(
                !t.operator_id.is_empty() && !t.branch.is_empty(),
                "token {i}: a counter token needs operator_id and branch"
            ),
            Role::Bank => anyhow::ensure!(
                !t.bank_code.is_empty(),
                "token {i}: a bank token needs bank_code"
            ),
            Role::Ops | Role::Auditor => {}
        }
        let operator_id = if t.operator_id.is_empty() {
            t.role.as_str().to_string()
        } else {
            t.operator_id
        };
        let caller = Caller {
            role: t.role,
            operator_id,
            branch: t.branch,
            bank_code: t.bank_code,
        };
        match (t.sha256, t.client_cert) {
            (Some(sha), None) => {
                let raw =
                    hex::decode(&sha).map_err(|e| anyhow::anyhow!("token {i}: sha256: {e}"))?;
                let hash: [u8; 32] = raw
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("token {i}: sha256 must be 32 bytes"))?;
                anyhow::ensure!(
                    table.tokens.insert(hash, caller).is_none(),
                    "token {i}: duplicate token"
                );
            }
            (None, Some(name)) => {
                billdb_api::identity::check_name(&name)
                    .map_err(|e| anyhow::anyhow!("token {i}: client_cert: {e}"))?;
                anyhow::ensure!(
                    table.certs.insert(name, caller).is_none(),
                    "token {i}: duplicate client_cert"
                );
            }
            _ => anyhow::bail!("token {i}: give exactly one of sha256 and client_cert"),
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> String {
        format!(
            "[[token]]\nsha256 = \"{}\"\nrole = \"counter\"\noperator_id = \"C-1\"\nbranch = \"B01\"\n\
             [[token]]\nsha256 = \"{}\"\nrole = \"bank\"\nbank_code = \"ICBC\"\n",
            hex::encode(token_hash("tok-counter")),
            hex::encode(token_hash("tok-bank"))
        )
    }

    #[test]
    fn tokens_map_to_callers_and_roles_are_checked() {
        let auth = Auth::parse(&file()).unwrap();
        let c = auth.authenticate(Some("Bearer tok-counter")).unwrap();
        assert_eq!(
            (c.role, c.operator().as_str(), c.branch.as_str()),
            (Role::Counter, "C-1", "B01")
        );
        assert_eq!(
            c.require(&[Role::Ops]).unwrap_err().code,
            ErrorCode::PermissionDenied
        );
        assert!(c.require(&[Role::Counter, Role::Ops]).is_ok());
        let b = auth.authenticate(Some("Bearer tok-bank")).unwrap();
        assert_eq!(b.operator(), "bank:ICBC");
        for bad in [
            None,
            Some("tok-bank"),
            Some("Bearer nope"),
            Some("Basic abc"),
        ] {
            assert_eq!(
                auth.authenticate(bad).unwrap_err().code,
                ErrorCode::Unauthenticated,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_token_files_are_refused() {
        assert!(Auth::parse("[[token]]\nsha256 = \"zz\"\nrole = \"ops\"\n").is_err());
        assert!(
            Auth::parse(&format!(
                "[[token]]\nsha256 = \"{}\"\nrole = \"counter\"\n",
                hex::encode([0u8; 32])
            ))
            .is_err()
        );
        assert!(
            Auth::parse(&format!(
                "[[token]]\nsha256 = \"{}\"\nrole = \"king\"\n",
                hex::encode([0u8; 32])
            ))
            .is_err()
        );
        let dup = format!(
            "[[token]]\nsha256 = \"{0}\"\nrole = \"ops\"\n[[token]]\nsha256 = \"{0}\"\nrole = \"auditor\"\n",
            hex::encode([1u8; 32])
        );
        assert!(Auth::parse(&dup).is_err());
    }

    #[test]
    fn client_certificates_map_to_roles_and_the_file_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let cert_entry = "[[token]]\nclient_cert = \"counter-7\"\nrole = \"counter\"\noperator_id = \"C-7\"\nbranch = \"B07\"\n";
        std::fs::write(&path, format!("{}{cert_entry}", file())).unwrap();
        let auth = Auth::load(&path).unwrap();
        let c = auth.authenticate_with(None, Some("counter-7")).unwrap();
        assert_eq!((c.role, c.operator_id.as_str()), (Role::Counter, "C-7"));
        // A token still wins over the certificate.
        let b = auth
            .authenticate_with(Some("Bearer tok-bank"), Some("counter-7"))
            .unwrap();
        assert_eq!(b.role, Role::Bank);
        assert_eq!(
            auth.authenticate_with(None, Some("nobody"))
                .unwrap_err()
                .code,
            ErrorCode::Unauthenticated
        );
        assert!(auth.reload_if_changed().is_none());
        // Revoke the counter token: gone after the reload.
        let without = file().replace("tok-counter", "x");
        let without = without.replace(
            &hex::encode(token_hash("tok-counter")),
            &hex::encode(token_hash("another")),
        );
        std::fs::write(&path, format!("{without}{cert_entry}\n")).unwrap();
        assert_eq!(auth.reload_if_changed(), Some(Ok(3)));
        assert!(auth.authenticate(Some("Bearer tok-counter")).is_err());
        assert!(auth.authenticate(Some("Bearer another")).is_ok());
        // A broken file is refused and the table in use stays.
        std::fs::write(&path, "[[token]]\nrole = \"ops\"\n").unwrap();
        assert!(matches!(auth.reload_if_changed(), Some(Err(e)) if e.contains("exactly one")));
        assert!(auth.authenticate(Some("Bearer another")).is_ok());
    }
}
