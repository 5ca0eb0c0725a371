//! Counter, bank, report and ops commands (`billdb account|card|purchase|
//! record|invoice|pay|report|ops …`) over the gRPC client ([`billdb_client::client::Client`]). Readable output by
//! default, the raw JSON with `--json`. Touches only the network.

use anyhow::{Result, anyhow};
use billdb_api::error::ApiError;
use billdb_api::pb2 as pb;
use billdb_api::v2json;
use billdb_client::client::{Client, new_request_id};
use billdb_client::render;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Clone)]
pub struct ConnArg {
    /// Client gRPC endpoints of any nodes, comma separated (https:// when
    /// --ca is given and no scheme is).
    #[arg(
        long,
        env = "BILLDB_GRPC",
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103,127.0.0.1:7104,127.0.0.1:7105"
    )]
    grpc: String,
    /// Bearer token (see `billdb local token`).
    #[arg(long, env = "BILLDB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    tls: crate::TlsArg,
}

impl ConnArg {
    pub(crate) fn client(&self) -> Result<Client> {
        let eps: Vec<String> = self
            .grpc
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let tls = self.tls.load()?;
        Client::with_tls(&eps, self.token.as_deref(), tls.as_ref())
            .map_err(|e| anyhow!("{}: {}", e.code, e.message))
    }
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// Open an account.
    Open {
        account_id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        address: String,
        #[arg(long)]
        branch: String,
        /// electricity | heat | water | gas
        #[arg(long)]
        utility: String,
        #[arg(long, default_value = "")]
        meter_id: String,
        #[arg(long, default_value = "")]
        tariff_id: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Show an account (linearizable read).
    Get {
        account_id: String,
        #[command(flatten)]
        conn: ConnArg,
    },
    /// A customer statement for a period: opening balance, every charge,
    /// payment, purchase, reversal and adjustment with the balance after
    /// it, closing balance.
    Statement {
        account_id: String,
        /// From this time (RFC 3339), inclusive.
        #[arg(long)]
        from: String,
        /// Up to this time (RFC 3339), exclusive.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        conn: ConnArg,
    },
    /// Change contact details (only the fields given).
    Contact {
        account_id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        /// Heated area in m² (heating accounts).
        #[arg(long)]
        area: Option<String>,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Close (freeze) an account: its records stay, writes are refused.
    Close {
        account_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Suspend an account (writes refused until resumed).
    Suspend {
        account_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Resume a suspended account.
    Resume {
        account_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// An account's records: the recent segment by default.
    Records {
        account_id: String,
        /// recent | history | all
        #[arg(long)]
        segment: Option<String>,
        /// From this time (RFC 3339), inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Up to this time (RFC 3339), exclusive.
        #[arg(long)]
        to: Option<String>,
        /// Records per page (1..=500).
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        page_token: Option<String>,
        /// Oldest first (default: newest first).
        #[arg(long)]
        asc: bool,
        #[command(flatten)]
        conn: ConnArg,
    },
}

/// Connection options plus the request id of a write.
#[derive(Args, Clone)]
pub struct WriteArg {
    /// Reuse to retry safely; a new one is made if absent.
    #[arg(long)]
    request_id: Option<String>,
    #[command(flatten)]
    conn: ConnArg,
}

impl WriteArg {
    fn id(&self, prefix: &str) -> String {
        self.request_id
            .clone()
            .unwrap_or_else(|| new_request_id(prefix))
    }
}

#[derive(Subcommand)]
pub enum CardCmd {
    /// Issue the account's card.
    Issue {
        account_id: String,
        card_no: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Replace a card (lost, broken): the old one is refused from then on.
    Replace {
        card_no: String,
        new_card_no: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Card check at the counter: verdict, account and recent records.
    Verify {
        card_no: String,
        /// Card generation read from the card (a new card is 1).
        #[arg(long)]
        generation: u32,
        /// Purchase sequence number read from the card (0 before the first sale).
        #[arg(long)]
        seq_on_card: u64,
        #[command(flatten)]
        conn: ConnArg,
    },
}

/// A purchase (counter sale): by card or account, money or units.
#[derive(Args)]
pub struct PurchaseArgs {
    #[arg(long, conflicts_with = "account", required_unless_present = "account")]
    card: Option<String>,
    #[arg(long)]
    account: Option<String>,
    /// Money to spend, e.g. 100.00
    #[arg(long, conflicts_with = "units", required_unless_present = "units")]
    amount: Option<String>,
    /// Units to buy, e.g. 150.5
    #[arg(long)]
    units: Option<String>,
    /// Same card, same amount within 30 s is refused unless confirmed.
    #[arg(long)]
    confirm_duplicate: bool,
    #[command(flatten)]
    w: WriteArg,
}

#[derive(Subcommand)]
pub enum RecordCmd {
    /// Re-issue the credit of an unloaded purchase (once, no money).
    Reissue {
        record_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Confirm that a purchase's credit was loaded onto the card.
    Loaded {
        record_id: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Reverse a record (once); the reversal is a new record.
    Reverse {
        record_id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
}

#[derive(Subcommand)]
pub enum InvoiceCmd {
    /// Reprint an invoice: same number, marked as a reprint and counted.
    Print {
        invoice_no: String,
        #[command(flatten)]
        w: WriteArg,
    },
}

#[derive(Subcommand)]
pub enum ReportCmd {
    /// A month's totals by operator, branch, tariff or kind.
    Monthly {
        /// YYYY-MM
        month: String,
        /// operator | branch | tariff | kind
        #[arg(long)]
        group_by: Option<String>,
        /// Read this node's state without a leader round (says how stale).
        #[arg(long)]
        stale: bool,
        /// The failover drills' records: exclude (default), include, only.
        #[arg(long)]
        drills: Option<String>,
        #[command(flatten)]
        conn: ConnArg,
    },
    /// Accounts and Σ balance (debit and credit apart) per branch,
    /// utility or tariff, over every account.
    Balances {
        /// branch (default) | utility | tariff
        #[arg(long)]
        group_by: Option<String>,
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        conn: ConnArg,
    },
    /// A day's bank payments by bank.
    BankDaily {
        /// YYYY-MM-DD
        date: String,
        #[arg(long)]
        bank_code: Option<String>,
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        conn: ConnArg,
    },
}

/// Operations staff commands (ops role).
#[derive(Subcommand)]
pub enum OpsCmd {
    /// Define a tariff version: `--price P` (flat), `--tier UP_TO:PRICE`
    /// repeated, the last as `-:PRICE` (ladder over a year's units), or
    /// `--price P --suspended-share S` (area: heating at P per m² of heated
    /// area per season; an account with a heating stop pays S of it).
    Tariff {
        tariff_id: String,
        #[arg(long, conflicts_with = "tier", required_unless_present = "tier")]
        price: Option<String>,
        #[arg(long)]
        tier: Vec<String>,
        /// Makes it an area tariff: the share (0 to 1, e.g. 0.30) of the
        /// season charge an account with a heating stop pays.
        #[arg(long, conflicts_with = "tier")]
        suspended_share: Option<String>,
        /// RFC 3339; default: now.
        #[arg(long)]
        effective_from: Option<String>,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Post a charge (heating by area, fees).
    Charge {
        account_id: String,
        amount: String,
        /// Billing period, e.g. 2026-11
        #[arg(long)]
        period: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// A signed balance adjustment with a reason.
    Adjust {
        account_id: String,
        /// Signed amount, e.g. -12.50
        #[arg(allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Open a heating season (carry-forward for every heating account).
    Season {
        season_id: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Move the history/recent boundary (RFC 3339).
    Boundary {
        boundary: String,
        #[command(flatten)]
        w: WriteArg,
    },
    /// Bulk import from a JSON file (the body of POST /v1/import).
    Import {
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: ConnArg,
    },
    /// The stored outcome of a request id.
    Request {
        request_id: String,
        #[command(flatten)]
        conn: ConnArg,
    },
}

#[derive(Args)]
pub struct PayArgs {
    account_id: String,
    /// Amount, e.g. 120.50
    amount: String,
    #[arg(long)]
    bank_code: String,
    #[arg(long)]
    bank_ref: String,
    #[command(flatten)]
    w: WriteArg,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A refusal or failure: with `--json` the error document (code, message,
/// details) goes to stdout for scripts; the exit status is 1 either way.
fn api_err(e: ApiError, json_out: bool) -> anyhow::Error {
    if json_out {
        println!("{}", json!({"error": e}));
    }
    anyhow!("{}: {}", e.code, e.message)
}

/// A typed reply as the JSON the HTTP API answers (for `--json` and the
/// renderers).
fn as_json<M: prost::Message + prost::Name>(m: &M) -> Result<Value> {
    v2json::to_json(m).map_err(|e| anyhow!("{e}"))
}

/// An account opening or a payment: `{"request_id","log_index","outcome"}`.
fn print_write(mut outcome: Value, json_out: bool, request_id: &str) -> Result<()> {
    let log_index = outcome
        .as_object_mut()
        .and_then(|o| o.remove("log_index"))
        .unwrap_or(Value::Null);
    if json_out {
        println!(
            "{}",
            json!({"request_id": request_id, "log_index": log_index, "outcome": outcome})
        );
    } else {
        println!("ok  request {request_id}  (log index {log_index})");
        print!("{}", render::key_values(&outcome));
        print_warnings(&outcome);
    }
    Ok(())
}

fn print_warnings(v: &Value) {
    if let Some(w) = v.get("warnings").and_then(Value::as_array) {
        for warning in w {
            println!("WARNING  {}", render::scalar(warning));
        }
    }
}

/// The answer of a JSON-reply write: `ok request …` and its fields.
fn print_outcome(v: &Value, json_out: bool, request_id: &str) {
    if json_out {
        println!("{v}");
    } else {
        println!("ok  request {request_id}");
        print!("{}", render::key_values(v));
        print_warnings(v);
    }
}

fn print_read(v: &Value, json_out: bool, render: fn(&Value) -> String) {
    if json_out {
        println!("{v}");
    } else {
        print!("{}", render(v));
    }
}

/// Run one call on a fresh client (inside the runtime: channels spawn tasks).
fn call<T, F, Fut>(conn: &ConnArg, f: F) -> Result<T>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let rt = runtime()?;
    let _entered = rt.enter();
    let client = conn.client()?;
    rt.block_on(f(client)).map_err(|e| api_err(e, conn.json))
}

fn write<R, F, Fut>(w: &WriteArg, prefix: &str, f: F) -> Result<()>
where
    R: prost::Message + prost::Name,
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<R, ApiError>>,
{
    let request_id = w.id(prefix);
    let id = request_id.clone();
    let reply = call(&w.conn, move |c| f(c, id))?;
    print_outcome(&as_json(&reply)?, w.conn.json, &request_id);
    Ok(())
}

/// A read: its reply as JSON (`--json`) or rendered.
fn read<R, F, Fut>(conn: &ConnArg, render: fn(&Value) -> String, f: F) -> Result<()>
where
    R: prost::Message + prost::Name,
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<R, ApiError>>,
{
    let reply = call(conn, f)?;
    print_read(&as_json(&reply)?, conn.json, render);
    Ok(())
}

fn lifecycle(account_id: String, reason: String, request_id: String) -> pb::LifecycleRequest {
    pb::LifecycleRequest {
        request_id,
        account_id,
        reason,
    }
}

pub fn run_account(cmd: AccountCmd) -> Result<()> {
    match cmd {
        AccountCmd::Open {
            account_id,
            name,
            address,
            branch,
            utility,
            meter_id,
            tariff_id,
            w,
        } => {
            let request_id = w.id("open");
            let req = pb::OpenAccountRequest {
                request_id: request_id.clone(),
                account_id,
                name,
                address,
                branch,
                utility,
                meter_id,
                tariff_id,
            };
            let reply = call(&w.conn, |c| async move { c.open_account(req).await })?;
            print_write(as_json(&reply)?, w.conn.json, &request_id)
        }
        AccountCmd::Get { account_id, conn } => {
            let a = call(&conn, |c| async move { c.get_account(&account_id).await })?;
            if conn.json {
                println!("{}", as_json(&a)?);
            } else {
                println!("account  {}  ({}, {})", a.account_id, a.utility, a.status);
                println!("  name     {}", a.name);
                println!("  address  {}", a.address);
                println!("  branch   {}", a.branch);
                println!("  tariff   {}", a.tariff_id);
                println!("  balance  {}", a.balance);
                println!("  last seq {}", a.last_seq);
            }
            Ok(())
        }
        AccountCmd::Contact {
            account_id,
            name,
            address,
            phone,
            area,
            w,
        } => write(&w, "contact", |c, request_id| async move {
            c.update_contact(pb::UpdateContactRequest {
                request_id,
                account_id,
                name,
                address,
                phone,
                area,
            })
            .await
        }),
        AccountCmd::Close {
            account_id,
            reason,
            w,
        } => write(&w, "close", |c, id| async move {
            c.close_account(lifecycle(account_id, reason, id)).await
        }),
        AccountCmd::Suspend {
            account_id,
            reason,
            w,
        } => write(&w, "suspend", |c, id| async move {
            c.suspend_account(lifecycle(account_id, reason, id)).await
        }),
        AccountCmd::Resume {
            account_id,
            reason,
            w,
        } => write(&w, "resume", |c, id| async move {
            c.resume_account(lifecycle(account_id, reason, id)).await
        }),
        AccountCmd::Statement {
            account_id,
            from,
            to,
            conn,
        } => run_statement(account_id, from, to, conn),
        AccountCmd::Records {
            account_id,
            segment,
            from,
            to,
            limit,
            page_token,
            asc,
            conn,
        } => {
            let req = pb::ListRecordsRequest {
                account_id,
                segment,
                from,
                to,
                limit,
                page_token,
                order: Some(if asc { "asc" } else { "desc" }.to_string()),
            };
            read(&conn, render::records, |c| async move {
                c.list_records(req).await
            })
        }
    }
}

fn run_statement(account_id: String, from: String, to: String, conn: ConnArg) -> Result<()> {
    let req = pb::StatementRequest {
        account_id,
        from: Some(from),
        to: Some(to),
        from_ms: None,
        to_ms: None,
    };
    read(&conn, render::statement, |c| async move {
        c.statement(req).await
    })
}

pub fn run_card(cmd: CardCmd) -> Result<()> {
    match cmd {
        CardCmd::Issue {
            account_id,
            card_no,
            w,
        } => write(&w, "card", |c, request_id| async move {
            c.issue_card(pb::IssueCardRequest {
                request_id,
                account_id,
                card_no,
            })
            .await
        }),
        CardCmd::Replace {
            card_no,
            new_card_no,
            reason,
            w,
        } => write(&w, "replace", |c, request_id| async move {
            c.replace_card(pb::ReplaceCardRequest {
                request_id,
                card_no,
                new_card_no,
                reason,
            })
            .await
        }),
        CardCmd::Verify {
            card_no,
            generation,
            seq_on_card,
            conn,
        } => {
            let req = pb::VerifyCardRequest {
                card_no,
                generation,
                seq_on_card,
            };
            read(&conn, render::card_check, |c| async move {
                c.verify_card(req).await
            })
        }
    }
}

pub fn run_purchase(p: PurchaseArgs) -> Result<()> {
    write(&p.w, "sale", |c, request_id| async move {
        c.purchase(pb::PurchaseRequest {
            request_id,
            card_no: p.card,
            account_id: p.account,
            amount: p.amount,
            units: p.units,
            confirm_duplicate: p.confirm_duplicate,
        })
        .await
    })
}

pub fn run_record(cmd: RecordCmd) -> Result<()> {
    match cmd {
        RecordCmd::Reissue {
            record_id,
            reason,
            w,
        } => write(&w, "reissue", |c, request_id| async move {
            c.reissue(pb::RecordRequest {
                request_id,
                record_id,
                reason,
            })
            .await
        }),
        RecordCmd::Loaded { record_id, w } => write(&w, "loaded", |c, request_id| async move {
            c.confirm_loaded(pb::RecordRequest {
                request_id,
                record_id,
                reason: String::new(),
            })
            .await
        }),
        RecordCmd::Reverse {
            record_id,
            reason,
            w,
        } => write(&w, "reverse", |c, request_id| async move {
            c.reverse(pb::RecordRequest {
                request_id,
                record_id,
                reason,
            })
            .await
        }),
    }
}

pub fn run_invoice(cmd: InvoiceCmd) -> Result<()> {
    match cmd {
        InvoiceCmd::Print { invoice_no, w } => write(&w, "print", |c, request_id| async move {
            c.print_invoice(pb::PrintInvoiceRequest {
                request_id,
                invoice_no,
            })
            .await
        }),
    }
}

fn consistency(stale: bool) -> Option<String> {
    Some(if stale { "stale" } else { "linearizable" }.to_string())
}

pub fn run_report(cmd: ReportCmd) -> Result<()> {
    match cmd {
        ReportCmd::Monthly {
            month,
            group_by,
            stale,
            drills,
            conn,
        } => {
            let req = pb::MonthlyReportRequest {
                month,
                group_by,
                consistency: consistency(stale),
                drills,
            };
            read(&conn, render::report, |c| async move {
                c.monthly_report(req).await
            })
        }
        ReportCmd::Balances {
            group_by,
            stale,
            conn,
        } => {
            let req = pb::BalanceReportRequest {
                group_by,
                consistency: consistency(stale),
            };
            read(&conn, render::balances, |c| async move {
                c.balance_report(req).await
            })
        }
        ReportCmd::BankDaily {
            date,
            bank_code,
            stale,
            conn,
        } => {
            let req = pb::BankDailyReportRequest {
                date,
                bank_code,
                consistency: consistency(stale),
            };
            read(&conn, render::report, |c| async move {
                c.bank_daily_report(req).await
            })
        }
    }
}

/// `--tier 100:0.52 --tier -:0.80` → ladder tiers (the last open-ended).
fn parse_tiers(tiers: &[String]) -> Result<Vec<pb::TariffTier>> {
    tiers
        .iter()
        .map(|t| {
            let (up_to, price) = t
                .split_once(':')
                .ok_or_else(|| anyhow!("tier {t:?}: expected UP_TO:PRICE or -:PRICE"))?;
            Ok(pb::TariffTier {
                up_to: (up_to != "-").then(|| up_to.to_string()),
                price: price.to_string(),
            })
        })
        .collect()
}

pub fn run_ops(cmd: OpsCmd) -> Result<()> {
    match cmd {
        OpsCmd::Tariff {
            tariff_id,
            price,
            tier,
            suspended_share,
            effective_from,
            w,
        } => {
            let tiers = parse_tiers(&tier)?;
            let kind = if suspended_share.is_some() {
                "area"
            } else if tiers.is_empty() {
                "flat"
            } else {
                "ladder"
            }
            .to_string();
            write(&w, "tariff", |c, request_id| async move {
                c.define_tariff(pb::DefineTariffRequest {
                    request_id,
                    tariff_id,
                    kind,
                    price,
                    tiers,
                    effective_from,
                    effective_from_ms: None,
                    suspended_share,
                })
                .await
            })
        }
        OpsCmd::Charge {
            account_id,
            amount,
            period,
            reason,
            w,
        } => write(&w, "charge", |c, request_id| async move {
            c.post_charge(pb::ChargeRequest {
                request_id,
                account_id,
                amount,
                period,
                reason,
            })
            .await
        }),
        OpsCmd::Adjust {
            account_id,
            amount,
            reason,
            w,
        } => write(&w, "adjust", |c, request_id| async move {
            c.adjust(pb::AdjustRequest {
                request_id,
                account_id,
                amount,
                reason,
            })
            .await
        }),
        OpsCmd::Season { season_id, w } => write(&w, "season", |c, request_id| async move {
            c.open_heating_season(pb::OpenSeasonRequest {
                request_id,
                season_id,
            })
            .await
        }),
        OpsCmd::Boundary { boundary, w } => write(&w, "boundary", |c, request_id| async move {
            c.set_segment_boundary(pb::SetBoundaryRequest {
                request_id,
                boundary: Some(boundary),
                boundary_ms: None,
            })
            .await
        }),
        OpsCmd::Import { file, conn } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow!("reading {}: {e}", file.display()))?;
            let rows: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow!("{} is not JSON: {e}", file.display()))?;
            read(&conn, render::key_values, |c| async move {
                c.import(&rows).await
            })
        }
        OpsCmd::Request { request_id, conn } => {
            let req = pb::GetRequestRequest { request_id };
            let reply = call(&conn, |c| async move { c.get_request(req).await })?;
            let v = v2json::request_outcome_http_json(as_json(&reply)?);
            print_read(&v, conn.json, render::key_values);
            Ok(())
        }
    }
}

pub fn run_pay(p: PayArgs) -> Result<()> {
    let request_id = p.w.id("pay");
    let req = pb::PaymentRequest {
        request_id: request_id.clone(),
        account_id: p.account_id,
        amount: p.amount,
        bank_code: p.bank_code,
        bank_ref: p.bank_ref,
    };
    let reply = call(&p.w.conn, |c| async move { c.post_payment(req).await })?;
    print_write(as_json(&reply)?, p.w.conn.json, &request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_with_an_open_last_tier() {
        let t = parse_tiers(&["100:0.52".into(), "-:0.80".into()]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].up_to.as_deref(), Some("100"));
        assert_eq!(t[0].price, "0.52");
        assert_eq!(t[1].up_to, None);
        assert!(parse_tiers(&["0.52".into()]).is_err());
    }
}
