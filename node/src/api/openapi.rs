//! The OpenAPI 3.1 description of the HTTP API, built from the code: the
//! request schemas are the argument structs the handlers parse strictly
//! (`ops.rs`, `season.rs`, `http.rs`), the answer schemas the domain types
//! the answers serialise (`Record`, `Account`, `Card`, reports, …) plus the
//! few envelope structs below, and the error answers come from
//! [`ErrorCode::ALL`] and its HTTP statuses. Served at `GET /openapi.json`
//! (no token) and checked in as `api/openapi.json` (a test compares them).
//!
//! May touch: nothing but the types it describes; no I/O.

use std::collections::{BTreeMap, BTreeSet};

use billdb_api::error::ErrorCode;
use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    ComponentsBuilder, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    Content, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required,
};

use super::http::{InitJson, MembershipJson, NodeJson, RemoveJson, RepairJson, TransferJson};
use super::ops;
use crate::auth::Role;
use crate::domain;

// ---- answer envelopes (the documents `Outcome::to_json`, `write_json` and
// the read functions build around the domain types) ----

/// `POST /v1/accounts`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AccountOpened {
    result: String,
    log_index: u64,
    account_id: String,
    opened_ms: i64,
    /// e.g. `TARIFF_NOT_FOUND: …` when the account names a tariff not
    /// defined yet.
    warnings: Option<Vec<String>>,
}

/// Contact update, close, suspend, resume: the account after it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AccountUpdated {
    result: String,
    log_index: u64,
    account: domain::Account,
}

/// A card issued.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CardIssued {
    result: String,
    log_index: u64,
    card: domain::Card,
}

/// A card replaced: the old card (now `replaced`) and the new one.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CardReplaced {
    result: String,
    log_index: u64,
    old_card: domain::Card,
    card: domain::Card,
}

/// A record as answered: the stored record, its id (`ACCOUNT:SEQ`) and its
/// time in RFC 3339 (besides `ts_ms`).
#[derive(ToSchema)]
#[allow(dead_code)]
struct RecordView {
    #[schema(inline)]
    #[serde(flatten)]
    record: domain::Record,
    /// `ACCOUNT:SEQ` (in lists).
    record_id: Option<String>,
    /// RFC 3339 UTC.
    ts: Option<String>,
}

/// Purchase, reissue, reversal, adjustment, charge: the new record and the
/// account's balance after it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct RecordPosted {
    result: String,
    log_index: u64,
    record_id: String,
    record: RecordView,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    balance: String,
    /// e.g. `CREDIT_NOT_LOADED` when the previous sale was never loaded.
    warnings: Vec<String>,
}

/// A bank payment posted (exactly once per `bank_code` + `bank_ref`).
#[derive(ToSchema)]
#[allow(dead_code)]
struct PaymentPosted {
    result: String,
    log_index: u64,
    account_id: String,
    seq: u64,
    record_id: String,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    amount: String,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    balance: String,
    invoice_no: String,
}

/// A purchase's credit confirmed loaded on the meter.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CreditLoaded {
    result: String,
    log_index: u64,
    record_id: String,
    already_loaded: bool,
}

/// The recent/history boundary moved.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BoundarySet {
    result: String,
    log_index: u64,
    boundary_ms: i64,
}

/// A heating season opened.
#[derive(ToSchema)]
#[allow(dead_code)]
struct SeasonOpened {
    result: String,
    log_index: u64,
    season_id: String,
    number: u64,
    opened_ms: i64,
}

/// A legacy import batch applied.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Imported {
    result: String,
    log_index: u64,
    accounts: u32,
    records: u32,
}

/// A tariff version defined.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TariffDefined {
    result: String,
    log_index: u64,
    tariff_id: String,
    versions: u32,
}

/// An invoice printed; a reprint is marked.
#[derive(ToSchema)]
#[allow(dead_code)]
struct InvoicePrinted {
    result: String,
    log_index: u64,
    invoice: domain::Invoice,
    reprint: bool,
    print_count: u32,
}

/// A failover drill's summary stored.
#[derive(ToSchema)]
#[allow(dead_code)]
struct DrillRecorded {
    result: String,
    log_index: u64,
    scenario: String,
    recorded_ms: i64,
}

/// `GET /v1/accounts/{account_id}`: the account and its opening time in
/// RFC 3339.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AccountView {
    #[schema(inline)]
    #[serde(flatten)]
    account: domain::Account,
    /// RFC 3339 UTC.
    opened: String,
}

/// A statement line as answered: the line and its time in RFC 3339.
#[derive(ToSchema)]
#[allow(dead_code)]
struct StatementLineView {
    #[schema(inline)]
    #[serde(flatten)]
    line: domain::statements::Line,
    /// RFC 3339 UTC.
    ts: String,
}

/// `GET /v1/accounts/{account_id}/statement`: the account, the period
/// (`from` inclusive, `to` exclusive; ms and RFC 3339), the opening
/// balance, every record of the period with the balance after it, totals
/// per kind, the closing balance (opening + Σ the lines' effects) and the
/// balance now.
#[derive(ToSchema)]
#[allow(dead_code)]
struct StatementView {
    account_id: String,
    name: String,
    address: String,
    branch: String,
    utility: String,
    status: String,
    from_ms: i64,
    to_ms: i64,
    /// RFC 3339 UTC.
    from: String,
    /// RFC 3339 UTC.
    to: String,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    opening_balance: String,
    lines: Vec<StatementLineView>,
    totals_by_kind: std::collections::BTreeMap<String, domain::statements::KindTotal>,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    closing_balance: String,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    balance_now: String,
}

/// How fresh a report's read was.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReadConsistency {
    /// linearizable (the default: everything committed before the request)
    /// | stale (this node's state as it is; the fields below say how stale)
    consistency: String,
    applied_index: Option<u64>,
    leader_commit_index: Option<u64>,
    behind_by: Option<u64>,
    leader: Option<u64>,
    node_id: Option<u64>,
}

/// A count, a sum of money and a sum of units.
#[derive(ToSchema)]
#[allow(dead_code)]
struct KindSum {
    count: u64,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    amount: String,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,3})?$")]
    units: String,
}

/// How many records a report covers (amounts are never added across
/// kinds).
#[derive(ToSchema)]
#[allow(dead_code)]
struct RecordCount {
    count: u64,
}

/// `GET /v1/reports/bank-daily` (and the base of the monthly report): the
/// lines, totals per record kind (never across kinds: a purchase and a
/// payment do not add up), `sales` (the purchases alone: what was sold,
/// counted once) and how many records it covers.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReportView {
    #[schema(inline)]
    #[serde(flatten)]
    report: domain::Report,
    totals_by_kind: std::collections::BTreeMap<String, KindSum>,
    sales: KindSum,
    total: RecordCount,
    read: ReadConsistency,
}

/// `GET /v1/reports/monthly`: the report and whether it covers the
/// failover drills' records.
#[derive(ToSchema)]
#[allow(dead_code)]
struct MonthlyReport {
    #[schema(inline)]
    #[serde(flatten)]
    report: ReportView,
    /// excluded (the default: business figures) | included | only
    drills: String,
}

/// `GET /v1/reports/balances`: accounts and Σ balance per group (every
/// account, one snapshot), and how fresh the read was.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BalanceReport {
    /// branch | utility | tariff
    group_by: String,
    lines: Vec<domain::balances::BalanceLine>,
    /// Every account (key "").
    total: domain::balances::BalanceLine,
    read: ReadConsistency,
}

/// One page of an account's records.
#[derive(ToSchema)]
#[allow(dead_code)]
struct RecordsPage {
    account_id: String,
    records: Vec<RecordView>,
    /// Give it back as `page_token` for the next page; null at the end.
    next_page_token: Option<String>,
    /// The recent/history boundary (RFC 3339 and ms), when set.
    boundary: Option<String>,
    boundary_ms: Option<i64>,
}

/// The stored outcome of an earlier write.
#[derive(ToSchema)]
#[allow(dead_code)]
struct RequestOutcome {
    request_id: String,
    /// The write's answer as first given (one of the write answers; no
    /// `log_index`).
    outcome: serde_json::Value,
}

/// The last failover drill of every scenario.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Drills {
    drills: Vec<domain::drills::DrillEntry>,
}

/// One season bill run (`POST /v1/seasons/{season_id}/bill`): at most a
/// few seconds of batches; go on with `after` = `next_after` until `done`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct SeasonBillRun {
    season_id: String,
    request_id: String,
    done: bool,
    next_after: Option<String>,
    batches: u64,
    accounts_looked_at: u64,
    billed: u64,
    skipped: u64,
    already_billed: u64,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    amount: String,
    ms: u64,
}

/// A count and a sum of money.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CountAmount {
    count: u64,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    amount: String,
}

/// One bank payment of a business day.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BankPayment {
    bank_ref: String,
    account_id: String,
    record_id: String,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    amount: String,
    /// RFC 3339 UTC.
    ts: String,
    ts_ms: i64,
    /// The reversal's record, when reversed.
    reversed_by: Option<String>,
    reversed_ts: Option<String>,
}

/// One bank's payments of one business day (UTC), a page at a time.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BankDayPayments {
    bank_code: String,
    date: String,
    payments: Vec<BankPayment>,
    next_after: Option<String>,
    day_total: CountAmount,
}

/// A stored bank statement reconciliation (with its items from
/// `GET …/reconciliations/{request_id}` and `POST`).
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReconciliationView {
    reconciliation_id: String,
    bank_code: String,
    date: String,
    file_name: String,
    file_sha256: String,
    as_of_index: u64,
    recorded_ms: i64,
    recorded_at: String,
    recorded_by: String,
    role: String,
    /// No difference between the file and billdb.
    balanced: bool,
    differences: u64,
    totals: ReconciliationTotals,
    matched: CountAmountOpt,
    missing_in_billdb: CountAmountOpt,
    posted_other_day: CountAmountOpt,
    missing_in_bank: CountAmountOpt,
    amount_mismatch: CountAmountOpt,
    account_mismatch: CountAmountOpt,
    reversed_in_billdb: CountAmountOpt,
    reversed_not_in_file: CountAmountOpt,
    items_truncated: bool,
    /// Every difference (at most 500), each with its class and, for a
    /// payment missing in billdb, the command that posts it.
    items: Option<Vec<ReconciliationItem>>,
    /// True when this answers a retry of a stored reconciliation (the same
    /// request_id and file): nothing new was recorded.
    replayed: Option<bool>,
    /// `POST` only: the log entry that stored it.
    log_index: Option<u64>,
}

/// The file's and billdb's totals of a reconciled day.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReconciliationTotals {
    file: CountAmount,
    billdb: CountAmount,
    /// The file's amount minus billdb's.
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    difference: String,
}

/// One itemised difference of a reconciliation: the file's side (absent
/// for `missing_in_bank`) and billdb's (absent for `missing_in_billdb`).
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReconciliationItem {
    /// missing_in_billdb | posted_other_day | missing_in_bank |
    /// amount_mismatch | account_mismatch | reversed_in_billdb
    class: String,
    bank_ref: String,
    /// The file's line number (1 = the first line).
    line: Option<u32>,
    file_account_id: Option<String>,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    file_amount: Option<String>,
    file_time: Option<String>,
    record_id: Option<String>,
    billdb_account_id: Option<String>,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    billdb_amount: Option<String>,
    /// RFC 3339 UTC.
    billdb_ts: Option<String>,
    /// The reversal record (`reversed_in_billdb`).
    reversal_record_id: Option<String>,
    /// The day billdb holds the payment on (`posted_other_day`).
    billdb_date: Option<String>,
    request_id: Option<String>,
    /// For `missing_in_billdb`: the `billdb pay` command line that posts it.
    post_command: Option<String>,
}

/// A class of a reconciliation: how many, and their sums in the file and
/// in billdb.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CountAmountOpt {
    count: u64,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    file_amount: String,
    #[schema(pattern = r"^-?[0-9]{1,15}(\.[0-9]{1,2})?$")]
    billdb_amount: String,
}

/// The stored reconciliations of one bank (the latest), oldest first.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Reconciliations {
    bank_code: String,
    date: Option<String>,
    reconciliations: Vec<ReconciliationView>,
    more: bool,
}

/// The state digest of a node.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Digest {
    applied_index: Option<u64>,
    digest: String,
}

/// A cluster administration answer.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AdminAnswer {
    message: String,
    log_index: u64,
}

/// `GET /healthz`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Health {
    status: String,
    node_id: u64,
}

/// `GET /readyz` when ready.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Ready {
    ready: bool,
}

// ---- the document ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    Billing,
    Reports,
    Seasons,
    Cluster,
    Backup,
    Probes,
}

impl Tag {
    fn name(self) -> &'static str {
        match self {
            Tag::Billing => "billing",
            Tag::Reports => "reports",
            Tag::Seasons => "seasons",
            Tag::Cluster => "cluster",
            Tag::Backup => "backup",
            Tag::Probes => "probes",
        }
    }
}

/// Collects the component schemas the routes refer to.
#[derive(Default)]
struct Registry {
    schemas: BTreeMap<String, RefOr<Schema>>,
}

impl Registry {
    /// `T` as a component, and everything it refers to; a reference to it.
    fn named<T: ToSchema>(&mut self) -> RefOr<Schema> {
        let mut deps = Vec::new();
        T::schemas(&mut deps);
        self.schemas.extend(deps);
        let name = T::name().to_string();
        self.schemas.insert(name.clone(), T::schema());
        RefOr::Ref(Ref::from_schema_name(name))
    }

    /// `T` inline without the fields that come from the path (`drop`);
    /// what `T` refers to is registered.
    fn without<T: ToSchema>(&mut self, drop: &[String]) -> Schema {
        let mut deps = Vec::new();
        T::schemas(&mut deps);
        self.schemas.extend(deps);
        match T::schema() {
            RefOr::T(Schema::Object(mut o)) => {
                for name in drop {
                    o.properties.remove(name);
                }
                o.required.retain(|r| !drop.contains(r));
                for (name, p) in o.properties.iter_mut() {
                    if let RefOr::T(Schema::Object(p)) = p {
                        constrain(name, p);
                    }
                }
                Schema::Object(o)
            }
            RefOr::T(s) => s,
            RefOr::Ref(_) => Schema::Object(ObjectBuilder::new().build()),
        }
    }
}

/// Fields checked as identifiers (`validate::id`): 1..=64 of letters,
/// digits and `. _ : -`.
const ID_FIELDS: &[&str] = &[
    "request_id",
    "account_id",
    "card_no",
    "new_card_no",
    "record_id",
    "invoice_no",
    "season_id",
    "bank_code",
    "bank_ref",
    "branch",
    "scenario",
    "after",
    "tariff_id",
];

/// Fields checked as free text (`validate::text`): at most 200 characters,
/// no control characters.
const TEXT_FIELDS: &[&str] = &["name", "address", "phone", "reason", "run_by"];

/// The pattern of an identifier (`validate::id`).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

/// The pattern of free text (`validate::text`).
pub const TEXT_PATTERN: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]{0,200}$";

/// Fields that take one of a few words.
const WORD_FIELDS: &[(&str, &[&str])] = &[
    ("utility", domain::UTILITIES),
    ("segment", &["recent", "history", "all"]),
    ("order", &["asc", "desc"]),
    ("group_by", &["operator", "branch", "tariff", "kind"]),
    ("consistency", &["linearizable", "stale"]),
    ("drills", &["exclude", "include", "only"]),
];

/// Fields with a fixed shape: (name, pattern).
const SHAPED_FIELDS: &[(&str, &str)] = &[
    ("month", "^[0-9]{4}-[0-9]{2}$"),
    ("date", "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
    ("limit", "^[0-9]{1,6}$"),
    ("from_ms", "^-?[0-9]{1,16}$"),
    ("to_ms", "^-?[0-9]{1,16}$"),
];

/// Fields that are RFC 3339 times.
const TIME_FIELDS: &[&str] = &["from", "to", "boundary", "effective_from"];

/// What `validate` checks of a field, said in its schema.
fn constrain(name: &str, p: &mut utoipa::openapi::schema::Object) {
    if let Some((_, words)) = WORD_FIELDS.iter().find(|(n, _)| *n == name) {
        p.enum_values = Some(words.iter().map(|w| serde_json::json!(w)).collect());
    } else if let Some((_, pattern)) = SHAPED_FIELDS.iter().find(|(n, _)| *n == name) {
        p.pattern = Some((*pattern).into());
    } else if TIME_FIELDS.contains(&name) {
        p.format = Some(SchemaFormat::KnownFormat(
            utoipa::openapi::schema::KnownFormat::DateTime,
        ));
    } else if ID_FIELDS.contains(&name) {
        p.pattern = Some(ID_PATTERN.into());
    } else if TEXT_FIELDS.contains(&name) {
        p.pattern = Some(TEXT_PATTERN.into());
        p.max_length = Some(super::validate::TEXT_LEN_MAX);
    }
}

type SchemaFn = fn(&mut Registry) -> RefOr<Schema>;
type ArgsFn = fn(&mut Registry, &[String]) -> Schema;

fn args_of<T: ToSchema>(reg: &mut Registry, drop: &[String]) -> Schema {
    reg.without::<T>(drop)
}

fn named<T: ToSchema>(reg: &mut Registry) -> RefOr<Schema> {
    reg.named::<T>()
}

fn any_object(_: &mut Registry) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "a JSON object (fields as documented in README.md and docs/OPERATIONS.md)",
            ))
            .build(),
    ))
}

/// How the arguments arrive.
#[derive(Clone, Copy)]
enum Args {
    Nothing,
    /// A JSON body.
    Body(ArgsFn),
    /// A JSON body that may be empty.
    OptionalBody(ArgsFn),
    /// Query parameters, all strings on the wire.
    Query(ArgsFn),
}

/// What a successful answer is.
#[derive(Clone, Copy)]
enum Answer {
    Json(u16, SchemaFn),
    Text(&'static str),
    Bytes,
}

struct Route {
    method: HttpMethod,
    path: &'static str,
    tag: Tag,
    summary: &'static str,
    /// `None`: no token needed.
    roles: Option<&'static [Role]>,
    args: Args,
    answer: Answer,
}

const OPS: &[Role] = &[Role::Ops];
const OPS_AUDITOR: &[Role] = &[Role::Ops, Role::Auditor];
const BANK_READERS: &[Role] = &[Role::Bank, Role::Ops, Role::Auditor];
const BANK_WRITERS: &[Role] = &[Role::Bank, Role::Ops];

fn record_posted(r: &mut Registry) -> RefOr<Schema> {
    r.named::<RecordPosted>()
}

fn routes() -> Vec<Route> {
    use Answer::*;
    use Args::*;
    use HttpMethod::{Delete, Get, Patch, Post, Put};
    use ops::Endpoint as E;
    let ep = |e: E| Some(e.roles());
    vec![
        // ---- probes and documents ----
        Route {
            method: Get,
            path: "/healthz",
            tag: Tag::Probes,
            summary: "Liveness: the process answers.",
            roles: None,
            args: Nothing,
            answer: Json(200, named::<Health>),
        },
        Route {
            method: Get,
            path: "/readyz",
            tag: Tag::Probes,
            summary: "Readiness: a member, a leader known, everything committed applied, storage sound; a leader also needs a majority that answered within two election timeouts. 503 UNAVAILABLE with the reason otherwise.",
            roles: None,
            args: Nothing,
            answer: Json(200, named::<Ready>),
        },
        Route {
            method: Get,
            path: "/metrics",
            tag: Tag::Probes,
            summary: "Prometheus metrics (text exposition format).",
            roles: None,
            args: Nothing,
            answer: Text("text/plain"),
        },
        Route {
            method: Get,
            path: "/openapi.json",
            tag: Tag::Probes,
            summary: "This document.",
            roles: None,
            args: Nothing,
            answer: Json(200, any_object),
        },
        Route {
            method: Get,
            path: "/",
            tag: Tag::Probes,
            summary: "The status page: a static HTML shell whose script reads /v1/cluster/status with a token the user pastes.",
            roles: None,
            args: Nothing,
            answer: Text("text/html"),
        },
        // ---- billing ----
        Route {
            method: Post,
            path: "/v1/accounts",
            tag: Tag::Billing,
            summary: "Open an account (a counter token opens in its own branch only).",
            roles: ep(E::OpenAccount),
            args: Body(args_of::<ops::OpenAccountArgs>),
            answer: Json(200, named::<AccountOpened>),
        },
        Route {
            method: Get,
            path: "/v1/accounts/{account_id}",
            tag: Tag::Billing,
            summary: "Read an account.",
            roles: ep(E::GetAccount),
            args: Query(args_of::<ops::AccountIdArgs>),
            answer: Json(200, named::<AccountView>),
        },
        Route {
            method: Patch,
            path: "/v1/accounts/{account_id}",
            tag: Tag::Billing,
            summary: "Update contact data (name, address, phone, heated area).",
            roles: ep(E::UpdateContact),
            args: Body(args_of::<ops::UpdateContactArgs>),
            answer: Json(200, named::<AccountUpdated>),
        },
        Route {
            method: Post,
            path: "/v1/accounts/{account_id}/close",
            tag: Tag::Billing,
            summary: "Close an account (its card is revoked).",
            roles: ep(E::Close),
            args: Body(args_of::<ops::LifecycleArgs>),
            answer: Json(200, named::<AccountUpdated>),
        },
        Route {
            method: Post,
            path: "/v1/accounts/{account_id}/suspend",
            tag: Tag::Billing,
            summary: "Suspend an account (sales and card changes refused; a heating stop for heat).",
            roles: ep(E::Suspend),
            args: Body(args_of::<ops::LifecycleArgs>),
            answer: Json(200, named::<AccountUpdated>),
        },
        Route {
            method: Post,
            path: "/v1/accounts/{account_id}/resume",
            tag: Tag::Billing,
            summary: "Resume a suspended account.",
            roles: ep(E::Resume),
            args: Body(args_of::<ops::LifecycleArgs>),
            answer: Json(200, named::<AccountUpdated>),
        },
        Route {
            method: Get,
            path: "/v1/accounts/{account_id}/records",
            tag: Tag::Billing,
            summary: "An account's records, a page at a time (segment recent|history|all, from/to RFC 3339, limit 1..=500, page_token, order asc|desc).",
            roles: ep(E::ListRecords),
            args: Query(args_of::<ops::ListArgs>),
            answer: Json(200, named::<RecordsPage>),
        },
        Route {
            method: Get,
            path: "/v1/accounts/{account_id}/statement",
            tag: Tag::Billing,
            summary: "A customer statement for [from, to): opening balance, every record with the balance after it, totals per kind, closing balance.",
            roles: ep(E::Statement),
            args: Query(args_of::<ops::StatementArgs>),
            answer: Json(200, named::<StatementView>),
        },
        Route {
            method: Post,
            path: "/v1/cards",
            tag: Tag::Billing,
            summary: "Issue a card to an account (one active card per account; card numbers are never reused).",
            roles: ep(E::IssueCard),
            args: Body(args_of::<ops::IssueCardArgs>),
            answer: Json(200, named::<CardIssued>),
        },
        Route {
            method: Post,
            path: "/v1/cards/verify",
            tag: Tag::Billing,
            summary: "Check a card presented at a counter: verdict, account, recent records. Writes nothing.",
            roles: ep(E::VerifyCard),
            args: Body(args_of::<ops::VerifyArgs>),
            answer: Json(200, named::<domain::CardCheck>),
        },
        Route {
            method: Post,
            path: "/v1/cards/{card_no}/replace",
            tag: Tag::Billing,
            summary: "Replace a card (lost or broken): a new card number, generation + 1.",
            roles: ep(E::ReplaceCard),
            args: Body(args_of::<ops::ReplaceCardArgs>),
            answer: Json(200, named::<CardReplaced>),
        },
        Route {
            method: Post,
            path: "/v1/purchases",
            tag: Tag::Billing,
            summary: "Sell credit: by card_no or account_id; amount (money) or units.",
            roles: ep(E::Purchase),
            args: Body(args_of::<ops::PurchaseArgs>),
            answer: Json(200, record_posted),
        },
        Route {
            method: Post,
            path: "/v1/purchases/{record_id}/reissue",
            tag: Tag::Billing,
            summary: "Re-issue a sale's credit that never reached the meter (once).",
            roles: ep(E::Reissue),
            args: Body(args_of::<ops::RecordArgs>),
            answer: Json(200, record_posted),
        },
        Route {
            method: Post,
            path: "/v1/purchases/{record_id}/loaded",
            tag: Tag::Billing,
            summary: "Confirm a sale's credit loaded on the meter.",
            roles: ep(E::ConfirmLoaded),
            args: Body(args_of::<ops::RecordArgs>),
            answer: Json(200, named::<CreditLoaded>),
        },
        Route {
            method: Post,
            path: "/v1/payments",
            tag: Tag::Billing,
            summary: "Post a bank payment (exactly once per bank_code + bank_ref; a bank token posts for its own bank_code only).",
            roles: ep(E::Payment),
            args: Body(args_of::<ops::PaymentArgs>),
            answer: Json(200, named::<PaymentPosted>),
        },
        Route {
            method: Post,
            path: "/v1/records/{record_id}/reverse",
            tag: Tag::Billing,
            summary: "Reverse a record (once).",
            roles: ep(E::Reverse),
            args: Body(args_of::<ops::RecordArgs>),
            answer: Json(200, record_posted),
        },
        Route {
            method: Post,
            path: "/v1/adjustments",
            tag: Tag::Billing,
            summary: "A signed adjustment of an account's balance.",
            roles: ep(E::Adjust),
            args: Body(args_of::<ops::AdjustArgs>),
            answer: Json(200, record_posted),
        },
        Route {
            method: Post,
            path: "/v1/charges",
            tag: Tag::Billing,
            summary: "A charge (e.g. heating) for a period.",
            roles: ep(E::PostCharge),
            args: Body(args_of::<ops::ChargeArgs>),
            answer: Json(200, record_posted),
        },
        Route {
            method: Post,
            path: "/v1/invoices/{invoice_no}/print",
            tag: Tag::Billing,
            summary: "Print an invoice; reprints are marked and counted.",
            roles: ep(E::PrintInvoice),
            args: Body(args_of::<ops::InvoiceArgs>),
            answer: Json(200, named::<InvoicePrinted>),
        },
        Route {
            method: Get,
            path: "/v1/requests/{request_id}",
            tag: Tag::Billing,
            summary: "The outcome of an earlier write, by its request_id.",
            roles: ep(E::GetRequest),
            args: Query(args_of::<ops::RequestIdArgs>),
            answer: Json(200, named::<RequestOutcome>),
        },
        Route {
            method: Put,
            path: "/v1/tariffs/{tariff_id}",
            tag: Tag::Billing,
            summary: "Define a tariff version: flat (price), ladder (tiers) or area (price per m² per season, suspended_share); effective_from defaults to now.",
            roles: ep(E::DefineTariff),
            args: Body(args_of::<ops::TariffArgs>),
            answer: Json(200, named::<TariffDefined>),
        },
        Route {
            method: Put,
            path: "/v1/segments/boundary",
            tag: Tag::Billing,
            summary: "Move the recent/history boundary of the records.",
            roles: ep(E::SetBoundary),
            args: Body(args_of::<ops::BoundaryArgs>),
            answer: Json(200, named::<BoundarySet>),
        },
        Route {
            method: Post,
            path: "/v1/import",
            tag: Tag::Billing,
            summary: "Bulk legacy import: accounts and records (1..=1000 items, at most limits.import_body_bytes_max).",
            roles: ep(E::Import),
            args: Body(args_of::<ops::ImportArgs>),
            answer: Json(200, named::<Imported>),
        },
        // ---- reports ----
        Route {
            method: Get,
            path: "/v1/reports/monthly",
            tag: Tag::Reports,
            summary: "The monthly business report: lines grouped by operator|branch|tariff|kind, totals per kind, sales counted once; drill records excluded unless drills=include|only.",
            roles: ep(E::MonthlyReport),
            args: Query(args_of::<ops::MonthlyArgs>),
            answer: Json(200, named::<MonthlyReport>),
        },
        Route {
            method: Get,
            path: "/v1/reports/bank-daily",
            tag: Tag::Reports,
            summary: "One day's bank postings per bank (a bank token: its own bank only).",
            roles: ep(E::BankDailyReport),
            args: Query(args_of::<ops::BankDailyArgs>),
            answer: Json(200, named::<ReportView>),
        },
        Route {
            method: Get,
            path: "/v1/reports/balances",
            tag: Tag::Reports,
            summary: "Accounts and Σ balance (debit and credit apart) per branch|utility|tariff over every account: the receivables, and a migration's billdb-side totals.",
            roles: ep(E::BalanceReport),
            args: Query(args_of::<ops::BalanceArgs>),
            answer: Json(200, named::<BalanceReport>),
        },
        Route {
            method: Post,
            path: "/v1/drills",
            tag: Tag::Reports,
            summary: "Record a failover drill's summary (billdb drill run does it).",
            roles: ep(E::RecordDrill),
            args: Body(args_of::<ops::DrillArgs>),
            answer: Json(200, named::<DrillRecorded>),
        },
        Route {
            method: Get,
            path: "/v1/drills",
            tag: Tag::Reports,
            summary: "The last failover drill of every scenario.",
            roles: ep(E::ListDrills),
            args: Nothing,
            answer: Json(200, named::<Drills>),
        },
        // ---- bank statements ----
        Route {
            method: Get,
            path: "/v1/banks/{bank_code}/payments",
            tag: Tag::Reports,
            summary: "One bank's payments of one business day (UTC), a page at a time (date, after, limit).",
            roles: Some(BANK_READERS),
            args: Query(bank_payments_query),
            answer: Json(200, named::<BankDayPayments>),
        },
        Route {
            method: Post,
            path: "/v1/banks/{bank_code}/reconciliations",
            tag: Tag::Reports,
            summary: "Reconcile a bank's statement file (CSV bank_ref,account_id,amount,time; at most 20,000 lines) against billdb's payments of that day; the result is stored (who, when) and answered.",
            roles: Some(BANK_WRITERS),
            args: Body(args_of::<super::bank::ReconcileArgs>),
            answer: Json(200, named::<ReconciliationView>),
        },
        Route {
            method: Get,
            path: "/v1/banks/{bank_code}/reconciliations",
            tag: Tag::Reports,
            summary: "The stored reconciliations of a bank (date filters), without their items.",
            roles: Some(BANK_READERS),
            args: Query(date_query),
            answer: Json(200, named::<Reconciliations>),
        },
        Route {
            method: Get,
            path: "/v1/banks/{bank_code}/reconciliations/{request_id}",
            tag: Tag::Reports,
            summary: "One stored reconciliation with its items.",
            roles: Some(BANK_READERS),
            args: Nothing,
            answer: Json(200, named::<ReconciliationView>),
        },
        Route {
            method: Post,
            path: "/v1/bank-index/backfill",
            tag: Tag::Reports,
            summary: "Index the bank payments a build without the bank-day index posted, so their days can be reconciled: a few seconds of bounded commands per call; go on with after = next_after until done. Safe to run twice.",
            roles: Some(OPS),
            args: Body(args_of::<super::bank::BackfillArgs>),
            answer: Json(200, named::<super::bank::BackfillAnswer>),
        },
        // ---- seasons ----
        Route {
            method: Post,
            path: "/v1/seasons",
            tag: Tag::Seasons,
            summary: "Open a heating season (balances carried forward).",
            roles: ep(E::OpenSeason),
            args: Body(args_of::<ops::SeasonArgs>),
            answer: Json(200, named::<SeasonOpened>),
        },
        Route {
            method: Post,
            path: "/v1/seasons/{season_id}/bill",
            tag: Tag::Seasons,
            summary: "Bill the open season: every heat account charged area × its area tariff's price (× suspended_share for a heating stop), half-even to the cent, once per account whatever the runs.",
            roles: Some(OPS),
            args: Body(args_of::<super::season::BillArgs>),
            answer: Json(200, named::<SeasonBillRun>),
        },
        Route {
            method: Get,
            path: "/v1/seasons/{season_id}/bill",
            tag: Tag::Seasons,
            summary: "The season bill report: accounts billed, Σ by branch and tariff, skipped per reason.",
            roles: Some(OPS_AUDITOR),
            args: Nothing,
            answer: Json(200, named::<domain::season_bill::Report>),
        },
        Route {
            method: Get,
            path: "/v1/seasons/{season_id}/bill/lines",
            tag: Tag::Seasons,
            summary: "Every account's season bill line, a page at a time (skipped=true|false, after, limit).",
            roles: Some(OPS_AUDITOR),
            args: Query(season_lines_query),
            answer: Json(200, named::<super::season::LinesPage>),
        },
        // ---- cluster ----
        Route {
            method: Get,
            path: "/v1/cluster/status",
            tag: Tag::Cluster,
            summary: "This node's status: role, term, indexes, members, replication, peers, storage, backups, security, drills.",
            roles: Some(OPS_AUDITOR),
            args: Nothing,
            answer: Json(200, any_object),
        },
        Route {
            method: Get,
            path: "/v1/cluster/digest",
            tag: Tag::Cluster,
            summary: "This node's state digest at its applied index.",
            roles: Some(OPS_AUDITOR),
            args: Nothing,
            answer: Json(200, named::<Digest>),
        },
        Route {
            method: Get,
            path: "/v1/cluster/fingerprints",
            tag: Tag::Cluster,
            summary: "Applied log id, digest and business fingerprints per branch and utility.",
            roles: Some(OPS_AUDITOR),
            args: Nothing,
            answer: Json(200, any_object),
        },
        Route {
            method: Post,
            path: "/v1/cluster/init",
            tag: Tag::Cluster,
            summary: "Initialise a new cluster with its members.",
            roles: Some(OPS),
            args: Body(args_of::<InitJson>),
            answer: Json(200, named::<AdminAnswer>),
        },
        Route {
            method: Post,
            path: "/v1/cluster/learners",
            tag: Tag::Cluster,
            summary: "Add a node as a learner.",
            roles: Some(OPS),
            args: Body(args_of::<NodeJson>),
            answer: Json(200, named::<AdminAnswer>),
        },
        Route {
            method: Post,
            path: "/v1/cluster/membership",
            tag: Tag::Cluster,
            summary: "Change the voters.",
            roles: Some(OPS),
            args: Body(args_of::<MembershipJson>),
            answer: Json(200, named::<AdminAnswer>),
        },
        Route {
            method: Post,
            path: "/v1/cluster/remove",
            tag: Tag::Cluster,
            summary: "Remove a node from the cluster.",
            roles: Some(OPS),
            args: Body(args_of::<RemoveJson>),
            answer: Json(200, named::<AdminAnswer>),
        },
        Route {
            method: Post,
            path: "/v1/cluster/transfer-leader",
            tag: Tag::Cluster,
            summary: "Move leadership to a node.",
            roles: Some(OPS),
            args: Body(args_of::<TransferJson>),
            answer: Json(200, named::<AdminAnswer>),
        },
        Route {
            method: Post,
            path: "/v1/cluster/snapshot",
            tag: Tag::Cluster,
            summary: "Build a snapshot on this node now.",
            roles: Some(OPS),
            args: Nothing,
            answer: Json(200, any_object),
        },
        Route {
            method: Post,
            path: "/v1/cluster/scrub",
            tag: Tag::Cluster,
            summary: "Verify every block of this node's database against its checksum now.",
            roles: Some(OPS),
            args: Nothing,
            answer: Json(200, any_object),
        },
        Route {
            method: Post,
            path: "/v1/node/repair",
            tag: Tag::Cluster,
            summary: "Rebuild this node from its peers (refused, nothing changed, unless the leader would grant it now). 202 when accepted.",
            roles: Some(OPS),
            args: OptionalBody(args_of::<RepairJson>),
            answer: Json(202, any_object),
        },
        // ---- backup ----
        Route {
            method: Post,
            path: "/v1/backup/holds",
            tag: Tag::Backup,
            summary: "Make a backup hold: a checkpoint at one applied index, described (files with SHA-256, digest, fingerprints).",
            roles: Some(OPS),
            args: Nothing,
            answer: Json(200, any_object),
        },
        Route {
            method: Delete,
            path: "/v1/backup/holds/{hold_id}",
            tag: Tag::Backup,
            summary: "Release a backup hold.",
            roles: Some(OPS),
            args: Nothing,
            answer: Json(200, any_object),
        },
        Route {
            method: Get,
            path: "/v1/backup/holds/{hold_id}/files/{name}",
            tag: Tag::Backup,
            summary: "One file of a backup hold.",
            roles: Some(OPS),
            args: Nothing,
            answer: Bytes,
        },
        Route {
            method: Get,
            path: "/v1/backup/log",
            tag: Tag::Backup,
            summary: "Committed Raft log entries of this node for the log archive: a JSON header line, then the entries as archive frames (each verified). NOT_FOUND (reason log_purged) when `from` is no longer held.",
            roles: Some(OPS),
            args: Query(args_of::<super::http::LogArgs>),
            answer: Bytes,
        },
    ]
}

fn season_lines_query(_: &mut Registry, _: &[String]) -> Schema {
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "skipped",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["true", "false"]))
                    .build(),
            )
            .property("after", string())
            .property(
                "limit",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{1,4}$"))
                    .build(),
            )
            .build(),
    )
}

fn bank_payments_query(_: &mut Registry, _: &[String]) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "date",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{4}-[0-9]{2}-[0-9]{2}$")),
            )
            .required("date")
            .property(
                "after",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(ID_PATTERN)),
            )
            .property(
                "limit",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{1,6}$")),
            )
            .build(),
    )
}

fn date_query(_: &mut Registry, _: &[String]) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "date",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]{4}-[0-9]{2}-[0-9]{2}$")),
            )
            .build(),
    )
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}

fn role_names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error answer's schema for the codes answered with `status`.
fn error_schema(codes: &[&'static str]) -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.to_vec()))
                    .description(Some("billdb's stable error code")),
            )
            .required("code")
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .required("message")
            .property(
                "details",
                ObjectBuilder::new()
                    .schema_type(SchemaType::AnyValue)
                    .description(Some(
                        "structured details (e.g. field, retry_after_ms), or null",
                    )),
            )
            .build(),
    )
}

/// Codes by the HTTP status they are answered with.
fn codes_by_status() -> BTreeMap<u16, Vec<&'static str>> {
    let mut m: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for c in ErrorCode::ALL {
        m.entry(c.http_status()).or_default().push(c.as_str());
    }
    m
}

/// A request and its answer, shown to integrators in the document
/// (`node/tests/api_contract.rs` checks each against its schema).
struct Example {
    request: serde_json::Value,
    answer: serde_json::Value,
}

/// The worked examples of the routes a counter or a bank integrates
/// first: open an account, check a card, sell, confirm the credit loaded,
/// post a bank payment.
fn example(path: &str) -> Option<Example> {
    use serde_json::json;
    let record = json!({
        "account_id": "E-100234", "seq": 9, "kind": "purchase", "amount": "100.00",
        "units": "202.83", "balance_effect": "0", "tariff_id": "RES-LADDER",
        "tiers": [
            {"units": "150.00", "price": "0.48", "amount": "72.00"},
            {"units": "52.83", "price": "0.53", "amount": "28.00"}
        ],
        "card_no": "CARD-100234", "card_seq": 8, "invoice_no": "INV000000004711",
        "bank_code": "", "bank_ref": "", "refers_to": null, "reason": "",
        "channel": "counter", "operator_id": "C-0101", "branch": "B01",
        "request_id": "sale-B01-20261206-0042", "ts_ms": 1796569200000i64,
        "record_id": "E-100234:9", "ts": "2026-12-06T08:20:00.000Z"
    });
    let e = match path {
        "/v1/accounts" => Example {
            request: json!({
                "request_id": "open-E-100234", "account_id": "E-100234", "name": "Wang Fang",
                "address": "12 Heping Rd, Apt 301", "branch": "B01", "utility": "electricity",
                "meter_id": "M-88231", "tariff_id": "RES-LADDER"
            }),
            answer: json!({
                "result": "account_opened", "account_id": "E-100234",
                "opened_ms": 1796560000000i64, "log_index": 48213
            }),
        },
        "/v1/cards/verify" => Example {
            request: json!({"card_no": "CARD-100234", "generation": 1, "seq_on_card": 7}),
            answer: json!({
                "verdict": "CREDIT_NOT_LOADED",
                "message": "the credit of purchase 8 has not been confirmed loaded (card carries seq 7)",
                "expected_seq": 8, "current_card": "CARD-100234",
                "unloaded_record_id": "E-100234:8", "replaced_ms": null,
                "account": null, "card": null, "recent": []
            }),
        },
        "/v1/purchases" => Example {
            request: json!({
                "request_id": "sale-B01-20261206-0042", "card_no": "CARD-100234",
                "amount": "100.00"
            }),
            answer: json!({
                "result": "record_posted", "record_id": "E-100234:9", "record": record,
                "balance": "0", "warnings": [], "log_index": 48302
            }),
        },
        "/v1/purchases/{record_id}/loaded" => Example {
            request: json!({"request_id": "loaded-E-100234-9"}),
            answer: json!({
                "result": "credit_loaded", "record_id": "E-100234:9",
                "already_loaded": false, "log_index": 48303
            }),
        },
        "/v1/payments" => Example {
            request: json!({
                "request_id": "icbc-20261206-000123", "account_id": "E-100234",
                "amount": "200.00", "bank_code": "ICBC", "bank_ref": "20261206000123"
            }),
            answer: json!({
                "result": "payment_posted", "account_id": "E-100234", "seq": 10,
                "record_id": "E-100234:10", "amount": "200.00", "balance": "200.00",
                "invoice_no": "INV000000004712", "log_index": 48310
            }),
        },
        _ => return None,
    };
    Some(e)
}

fn json_content(schema: impl Into<RefOr<Schema>>) -> Content {
    Content::new(Some(schema))
}

fn operation_id(method: &HttpMethod, path: &str) -> String {
    let m = match method {
        HttpMethod::Get => "get",
        HttpMethod::Post => "post",
        HttpMethod::Put => "put",
        HttpMethod::Patch => "patch",
        HttpMethod::Delete => "delete",
        _ => "other",
    };
    let mut id = m.to_string();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        id.push('_');
        id.extend(
            seg.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    if path == "/" {
        id.push_str("_status_page");
    }
    id
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut reg = Registry::default();
    let mut paths = PathsBuilder::new();
    let by_status = codes_by_status();
    let mut error_components = ComponentsBuilder::new();
    for (status, codes) in &by_status {
        error_components = error_components.schema(format!("Error{status}"), error_schema(codes));
    }
    for r in routes() {
        let params = path_params(r.path);
        let (example_request, example_answer) = match example(r.path) {
            Some(e) => (Some(e.request), Some(e.answer)),
            None => (None, None),
        };
        let mut op = OperationBuilder::new()
            .operation_id(Some(operation_id(&r.method, r.path)))
            .summary(Some(r.summary))
            .tag(r.tag.name());
        for p in &params {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(p)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(ID_PATTERN)),
                    )),
            );
        }
        match r.args {
            Args::Nothing => {}
            Args::Body(f) | Args::OptionalBody(f) => {
                let schema = f(&mut reg, &params);
                let mut content = json_content(schema);
                content.example = example_request;
                op = op.request_body(Some(
                    RequestBodyBuilder::new()
                        .content("application/json", content)
                        .required(Some(if matches!(r.args, Args::Body(_)) {
                            Required::True
                        } else {
                            Required::False
                        }))
                        .build(),
                ));
            }
            Args::Query(f) => {
                if let Schema::Object(o) = f(&mut reg, &params) {
                    for (name, schema) in o.properties {
                        let required = o.required.contains(&name);
                        // Every query value is a string on the wire.
                        let schema = match schema {
                            RefOr::T(Schema::Object(mut p))
                                if !matches!(p.schema_type, SchemaType::Type(Type::String)) =>
                            {
                                p.schema_type = SchemaType::Type(Type::String);
                                p.format = None;
                                RefOr::T(Schema::Object(p))
                            }
                            other => other,
                        };
                        op = op.parameter(
                            ParameterBuilder::new()
                                .name(name)
                                .parameter_in(ParameterIn::Query)
                                .required(if required {
                                    Required::True
                                } else {
                                    Required::False
                                })
                                .schema(Some(schema)),
                        );
                    }
                }
            }
        }
        op = match r.answer {
            Answer::Json(status, f) => {
                let mut content = json_content(f(&mut reg));
                content.example = example_answer;
                op.response(
                    status.to_string(),
                    ResponseBuilder::new()
                        .description("the answer")
                        .content("application/json", content),
                )
            }
            Answer::Text(ct) => op.response(
                "200",
                ResponseBuilder::new().description("the answer").content(
                    ct,
                    Content::new(Some(ObjectBuilder::new().schema_type(Type::String))),
                ),
            ),
            Answer::Bytes => op.response(
                "200",
                ResponseBuilder::new()
                    .description("the file's bytes")
                    .content(
                        "application/octet-stream",
                        Content::new(Some(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .format(Some(SchemaFormat::Custom("binary".into()))),
                        )),
                    ),
            ),
        };
        // Every refusal is {code, message, details}.
        let statuses: BTreeSet<u16> = match r.roles {
            // Probes: only readiness refuses (503), and any route may be
            // sent a body too large (413) or an unknown path (404).
            None if r.path == "/readyz" => [503].into_iter().collect(),
            None => BTreeSet::new(),
            Some(_) => by_status.keys().copied().collect(),
        };
        for status in statuses {
            op = op.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(format!(
                        "refused: {}",
                        by_status
                            .get(&status)
                            .map(|c| c.join(", "))
                            .unwrap_or_default()
                    ))
                    .content(
                        "application/json",
                        json_content(RefOr::Ref(Ref::from_schema_name(format!("Error{status}")))),
                    ),
            );
        }
        match r.roles {
            Some(roles) => {
                op = op
                    .description(Some(format!("Roles: {}.", role_names(roles))))
                    .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
                    .security(SecurityRequirement::new("mutualTLS", Vec::<String>::new()));
            }
            None => {
                op = op
                    .description(Some("No token needed."))
                    .security(SecurityRequirement::default());
            }
        }
        paths = paths.path(r.path, PathItem::new(r.method, op.build()));
    }
    let mut components = error_components;
    for (name, schema) in reg.schemas {
        components = components.schema(name, schema);
    }
    let components = components
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from auth.tokens_file (roles ops, counter, bank, auditor), \
                         as `Authorization: Bearer <token>`.",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "mutualTLS",
            SecurityScheme::MutualTls {
                description: Some(
                    "Instead of a token: a client certificate signed by the cluster's CA \
                     whose name (billdb://<cluster>/client/<name>) the tokens file maps to \
                     a role (a `client_cert` entry). A request that carries an \
                     Authorization header is judged by its token alone."
                        .to_string(),
                ),
                extensions: None,
            },
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("billdb HTTP API")
                .version("1")
                .description(Some(
                    "Utility billing records on a five-node Raft cluster. Any node answers any \
                     request; writes carry a request_id (resending the same request returns \
                     the first outcome). Decimals are strings; times are RFC 3339 UTC with \
                     *_ms beside them. Every refusal is {code, message, details}; the retry \
                     rule is in docs/INTEGRATION.md.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

/// The document as served and checked in (pretty JSON, trailing newline).
pub fn document_json() -> String {
    let mut v = match serde_json::to_value(document()) {
        Ok(v) => v,
        Err(e) => return format!("{{\"error\": \"{e}\"}}\n"),
    };
    unsigned_integers(&mut v);
    let mut s =
        serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// Unsigned integers as the server reads them: `uint32` / `uint64` with
/// their real maximum (utoipa writes `u-int32`, and without
/// `non_strict_integers` the signed range, which refuses values the
/// server accepts).
fn unsigned_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let max = match m.get("format").and_then(|f| f.as_str()) {
                Some("u-int32") => Some(("uint32", serde_json::json!(u32::MAX))),
                Some("u-int64") => Some(("uint64", serde_json::json!(u64::MAX))),
                _ => None,
            };
            if let Some((format, maximum)) = max {
                m.insert("format".into(), serde_json::json!(format));
                m.insert("maximum".into(), maximum);
            }
            for child in m.values_mut() {
                unsigned_integers(child);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(unsigned_integers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED_IN: &str = include_str!("../../../api/openapi.json");

    /// `BILLDB_WRITE_OPENAPI=1 cargo test … openapi` rewrites the file.
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let now = document_json();
        if std::env::var_os("BILLDB_WRITE_OPENAPI").is_some() {
            let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.json");
            std::fs::write(p, &now).expect("write api/openapi.json");
            return;
        }
        assert!(
            now == CHECKED_IN,
            "api/openapi.json is not the document the code generates: run \
             BILLDB_WRITE_OPENAPI=1 on this test and commit the file"
        );
    }

    #[test]
    fn every_route_the_router_serves_is_described_and_nothing_else() {
        let source = include_str!("http.rs");
        let mut served = BTreeSet::new();
        for part in source.split(".route(").skip(1) {
            let lit = part.trim_start();
            let Some(rest) = lit.strip_prefix('"') else {
                // `.route(IMPORT_PATH, …)`
                if lit.starts_with("IMPORT_PATH") {
                    served.insert("/v1/import".to_string());
                }
                continue;
            };
            if let Some(end) = rest.find('"') {
                served.insert(rest[..end].to_string());
            }
        }
        assert!(served.len() > 40, "parsed routes: {served:?}");
        let doc = document();
        let described: BTreeSet<String> = doc.paths.paths.keys().cloned().collect();
        assert!(
            !document_json().contains("u-int"),
            "unsigned formats are rewritten"
        );
        assert_eq!(described, served);
    }

    #[test]
    fn error_schemas_cover_every_code_once() {
        let m = codes_by_status();
        let n: usize = m.values().map(Vec::len).sum();
        assert_eq!(n, ErrorCode::ALL.len());
    }
}
