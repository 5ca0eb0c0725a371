//! Bearer-token authentication and role checks. The tokens file holds only
//! SHA-256 hashes of tokens; it is read once at start. Nothing here logs a
//! token. May read the tokens file and nothing else.
//!
//! ```toml
//! [[token]]
//! sha256 = "…64 hex…"
//! role = "counter"        # counter | bank | ops | auditor
//! operator_id = "C-0101"  # who the records name (counter: required)
//! branch = "B01"          # counter: required
//! bank_code = "ICBC"      # bank: required
//! ```

use std::collections::BTreeMap;
use std::path::Path;

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
    sha256: String,
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

#[derive(Debug, Clone)]
pub struct Auth {
    /// `None`: authentication off (no tokens file configured).
    tokens: Option<BTreeMap<[u8; 32], Caller>>,
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    pub fn disabled() -> Auth {
        Auth { tokens: None }
    }

    pub fn load(path: &Path) -> anyhow::Result<Auth> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Auth> {
        let file: TokensFile = toml::from_str(text)?;
        anyhow::ensure!(
            file.token.len() <= TOKENS_MAX,
            "more than {TOKENS_MAX} tokens"
        );
        let mut tokens = BTreeMap::new();
        for (i, t) in file.token.into_iter().enumerate() {
            let raw =
                hex::decode(&t.sha256).map_err(|e| anyhow::anyhow!("token {i}: sha256: {e}"))?;
            let hash: [u8; 32] = raw
                .try_into()
                .map_err(|_| anyhow::anyhow!("token {i}: sha256 must be 32 bytes"))?;
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
            anyhow::ensure!(
                tokens.insert(hash, caller).is_none(),
                "token {i}: duplicate token"
            );
        }
        Ok(Auth {
            tokens: Some(tokens),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// Resolve an `Authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::anonymous_ops());
        };
        let unauth = |m: &str| ApiError::new(ErrorCode::Unauthenticated, m.to_string());
        let header = header.ok_or_else(|| unauth("missing Authorization: Bearer <token>"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauth("Authorization must be a Bearer token"))?
            .trim();
        tokens
            .get(&token_hash(token))
            .cloned()
            .ok_or_else(|| unauth("unknown token"))
    }
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
}
