//! The one binary encoding of everything a node writes or sends to a peer:
//! Raft log entries, the vote, state-machine values, request fingerprints
//! and node-to-node messages. bincode with variable-length integers (a
//! string's length or a small count takes one byte, not eight) and decimals
//! as scale and mantissa (`billdb_api::money::decimal_compact`), so apply
//! neither prints nor parses numbers. Changing anything here changes the
//! data format (`store::DATA_FORMAT`). Touches nothing: pure bytes.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest value encoded or decoded: far above any real one (an import
/// command is at most 1 MiB of JSON, a log entry 1 MiB, a snapshot chunk 1 MiB); a corrupt
/// length prefix cannot make a decode allocate without bound.
pub const VALUE_SIZE_BYTES_MAX: u64 = 256 << 20;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_limit(VALUE_SIZE_BYTES_MAX)
}

pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    options().serialize(v)
}

/// Appends the encoding of `v` to `out` (no intermediate buffer).
pub fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), bincode::Error> {
    options().serialize_into(out, v)
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, bincode::Error> {
    options().deserialize(raw)
}

/// Bytes `v` encodes to.
pub fn size_bytes<T: Serialize + ?Sized>(v: &T) -> Result<u64, bincode::Error> {
    options().serialized_size(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small integers and string lengths take one byte; trailing bytes
    /// and oversized lengths are refused rather than misread.
    #[test]
    fn compact_and_strict() {
        let v = (7u64, "abc".to_string());
        let raw = encode(&v).unwrap();
        assert_eq!(raw.len(), 1 + 1 + 3);
        assert_eq!(size_bytes(&v).unwrap(), raw.len() as u64);
        assert_eq!(decode::<(u64, String)>(&raw).unwrap(), v);
        let mut trailing = raw.clone();
        trailing.push(0);
        assert!(decode::<(u64, String)>(&trailing).is_err());
        // A string claiming 2^40 bytes.
        let huge = encode(&(7u64, 1u64 << 40)).unwrap();
        assert!(decode::<(u64, String)>(&huge).is_err());
    }
}
