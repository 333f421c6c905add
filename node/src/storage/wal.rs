//! WAL segment files: their names, the `[len][crc32c][payload]` framing, and
//! reading a segment back with torn-tail detection. Knows nothing of what the
//! payloads mean beyond decoding them (`ringkv_core::wire`); which segments
//! exist and what gets written is `super`'s business.

use std::path::{Path, PathBuf};

use ringkv_core::wire::{self, WalPayload};

use super::StorageError;

/// Bytes of a record header: payload length (u32 LE), then the payload's
/// CRC-32C (u32 LE).
pub(super) const HEADER_BYTES: usize = 8;

/// The longest payload a record may carry. A header claiming more is
/// corruption, not something to allocate for; `super` splits bigger entry
/// batches into several records.
pub(super) const MAX_RECORD_BYTES: usize = 64 << 20;

const SEGMENT_SUFFIX: &str = ".log";
const SEQ_DIGITS: usize = 20;

/// `<wal_dir>/<seq, 20 digits>.log`.
pub(super) fn segment_path(wal_dir: &Path, seq: u64) -> PathBuf {
    wal_dir.join(format!("{seq:0SEQ_DIGITS$}{SEGMENT_SUFFIX}"))
}

/// The sequence number of a segment file name, `None` for any other name.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends one framed record to `out`. The caller keeps payloads within
/// [`MAX_RECORD_BYTES`].
pub(super) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_RECORD_BYTES);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Why the bytes at some offset are not a well-framed record.
#[derive(Debug)]
enum BadFrame {
    ShortHeader(usize),
    ZeroLength,
    TooLong(usize),
    ShortPayload { len: usize, have: usize },
    Crc { stored: u32, computed: u32 },
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadFrame::ShortHeader(have) => {
                write!(f, "incomplete header ({have} of {HEADER_BYTES} bytes)")
            }
            BadFrame::ZeroLength => write!(f, "zero-length record"),
            BadFrame::TooLong(len) => write!(
                f,
                "record length {len} exceeds the limit of {MAX_RECORD_BYTES} bytes"
            ),
            BadFrame::ShortPayload { len, have } => {
                write!(f, "incomplete payload ({have} of {len} bytes)")
            }
            BadFrame::Crc { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// The payload of the record framed at `at`, and where the next one starts.
fn read_frame(bytes: &[u8], at: usize) -> Result<(&[u8], usize), BadFrame> {
    let rest = bytes.get(at..).unwrap_or_default();
    let (Some(len), Some(crc)) = (rest.get(0..4), rest.get(4..8)) else {
        return Err(BadFrame::ShortHeader(rest.len()));
    };
    let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let (len, stored) = (le(len) as usize, le(crc));
    if len == 0 {
        return Err(BadFrame::ZeroLength);
    }
    if len > MAX_RECORD_BYTES {
        return Err(BadFrame::TooLong(len));
    }
    let Some(payload) = rest.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Err(BadFrame::ShortPayload {
            len,
            have: rest.len() - HEADER_BYTES,
        });
    };
    let computed = crc32c::crc32c(payload);
    if computed != stored {
        return Err(BadFrame::Crc { stored, computed });
    }
    Ok((payload, at + HEADER_BYTES + len))
}

/// A segment read back: its records, and where a torn tail was found.
#[derive(Debug)]
pub(super) struct ReadSegment {
    /// The payloads of the good records, in file order.
    pub records: Vec<WalPayload>,
    /// Offset of the first byte of a torn tail (the length to cut the file
    /// to), with why; `None` if the file ends on a record boundary.
    pub torn_at: Option<(u64, String)>,
}

/// Reads the records of the segment `file` holding `bytes`.
///
/// A bad record (short header or payload, zero or over-limit length, CRC
/// mismatch) is a torn tail only in the last segment (`is_last`) and only if
/// no valid record starts anywhere after it: the write was interrupted and
/// never acknowledged. Anything else is [`StorageError::Corrupt`]: a bad
/// record in an older segment or with a valid record after it (damage to
/// acknowledged data), and a record whose checksum holds but whose payload
/// does not decode (a bug or a foreign format, never a torn write).
pub(super) fn read_segment(
    file: &Path,
    bytes: &[u8],
    is_last: bool,
) -> Result<ReadSegment, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        file: file.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match read_frame(bytes, at) {
            Ok((payload, next)) => {
                let payload = wire::decode_wal_payload(payload)
                    .map_err(|e| corrupt(at, format!("undecodable payload: {e}")))?;
                records.push(payload);
                at = next;
            }
            Err(bad) if !is_last => {
                return Err(corrupt(at, format!("{bad} (not the last segment)")));
            }
            Err(bad) => {
                if let Some(valid) = next_valid_record(bytes, at + 1) {
                    return Err(corrupt(
                        at,
                        format!("{bad}, followed by a valid record at offset {valid}"),
                    ));
                }
                return Ok(ReadSegment {
                    records,
                    torn_at: Some((at as u64, bad.to_string())),
                });
            }
        }
    }
    Ok(ReadSegment {
        records,
        torn_at: None,
    })
}

/// The first offset at or after `from` where a well-framed record with a
/// decodable payload starts. Most offsets fail on the length at once, so the
/// scan is cheap unless the tail is full of plausible headers.
fn next_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(HEADER_BYTES - 1)).find(|&at| {
        read_frame(bytes, at).is_ok_and(|(payload, _)| wire::decode_wal_payload(payload).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use ringkv_core::PartitionId;
    use ringkv_core::io::WalRecord;
    use ringkv_core::raft::{HardState, PersistRecord};

    use super::*;

    fn record(term: u64) -> Vec<u8> {
        let payload = wire::encode_wal_record(&WalRecord {
            partition: PartitionId(1),
            record: PersistRecord::HardState(HardState {
                term,
                vote: None,
                commit: 0,
            }),
        });
        let mut out = Vec::new();
        frame(&payload, &mut out);
        out
    }

    #[test]
    fn segment_names_round_trip_and_reject_strangers() {
        let p = segment_path(Path::new("/d/wal"), 42);
        assert_eq!(p, Path::new("/d/wal/00000000000000000042.log"));
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(parse_segment_name(name), Some(42));
        for bad in [
            "42.log",
            "0000000000000000004x.log",
            "00000000000000000042.tmp",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn zero_filled_tail_is_torn_not_a_record() {
        let mut bytes = record(1);
        let good = bytes.len();
        bytes.extend_from_slice(&[0; 32]);
        let seg = read_segment(Path::new("s"), &bytes, true).expect("torn, not corrupt");
        assert_eq!(seg.records.len(), 1);
        assert_eq!(seg.torn_at.map(|(at, _)| at), Some(good as u64));
    }

    #[test]
    fn oversized_length_in_an_older_segment_is_corrupt() {
        let mut bytes = record(1);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let err = read_segment(Path::new("old.log"), &bytes, false).expect_err("corrupt");
        let msg = err.to_string();
        assert!(
            msg.contains("old.log") && msg.contains("exceeds the limit"),
            "{msg}"
        );
    }

    #[test]
    fn bad_length_with_valid_records_after_it_is_corrupt_even_at_the_end() {
        let mut bytes = record(1);
        let second = bytes.len();
        bytes.extend(record(2));
        bytes.extend(record(3));
        // Claim a length running past the end of the file.
        bytes[second..second + 4].copy_from_slice(&1000u32.to_le_bytes());
        let err = read_segment(Path::new("last.log"), &bytes, true).expect_err("corrupt");
        assert!(
            matches!(err, StorageError::Corrupt { offset, .. } if offset == second as u64),
            "{err}"
        );
    }
}
