//! A strict reader for the safetensors format, over bytes already in memory (the worker read
//! them, and checked their SHA-256, before entering its sandbox).
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON, then the data section.
//! The JSON is an object: an optional `"__metadata__"` (string → string) and one entry per
//! tensor, `{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}`, offsets relative to
//! the data section.
//!
//! Everything is checked before a tensor is handed out, with a precise error: the file holds
//! the header length and the header; the header is bounded ([`MAX_HEADER_BYTES`]) and is JSON
//! of exactly that shape (no unknown fields, no duplicate names); every dtype is known; every
//! size is computed with overflow checks; the byte range of each tensor is what its dtype and
//! shape need; and the tensors tile the data section exactly (no gap, no overlap, nothing
//! after), as the format's reference implementation requires. Nothing is copied: a
//! [`TensorView`] borrows its bytes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// The largest header accepted. The reference implementation allows 100 MB; a header is a few
/// hundred bytes per tensor, so 16 MiB is far above any real model and bounds what the JSON
/// parser is given.
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// The most dimensions a tensor may have.
pub const MAX_RANK: usize = 8;

/// Why a safetensors file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SafetensorsError {
    #[error("the file is {len} bytes, shorter than the 8-byte header length")]
    TooShort { len: usize },
    #[error("the header length {declared} exceeds the limit of {limit} bytes")]
    HeaderTooLarge { declared: u64, limit: u64 },
    #[error(
        "the header length {declared} runs past the end of the file ({available} bytes follow it)"
    )]
    HeaderPastEnd { declared: u64, available: usize },
    #[error("the header is not valid: {0}")]
    Header(String),
    #[error("tensor {name:?}: unknown dtype {dtype:?}")]
    UnknownDtype { name: String, dtype: String },
    #[error("tensor {name:?}: rank {rank} exceeds {MAX_RANK}")]
    Rank { name: String, rank: usize },
    #[error("tensor {name:?}: data_offsets [{begin}, {end}] end before they begin")]
    OffsetsReversed { name: String, begin: u64, end: u64 },
    #[error(
        "tensor {name:?}: data_offsets [{begin}, {end}] run past the data section ({len} bytes)"
    )]
    OffsetsOutOfRange {
        name: String,
        begin: u64,
        end: u64,
        len: usize,
    },
    #[error("tensor {name:?}: {dtype} {shape:?} needs {needed} bytes, data_offsets hold {held}")]
    SizeMismatch {
        name: String,
        dtype: Dtype,
        shape: Vec<u64>,
        needed: String,
        held: u64,
    },
    #[error(
        "tensor {name:?} starts at byte {begin} of the data section, where {expected} was \
         expected: the tensors must tile the data section without gaps or overlaps"
    )]
    NotContiguous {
        name: String,
        begin: u64,
        expected: u64,
    },
    #[error("{unused} bytes after the last tensor are not covered by the header")]
    TrailingBytes { unused: u64 },
}

/// Element types of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    const ALL: [Dtype; 15] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name the header uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    fn parse(s: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tensor of the file: its dtype, shape and bytes (little-endian, row-major).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorView<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// A parsed and checked file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTensors<'a> {
    /// The `__metadata__` map; `None` when the header has none.
    pub metadata: Option<BTreeMap<String, String>>,
    /// The tensors by name.
    pub tensors: BTreeMap<String, TensorView<'a>>,
}

/// A tensor entry as the header writes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// The header: entries in file order, duplicates kept so that they can be refused (a map
/// would silently keep the last).
struct Header {
    metadata: Option<BTreeMap<String, String>>,
    entries: Vec<(String, Entry)>,
}

impl<'de> serde::Deserialize<'de> for Header {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Header;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Header, A::Error> {
                use serde::de::Error;
                let mut metadata = None;
                let mut entries = Vec::new();
                let mut names = HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !names.insert(name.clone()) {
                        return Err(A::Error::custom(format!("duplicate entry {name:?}")));
                    }
                    if name == "__metadata__" {
                        metadata = Some(map.next_value::<BTreeMap<String, String>>()?);
                    } else {
                        entries.push((name, map.next_value::<Entry>()?));
                    }
                }
                Ok(Header { metadata, entries })
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Parses and checks `bytes` (see the module documentation for what is checked).
pub fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>, SafetensorsError> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(SafetensorsError::TooShort { len: bytes.len() });
    };
    let declared = u64::from_le_bytes(*len);
    if declared > MAX_HEADER_BYTES {
        return Err(SafetensorsError::HeaderTooLarge {
            declared,
            limit: MAX_HEADER_BYTES,
        });
    }
    let header_len = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= rest.len())
        .ok_or(SafetensorsError::HeaderPastEnd {
            declared,
            available: rest.len(),
        })?;
    let (header, data) = rest.split_at(header_len);
    if header.first() != Some(&b'{') {
        return Err(SafetensorsError::Header(
            "it does not start with '{'".to_string(),
        ));
    }
    let header: Header =
        serde_json::from_slice(header).map_err(|e| SafetensorsError::Header(e.to_string()))?;

    let mut ranges = Vec::with_capacity(header.entries.len());
    let mut tensors = BTreeMap::new();
    for (name, entry) in header.entries {
        let dtype = Dtype::parse(&entry.dtype).ok_or_else(|| SafetensorsError::UnknownDtype {
            name: name.clone(),
            dtype: entry.dtype.clone(),
        })?;
        if entry.shape.len() > MAX_RANK {
            return Err(SafetensorsError::Rank {
                name,
                rank: entry.shape.len(),
            });
        }
        let [begin, end] = entry.data_offsets;
        if end < begin {
            return Err(SafetensorsError::OffsetsReversed { name, begin, end });
        }
        let in_range = |v: u64| usize::try_from(v).ok().filter(|&v| v <= data.len());
        let (Some(b), Some(e)) = (in_range(begin), in_range(end)) else {
            return Err(SafetensorsError::OffsetsOutOfRange {
                name,
                begin,
                end,
                len: data.len(),
            });
        };
        let needed = entry
            .shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        if needed != Some(end - begin) {
            return Err(SafetensorsError::SizeMismatch {
                name,
                dtype,
                shape: entry.shape,
                needed: needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string()),
                held: end - begin,
            });
        }
        // Every dimension is at most the tensor's byte length, which fits the data section.
        let shape = entry
            .shape
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect();
        let view = TensorView {
            dtype,
            shape,
            data: data.get(b..e).unwrap_or_default(),
        };
        ranges.push((begin, end, name.clone()));
        tensors.insert(name, view);
    }

    ranges.sort();
    let mut expected = 0u64;
    for (begin, end, name) in ranges {
        if begin != expected {
            return Err(SafetensorsError::NotContiguous {
                name,
                begin,
                expected,
            });
        }
        expected = end;
    }
    let total = data.len() as u64;
    if expected != total {
        return Err(SafetensorsError::TrailingBytes {
            unused: total - expected,
        });
    }
    Ok(SafeTensors {
        metadata: header.metadata,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_a_well_formed_file() {
        let bytes = file(
            r#"{"__metadata__":{"k":"v"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},
               "a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4]}}  "#,
            &[1, 2, 3, 4, 0, 0, 128, 63, 0, 0, 0, 64],
        );
        let st = parse(&bytes).unwrap();
        assert_eq!(st.metadata.unwrap().get("k").map(String::as_str), Some("v"));
        assert_eq!(st.tensors["a"].data, &[1, 2, 3, 4]);
        assert_eq!(st.tensors["a"].shape, vec![2, 2]);
        assert_eq!(st.tensors["b"].dtype, Dtype::F32);
        assert_eq!(st.tensors["b"].data, &[0, 0, 128, 63, 0, 0, 0, 64]);
    }

    #[test]
    fn refuses_each_defect() {
        let one = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(parse(&file(one, &[0; 4])).is_ok());
        assert_eq!(
            parse(&[1, 2, 3]),
            Err(SafetensorsError::TooShort { len: 3 })
        );
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            parse(&huge),
            Err(SafetensorsError::HeaderTooLarge { .. })
        ));
        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert_eq!(
            parse(&past),
            Err(SafetensorsError::HeaderPastEnd {
                declared: 1000,
                available: 2
            })
        );
        assert!(matches!(
            parse(&file("[]", &[])),
            Err(SafetensorsError::Header(_))
        ));
        let dup = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(
            matches!(parse(&file(dup, &[0; 8])), Err(SafetensorsError::Header(m)) if m.contains("duplicate"))
        );
        let extra = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}"#;
        assert!(matches!(
            parse(&file(extra, &[0; 4])),
            Err(SafetensorsError::Header(_))
        ));
        let f7 = r#"{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse(&file(f7, &[0; 4])),
            Err(SafetensorsError::UnknownDtype { .. })
        ));
        let rev = r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#;
        assert!(matches!(
            parse(&file(rev, &[0; 4])),
            Err(SafetensorsError::OffsetsReversed { .. })
        ));
        let out = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        assert_eq!(
            parse(&file(out, &[0; 4])),
            Err(SafetensorsError::OffsetsOutOfRange {
                name: "a".into(),
                begin: 0,
                end: 8,
                len: 4
            })
        );
        let overflow =
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,4]}}"#;
        assert!(matches!(
            parse(&file(overflow, &[0; 4])),
            Err(SafetensorsError::SizeMismatch { needed, .. }) if needed == "more than 2^64"
        ));
        let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(matches!(
            parse(&file(gap, &[0; 8])),
            Err(SafetensorsError::NotContiguous { expected: 0, .. })
        ));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(matches!(
            parse(&file(overlap, &[0; 8])),
            Err(SafetensorsError::NotContiguous { .. })
        ));
        assert_eq!(
            parse(&file(one, &[0; 6])),
            Err(SafetensorsError::TrailingBytes { unused: 2 })
        );
    }
}
