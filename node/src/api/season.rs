//! Season billing over the API (`POST /v1/seasons/{season_id}/bill`, its
//! report and lines): the node that takes the request drives the run. It
//! lists the heat accounts from its applied state, after a read barrier
//! (so it sees every account opened before the request), and proposes one
//! bounded `BillSeason` command per [`BILL_BATCH_MAX`] of them, for up to
//! [`CALL_BUDGET_MS`]; the answer says where it stopped (`next_after`) and
//! whether it is done. The client calls again from there (`billdb season
//! bill` does, with progress).
//!
//! Each batch's request_id is derived from the caller's request_id, the
//! season and the batch's accounts: a call repeated after a timeout or a
//! killed node proposes the same commands again and the exactly-once table
//! answers them; a new run (another request_id) proposes new commands, and
//! the per-account lines keep any account from being charged twice.
//!
//! May touch: the App (reads, writes); domain functions only.

use serde::Deserialize;
use serde_json::{Value, json};

use billdb_api::error::{ApiError, ErrorCode};

use super::ops::origin;
use super::validate;
use crate::app::App;
use crate::auth::{Caller, Role};
use crate::domain::season_bill::{self, BILL_BATCH_MAX};
use crate::domain::{Op, Outcome};
use crate::store::state_machine::RocksRead;

/// How long one call drives the run before it answers with its progress.
pub const CALL_BUDGET_MS: u64 = 3_000;
/// Most accounts one batch's scan looks at (heat or not).
const LOOK_MAX: usize = 20_000;
/// One account's line as `GET …/bill/lines` answers it (also its schema
/// in the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LineAnswer {
    account_id: String,
    branch: String,
    tariff_id: String,
    /// Heated area, m².
    area_m2: String,
    /// A heating stop: the suspended share was charged.
    suspended: bool,
    /// Billed: the charge; skipped: 0.
    amount: String,
    /// Billed: the charge record.
    record_id: Option<String>,
    /// Skipped: why (closed, no_area, no_tariff, not_area_tariff,
    /// rounds_to_zero, not_heat, refused), and in words.
    skipped: Option<&'static str>,
    reason: Option<String>,
}

/// One page of `GET …/bill/lines`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LinesPage {
    lines: Vec<LineAnswer>,
    /// Give it back as `after` for the next page; null at the end.
    next_after: Option<String>,
}

/// Most lines one page of `GET …/bill/lines` returns.
pub const LINES_PAGE_MAX: usize = 1_000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BillArgs {
    request_id: String,
    /// Go on after this account (the previous answer's `next_after`).
    #[serde(default)]
    after: Option<String>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

fn args<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.to_string()))
}

/// The request_id of one batch: the same for the same run and accounts.
fn batch_request_id(request_id: &str, season_id: &str, ids: &[String]) -> String {
    super::ops::batch_request_id("season-bill", &[request_id, season_id], ids)
}

/// `POST /v1/seasons/{season_id}/bill` (ops).
pub async fn bill(
    app: &App,
    caller: &Caller,
    season_id: &str,
    body: Value,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Ops])?;
    let season_id = validate::id("season_id", season_id)?;
    let r: BillArgs = args(body)?;
    let request_id = validate::id("request_id", &r.request_id)?;
    let mut after = r
        .after
        .as_deref()
        .map(|a| validate::id("after", a))
        .transpose()?;
    app.linearize().await?;
    {
        let db = app.db.clone();
        let season = season_id.clone();
        let refused = tokio::task::spawn_blocking(move || {
            season_bill::not_open(&RocksRead::new(&db), &season)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        if let Some(e) = refused {
            return Err(e);
        }
    }
    let started = std::time::Instant::now();
    let (mut batches, mut looked_at, mut billed, mut skipped, mut already) = (0u64, 0u64, 0, 0, 0);
    let mut amount = rust_decimal::Decimal::ZERO;
    let mut done = false;
    while u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX) < CALL_BUDGET_MS {
        let db = app.db.clone();
        let from = after.clone();
        let next = tokio::task::spawn_blocking(move || {
            season_bill::next_heat_accounts(
                &RocksRead::new(&db),
                from.as_deref(),
                BILL_BATCH_MAX,
                LOOK_MAX,
            )
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        looked_at += next.looked_at as u64;
        if !next.heat.is_empty() {
            let rid = batch_request_id(&request_id, &season_id, &next.heat);
            let op = Op::BillSeason {
                season_id: season_id.clone(),
                account_ids: next.heat,
            };
            let (outcome, _) = app.write(rid, origin(caller, &op), op).await?;
            match outcome {
                Outcome::SeasonBilled {
                    billed: b,
                    skipped: s,
                    already: a,
                    amount: m,
                    ..
                } => {
                    billed += b;
                    skipped += s;
                    already += a;
                    amount = amount
                        .checked_add(m)
                        .ok_or_else(|| internal("season amount overflow"))?;
                }
                Outcome::Refused(e) => return Err(e),
                other => return Err(internal(format!("unexpected outcome {other:?}"))),
            }
            batches += 1;
        }
        after = next.last;
        if next.end {
            done = true;
            break;
        }
    }
    Ok(json!({
        "season_id": season_id,
        "request_id": request_id,
        "done": done,
        "next_after": if done { None } else { after },
        "batches": batches,
        "accounts_looked_at": looked_at,
        "billed": billed,
        "skipped": skipped,
        "already_billed": already,
        "amount": amount.to_string(),
        "ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
}

/// `GET /v1/seasons/{season_id}/bill` (ops, auditor): the season bill
/// report from one consistent view.
pub async fn report(app: &App, caller: &Caller, season_id: &str) -> Result<Value, ApiError> {
    caller.require(&[Role::Ops, Role::Auditor])?;
    let season_id = validate::id("season_id", season_id)?;
    app.linearize().await?;
    let db = app.db.clone();
    let rep =
        tokio::task::spawn_blocking(move || season_bill::report(&RocksRead::new(&db), &season_id))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    serde_json::to_value(rep).map_err(internal)
}

/// `GET /v1/seasons/{season_id}/bill/lines?skipped=true&after=ID&limit=N`
/// (ops, auditor): every account's line (billed: amount and record; or
/// skipped: why), a page at a time.
pub async fn lines(
    app: &App,
    caller: &Caller,
    season_id: &str,
    query: Vec<(String, String)>,
) -> Result<Value, ApiError> {
    caller.require(&[Role::Ops, Role::Auditor])?;
    let season_id = validate::id("season_id", season_id)?;
    let (mut skipped_only, mut after, mut limit) = (false, None, LINES_PAGE_MAX);
    for (k, v) in query {
        match k.as_str() {
            "skipped" => {
                skipped_only = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ApiError::new(
                            ErrorCode::InvalidArgument,
                            "skipped: true or false",
                        ));
                    }
                }
            }
            "after" => after = Some(validate::id("after", &v)?),
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=LINES_PAGE_MAX).contains(l))
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidArgument,
                            format!("limit: 1..={LINES_PAGE_MAX}"),
                        )
                    })?
            }
            other => {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("unknown query parameter {other:?}"),
                ));
            }
        }
    }
    app.linearize().await?;
    let db = app.db.clone();
    let (page, next) = tokio::task::spawn_blocking(move || {
        season_bill::lines(
            &RocksRead::new(&db),
            &season_id,
            skipped_only,
            after.as_deref(),
            limit,
        )
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let lines: Vec<LineAnswer> = page
        .into_iter()
        .map(|l| LineAnswer {
            record_id: l
                .record_seq
                .map(|s| crate::domain::record_id(&l.account_id, s)),
            skipped: l.skipped.as_ref().map(|(r, _)| r.code()),
            reason: l.skipped.as_ref().map(|(_, t)| t.clone()),
            area_m2: l.area_m2.to_string(),
            amount: l.amount.to_string(),
            account_id: l.account_id,
            branch: l.branch,
            tariff_id: l.tariff_id,
            suspended: l.suspended,
        })
        .collect();
    serde_json::to_value(LinesPage {
        lines,
        next_after: next,
    })
    .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_id_is_stable_valid_and_names_its_run_and_accounts() {
        let ids = vec!["H1".to_string(), "H2".to_string()];
        let a = batch_request_id("run-1", "2026-27", &ids);
        assert_eq!(a, batch_request_id("run-1", "2026-27", &ids));
        assert_ne!(a, batch_request_id("run-2", "2026-27", &ids));
        assert_ne!(a, batch_request_id("run-1", "2026-27", &ids[..1]));
        assert!(validate::id("request_id", &a).is_ok(), "{a}");
        // What every earlier build derived (SHA-256 of the NUL-ended parts),
        // so a run started by one resumes with the same commands.
        assert_eq!(a, "season-bill-7aac07df5e92e921fbcbfd6a2703bf8f9c20ca92");
    }
}
