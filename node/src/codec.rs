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

/// A write set's `(family, key, value)` triples with the key and the value
/// encoded as byte strings (`serialize_bytes`: one length, then a copy of
/// the bytes) instead of through serde's sequence path, which bincode
/// writes one `u8` at a time (a call and a capacity check per byte: about
/// 5 % of a leader's CPU at 64 clients). bincode writes both the same way
/// (a varint length, then the bytes), so this changes no stored or sent
/// byte: log entries written before decode unchanged
/// (`write_set_bytes_encode_as_before`). Use with
/// `#[serde(with = "crate::codec::write_set")]`.
pub mod write_set {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, Serializer};
    use serde::{Serialize, de::DeserializeOwned};

    /// Most triples reserved up front from a length prefix, before any is
    /// read: a corrupt prefix cannot make a decode reserve without bound.
    const RESERVE_TRIPLES_MAX: usize = 4096;
    /// Most bytes reserved up front for a byte string read element by
    /// element (a format other than bincode, which reads one whole).
    const RESERVE_BYTES_MAX: usize = 64 << 10;

    /// One write: a family, a key and the new value (`None` deletes).
    pub type Triple<F> = (F, Vec<u8>, Option<Vec<u8>>);

    pub fn serialize<F: Serialize, S: Serializer>(
        triples: &[Triple<F>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(triples.len()))?;
        for (family, key, value) in triples {
            seq.serialize_element(&(family, Raw(key), value.as_deref().map(Raw)))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, F: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Triple<F>>, D::Error> {
        struct Triples<F>(std::marker::PhantomData<F>);
        impl<'de, F: DeserializeOwned> Visitor<'de> for Triples<F> {
            type Value = Vec<Triple<F>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of (family, key, value) triples")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out =
                    Vec::with_capacity(seq.size_hint().unwrap_or(0).min(RESERVE_TRIPLES_MAX));
                while let Some((family, key, value)) =
                    seq.next_element::<(F, Buf, Option<Buf>)>()?
                {
                    out.push((family, key.0, value.map(|v| v.0)));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Triples(std::marker::PhantomData))
    }

    struct Raw<'a>(&'a [u8]);

    impl Serialize for Raw<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Buf(Vec<u8>);

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Buf, D::Error> {
            struct Bytes;
            impl<'de> Visitor<'de> for Bytes {
                type Value = Buf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buf, E> {
                    Ok(Buf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Buf, E> {
                    Ok(Buf(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
                    let mut out =
                        Vec::with_capacity(seq.size_hint().unwrap_or(0).min(RESERVE_BYTES_MAX));
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Buf(out))
                }
            }
            d.deserialize_byte_buf(Bytes)
        }
    }
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

    /// The write set's byte-string encoding is the one serde's default
    /// (byte by byte) produced: what older builds wrote and sent decodes
    /// with the new code, and the new code writes the same bytes.
    #[test]
    fn write_set_bytes_encode_as_before() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Old {
            writes: Vec<(u8, Vec<u8>, Option<Vec<u8>>)>,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct New {
            #[serde(with = "super::write_set")]
            writes: Vec<(u8, Vec<u8>, Option<Vec<u8>>)>,
        }
        let writes = vec![
            (3u8, b"acct/0001".to_vec(), Some(vec![0u8; 300])),
            (4, vec![], None),
            (5, (0..=255u8).collect(), Some(vec![])),
        ];
        let old = encode(&Old {
            writes: writes.clone(),
        })
        .unwrap();
        let new = encode(&New {
            writes: writes.clone(),
        })
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(decode::<New>(&old).unwrap().writes, writes);
        assert_eq!(size_bytes(&New { writes }).unwrap(), old.len() as u64);
        // A length prefix far past the input is refused, not reserved.
        // (bincode's varint: 0xfb, then a u32 of 2^31 - 1 triples.)
        let bad = [0xfbu8, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<New>(&bad).is_err());
    }
}
