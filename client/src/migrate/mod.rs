//! `billdb import`: a legacy system's CSV files (accounts, cards, records,
//! and a mapping file of legacy codes) into billdb, in resumable batches
//! of the replicated bulk import (`Import`, ≤ 1,000 items each), then a
//! reconciliation report. Every row is imported or written to the rejects
//! file with its line and reason; nothing is dropped silently.
//!
//! The flow: the mapping, accounts and cards files are read whole and
//! checked; accounts (with their active card) go first, then records
//! stream from `records.csv` in file order, batched at account boundaries,
//! `loaders` batches in flight but never two holding one account. Each
//! batch's request id depends only on the input and its place
//! (`mig-<fingerprint>-a7`, `-r12`), and `progress.jsonl` in the output
//! directory lists the batches acknowledged: a rerun of the same command
//! skips them, and resends the ones in flight at the crash under the same
//! id (the cluster answers those from their stored outcome). A row the
//! cluster refuses (an account or bank reference it already holds) is
//! withdrawn to the rejects file and its batch sent again without it.
//!
//! Touches: the input files (read), the output directory (rejects.csv,
//! progress.jsonl, reconciliation.json, differences.csv), and the cluster
//! through the gRPC [`Client`] (imports, balance and monthly reports).

pub mod legacy;
pub mod reconcile;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use billdb_api::error::ErrorCode;
use billdb_api::pb2 as pb;
use billdb_node::domain::calendar::month_str;
use billdb_node::domain::{IMPORT_ITEMS_MAX, ImportAccount, ImportRecord};

use crate::client::Client;
use legacy::{LegacyCard, Mapping, Row, Zone};
use reconcile::{AccountTally, BranchTotals};

/// Most batches in flight at once.
pub const LOADERS_MAX: usize = 16;
/// Default bound on one batch's JSON body (the node's default import
/// limit is 1 MiB).
pub const BATCH_BYTES_DEFAULT: usize = 900_000;
/// Most rejected rows written before the import stops: a file that is
/// mostly wrong is the wrong file.
pub const REJECTS_MAX: u64 = 1_000_000;
/// Bytes of the records file's head and tail in its fingerprint.
const FINGERPRINT_SAMPLE_BYTES: u64 = 1 << 20;
/// Most months the billdb-side totals read (a report per month).
const MONTHS_MAX: usize = 1200;

pub struct Opts {
    pub accounts: PathBuf,
    pub cards: Option<PathBuf>,
    pub records: Option<PathBuf>,
    pub mapping: PathBuf,
    /// rejects.csv, progress.jsonl, reconciliation.json, differences.csv.
    pub out: PathBuf,
    pub zone: Zone,
    pub loaders: usize,
    pub batch_items: usize,
    pub batch_bytes: usize,
    /// Draw progress (a terminal); otherwise a line every few seconds.
    pub progress_bar: bool,
}

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Accounts,
    Cards,
    Records,
}

impl Source {
    fn file(self) -> &'static str {
        match self {
            Source::Accounts => "accounts.csv",
            Source::Cards => "cards.csv",
            Source::Records => "records.csv",
        }
    }
}

/// One item of a batch, with what the reconciliation needs if the cluster
/// refuses it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct ItemMeta {
    line: u64,
    account_id: String,
    /// Records only: kind, amount and branch.
    kind: String,
    amount: Decimal,
    branch: String,
}

#[derive(Debug)]
struct Batch {
    /// `a7` (accounts) or `r12` (records).
    name: String,
    accounts: Vec<ImportAccount>,
    records: Vec<ImportRecord>,
    meta: Vec<ItemMeta>,
    /// Distinct accounts it touches.
    touches: Vec<String>,
}

enum Msg {
    Batch(Batch),
    /// Every batch before it is acknowledged before any after it is sent;
    /// answers the account ids the cluster refused so far.
    Barrier(oneshot::Sender<HashSet<String>>),
}

/// A withdrawn item: refused by the cluster, written to the rejects file.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Withdrawn {
    source: String,
    meta: ItemMeta,
    code: String,
    message: String,
}

/// A line of progress.jsonl.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Done {
    batch: String,
    request_id: String,
    /// sha256 of the batch's items (without request id), 16 hex.
    hash: String,
    items: usize,
    withdrawn: Vec<Withdrawn>,
}

/// What `run` leaves in reconciliation.json (and prints).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub fingerprint: String,
    pub rows: BTreeMap<&'static str, RowCounts>,
    /// Cards the legacy system replaced or revoked: billdb keeps the
    /// account's active card and its generation.
    pub cards_not_active: u64,
    pub batches: u64,
    pub batches_skipped_as_done: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub rejects_file: String,
    pub differences: Vec<reconcile::Difference>,
    #[serde(with = "rust_decimal::serde::str")]
    pub differences_total: Decimal,
    pub differences_by_cause: BTreeMap<&'static str, CauseTotal>,
    /// Totals of the rows imported, against billdb's after the import.
    pub totals: Option<reconcile::TotalsCompare>,
    /// Totals of the rejected rows that could be read (per branch).
    pub rejected_totals: BTreeMap<String, BranchTotals>,
}

#[derive(Debug, Default, Serialize)]
pub struct RowCounts {
    pub read: u64,
    pub imported: u64,
    pub rejected: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct CauseTotal {
    pub accounts: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// The import's state shared by the reader and the report.
#[derive(Default)]
struct State {
    tallies: HashMap<String, AccountTally>,
    legacy_totals: BTreeMap<String, BranchTotals>,
    rejected_totals: BTreeMap<String, BranchTotals>,
    rows: BTreeMap<&'static str, RowCounts>,
    cards_not_active: u64,
    months: std::collections::BTreeSet<String>,
    rejects: u64,
}

/// The rejects file: `file,line,account_id,reason`.
struct Rejects {
    w: csv::Writer<BufWriter<File>>,
}

impl Rejects {
    fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = csv::Writer::from_writer(BufWriter::new(f));
        w.write_record(["file", "line", "account_id", "reason"])?;
        Ok(Rejects { w })
    }
    fn add(
        &mut self,
        st: &mut State,
        src: Source,
        line: u64,
        account_id: &str,
        reason: &str,
    ) -> Result<()> {
        st.rejects += 1;
        st.rows.entry(src.file()).or_default().rejected += 1;
        if st.rejects > REJECTS_MAX {
            bail!("more than {REJECTS_MAX} rejected rows: stopping (is this the right file?)");
        }
        self.w
            .write_record([src.file(), &line.to_string(), account_id, reason])?;
        Ok(())
    }
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// A 128-bit key of a string for duplicate detection over tens of
/// millions of rows (two independently seeded 64-bit hashes).
fn key128(parts: &[&str]) -> u128 {
    let mut a = DefaultHasher::new();
    let mut b = DefaultHasher::new();
    0xA5u8.hash(&mut b);
    for p in parts {
        p.hash(&mut a);
        p.hash(&mut b);
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// The input's fingerprint: the mapping, accounts and cards files whole,
/// the records file's size, head and tail, and the batch settings.
fn fingerprint(o: &Opts) -> Result<String> {
    let mut h = Sha256::new();
    for p in [Some(&o.mapping), Some(&o.accounts), o.cards.as_ref()]
        .into_iter()
        .flatten()
    {
        let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        std::io::copy(&mut f, &mut h)?;
        h.update(b"\x00");
    }
    if let Some(p) = &o.records {
        let mut f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
        let size = f.metadata()?.len();
        h.update(size.to_be_bytes());
        let mut buf = vec![0u8; FINGERPRINT_SAMPLE_BYTES.min(size) as usize];
        f.read_exact(&mut buf)?;
        h.update(&buf);
        f.seek(SeekFrom::Start(size - buf.len() as u64))?;
        f.read_exact(&mut buf)?;
        h.update(&buf);
    }
    h.update(format!("{}/{}/{}", o.batch_items, o.batch_bytes, o.zone.offset_s).as_bytes());
    Ok(hex::encode(&h.finalize()[..6]))
}

fn csv_reader(path: &Path) -> Result<csv::Reader<BufReader<File>>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, f)))
}

fn header(r: &mut csv::Reader<BufReader<File>>, file: &str, cols: &[&str]) -> Result<()> {
    let h = r
        .headers()
        .with_context(|| format!("{file}: reading the header"))?;
    let h: Vec<&str> = h.iter().collect();
    legacy::check_header(file, &h, cols).map_err(|e| anyhow!(e))
}

fn read_mapping(path: &Path) -> Result<Mapping> {
    let mut r = csv_reader(path)?;
    header(&mut r, "mapping", &legacy::MAPPING_COLUMNS)?;
    let mut m = Mapping::default();
    for rec in r.records() {
        let rec = rec.with_context(|| format!("{}", path.display()))?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != 3 {
            bail!("{} line {line}: category,legacy,billdb", path.display());
        }
        m.add(&rec[0], &rec[1], &rec[2])
            .map_err(|e| anyhow!("{} line {line}: {e}", path.display()))?;
    }
    Ok(m)
}

/// Builds batches of at most `items` items and `bytes` bytes.
struct Batcher {
    items: usize,
    bytes: usize,
    next: u64,
    prefix: char,
    cur: Batch,
    cur_bytes: usize,
}

fn empty_batch() -> Batch {
    Batch {
        name: String::new(),
        accounts: Vec::new(),
        records: Vec::new(),
        meta: Vec::new(),
        touches: Vec::new(),
    }
}

/// Body bytes an item adds (its JSON and a comma).
fn item_bytes<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len() + 1)
}

impl Batcher {
    fn take(&mut self) -> Option<Batch> {
        if self.cur.meta.is_empty() {
            return None;
        }
        let mut b = std::mem::replace(&mut self.cur, empty_batch());
        self.next += 1;
        b.name = format!("{}{}", self.prefix, self.next);
        b.touches.sort();
        b.touches.dedup();
        self.cur_bytes = 0;
        Some(b)
    }

    fn fits(&self, n: usize, bytes: usize) -> bool {
        self.cur.meta.len() + n <= self.items && self.cur_bytes + bytes + 200 <= self.bytes
    }
}

/// One account's consecutive records, held until the account changes so a
/// batch ends at an account boundary whenever the account fits.
#[derive(Default)]
struct Run {
    account_id: String,
    records: Vec<(ImportRecord, ItemMeta, usize)>,
}

/// The reader: files → checked rows → batches (blocking I/O; runs on a
/// blocking thread). Returns the state for the report.
struct Reader {
    o: Arc<Opts>,
    map: Mapping,
    st: State,
    rejects: Rejects,
    /// Dropped when the files are read, which ends the sender's loop.
    tx: Option<mpsc::Sender<Msg>>,
    progress: Progress,
}

impl Reader {
    fn send(&self, m: Msg) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or_else(|| anyhow!("the files are read"))?
            .blocking_send(m)
            .map_err(|_| anyhow!("the sender stopped"))
    }

    /// One row of a legacy file, counted as read: the row and its line,
    /// or `None` when it is not readable CSV (rejected here). An I/O error
    /// stops the import.
    fn readable(
        &mut self,
        src: Source,
        rec: csv::Result<csv::StringRecord>,
    ) -> Result<Option<(csv::StringRecord, u64)>> {
        self.st.rows.entry(src.file()).or_default().read += 1;
        match rec {
            Ok(rec) => {
                let line = rec.position().map_or(0, |p| p.line());
                Ok(Some((rec, line)))
            }
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                Err(anyhow!("reading {}: {e}", src.file()))
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                let why = format!("unreadable row: {e}");
                self.rejects.add(&mut self.st, src, line, "", &why)?;
                Ok(None)
            }
        }
    }

    fn accounts(&mut self, b: &mut Batcher) -> Result<()> {
        let o = self.o.clone();
        // Cards first: the active card joins its account's import item.
        let mut active: HashMap<String, (LegacyCard, u64)> = HashMap::new();
        let mut card_lines: Vec<(LegacyCard, u64)> = Vec::new();
        if let Some(p) = &o.cards {
            let mut r = csv_reader(p)?;
            header(&mut r, "cards.csv", &legacy::CARD_COLUMNS)?;
            let mut seen: HashMap<String, u64> = HashMap::new();
            for rec in r.records() {
                let Some((rec, line)) = self.readable(Source::Cards, rec)? else {
                    continue;
                };
                let parsed = Row::new(rec.iter().collect(), &legacy::CARD_COLUMNS)
                    .and_then(|row| legacy::card(&row));
                let c = match parsed {
                    Ok(c) => c,
                    Err(e) => {
                        let acct = rec.get(1).unwrap_or("").trim().to_string();
                        self.rejects
                            .add(&mut self.st, Source::Cards, line, &acct, &e)?;
                        continue;
                    }
                };
                if let Some(first) = seen.get(&c.card_no) {
                    let why = format!("card_no {} already at cards.csv line {first}", c.card_no);
                    self.rejects
                        .add(&mut self.st, Source::Cards, line, &c.account_id, &why)?;
                    continue;
                }
                seen.insert(c.card_no.clone(), line);
                card_lines.push((c, line));
            }
            for (c, line) in card_lines {
                if c.status != "active" {
                    // Counted apart (`cards_not_active`), not imported.
                    self.st.cards_not_active += 1;
                    continue;
                }
                if let Some((other, other_line)) = active.get(&c.account_id) {
                    let why = format!(
                        "account {} already has the active card {} (cards.csv line {other_line}): one meter, one card",
                        c.account_id, other.card_no
                    );
                    self.rejects
                        .add(&mut self.st, Source::Cards, line, &c.account_id, &why)?;
                    continue;
                }
                active.insert(c.account_id.clone(), (c, line));
            }
        }
        let mut r = csv_reader(&o.accounts)?;
        header(&mut r, "accounts.csv", &legacy::ACCOUNT_COLUMNS)?;
        let mut seen: HashMap<String, u64> = HashMap::new();
        for rec in r.records() {
            let Some((rec, line)) = self.readable(Source::Accounts, rec)? else {
                continue;
            };
            let parsed = Row::new(rec.iter().collect(), &legacy::ACCOUNT_COLUMNS)
                .and_then(|row| legacy::account(&row, &self.map, o.zone));
            let mut a = match parsed {
                Ok(a) => a,
                Err(e) => {
                    let acct = rec.get(0).unwrap_or("").trim().to_string();
                    self.rejects
                        .add(&mut self.st, Source::Accounts, line, &acct, &e)?;
                    continue;
                }
            };
            if let Some(first) = seen.get(&a.account_id) {
                let why = format!(
                    "account_id {} already at accounts.csv line {first}",
                    a.account_id
                );
                self.rejects
                    .add(&mut self.st, Source::Accounts, line, &a.account_id, &why)?;
                continue;
            }
            seen.insert(a.account_id.clone(), line);
            if let Some((c, _)) = active.remove(&a.account_id) {
                a.card_no = Some(c.card_no);
                a.card_generation = c.generation;
                self.st.rows.entry("cards.csv").or_default().imported += 1;
            }
            self.st.rows.entry("accounts.csv").or_default().imported += 1;
            self.st
                .legacy_totals
                .entry(a.branch.clone())
                .or_default()
                .add_account(a.balance);
            self.st.tallies.insert(
                a.account_id.clone(),
                AccountTally {
                    branch: a.branch.clone(),
                    area: a.area,
                    legacy_balance: a.balance,
                    tariff: a.tariff_id.clone(),
                    ..Default::default()
                },
            );
            let meta = ItemMeta {
                line,
                account_id: a.account_id.clone(),
                kind: String::new(),
                amount: a.balance,
                branch: a.branch.clone(),
            };
            let bytes = item_bytes(&a);
            if !b.fits(1, bytes)
                && let Some(batch) = b.take()
            {
                self.send(Msg::Batch(batch))?;
            }
            b.cur.touches.push(a.account_id.clone());
            b.cur.accounts.push(a);
            b.cur.meta.push(meta);
            b.cur_bytes += bytes;
        }
        // Active cards of accounts that are not imported.
        let mut left: Vec<(LegacyCard, u64)> = active.into_values().collect();
        left.sort_by_key(|(_, l)| *l);
        for (c, line) in left {
            let why = match seen.get(&c.account_id) {
                Some(_) => format!("account {} was rejected (see accounts.csv)", c.account_id),
                None => format!("account {} is not in accounts.csv", c.account_id),
            };
            self.rejects
                .add(&mut self.st, Source::Cards, line, &c.account_id, &why)?;
        }
        if let Some(batch) = b.take() {
            self.send(Msg::Batch(batch))?;
        }
        Ok(())
    }

    /// Records stream: checks, tallies, batches at account boundaries.
    fn records(&mut self, b: &mut Batcher, refused_accounts: &HashSet<String>) -> Result<()> {
        let o = self.o.clone();
        let Some(path) = &o.records else {
            return Ok(());
        };
        let total_bytes = std::fs::metadata(path)?.len();
        let mut r = csv_reader(path)?;
        header(&mut r, "records.csv", &legacy::RECORD_COLUMNS)?;
        let mut invoices: HashMap<u128, u64> = HashMap::new();
        let mut bank_refs: HashMap<u128, u64> = HashMap::new();
        // Per account: the last imported record's time and line.
        let mut last: HashMap<String, (i64, u64)> = HashMap::new();
        let mut run = Run::default();
        let mut rec = csv::StringRecord::new();
        loop {
            let line = r.position().line() + u64::from(r.position().line() == 0);
            match r.read_record(&mut rec) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    self.st.rows.entry("records.csv").or_default().read += 1;
                    let line = e.position().map_or(line, |p| p.line());
                    if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                        return Err(anyhow!("reading {}: {e}", path.display()));
                    }
                    self.rejects.add(
                        &mut self.st,
                        Source::Records,
                        line,
                        "",
                        &format!("unreadable row: {e}"),
                    )?;
                    continue;
                }
            }
            let line = rec.position().map_or(line, |p| p.line());
            self.st.rows.entry("records.csv").or_default().read += 1;
            self.progress
                .records(r.position().byte(), total_bytes, &self.st);
            let account_id = rec.get(0).unwrap_or("").trim().to_string();
            // An account the cluster refused (it holds one with that id)
            // takes none of these records, whatever this file says.
            let reason = match self.st.tallies.get(&account_id) {
                _ if refused_accounts.contains(&account_id) => Some(format!(
                    "account {account_id} was refused by billdb (see its accounts.csv line)"
                )),
                None if account_id.is_empty() => Some("missing field: account_id is empty".into()),
                None => Some(format!(
                    "account {account_id} is not imported (not in accounts.csv, or rejected there)"
                )),
                Some(_) => None,
            };
            if let Some(why) = reason {
                self.rejects
                    .add(&mut self.st, Source::Records, line, &account_id, &why)?;
                continue;
            }
            let row = Row::new(rec.iter().collect(), &legacy::RECORD_COLUMNS);
            let parsed = row.and_then(|row| {
                let t = self.st.tallies.get(&account_id);
                let of = legacy::RecordAccount {
                    account_id: &account_id,
                    branch: t.map_or("", |t| t.branch.as_str()),
                    tariff_id: t.map_or("", |t| t.tariff.as_str()),
                };
                legacy::record(&row, &self.map, o.zone, &of)
            });
            let ir = match parsed {
                Ok(ir) => ir,
                Err(e) => {
                    self.reject_record(&rec, line, &account_id, &e)?;
                    continue;
                }
            };
            // Checks across rows: time order, invoice and bank reference
            // uniqueness (the first occurrence is kept).
            if let Some((ts, prev)) = last.get(&account_id)
                && ir.ts_ms < *ts
            {
                let why = format!(
                    "out of time order: earlier than this account's record at records.csv line {prev} (export records ordered by time, or by account then time)"
                );
                self.reject_record(&rec, line, &account_id, &why)?;
                continue;
            }
            if !ir.invoice_no.is_empty() {
                let k = key128(&[&ir.invoice_no]);
                if let Some(first) = invoices.get(&k) {
                    let why = format!(
                        "invoice_no {} already used at records.csv line {first}",
                        ir.invoice_no
                    );
                    self.reject_record(&rec, line, &account_id, &why)?;
                    continue;
                }
                invoices.insert(k, line);
            }
            if !ir.bank_code.is_empty() {
                let k = key128(&[&ir.bank_code, &ir.bank_ref]);
                if let Some(first) = bank_refs.get(&k) {
                    let why = format!(
                        "bank {} reference {} already at records.csv line {first}",
                        ir.bank_code, ir.bank_ref
                    );
                    self.reject_record(&rec, line, &account_id, &why)?;
                    continue;
                }
                bank_refs.insert(k, line);
            }
            last.insert(account_id.clone(), (ir.ts_ms, line));
            self.count_record(&ir, line);
            let meta = ItemMeta {
                line,
                account_id: account_id.clone(),
                kind: ir.kind.clone(),
                amount: ir.amount,
                branch: ir.branch.clone(),
            };
            if run.account_id != account_id {
                self.flush_run(b, &mut run)?;
                run.account_id = account_id;
            }
            let bytes = item_bytes(&ir);
            run.records.push((ir, meta, bytes));
        }
        self.flush_run(b, &mut run)?;
        if let Some(batch) = b.take() {
            self.send(Msg::Batch(batch))?;
        }
        Ok(())
    }

    fn count_record(&mut self, ir: &ImportRecord, line: u64) {
        self.st.rows.entry("records.csv").or_default().imported += 1;
        self.st.months.insert(month_str(ir.ts_ms));
        self.st
            .legacy_totals
            .entry(ir.branch.clone())
            .or_default()
            .add_record(&ir.kind, ir.amount);
        if let Some(t) = self.st.tallies.get_mut(&ir.account_id) {
            t.implied += legacy::balance_effect(&ir.kind, ir.amount);
            if ir.kind == "charge" && !ir.units.is_zero() {
                t.last_area_charge = Some((ir.amount, ir.units, line));
            }
        }
    }

    /// A rejected record of an imported account: the rejects file, and its
    /// balance effect when its kind and amount can be read.
    fn reject_record(
        &mut self,
        rec: &csv::StringRecord,
        line: u64,
        account_id: &str,
        why: &str,
    ) -> Result<()> {
        self.rejects
            .add(&mut self.st, Source::Records, line, account_id, why)?;
        let kind = rec
            .get(1)
            .map(str::trim)
            .and_then(|k| self.map.map("kind", k).ok());
        let amount = rec
            .get(2)
            .and_then(|a| legacy::parse_money(a, "amount", billdb_api::money::AMOUNT_MAX).ok());
        if let (Some(kind), Some(amount), Some(t)) =
            (kind, amount, self.st.tallies.get_mut(account_id))
        {
            t.reject(legacy::balance_effect(&kind, amount), line);
            let branch = t.branch.clone();
            self.st
                .rejected_totals
                .entry(branch)
                .or_default()
                .add_record(&kind, amount);
        }
        Ok(())
    }

    fn flush_run(&mut self, b: &mut Batcher, run: &mut Run) -> Result<()> {
        let records = std::mem::take(&mut run.records);
        if records.is_empty() {
            return Ok(());
        }
        let run_bytes: usize = records.iter().map(|(_, _, n)| n).sum();
        if !b.fits(records.len(), run_bytes)
            && let Some(batch) = b.take()
        {
            self.send(Msg::Batch(batch))?;
        }
        for (ir, meta, bytes) in records {
            if !b.fits(1, bytes)
                && let Some(batch) = b.take()
            {
                self.send(Msg::Batch(batch))?;
            }
            b.cur.touches.push(ir.account_id.clone());
            b.cur.records.push(ir);
            b.cur.meta.push(meta);
            b.cur_bytes += bytes;
        }
        Ok(())
    }
}

/// Progress on stderr: a bar on a terminal, else a line every 5 s.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(show_bar: bool) -> Self {
        let bar = show_bar.then(|| {
            let pb = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ETA {eta}",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb
        });
        Progress {
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn records(&mut self, pos: u64, total: u64, st: &State) {
        let r = st.rows.get("records.csv");
        let (read, ok) = r.map_or((0, 0), |r| (r.read, r.imported));
        if read % 4096 != 0 {
            return;
        }
        let rate = read as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let msg = format!(
            "records: {read} read, {ok} queued, {} rejected ({rate:.0} rows/s)",
            st.rejects
        );
        if let Some(pb) = &self.bar {
            pb.set_length(total);
            pb.set_position(pos);
            pb.set_message(msg);
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!(
                "import: {msg}, {:.1} % of records.csv",
                100.0 * pos as f64 / total.max(1) as f64
            );
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

/// The progress log: batches acknowledged, with what was withdrawn.
struct Log {
    done: HashMap<String, Done>,
    w: BufWriter<File>,
}

impl Log {
    fn open(path: &Path, fingerprint: &str) -> Result<Self> {
        let mut done = HashMap::new();
        let mut fresh = true;
        if path.exists() {
            let f = File::open(path)?;
            let mut lines = BufReader::new(f).lines();
            if let Some(first) = lines.next() {
                let first: Value = serde_json::from_str(&first?).unwrap_or(Value::Null);
                if first["fingerprint"] != fingerprint {
                    bail!(
                        "{} holds the progress of another input (fingerprint {}, this input {fingerprint}): give another --out",
                        path.display(),
                        first["fingerprint"]
                    );
                }
                fresh = false;
            }
            for l in lines {
                let l = l?;
                // A line cut by a crash is the last one: its batch is resent.
                if let Ok(d) = serde_json::from_str::<Done>(&l) {
                    done.insert(d.batch.clone(), d);
                }
            }
        }
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        let mut w = BufWriter::new(f);
        if fresh {
            writeln!(w, "{}", json!({"fingerprint": fingerprint}))?;
            w.flush()?;
        }
        Ok(Log { done, w })
    }

    fn add(&mut self, d: &Done) -> Result<()> {
        writeln!(self.w, "{}", serde_json::to_string(d)?)?;
        self.w.flush()?;
        Ok(())
    }
}

fn batch_body(b: &Batch) -> Value {
    json!({"accounts": b.accounts, "records": b.records})
}

/// Refusals that concern one item (withdraw it and go on); any other
/// refusal stops the import.
fn item_refusal(code: ErrorCode) -> bool {
    use ErrorCode::*;
    matches!(
        code,
        AccountExists
            | CardExists
            | DuplicatePayment
            | AccountNotFound
            | AccountClosed
            | InvalidArgument
            | InvalidAmount
            | InvalidUnits
    )
}

/// Sends one batch until it is applied, withdrawing the items the cluster
/// refuses. Returns the withdrawn items.
async fn send_batch(
    c: Client,
    fp: String,
    mut b: Batch,
) -> Result<(Batch, Vec<Withdrawn>, String)> {
    let mut withdrawn = Vec::new();
    loop {
        if b.meta.is_empty() {
            return Ok((b, withdrawn, String::new()));
        }
        let rid = if withdrawn.is_empty() {
            format!("mig-{fp}-{}", b.name)
        } else {
            format!("mig-{fp}-{}-w{}", b.name, withdrawn.len())
        };
        let mut body = batch_body(&b);
        body["request_id"] = json!(rid);
        match c.import(&body).await {
            Ok(_) => return Ok((b, withdrawn, rid)),
            Err(e) if item_refusal(e.code) => {
                let item = e.details["item"].as_str().unwrap_or("");
                let index = e.details["index"].as_u64().map(|i| i as usize);
                let (source, i) = match (item, index) {
                    ("accounts", Some(i)) if i < b.accounts.len() => (Source::Accounts, i),
                    ("records", Some(i)) if i < b.records.len() => {
                        (Source::Records, b.accounts.len() + i)
                    }
                    _ => bail!(
                        "batch {} ({rid}) refused as a whole: {}: {}",
                        b.name,
                        e.code.as_str(),
                        e.message
                    ),
                };
                let meta = b.meta.remove(i);
                match source {
                    Source::Accounts => {
                        b.accounts.remove(i);
                    }
                    _ => {
                        b.records.remove(i - b.accounts.len());
                    }
                }
                withdrawn.push(Withdrawn {
                    source: source.file().to_string(),
                    meta,
                    code: e.code.as_str().to_string(),
                    message: e.message.clone(),
                });
            }
            Err(e) => bail!(
                "batch {} ({rid}): {}: {} — nothing after it is lost: run the same command again to resume",
                b.name,
                e.code.as_str(),
                e.message
            ),
        }
    }
}

/// Applies a withdrawn item to the tallies (it was counted as imported).
fn withdraw(st: &mut State, rejects: &mut Rejects, w: &Withdrawn) -> Result<()> {
    let m = &w.meta;
    let why = format!("refused by billdb: {}: {}", w.code, w.message);
    let src = if w.source == "accounts.csv" {
        Source::Accounts
    } else {
        Source::Records
    };
    rejects.add(st, src, m.line, &m.account_id, &why)?;
    if let Some(r) = st.rows.get_mut(src.file()) {
        r.imported = r.imported.saturating_sub(1);
    }
    match src {
        Source::Accounts => {
            if let Some(t) = st.tallies.remove(&m.account_id) {
                let bt = st.legacy_totals.entry(t.branch.clone()).or_default();
                bt.accounts = bt.accounts.saturating_sub(1);
                bt.balance -= t.legacy_balance;
            }
        }
        _ => {
            st.legacy_totals
                .entry(m.branch.clone())
                .or_default()
                .remove_record(&m.kind, m.amount);
            st.rejected_totals
                .entry(m.branch.clone())
                .or_default()
                .add_record(&m.kind, m.amount);
            if let Some(t) = st.tallies.get_mut(&m.account_id) {
                let effect = legacy::balance_effect(&m.kind, m.amount);
                t.implied -= effect;
                t.reject(effect, m.line);
            }
        }
    }
    Ok(())
}

/// Runs the import; returns the summary (also written to
/// `out/reconciliation.json`).
pub async fn run(client: Client, o: Opts) -> Result<Summary> {
    if !(1..=LOADERS_MAX).contains(&o.loaders) {
        bail!("--loaders: 1..={LOADERS_MAX}");
    }
    if !(1..=IMPORT_ITEMS_MAX).contains(&o.batch_items) {
        bail!("--batch-items: 1..={IMPORT_ITEMS_MAX}");
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let map = read_mapping(&o.mapping)?;
    let fp = fingerprint(&o)?;
    let started = Instant::now();
    let log = Log::open(&o.out.join("progress.jsonl"), &fp)?;
    let resumed = log.done.len();
    if resumed > 0 {
        eprintln!("import: resuming: {resumed} batches of an earlier run are done");
    }
    let rejects_path = o.out.join("rejects.csv");
    let rejects = Rejects::create(&rejects_path)?;
    let o = Arc::new(o);
    let (tx, rx) = mpsc::channel::<Msg>(o.loaders * 2);
    let mut reader = Reader {
        o: o.clone(),
        map,
        st: State::default(),
        rejects,
        tx: Some(tx),
        progress: Progress::new(o.progress_bar),
    };
    let reading = tokio::task::spawn_blocking(move || -> Result<Reader> {
        let mut b = Batcher {
            items: reader.o.batch_items,
            bytes: reader.o.batch_bytes,
            next: 0,
            prefix: 'a',
            cur: empty_batch(),
            cur_bytes: 0,
        };
        reader.accounts(&mut b)?;
        let (ack, refused) = oneshot::channel();
        reader.send(Msg::Barrier(ack))?;
        let refused = refused
            .blocking_recv()
            .map_err(|_| anyhow!("the sender stopped"))?;
        b.prefix = 'r';
        b.next = 0;
        let read = reader.records(&mut b, &refused);
        reader.tx = None;
        read?;
        Ok(reader)
    });
    let sending = dispatch(client, fp.clone(), o.loaders, rx, log);
    let (reader, sent) = tokio::join!(reading, sending);
    let sent = sent?;
    let mut reader = reader.map_err(|e| anyhow!("the reader stopped: {e}"))??;
    reader.progress.finish();
    for w in &sent.withdrawn {
        withdraw(&mut reader.st, &mut reader.rejects, w)?;
    }
    reader.rejects.w.flush()?;
    let seconds = started.elapsed().as_secs_f64();
    let st = reader.st;
    eprintln!(
        "import: {} batches sent, {} done before; comparing totals with billdb",
        sent.sent, sent.skipped
    );
    let billdb = billdb_totals(&sent.client, &st.months).await?;
    let totals = reconcile::compare(&st.legacy_totals, &billdb);
    let mut differences: Vec<reconcile::Difference> = st
        .tallies
        .iter()
        .filter_map(|(id, t)| reconcile::explain(id, t))
        .collect();
    differences.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    let mut by_cause: BTreeMap<&'static str, CauseTotal> = BTreeMap::new();
    for d in &differences {
        for c in &d.causes {
            let t = by_cause.entry(c.cause).or_default();
            t.accounts += 1;
            t.amount += c.amount;
        }
    }
    let records_imported = st.rows.get("records.csv").map_or(0, |r| r.imported);
    let summary = Summary {
        fingerprint: fp,
        differences_total: differences.iter().map(|d| d.difference).sum(),
        differences,
        differences_by_cause: by_cause,
        rows: st.rows,
        cards_not_active: st.cards_not_active,
        batches: sent.sent + sent.skipped,
        batches_skipped_as_done: sent.skipped,
        seconds,
        records_per_s: records_imported as f64 / seconds.max(0.001),
        rejects_file: rejects_path.display().to_string(),
        totals: Some(totals),
        rejected_totals: st.rejected_totals,
    };
    write_outputs(&o.out, &summary)?;
    Ok(summary)
}

struct Sent {
    client: Client,
    sent: u64,
    skipped: u64,
    withdrawn: Vec<Withdrawn>,
}

/// A batch the cluster applied.
struct Finished {
    batch: Batch,
    withdrawn: Vec<Withdrawn>,
    request_id: String,
    /// Of the batch as first built (what a resumed run compares).
    hash: String,
}

/// The batches in flight and the accounts they hold.
struct Flight {
    tasks: JoinSet<Result<Finished>>,
    busy: HashMap<String, usize>,
}

impl Flight {
    /// Waits for one batch; logs it, frees its accounts, keeps what was
    /// withdrawn. `None` when nothing is in flight.
    async fn one(
        &mut self,
        log: &mut Log,
        out: &mut Sent,
        refused: &mut HashSet<String>,
    ) -> Result<Option<()>> {
        let Some(r) = self.tasks.join_next().await else {
            return Ok(None);
        };
        let f = r.map_err(|e| anyhow!("a sender stopped: {e}"))??;
        log.add(&Done {
            batch: f.batch.name.clone(),
            request_id: f.request_id,
            hash: f.hash,
            items: f.batch.meta.len(),
            withdrawn: f.withdrawn.clone(),
        })?;
        for a in &f.batch.touches {
            if let Some(n) = self.busy.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(a);
                }
            }
        }
        for w in &f.withdrawn {
            if w.source == "accounts.csv" {
                refused.insert(w.meta.account_id.clone());
            }
        }
        out.withdrawn.extend(f.withdrawn);
        Ok(Some(()))
    }
}

/// Sends batches, at most `loaders` at once and never two touching one
/// account; skips those the log lists as done (same content).
async fn dispatch(
    client: Client,
    fp: String,
    loaders: usize,
    mut rx: mpsc::Receiver<Msg>,
    mut log: Log,
) -> Result<Sent> {
    let mut flight = Flight {
        tasks: JoinSet::new(),
        busy: HashMap::new(),
    };
    let mut out = Sent {
        client: client.clone(),
        sent: 0,
        skipped: 0,
        withdrawn: Vec::new(),
    };
    let mut refused: HashSet<String> = HashSet::new();
    while let Some(msg) = rx.recv().await {
        let b = match msg {
            Msg::Barrier(ack) => {
                while flight
                    .one(&mut log, &mut out, &mut refused)
                    .await?
                    .is_some()
                {}
                let _ = ack.send(refused.clone());
                continue;
            }
            Msg::Batch(b) => b,
        };
        let hash = short_hash(&serde_json::to_vec(&batch_body(&b))?);
        if let Some(d) = log.done.get(&b.name) {
            if d.hash != hash {
                bail!(
                    "batch {} differs from the one an earlier run sent: the input changed since; give another --out to import it afresh",
                    b.name
                );
            }
            for w in &d.withdrawn {
                if w.source == "accounts.csv" {
                    refused.insert(w.meta.account_id.clone());
                }
            }
            out.withdrawn.extend(d.withdrawn.iter().cloned());
            out.skipped += 1;
            continue;
        }
        // Wait for room and for no in-flight batch to share an account.
        while flight.tasks.len() >= loaders || b.touches.iter().any(|a| flight.busy.contains_key(a))
        {
            if flight
                .one(&mut log, &mut out, &mut refused)
                .await?
                .is_none()
            {
                break;
            }
        }
        for a in &b.touches {
            *flight.busy.entry(a.clone()).or_default() += 1;
        }
        out.sent += 1;
        let (c, fp) = (client.clone(), fp.clone());
        flight.tasks.spawn(async move {
            let (batch, withdrawn, request_id) = send_batch(c, fp, b).await?;
            Ok(Finished {
                batch,
                withdrawn,
                request_id,
                hash,
            })
        });
    }
    while flight
        .one(&mut log, &mut out, &mut refused)
        .await?
        .is_some()
    {}
    Ok(out)
}

/// billdb's totals per branch: accounts and Σ balance (the balance
/// report), records per kind (the monthly reports of `months`).
async fn billdb_totals(
    c: &Client,
    months: &std::collections::BTreeSet<String>,
) -> Result<BTreeMap<String, BranchTotals>> {
    let dec =
        |s: &str| Decimal::from_str_exact(s).map_err(|e| anyhow!("billdb answered {s:?}: {e}"));
    let mut out: BTreeMap<String, BranchTotals> = BTreeMap::new();
    let bal = c
        .balance_report(pb::BalanceReportRequest {
            group_by: Some("branch".into()),
            consistency: None,
        })
        .await
        .map_err(|e| anyhow!("balance report: {}: {}", e.code.as_str(), e.message))?;
    for l in bal.lines {
        let t = out.entry(l.key.clone()).or_default();
        t.accounts = l.accounts;
        t.balance = dec(&l.balance)?;
    }
    if months.len() > MONTHS_MAX {
        bail!(
            "the records span {} months; at most {MONTHS_MAX}",
            months.len()
        );
    }
    for m in months {
        let rep = c
            .monthly_report(pb::MonthlyReportRequest {
                month: m.clone(),
                group_by: Some("branch".into()),
                consistency: None,
                drills: None,
            })
            .await
            .map_err(|e| anyhow!("monthly report {m}: {}: {}", e.code.as_str(), e.message))?;
        if rep.truncated {
            bail!("the monthly report of {m} is truncated: totals cannot be compared");
        }
        for l in rep.lines {
            let t = out.entry(l.value.clone()).or_default();
            let k = t.records.entry(l.kind.clone()).or_default();
            k.count += l.count;
            k.amount += dec(&l.amount)?;
        }
    }
    Ok(out)
}

fn write_outputs(out: &Path, s: &Summary) -> Result<()> {
    let p = out.join("reconciliation.json");
    std::fs::write(&p, serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("writing {}", p.display()))?;
    let p = out.join("differences.csv");
    let mut w = csv::Writer::from_path(&p).with_context(|| format!("writing {}", p.display()))?;
    w.write_record([
        "account_id",
        "branch",
        "legacy_balance",
        "implied_balance",
        "difference",
        "cause",
        "cause_amount",
        "detail",
    ])?;
    for d in &s.differences {
        for c in &d.causes {
            w.write_record([
                d.account_id.as_str(),
                &d.branch,
                &d.legacy_balance.to_string(),
                &d.implied_balance.to_string(),
                &d.difference.to_string(),
                c.cause,
                &c.amount.to_string(),
                &c.detail,
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}
