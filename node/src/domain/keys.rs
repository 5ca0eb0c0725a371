//! Key layouts and value encoding for the domain families. Integers are
//! big-endian so byte order is numeric order; variable-length ids are
//! length-prefixed so one account's keys never interleave with another's.

use serde::{Serialize, de::DeserializeOwned};

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    bincode::serialize(v).map_err(std::io::Error::other)
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, std::io::Error> {
    bincode::deserialize(raw).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn with_id(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len() + 24);
    // ids are at most 64 bytes (validated at the edge), so one length byte.
    k.push(id.len().min(255) as u8);
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn account(account_id: &str) -> Vec<u8> {
    with_id(account_id)
}

/// `records`: account ‖ ts_ms (BE) ‖ seq (BE): one account's records are
/// contiguous and time-ordered, so the recent segment is a short range scan.
pub fn record(account_id: &str, ts_ms: i64, seq: u64) -> Vec<u8> {
    let mut k = with_id(account_id);
    k.extend_from_slice(&(ts_ms as u64 ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn request(request_id: &str) -> Vec<u8> {
    request_id.as_bytes().to_vec()
}

pub fn bank_ref(bank_code: &str, bank_ref: &str) -> Vec<u8> {
    let mut k = with_id(bank_code);
    k.extend_from_slice(bank_ref.as_bytes());
    k
}
