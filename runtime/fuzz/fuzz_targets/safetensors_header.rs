//! The candle engine's safetensors reader (`warden_runtime::candle::safetensors::parse`): the
//! model file of a `.safetensors` model, read by the worker before anything else looks at it.
//!
//! Input: the file's bytes.
//!
//! Properties of every file that parses:
//! - every tensor's bytes lie inside the file's data section, exactly as many as its dtype
//!   and shape need (the element count computed without overflow), rank at most `MAX_RANK`;
//! - the tensors tile the data section: no gap, no overlap, nothing after the last;
//! - the header length is at most `MAX_HEADER_BYTES` and the header starts with `{`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_runtime::candle::safetensors::{MAX_HEADER_BYTES, MAX_RANK, parse};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Ok(st) = parse(data) else {
        return;
    };
    let header_len = u64::from_le_bytes(data[..8].try_into().unwrap_or([0xff; 8]));
    assert!(header_len <= MAX_HEADER_BYTES);
    let data_start = 8 + header_len as usize;
    assert!(data_start <= data.len());
    assert_eq!(data.get(8), Some(&b'{'));
    let section = data.as_ptr() as usize + data_start;
    let section_end = data.as_ptr() as usize + data.len();

    let mut ranges = Vec::new();
    for (name, t) in &st.tensors {
        assert!(t.shape.len() <= MAX_RANK, "{name}");
        let elements = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or_else(|| panic!("{name}: element count of {:?} overflows", t.shape));
        let needed = elements
            .checked_mul(t.dtype.size() as usize)
            .unwrap_or_else(|| panic!("{name}: byte count overflows"));
        assert_eq!(t.data.len(), needed, "{name}");
        let begin = t.data.as_ptr() as usize;
        if !t.data.is_empty() {
            assert!(
                begin >= section && begin + t.data.len() <= section_end,
                "{name}"
            );
        }
        ranges.push((begin.saturating_sub(section), t.data.len()));
    }
    // Tiling: sorted by offset, each begins where the previous ended; the last ends the file.
    ranges.sort();
    let mut at = 0usize;
    for (begin, len) in ranges.iter().copied().filter(|&(_, len)| len > 0) {
        assert_eq!(begin, at, "gap or overlap in the data section");
        at += len;
    }
    assert_eq!(at, data.len() - data_start, "bytes after the last tensor");
}
