//! `billdb account …` and `billdb pay`: counter and bank commands over the
//! gRPC client ([`billdb_client::client::Client`]). Readable output by
//! default, the raw JSON with `--json`. Touches only the network.

use anyhow::{Result, anyhow};
use billdb_api::pb;
use billdb_client::client::{Client, new_request_id};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Clone)]
pub struct ConnArg {
    /// Client gRPC endpoints of any nodes, comma separated.
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
    json: bool,
}

impl ConnArg {
    fn client(&self) -> Result<Client> {
        let eps: Vec<String> = self
            .grpc
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Client::new(&eps, self.token.as_deref()).map_err(|e| anyhow!("{}: {}", e.code, e.message))
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
        /// Reuse to retry safely; a new one is made if absent.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        conn: ConnArg,
    },
    /// Show an account (linearizable read).
    Get {
        account_id: String,
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
    #[arg(long)]
    request_id: Option<String>,
    #[command(flatten)]
    conn: ConnArg,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn api_err(e: billdb_api::error::ApiError) -> anyhow::Error {
    anyhow!("{}: {}", e.code, e.message)
}

fn print_write(reply: pb::WriteReply, json_out: bool, request_id: &str) -> Result<()> {
    let outcome: Value =
        serde_json::from_str(&reply.outcome_json).unwrap_or(Value::String(reply.outcome_json));
    if json_out {
        println!(
            "{}",
            json!({"request_id": request_id, "log_index": reply.log_index, "outcome": outcome})
        );
    } else {
        println!("ok  request {request_id}  (log index {})", reply.log_index);
        if let Value::Object(m) = outcome {
            for (k, v) in m {
                println!(
                    "  {k:<12} {}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                );
            }
        }
    }
    Ok(())
}

pub fn run_account(cmd: AccountCmd) -> Result<()> {
    let rt = runtime()?;
    match cmd {
        AccountCmd::Open {
            account_id,
            name,
            address,
            branch,
            utility,
            meter_id,
            tariff_id,
            request_id,
            conn,
        } => {
            let request_id = request_id.unwrap_or_else(|| new_request_id("open"));
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
            let reply = rt
                .block_on(conn.client()?.open_account(req))
                .map_err(api_err)?;
            print_write(reply, conn.json, &request_id)
        }
        AccountCmd::Get { account_id, conn } => {
            let a = rt
                .block_on(conn.client()?.get_account(&account_id))
                .map_err(api_err)?;
            if conn.json {
                println!(
                    "{}",
                    json!({"account_id": a.account_id, "name": a.name, "address": a.address, "branch": a.branch,
                           "utility": a.utility, "meter_id": a.meter_id, "tariff_id": a.tariff_id, "status": a.status,
                           "balance": a.balance, "opened_ms": a.opened_ms, "last_seq": a.last_seq})
                );
            } else {
                println!("account  {}  ({}, {})", a.account_id, a.utility, a.status);
                println!("  name     {}", a.name);
                println!("  branch   {}", a.branch);
                println!("  balance  {}", a.balance);
                println!("  last seq {}", a.last_seq);
            }
            Ok(())
        }
    }
}

pub fn run_pay(p: PayArgs) -> Result<()> {
    let rt = runtime()?;
    let request_id = p.request_id.unwrap_or_else(|| new_request_id("pay"));
    let req = pb::PaymentRequest {
        request_id: request_id.clone(),
        account_id: p.account_id,
        amount: p.amount,
        bank_code: p.bank_code,
        bank_ref: p.bank_ref,
    };
    let reply = rt
        .block_on(p.conn.client()?.post_payment(req))
        .map_err(api_err)?;
    print_write(reply, p.conn.json, &request_id)
}
