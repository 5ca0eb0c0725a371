//! Every billing operation, once, for both client surfaces. HTTP and gRPC
//! hand an [`Endpoint`] plus its arguments ([`Args`]: the body's bytes, or
//! one JSON object of body fields, path parameters and query parameters
//! merged) to [`call`]; it checks the caller's role, parses strictly
//! (unknown fields refused) straight into the endpoint's typed arguments,
//! validates into a
//! domain [`Op`] (writes) or runs a read function over a linearized
//! [`RocksRead`], and renders the JSON answer. So both surfaces share one
//! code path and return the same codes.

use billdb_api::error::{ApiError, ErrorCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::validate;
use crate::app::{App, Origin};
use crate::auth::{Caller, Role};
use crate::domain::{self, Buy, GroupBy, Op, Outcome, RecordQuery, Segment, TariffSpec};
use crate::store::state_machine::RocksRead;

/// Every billing operation of the client API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    OpenAccount,
    GetAccount,
    UpdateContact,
    Close,
    Suspend,
    Resume,
    IssueCard,
    ReplaceCard,
    VerifyCard,
    Purchase,
    Reissue,
    ConfirmLoaded,
    Payment,
    Reverse,
    Adjust,
    PostCharge,
    ListRecords,
    GetRequest,
    PrintInvoice,
    MonthlyReport,
    BankDailyReport,
    SetBoundary,
    OpenSeason,
    DefineTariff,
    Import,
    /// A failover drill's summary (`billdb drill run`), one per scenario.
    RecordDrill,
    /// The last drill of every scenario.
    ListDrills,
    /// A customer statement: one account over a period.
    Statement,
    /// Accounts and Σ balance per branch, utility or tariff.
    BalanceReport,
}

const ALL: &[Role] = &[Role::Counter, Role::Bank, Role::Ops, Role::Auditor];
const COUNTER: &[Role] = &[Role::Counter, Role::Ops];
const OPS: &[Role] = &[Role::Ops];

impl Endpoint {
    /// Which roles may call it (SPEC Security).
    pub fn roles(self) -> &'static [Role] {
        use Endpoint::*;
        match self {
            GetAccount | GetRequest => ALL,
            ListRecords | Statement => &[Role::Counter, Role::Ops, Role::Auditor],
            VerifyCard => &[Role::Counter, Role::Ops, Role::Auditor],
            MonthlyReport | ListDrills | BalanceReport => &[Role::Ops, Role::Auditor],
            BankDailyReport => &[Role::Bank, Role::Ops, Role::Auditor],
            OpenAccount | UpdateContact | IssueCard | ReplaceCard | Purchase | Reissue
            | ConfirmLoaded | PrintInvoice => COUNTER,
            Payment => &[Role::Bank, Role::Ops],
            Close | Suspend | Resume | Reverse | Adjust | PostCharge | SetBoundary | OpenSeason
            | DefineTariff | Import | RecordDrill => OPS,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

/// A request's arguments as they arrived.
pub enum Args {
    /// One JSON object: gRPC's request, or an HTTP body merged with path
    /// and query parameters.
    Json(Value),
    /// An HTTP body with nothing to merge (size already bounded): parsed
    /// once, straight into the endpoint's typed arguments, never through
    /// an intermediate [`Value`].
    Body(axum::body::Bytes),
}

impl From<Value> for Args {
    fn from(v: Value) -> Self {
        Args::Json(v)
    }
}

impl Args {
    /// Refuses anything but a JSON object: a JSON syntax error is
    /// MALFORMED_REQUEST, another JSON value INVALID_ARGUMENT (a typed
    /// struct would otherwise take an array as its fields in order).
    fn check_object(self) -> Result<Args, ApiError> {
        let not_object = || {
            ApiError::new(
                ErrorCode::InvalidArgument,
                "the request must be a JSON object",
            )
        };
        match self {
            Args::Json(v) if v.is_object() => Ok(Args::Json(v)),
            Args::Json(_) => Err(not_object()),
            Args::Body(b) => {
                if b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{') {
                    return Ok(Args::Body(b));
                }
                // Not an object: parse it whole only to say which error.
                match parse_body::<Value>(&b)? {
                    Value::Object(_) => Ok(Args::Body(b)),
                    _ => Err(not_object()),
                }
            }
        }
    }
}

/// A body's bytes as `T`: JSON syntax errors (and a truncated body) are
/// MALFORMED_REQUEST, wrong types, unknown or repeated fields
/// INVALID_ARGUMENT.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(ErrorCode::InvalidArgument, e.to_string())
        }
        _ => ApiError::new(ErrorCode::MalformedRequest, format!("malformed JSON: {e}")),
    })
}

/// Strict decode of the arguments: wrong types and unknown fields are
/// INVALID_ARGUMENT.
fn args<T: DeserializeOwned>(a: Args) -> Result<T, ApiError> {
    match a {
        Args::Json(v) => serde_json::from_value(v)
            .map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string())),
        Args::Body(b) => parse_body(&b),
    }
}

/// The operator, branch and channel a write records, from the token.
pub fn origin(caller: &Caller, op: &Op) -> Origin {
    let channel = match caller.role {
        Role::Counter => "counter",
        Role::Bank => "bank",
        _ => match op {
            Op::Import { .. } => "import",
            Op::Payment { .. } => "bank",
            _ => "counter",
        },
    };
    Origin {
        operator: caller.operator(),
        branch: if caller.role == Role::Counter {
            caller.branch.clone()
        } else {
            String::new()
        },
        channel: channel.to_string(),
    }
}

/// Run one operation for `caller`.
pub async fn call(app: &App, caller: &Caller, ep: Endpoint, a: Args) -> Result<Value, ApiError> {
    caller.require(ep.roles())?;
    let a = a.check_object()?;
    let r = match ep {
        Endpoint::GetAccount => read_account(app, a).await,
        Endpoint::GetRequest => read_request(app, a).await,
        Endpoint::ListRecords => read_records(app, a).await,
        Endpoint::VerifyCard => read_verify(app, a).await,
        Endpoint::MonthlyReport => read_monthly(app, a).await,
        Endpoint::BankDailyReport => read_bank_daily(app, caller, a).await,
        Endpoint::ListDrills => read_drills(app, a).await,
        Endpoint::Statement => read_statement(app, a).await,
        Endpoint::BalanceReport => read_balances(app, a).await,
        _ => {
            let (request_id, op) = write_op(caller, ep, a)?;
            if let Some(fake) = crate::failpoint_ack::ack_without_write(app, &request_id, &op) {
                return Ok(fake);
            }
            let tariff = match &op {
                Op::OpenAccount { tariff_id, .. } => Some(tariff_id.clone()),
                _ => None,
            };
            let origin = origin(caller, &op);
            let (outcome, log_index) = app.write(request_id, origin, op).await?;
            let mut v = write_json(outcome, log_index)?;
            if let Some(t) = tariff {
                warn_unknown_tariff(app, &t, &mut v)?;
            }
            Ok(v)
        }
    };
    fence_on_corruption(app, r)
}

/// The request_id of one command of a node-driven run (season bill, bank
/// index backfill): `prefix-` and a hash of the run's `scope` (its
/// request_id, …) and the ids the command names, so a retried or resumed
/// run proposes the same commands and exactly-once answers them.
pub fn batch_request_id(prefix: &str, scope: &[&str], ids: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in scope.iter().copied().chain(ids.iter().map(String::as_str)) {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("{prefix}-{}", &hex::encode(h.finalize())[..40])
}

/// A storage error that is a checksum failure fences this node (the guard
/// repairs it from its peers) and is answered as UNAVAILABLE with the
/// reason, like every later request, never as data or as INTERNAL.
pub fn fence_on_corruption<T>(app: &App, r: Result<T, ApiError>) -> Result<T, ApiError> {
    app.fence_on_corruption(r)
}

/// An account opened on a tariff that is not defined (yet) is accepted,
/// since tariffs may be defined after the accounts of a migration, but
/// said loudly: every sale on it is refused `TARIFF_NOT_FOUND` until the
/// tariff exists. The answer carries a `warnings` entry and the node logs
/// it.
fn warn_unknown_tariff(app: &App, tariff_id: &str, v: &mut Value) -> Result<(), ApiError> {
    let known = view_here(app, |view| {
        domain::get_tariff(view, tariff_id)
            .map(|t| t.is_some())
            .map_err(internal)
    })?;
    if !known {
        let msg = format!(
            "TARIFF_NOT_FOUND: tariff {tariff_id:?} is not defined; sales on this account are \
             refused until it is (PUT /v1/tariffs/{tariff_id})"
        );
        tracing::warn!(
            tariff_id,
            "an account was opened on a tariff that is not defined"
        );
        match v.get_mut("warnings").and_then(Value::as_array_mut) {
            Some(w) => w.push(json!(msg)),
            None => v["warnings"] = json!([msg]),
        }
    }
    Ok(())
}

/// A refused command is an error; its code says why.
pub fn write_json(outcome: Outcome, log_index: u64) -> Result<Value, ApiError> {
    if let Outcome::Refused(e) = outcome {
        return Err(e);
    }
    let mut v = outcome.to_json();
    v["log_index"] = json!(log_index);
    if let Some(ts) = v["record"]["ts_ms"].as_i64() {
        v["record"]["ts"] = json!(validate::to_rfc3339(ts));
    }
    Ok(v)
}

// ---- writes: wire → Op ----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenAccountArgs {
    request_id: String,
    account_id: String,
    name: String,
    #[serde(default)]
    address: String,
    branch: String,
    utility: String,
    #[serde(default)]
    meter_id: String,
    #[serde(default)]
    tariff_id: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateContactArgs {
    request_id: String,
    account_id: String,
    name: Option<String>,
    address: Option<String>,
    phone: Option<String>,
    area: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LifecycleArgs {
    request_id: String,
    account_id: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssueCardArgs {
    request_id: String,
    account_id: String,
    card_no: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplaceCardArgs {
    request_id: String,
    card_no: String,
    new_card_no: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PurchaseArgs {
    request_id: String,
    card_no: Option<String>,
    account_id: Option<String>,
    #[schema(pattern = r"^[0-9]+(\.[0-9]{1,2})?$")]
    amount: Option<String>,
    #[schema(pattern = r"^[0-9]+(\.[0-9]{1,3})?$")]
    units: Option<String>,
    #[serde(default)]
    confirm_duplicate: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordArgs {
    request_id: String,
    record_id: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PaymentArgs {
    request_id: String,
    account_id: String,
    #[schema(pattern = r"^[0-9]+(\.[0-9]{1,2})?$")]
    amount: String,
    bank_code: String,
    bank_ref: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdjustArgs {
    request_id: String,
    account_id: String,
    #[schema(pattern = r"^-?[0-9]+(\.[0-9]{1,2})?$")]
    amount: String,
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChargeArgs {
    request_id: String,
    account_id: String,
    #[schema(pattern = r"^[0-9]+(\.[0-9]{1,2})?$")]
    amount: String,
    period: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InvoiceArgs {
    request_id: String,
    invoice_no: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BoundaryArgs {
    request_id: String,
    /// RFC 3339 UTC.
    boundary: Option<String>,
    boundary_ms: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeasonArgs {
    request_id: String,
    season_id: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DrillArgs {
    request_id: String,
    scenario: String,
    result: String,
    started_ms: i64,
    write_gap_ms: u64,
    read_gap_ms: u64,
    health_ms: u64,
    acknowledged: u64,
    lost: u64,
    duplicated: u64,
    digests_equal: bool,
    report_sha256: String,
    run_by: String,
}

/// Longest value of a drill duration field: a day, in ms.
const DRILL_MS_MAX: u64 = 86_400_000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TierArgs {
    /// Upper bound of the tier in units; absent for the last tier.
    up_to: Option<String>,
    price: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TariffArgs {
    request_id: String,
    tariff_id: String,
    /// flat | ladder | area
    kind: String,
    /// flat: per unit; area: per m² of heated area per season.
    price: Option<String>,
    tiers: Option<Vec<TierArgs>>,
    /// area: the share of the full charge a heating stop (suspended
    /// account) pays, 0 to 1.
    suspended_share: Option<String>,
    /// RFC 3339 UTC.
    effective_from: Option<String>,
    effective_from_ms: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImportArgs {
    request_id: String,
    #[serde(default)]
    accounts: Vec<domain::ImportAccount>,
    #[serde(default)]
    records: Vec<domain::ImportRecord>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, msg)
}

fn price(field: &str, v: &str) -> Result<rust_decimal::Decimal, ApiError> {
    // Prices may carry more decimals than money (e.g. 0.5283 per kWh).
    let d: rust_decimal::Decimal = v
        .parse()
        .map_err(|_| invalid(format!("{field}: not a decimal")))?;
    if d <= rust_decimal::Decimal::ZERO || d.scale() > 6 || d > billdb_api::money::AMOUNT_MAX {
        return Err(invalid(format!(
            "{field}: must be > 0, at most 6 decimals and within limits"
        )));
    }
    Ok(d)
}

fn time_ms(field: &str, rfc: Option<String>, ms: Option<i64>) -> Result<i64, ApiError> {
    let t = match (rfc, ms) {
        (Some(s), None) => validate::rfc3339(field, &s)?,
        (None, Some(ms)) => ms,
        _ => {
            return Err(invalid(format!(
                "give exactly one of {field} (RFC 3339) or {field}_ms"
            )));
        }
    };
    if !(domain::calendar::TS_MIN_MS..=domain::calendar::TS_MAX_MS).contains(&t) {
        return Err(invalid(format!("{field}: out of range")));
    }
    Ok(t)
}

/// Validate a write's arguments into (request_id, Op).
pub fn write_op(caller: &Caller, ep: Endpoint, a: Args) -> Result<(String, Op), ApiError> {
    use validate::{amount, id, text};
    let (rid, op) = match ep {
        Endpoint::OpenAccount => {
            let r: OpenAccountArgs = args(a)?;
            if caller.role == Role::Counter && r.branch != caller.branch {
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "this counter token is for branch {}, not {}",
                        caller.branch, r.branch
                    ),
                ));
            }
            let op = validate::open_account(validate::OpenAccountInput {
                account_id: &r.account_id,
                name: &r.name,
                address: &r.address,
                branch: &r.branch,
                utility: &r.utility,
                meter_id: &r.meter_id,
                tariff_id: &r.tariff_id,
            })?;
            (r.request_id, op)
        }
        Endpoint::UpdateContact => {
            let r: UpdateContactArgs = args(a)?;
            let op = Op::UpdateContact {
                account_id: id("account_id", &r.account_id)?,
                name: r.name.as_deref().map(|v| text("name", v)).transpose()?,
                address: r
                    .address
                    .as_deref()
                    .map(|v| text("address", v))
                    .transpose()?,
                phone: r.phone.as_deref().map(|v| text("phone", v)).transpose()?,
                area: r
                    .area
                    .as_deref()
                    .map(|v| validate::area("area", v))
                    .transpose()?,
            };
            (r.request_id, op)
        }
        Endpoint::Close | Endpoint::Suspend | Endpoint::Resume => {
            let r: LifecycleArgs = args(a)?;
            let account_id = id("account_id", &r.account_id)?;
            let reason = text("reason", &r.reason)?;
            let op = match ep {
                Endpoint::Close => Op::Close { account_id, reason },
                Endpoint::Suspend => Op::Suspend { account_id, reason },
                _ => Op::Resume { account_id },
            };
            (r.request_id, op)
        }
        Endpoint::IssueCard => {
            let r: IssueCardArgs = args(a)?;
            let op = Op::IssueCard {
                account_id: id("account_id", &r.account_id)?,
                card_no: id("card_no", &r.card_no)?,
            };
            (r.request_id, op)
        }
        Endpoint::ReplaceCard => {
            let r: ReplaceCardArgs = args(a)?;
            let op = Op::ReplaceCard {
                card_no: id("card_no", &r.card_no)?,
                new_card_no: id("new_card_no", &r.new_card_no)?,
                reason: text("reason", &r.reason)?,
            };
            (r.request_id, op)
        }
        Endpoint::Purchase => {
            let r: PurchaseArgs = args(a)?;
            let card_no = validate::opt_id("card_no", r.card_no.as_deref())?;
            let account_id = validate::opt_id("account_id", r.account_id.as_deref())?;
            if card_no.is_some() == account_id.is_some() {
                return Err(invalid("give exactly one of card_no or account_id"));
            }
            let buy = match (r.amount.as_deref(), r.units.as_deref()) {
                (Some(m), None) => Buy::Money(amount("amount", m)?),
                (None, Some(u)) => Buy::Units(validate::units("units", u)?),
                _ => return Err(invalid("give exactly one of amount or units")),
            };
            let op = Op::Purchase {
                card_no,
                account_id,
                buy,
                confirm_duplicate: r.confirm_duplicate,
            };
            (r.request_id, op)
        }
        Endpoint::Reissue | Endpoint::ConfirmLoaded | Endpoint::Reverse => {
            let r: RecordArgs = args(a)?;
            let record_id = id("record_id", &r.record_id)?;
            if domain::parse_record_id(&record_id).is_none() {
                return Err(invalid("record_id: expected ACCOUNT:SEQ"));
            }
            let op = match ep {
                Endpoint::Reissue => Op::Reissue { record_id },
                Endpoint::ConfirmLoaded => Op::ConfirmLoaded { record_id },
                _ => Op::Reverse {
                    record_id,
                    reason: text("reason", &r.reason)?,
                },
            };
            (r.request_id, op)
        }
        Endpoint::Payment => {
            let r: PaymentArgs = args(a)?;
            caller.check_bank(&r.bank_code)?;
            let op = validate::payment(&r.account_id, &r.amount, &r.bank_code, &r.bank_ref)?;
            (r.request_id, op)
        }
        Endpoint::Adjust => {
            let r: AdjustArgs = args(a)?;
            if r.reason.trim().is_empty() {
                return Err(invalid("reason: an adjustment needs a reason"));
            }
            let op = Op::Adjust {
                account_id: id("account_id", &r.account_id)?,
                amount: validate::signed_amount("amount", &r.amount)?,
                reason: text("reason", &r.reason)?,
            };
            (r.request_id, op)
        }
        Endpoint::PostCharge => {
            let r: ChargeArgs = args(a)?;
            let op = Op::PostCharge {
                account_id: id("account_id", &r.account_id)?,
                amount: amount("amount", &r.amount)?,
                period: id("period", &r.period)?,
                reason: text("reason", &r.reason)?,
            };
            (r.request_id, op)
        }
        Endpoint::PrintInvoice => {
            let r: InvoiceArgs = args(a)?;
            let op = Op::PrintInvoice {
                invoice_no: id("invoice_no", &r.invoice_no)?,
            };
            (r.request_id, op)
        }
        Endpoint::SetBoundary => {
            let r: BoundaryArgs = args(a)?;
            let op = Op::SetSegmentBoundary {
                boundary_ms: time_ms("boundary", r.boundary, r.boundary_ms)?,
            };
            (r.request_id, op)
        }
        Endpoint::OpenSeason => {
            let r: SeasonArgs = args(a)?;
            let op = Op::OpenHeatingSeason {
                season_id: id("season_id", &r.season_id)?,
            };
            (r.request_id, op)
        }
        Endpoint::DefineTariff => {
            let r: TariffArgs = args(a)?;
            if r.kind != "area" && r.suspended_share.is_some() {
                return Err(invalid("suspended_share: only for kind area"));
            }
            let tariff = match (r.kind.as_str(), r.price, r.tiers) {
                ("flat", Some(p), None) => TariffSpec::Flat {
                    price: price("price", &p)?,
                },
                ("area", Some(p), None) => {
                    let share = r.suspended_share.ok_or_else(|| {
                        invalid("suspended_share: required for kind area (e.g. \"0.30\")")
                    })?;
                    let share: rust_decimal::Decimal = share
                        .parse()
                        .map_err(|_| invalid("suspended_share: not a decimal"))?;
                    if share < rust_decimal::Decimal::ZERO
                        || share > rust_decimal::Decimal::ONE
                        || share.scale() > billdb_api::tariff::SHARE_DECIMALS
                    {
                        return Err(invalid(
                            "suspended_share: 0 to 1 with at most 4 decimal places",
                        ));
                    }
                    TariffSpec::Area {
                        price_per_m2: price("price", &p)?,
                        suspended_share: share,
                    }
                }
                ("ladder", None, Some(tiers)) => {
                    if tiers.is_empty() || tiers.len() > 16 {
                        return Err(invalid("tiers: 1..=16 tiers"));
                    }
                    let mut out = Vec::with_capacity(tiers.len());
                    for t in &tiers {
                        let up = t
                            .up_to
                            .as_deref()
                            .map(|u| validate::units("tiers.up_to", u))
                            .transpose()?;
                        out.push((up, price("tiers.price", &t.price)?));
                    }
                    TariffSpec::Ladder { tiers: out }
                }
                _ => {
                    return Err(invalid(
                        "kind must be flat (with price), ladder (with tiers) or area (with \
                         price per m² and suspended_share)",
                    ));
                }
            };
            let op = Op::DefineTariff {
                tariff_id: id("tariff_id", &r.tariff_id)?,
                tariff,
                // Neither given: effective from now (the command's time).
                effective_from_ms: match (&r.effective_from, r.effective_from_ms) {
                    (None, None) => domain::EFFECTIVE_FROM_COMMAND_TIME,
                    _ => time_ms("effective_from", r.effective_from, r.effective_from_ms)?,
                },
            };
            (r.request_id, op)
        }
        Endpoint::Import => {
            let r: ImportArgs = args(a)?;
            if r.accounts.is_empty() && r.records.is_empty() {
                return Err(invalid("an import carries at least one account or record"));
            }
            if r.accounts.len() + r.records.len() > domain::IMPORT_ITEMS_MAX {
                return Err(invalid(format!(
                    "at most {} accounts + records per import",
                    domain::IMPORT_ITEMS_MAX
                )));
            }
            let op = Op::Import {
                accounts: r.accounts,
                records: r.records,
            };
            (r.request_id, op)
        }
        Endpoint::RecordDrill => {
            let r: DrillArgs = args(a)?;
            if !matches!(r.result.as_str(), "PASS" | "FAILED") {
                return Err(invalid("result: PASS or FAILED"));
            }
            for (f, v) in [
                ("write_gap_ms", r.write_gap_ms),
                ("read_gap_ms", r.read_gap_ms),
                ("health_ms", r.health_ms),
            ] {
                if v > DRILL_MS_MAX {
                    return Err(invalid(format!("{f}: at most {DRILL_MS_MAX}")));
                }
            }
            if !(domain::calendar::TS_MIN_MS..=domain::calendar::TS_MAX_MS).contains(&r.started_ms)
            {
                return Err(invalid("started_ms: out of range"));
            }
            if r.report_sha256.len() != 64
                || !r
                    .report_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid("report_sha256: 64 lowercase hex digits"));
            }
            let summary = domain::drills::DrillSummary {
                scenario: id("scenario", &r.scenario)?,
                result: r.result,
                started_ms: r.started_ms,
                write_gap_ms: r.write_gap_ms,
                read_gap_ms: r.read_gap_ms,
                health_ms: r.health_ms,
                acknowledged: r.acknowledged,
                lost: r.lost,
                duplicated: r.duplicated,
                digests_equal: r.digests_equal,
                report_sha256: r.report_sha256,
                run_by: text("run_by", &r.run_by)?,
            };
            (
                r.request_id,
                Op::RecordDrill {
                    summary: Box::new(summary),
                },
            )
        }
        _ => return Err(internal(format!("{ep:?} is not a write"))),
    };
    Ok((id("request_id", &rid)?, op))
}

// ---- reads ----

fn record_json(r: &domain::Record) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    v["record_id"] = json!(domain::record_id(&r.account_id, r.seq));
    v["ts"] = json!(validate::to_rfc3339(r.ts_ms));
    v
}

/// Run a read over one consistent RocksDB view, off the async runtime.
async fn with_view<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&RocksRead<'_>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let db = app.db.clone();
    tokio::task::spawn_blocking(move || {
        let view = RocksRead::new(&db);
        f(&view)
    })
    .await
    .map_err(internal)?
}

/// A small, bounded read (a few point reads, a short page) on the
/// request's own task: a hop to the blocking pool costs two thread
/// wake-ups, which under a write load on busy cores cost more than the
/// read. Large reads (reports, long pages) use [`with_view`].
fn view_here<T>(
    app: &App,
    f: impl FnOnce(&RocksRead<'_>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    f(&RocksRead::new(&app.db))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountIdArgs {
    account_id: String,
}

async fn read_account(app: &App, a: Args) -> Result<Value, ApiError> {
    let r: AccountIdArgs = args(a)?;
    let account_id = validate::id("account_id", &r.account_id)?;
    app.linearize().await?;
    view_here(app, |view| {
        let acct = domain::get_account(view, &account_id)
            .map_err(internal)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::AccountNotFound,
                    format!("no account {account_id:?}"),
                )
            })?;
        let mut v = serde_json::to_value(&acct).map_err(internal)?;
        v["balance"] = json!(acct.balance.to_string());
        v["opened"] = json!(validate::to_rfc3339(acct.opened_ms));
        Ok(v)
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestIdArgs {
    request_id: String,
}

async fn read_request(app: &App, a: Args) -> Result<Value, ApiError> {
    let r: RequestIdArgs = args(a)?;
    let request_id = validate::id("request_id", &r.request_id)?;
    app.linearize().await?;
    view_here(app, |view| {
        match domain::request_outcome(view, &request_id).map_err(internal)? {
            Some(o) => Ok(json!({"request_id": request_id, "outcome": o.to_json()})),
            None => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no request {request_id:?} was applied"),
            )),
        }
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

/// The last drill of every scenario, linearizable.
async fn read_drills(app: &App, a: Args) -> Result<Value, ApiError> {
    let _: NoArgs = args(a)?;
    app.linearize().await?;
    view_here(app, |view| {
        let drills = domain::drills::list(view).map_err(internal)?;
        Ok(json!({ "drills": drills }))
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatementArgs {
    account_id: String,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, exclusive.
    to: Option<String>,
    from_ms: Option<String>,
    to_ms: Option<String>,
}

/// A customer statement (`domain::statements`): opening balance, every
/// record of [from, to) with the balance after it, closing balance.
async fn read_statement(app: &App, a: Args) -> Result<Value, ApiError> {
    let r: StatementArgs = args(a)?;
    let account_id = validate::id("account_id", &r.account_id)?;
    let ms = |field: &str, v: Option<String>| -> Result<Option<i64>, ApiError> {
        v.map(|v| {
            v.parse::<i64>()
                .map_err(|_| invalid(format!("{field}: milliseconds since 1970")))
        })
        .transpose()
    };
    let from_ms = time_ms("from", r.from, ms("from_ms", r.from_ms)?)?;
    let to_ms = time_ms("to", r.to, ms("to_ms", r.to_ms)?)?;
    app.linearize().await?;
    let st = with_view(app, move |view| {
        domain::statements::statement(view, &account_id, from_ms, to_ms).map_err(internal)?
    })
    .await?;
    let mut v = serde_json::to_value(&st).map_err(internal)?;
    v["from"] = json!(validate::to_rfc3339(st.from_ms));
    v["to"] = json!(validate::to_rfc3339(st.to_ms));
    if let Some(lines) = v["lines"].as_array_mut() {
        for l in lines {
            let ts = l["ts_ms"].as_i64().unwrap_or(0);
            l["ts"] = json!(validate::to_rfc3339(ts));
        }
    }
    Ok(v)
}

/// Query parameters arrive as strings (HTTP query, gRPC JSON alike).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListArgs {
    account_id: String,
    segment: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    page_token: Option<String>,
    order: Option<String>,
}

pub const LIST_LIMIT_DEFAULT: usize = 100;

async fn read_records(app: &App, a: Args) -> Result<Value, ApiError> {
    let r: ListArgs = args(a)?;
    let account_id = validate::id("account_id", &r.account_id)?;
    let segment = match r.segment.as_deref() {
        None | Some("all") => Segment::All,
        Some("recent") => Segment::Recent,
        Some("history") => Segment::History,
        Some(_) => return Err(invalid("segment: recent | history | all")),
    };
    let descending = match r.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(invalid("order: asc | desc")),
    };
    let limit = match r.limit.as_deref() {
        None => LIST_LIMIT_DEFAULT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=domain::LIST_LIMIT_MAX).contains(&n) => n,
            _ => {
                return Err(invalid(format!("limit: 1..={}", domain::LIST_LIMIT_MAX)));
            }
        },
    };
    let from_ms = r
        .from
        .as_deref()
        .map(|v| validate::rfc3339("from", v))
        .transpose()?;
    let to_ms =
        r.to.as_deref()
            .map(|v| validate::rfc3339("to", v))
            .transpose()?;
    let page_token = match r.page_token {
        Some(t) if t.len() > 512 => return Err(invalid("page_token: too long")),
        other => other.filter(|t| !t.is_empty()),
    };
    let q = RecordQuery {
        account_id,
        segment,
        from_ms,
        to_ms,
        limit,
        page_token,
        descending,
    };
    app.linearize().await?;
    if limit <= INLINE_LIST_LIMIT_MAX {
        // A counter's recent segment: small enough for `view_here`.
        return view_here(app, |view| records_page(view, &q));
    }
    with_view(app, move |view| records_page(view, &q)).await
}

/// Pages of at most this many records are read on the request's task;
/// larger ones on the blocking pool.
const INLINE_LIST_LIMIT_MAX: usize = 50;

fn records_page(view: &RocksRead<'_>, q: &RecordQuery) -> Result<Value, ApiError> {
    let account_id = &q.account_id;
    if domain::get_account(view, account_id)
        .map_err(internal)?
        .is_none()
    {
        return Err(ApiError::new(
            ErrorCode::AccountNotFound,
            format!("no account {account_id:?}"),
        ));
    }
    let page = domain::list_records(view, q).map_err(internal)??;
    Ok(json!({
        "account_id": account_id,
        "records": page.records.iter().map(record_json).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
        "boundary_ms": page.boundary_ms,
        "boundary": page.boundary_ms.map(validate::to_rfc3339),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyArgs {
    card_no: String,
    #[serde(default)]
    generation: u32,
    #[serde(default)]
    seq_on_card: u64,
    /// Accepted (in the form of every request_id) and ignored: a check
    /// writes nothing.
    #[serde(default)]
    request_id: Option<String>,
}

async fn read_verify(app: &App, a: Args) -> Result<Value, ApiError> {
    let r: VerifyArgs = args(a)?;
    // Ignored (a check writes nothing), but held to the same form as
    // every request_id, so a client's bug shows here too.
    if let Some(rid) = &r.request_id {
        validate::id("request_id", rid)?;
    }
    let card_no = validate::id("card_no", &r.card_no)?;
    app.linearize().await?;
    // Bounded: one card, one account, VERIFY_RECENT_MAX records.
    view_here(app, |view| {
        let check = domain::verify_card(
            view,
            &card_no,
            r.generation,
            r.seq_on_card,
            VERIFY_RECENT_MAX,
        )
        .map_err(internal)?;
        let mut v = serde_json::to_value(&check).map_err(internal)?;
        v["recent"] = json!(check.recent.iter().map(record_json).collect::<Vec<_>>());
        Ok(v)
    })
}

/// Newest records a card check returns with its verdict.
const VERIFY_RECENT_MAX: usize = 20;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MonthlyArgs {
    month: String,
    group_by: Option<String>,
    consistency: Option<String>,
    /// exclude (default) | include | only: the failover drills' records.
    drills: Option<String>,
}

/// Linearize unless the caller asked for a stale read; say how stale.
async fn consistency(app: &App, c: Option<&str>) -> Result<Value, ApiError> {
    match c {
        None | Some("linearizable") => {
            app.linearize().await?;
            Ok(json!({"consistency": "linearizable"}))
        }
        Some("stale") => {
            let m = app.metrics();
            let applied = m.last_applied.map(|l| l.index);
            // The quorum commit index as last reported by the leader.
            let committed = m.cluster_committed.map(|l| l.index);
            Ok(json!({
                "consistency": "stale",
                "applied_index": applied,
                "leader_commit_index": committed,
                "behind_by": committed.zip(applied).map(|(c, a)| c.saturating_sub(a)),
                "leader": m.current_leader,
                "node_id": app.id,
            }))
        }
        Some(_) => Err(invalid("consistency: linearizable | stale")),
    }
}

/// A report's lines with totals per record kind, never across kinds: a
/// sum of purchases, reissues (the same credit delivered again), payments
/// and charges means nothing, so `total` only counts the records covered;
/// `sales` is the purchases alone (what was sold, counted once).
fn report_json(rep: domain::Report, meta: Value) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(&rep).map_err(internal)?;
    let zero = rust_decimal::Decimal::ZERO;
    let mut count = 0u64;
    let mut by_kind: std::collections::BTreeMap<
        &str,
        (u64, rust_decimal::Decimal, rust_decimal::Decimal),
    > = std::collections::BTreeMap::new();
    for l in &rep.lines {
        count = count.saturating_add(l.count);
        let k = by_kind.entry(l.kind.as_str()).or_insert((0, zero, zero));
        k.0 = k.0.saturating_add(l.count);
        k.1 =
            k.1.checked_add(l.amount)
                .ok_or_else(|| internal("report overflow"))?;
        k.2 =
            k.2.checked_add(l.units)
                .ok_or_else(|| internal("report overflow"))?;
    }
    let row = |(n, a, u): (u64, rust_decimal::Decimal, rust_decimal::Decimal)| json!({"count": n, "amount": a.to_string(), "units": u.to_string()});
    let sales = by_kind.get("purchase").copied().unwrap_or((0, zero, zero));
    v["totals_by_kind"] = by_kind
        .into_iter()
        .map(|(k, t)| (k.to_string(), row(t)))
        .collect();
    v["sales"] = row(sales);
    v["total"] = json!({"count": count});
    v["read"] = meta;
    Ok(v)
}

async fn read_monthly(app: &App, a: Args) -> Result<Value, ApiError> {
    let r: MonthlyArgs = args(a)?;
    let month = validate::month("month", &r.month)?;
    let group_by = match r.group_by.as_deref() {
        None | Some("operator") => GroupBy::Operator,
        Some("branch") => GroupBy::Branch,
        Some("tariff") => GroupBy::Tariff,
        Some("kind") => GroupBy::Kind,
        Some(_) => return Err(invalid("group_by: operator | branch | tariff | kind")),
    };
    let (drills, drills_name) = match r.drills.as_deref() {
        None | Some("exclude") => (domain::Drills::Exclude, "excluded"),
        Some("include") => (domain::Drills::Include, "included"),
        Some("only") => (domain::Drills::Only, "only"),
        Some(_) => return Err(invalid("drills: exclude | include | only")),
    };
    let meta = consistency(app, r.consistency.as_deref()).await?;
    let rep = with_view(app, move |view| {
        domain::monthly_report_with(view, &month, group_by, drills).map_err(internal)
    })
    .await?;
    let mut v = report_json(rep, meta)?;
    v["drills"] = json!(drills_name);
    Ok(v)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceArgs {
    /// branch (default) | utility | tariff
    group_by: Option<String>,
    /// linearizable (default) | stale
    consistency: Option<String>,
}

/// The balance report (`domain::balances`): every account, one snapshot.
async fn read_balances(app: &App, a: Args) -> Result<Value, ApiError> {
    use domain::balances::{BalanceGroup, balance_report};
    let r: BalanceArgs = args(a)?;
    let group_by = match r.group_by.as_deref() {
        None | Some("branch") => BalanceGroup::Branch,
        Some("utility") => BalanceGroup::Utility,
        Some("tariff") => BalanceGroup::Tariff,
        Some(_) => return Err(invalid("group_by: branch | utility | tariff")),
    };
    let meta = consistency(app, r.consistency.as_deref()).await?;
    let rep = with_view(app, move |view| {
        balance_report(view, group_by).map_err(internal)
    })
    .await?;
    let mut v = serde_json::to_value(&rep).map_err(internal)?;
    v["read"] = meta;
    Ok(v)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BankDailyArgs {
    date: String,
    bank_code: Option<String>,
    consistency: Option<String>,
}

async fn read_bank_daily(app: &App, caller: &Caller, a: Args) -> Result<Value, ApiError> {
    let r: BankDailyArgs = args(a)?;
    validate::date("date", &r.date)?;
    let mut bank = validate::opt_id("bank_code", r.bank_code.as_deref())?;
    if caller.role == Role::Bank {
        match &bank {
            None => bank = Some(caller.bank_code.clone()),
            Some(b) => caller.check_bank(b)?,
        }
    }
    let meta = consistency(app, r.consistency.as_deref()).await?;
    let day = r.date;
    let rep = with_view(app, move |view| {
        domain::bank_daily_report(view, &day, bank.as_deref()).map_err(internal)
    })
    .await?;
    report_json(rep, meta)
}
