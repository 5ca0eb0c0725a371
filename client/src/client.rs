//! The billdb Rust client: gRPC (`billdb.v2.Billing`, typed replies) to
//! any node of a cluster.
//!
//! - Any node is an entry point (each forwards to the leader). Nodes name
//!   the leader in every answer (`billdb-leader` metadata) and the client
//!   sends its next requests there, skipping the forwarding hop. On
//!   UNAVAILABLE or a transport error the client moves to the next endpoint
//!   and retries **with the same request_id**, so a retried write takes
//!   effect once.
//! - Every call has a deadline; retries back off and stop at it.
//! - The bearer token travels in the `authorization` metadata.
//!
//! Touches only the network endpoints it is given.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use billdb_api::error::{ApiError, ErrorCode};
use billdb_api::pb2 as pb;
use billdb_api::pb2::billing_client::BillingClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Default bound on one call, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on one attempt (the node itself answers within its request timeout).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START_MS: u64 = 20;
const BACKOFF_MAX_MS: u64 = 500;

#[derive(Clone)]
pub struct Client {
    channels: Arc<Vec<(String, Channel)>>,
    next: Arc<AtomicUsize>,
    auth: Option<MetadataValue<Ascii>>,
    deadline: Duration,
}

/// A fresh request id: time + randomness, unique enough for a client.
pub fn new_request_id(prefix: &str) -> String {
    let mut buf = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map(|_| u64::from_le_bytes(buf))
        .unwrap_or(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{prefix}-{ms}-{random:016x}")
}

/// One client method per billing RPC (`billdb.v2.Billing`, typed replies),
/// each retried like every call (same request, same request_id).
macro_rules! rpcs {
    ($($(#[$doc:meta])* $name:ident($req:ty) -> $reply:ty;)*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self, req: $req) -> Result<$reply, ApiError> {
                self.retry(req, |mut c, r| async move { c.$name(r).await })
                    .await
            }
        )*
    };
}
fn retryable(e: &ApiError) -> bool {
    matches!(e.code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded)
}

impl Client {
    /// `endpoints`: client gRPC addresses (`host:port` or `http://host:port`).
    pub fn new(endpoints: &[String], token: Option<&str>) -> Result<Client, ApiError> {
        Self::with_tls(endpoints, token, None)
    }

    /// As [`Client::new`], over TLS trusting only the CA of `tls` (and
    /// presenting its client certificate) when given: an endpoint without
    /// a scheme is then `https://`.
    pub fn with_tls(
        endpoints: &[String],
        token: Option<&str>,
        tls: Option<&crate::tls::ClientTls>,
    ) -> Result<Client, ApiError> {
        if endpoints.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidArgument, "no endpoints"));
        }
        let mut channels = Vec::new();
        for e in endpoints {
            let url = crate::admin::normalize_endpoint_for(e, tls.is_some());
            let bad = |err: tonic::transport::Error| {
                ApiError::new(ErrorCode::InvalidArgument, format!("{e}: {err}"))
            };
            let mut endpoint = Endpoint::from_shared(url.clone()).map_err(bad)?;
            if let Some(tls) = tls.filter(|_| url.starts_with("https://")) {
                endpoint = endpoint.tls_config(tls.tonic_config()).map_err(bad)?;
            }
            let ch = endpoint
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true)
                .timeout(ATTEMPT_TIMEOUT)
                .connect_lazy();
            channels.push((url, ch));
        }
        let auth =
            match token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    ApiError::new(ErrorCode::InvalidArgument, "token is not ASCII")
                })?),
                None => None,
            };
        Ok(Client {
            channels: Arc::new(channels),
            next: Arc::new(AtomicUsize::new(0)),
            auth,
            deadline: DEFAULT_DEADLINE,
        })
    }

    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    /// Prefer the endpoint the node named as leader (if it is one of ours):
    /// the next request goes there and skips the forwarding hop.
    fn follow_leader(&self, md: &tonic::metadata::MetadataMap) {
        let Some(addr) = md
            .get(billdb_api::LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .map(|(_, addr)| addr)
        else {
            return;
        };
        if let Some(i) = self.channels.iter().position(|(url, _)| {
            let bare = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            bare == Some(addr)
        }) {
            self.next.store(i, Ordering::Relaxed);
        }
    }

    /// Which endpoint the next request goes to first (index into the list
    /// given to [`Client::new`]).
    pub fn preferred_endpoint(&self) -> usize {
        self.next.load(Ordering::Relaxed) % self.channels.len()
    }

    /// Run `call` against endpoints in turn until it succeeds, fails with a
    /// non-retryable error, or the deadline passes.
    async fn retry<T, R, F, Fut>(&self, msg: T, mut call: F) -> Result<R, ApiError>
    where
        T: Clone,
        F: FnMut(BillingClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.deadline;
        let mut backoff_ms = BACKOFF_START_MS;
        loop {
            let i = self.next.load(Ordering::Relaxed) % self.channels.len();
            let (url, ch) = &self.channels[i];
            // The channel's own timeout does not cover the TLS and HTTP/2
            // handshakes: a node that accepts connections but never answers
            // (a paused process, a host whose kernel still runs) would hold
            // the call forever. Each attempt is bounded here, and the next
            // node tried.
            let bound = ATTEMPT_TIMEOUT
                .min(deadline.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1));
            let result = tokio::time::timeout(
                bound,
                call(BillingClient::new(ch.clone()), self.request(msg.clone())),
            )
            .await;
            let err = match result {
                Ok(Ok(resp)) => {
                    self.follow_leader(resp.metadata());
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => {
                    self.follow_leader(status.metadata());
                    ApiError::from_status(&status)
                }
                Err(_) => ApiError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("{url}: no answer within {} ms", bound.as_millis()),
                ),
            };
            if !retryable(&err) || Instant::now() + Duration::from_millis(backoff_ms) >= deadline {
                return Err(err);
            }
            // Try the next node; the same request (and request_id) again.
            self.next.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
        }
    }

    /// Bulk import: `rows` is the JSON body of `POST /v1/import`.
    pub async fn import(&self, rows: &serde_json::Value) -> Result<pb::ImportReply, ApiError> {
        let req = pb::ImportRequest {
            rows_json: rows.to_string(),
        };
        self.retry(req, |mut c, r| async move { c.import(r).await })
            .await
    }

    /// An account as of now (linearizable).
    pub async fn get_account(&self, account_id: &str) -> Result<pb::Account, ApiError> {
        let req = pb::GetAccountRequest {
            account_id: account_id.to_string(),
        };
        self.retry(req, |mut c, r| async move { c.get_account(r).await })
            .await
    }

    rpcs! {
        /// Open an account (its id chosen by the caller).
        open_account(pb::OpenAccountRequest) -> pb::OpenAccountReply;
        /// A bank's payment, once per (bank_code, bank_ref).
        post_payment(pb::PaymentRequest) -> pb::PaymentReply;
        /// `PATCH /v1/accounts/{id}`: name, address, phone, area.
        update_contact(pb::UpdateContactRequest) -> pb::AccountReply;
        /// Close (freeze) an account: kept in every query, refuses writes.
        close_account(pb::LifecycleRequest) -> pb::AccountReply;
        suspend_account(pb::LifecycleRequest) -> pb::AccountReply;
        resume_account(pb::LifecycleRequest) -> pb::AccountReply;
        /// Issue the account's card (one active card per account).
        issue_card(pb::IssueCardRequest) -> pb::CardIssuedReply;
        /// Replace a card; the old one is refused from then on.
        replace_card(pb::ReplaceCardRequest) -> pb::CardReplacedReply;
        /// Card check: verdict, account, expected seq, recent records.
        verify_card(pb::VerifyCardRequest) -> pb::CardCheck;
        /// A purchase by card or account, by money or units.
        purchase(pb::PurchaseRequest) -> pb::RecordReply;
        /// Re-issue the latest unloaded purchase's credit (once, no money).
        reissue(pb::RecordRequest) -> pb::RecordReply;
        /// The card reader confirmed the credit was loaded.
        confirm_loaded(pb::RecordRequest) -> pb::CreditLoadedReply;
        /// Reverse a record (once).
        reverse(pb::RecordRequest) -> pb::RecordReply;
        adjust(pb::AdjustRequest) -> pb::RecordReply;
        post_charge(pb::ChargeRequest) -> pb::RecordReply;
        /// Reprint an invoice: same number, marked and counted.
        print_invoice(pb::PrintInvoiceRequest) -> pb::InvoicePrintedReply;
        set_segment_boundary(pb::SetBoundaryRequest) -> pb::BoundarySetReply;
        open_heating_season(pb::OpenSeasonRequest) -> pb::SeasonOpenedReply;
        define_tariff(pb::DefineTariffRequest) -> pb::TariffDefinedReply;
        /// A page of an account's records (segment, range, order, page token).
        list_records(pb::ListRecordsRequest) -> pb::RecordsPage;
        /// A customer statement: opening balance, the period's records, closing balance.
        statement(pb::StatementRequest) -> pb::Statement;
        /// The stored outcome of a request id.
        get_request(pb::GetRequestRequest) -> pb::RequestOutcome;
        monthly_report(pb::MonthlyReportRequest) -> pb::MonthlyReport;
        bank_daily_report(pb::BankDailyReportRequest) -> pb::Report;
        /// Accounts and Σ balance per branch|utility|tariff (every account).
        balance_report(pb::BalanceReportRequest) -> pb::BalanceReport;
        /// One run of a season's bill (ops): call again with `after` =
        /// `next_after` until `done`.
        bill_season(pb::BillSeasonRequest) -> pb::SeasonBillRun;
        /// The season bill report.
        season_bill(pb::SeasonBillReportRequest) -> pb::SeasonBillReport;
        /// A page of the season bill's per-account lines.
        season_bill_lines(pb::SeasonBillLinesRequest) -> pb::SeasonBillLines;
        /// A page of one bank's payments of one day.
        bank_payments(pb::BankPaymentsRequest) -> pb::BankDayPayments;
        /// Reconcile a bank's statement file against billdb, and store the result.
        reconcile(pb::ReconcileRequest) -> pb::Reconciliation;
        list_reconciliations(pb::ListReconciliationsRequest) -> pb::Reconciliations;
        get_reconciliation(pb::GetReconciliationRequest) -> pb::Reconciliation;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique() {
        let a = new_request_id("pay");
        let b = new_request_id("pay");
        assert!(a.starts_with("pay-"));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_node_that_accepts_but_never_answers_does_not_hold_the_call() {
        // Like a paused node: the kernel completes the TCP handshake, then
        // nothing. The call must give up on it and try the next node (here
        // nothing listens), within the deadline.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let c = Client::new(&[addr, "127.0.0.1:1".to_string()], Some("t"))
            .unwrap()
            .with_deadline(Duration::from_millis(1500));
        let started = Instant::now();
        let e = c.get_account("A1").await.unwrap_err();
        assert!(
            matches!(e.code, ErrorCode::Unavailable | ErrorCode::DeadlineExceeded),
            "{e:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "held for {:?}",
            started.elapsed()
        );
        drop(silent);
    }

    #[tokio::test]
    async fn unreachable_cluster_gives_unavailable_within_the_deadline() {
        // Nothing listens on these ports: every attempt fails fast.
        let c = Client::new(
            &["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()],
            Some("t"),
        )
        .unwrap()
        .with_deadline(Duration::from_millis(800));
        let started = Instant::now();
        let e = c.get_account("A1").await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
