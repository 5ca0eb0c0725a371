//! Key layouts and value encoding for the domain families. Integers are
//! big-endian so byte order is numeric order (signed ones with the sign bit
//! flipped); variable-length ids are length-prefixed so one account's keys
//! never interleave with another's. Touches nothing: pure byte building.
//!
//! | family         | key                                   | value             |
//! |----------------|---------------------------------------|-------------------|
//! | `accounts`     | len ‖ account_id                      | `Account`         |
//! | `records`      | len ‖ account_id ‖ ts_ms ‖ seq        | `Record`          |
//! | `requests`     | request_id                            | `RequestEntry`    |
//! | `bank_refs`    | len ‖ bank_code ‖ bank_ref            | request_id        |
//! | `cards`        | card_no                               | `Card`            |
//! | `record_index` | len ‖ account_id ‖ seq                | `RecordMeta`      |
//! | `year_units`   | len ‖ account_id ‖ year (i32)         | `Decimal`         |
//! | `tariffs`      | tariff_id                             | `TariffVersions`  |
//! | `invoices`     | invoice_no                            | `Invoice`         |
//! | `reports`      | see [`crate::domain::reports`]        | `ReportRow`       |
//! | `domain_meta`  | `boundary`, `season`, `invoice_seq`   | i64 / `Season` / u64 |
//! |                | `drill/` ‖ scenario ([`super::drills`]) | `DrillEntry`   |

use serde::{Serialize, de::DeserializeOwned};

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    crate::codec::encode(v).map_err(std::io::Error::other)
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, std::io::Error> {
    crate::codec::decode(raw).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

pub fn with_id(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len() + 24);
    // ids are at most 64 bytes (validated at the edge), so one length byte;
    // longer ids are refused by the domain before a key is built.
    k.push(id.len().min(255) as u8);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn push_id(k: &mut Vec<u8>, id: impl AsRef<[u8]>) {
    let id = id.as_ref();
    k.push(id.len().min(255) as u8);
    k.extend_from_slice(id);
}

pub fn ts_bytes(ts_ms: i64) -> [u8; 8] {
    (ts_ms as u64 ^ (1 << 63)).to_be_bytes()
}

pub fn account(account_id: &str) -> Vec<u8> {
    with_id(account_id)
}

/// `records`: account ‖ ts_ms (BE) ‖ seq (BE): one account's records are
/// contiguous and time-ordered, so the recent segment is a short range scan.
pub fn record(account_id: &str, ts_ms: i64, seq: u64) -> Vec<u8> {
    let mut k = with_id(account_id);
    k.extend_from_slice(&ts_bytes(ts_ms));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// First `records` key of `account_id` at or after `ts_ms`.
pub fn record_from(account_id: &str, ts_ms: i64) -> Vec<u8> {
    let mut k = with_id(account_id);
    k.extend_from_slice(&ts_bytes(ts_ms));
    k
}

/// The exclusive end of one account's `records` keys.
pub fn record_prefix_end(account_id: &str) -> Vec<u8> {
    let mut k = with_id(account_id);
    k.extend_from_slice(&[0xff; 17]);
    k
}

pub fn record_index(account_id: &str, seq: u64) -> Vec<u8> {
    let mut k = with_id(account_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn year_units(account_id: &str, year: i32) -> Vec<u8> {
    let mut k = with_id(account_id);
    k.extend_from_slice(&((year as u32) ^ (1 << 31)).to_be_bytes());
    k
}

pub fn card(card_no: &str) -> Vec<u8> {
    card_no.as_bytes().to_vec()
}

pub fn tariff(tariff_id: &str) -> Vec<u8> {
    tariff_id.as_bytes().to_vec()
}

pub fn invoice(invoice_no: &str) -> Vec<u8> {
    invoice_no.as_bytes().to_vec()
}

pub fn request(request_id: &str) -> Vec<u8> {
    request_id.as_bytes().to_vec()
}

pub fn bank_ref(bank_code: &str, bank_ref: &str) -> Vec<u8> {
    let mut k = with_id(bank_code);
    k.extend_from_slice(bank_ref.as_bytes());
    k
}

pub const META_BOUNDARY: &[u8] = b"boundary";
pub const META_SEASON: &[u8] = b"season";
/// The cluster's op level (`levels`).
pub const META_CLUSTER_LEVEL: &[u8] = b"cluster_level";
/// The last invoice number issued (u64).
pub const META_INVOICE_SEQ: &[u8] = b"invoice_seq";
/// The last entry applied from the leader's results: (term, the leader's
/// execution epoch, its sequence) (`store::apply_results`).
pub const META_EXEC_CHAIN: &[u8] = b"exec_chain";

/// The smallest key greater than every key starting with `prefix`
/// (empty: no upper bound).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}
