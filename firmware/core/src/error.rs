//! The one error type of the core.

use core::fmt;

/// Everything that can go wrong in the core. Every variant has a message (see `Display`).
///
/// Marked `#[non_exhaustive]`: more variants will be added (e.g. for the OCW state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A flash access fell outside the region or was not aligned to the erase unit.
    OutOfBounds { offset: u32, len: u32 },
    /// A write tried to set a bit that is cleared (NOR flash only clears bits between erases).
    NorViolation { offset: u32 },
    /// The flash stopped answering (power cut in the flash model, I/O failure in a backend).
    FlashFailure,
    /// The region does not start with the store magic: it is not a store.
    NotAStore,
    /// The store was written by a newer format version than this code reads.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The store header's CRC or geometry is invalid.
    CorruptHeader,
    /// The region is shorter than the store header says it is.
    Truncated { expected: u64, found: u64 },
    /// The requested geometry (segment size/count, capacity, record bound) is not usable.
    BadGeometry,
    /// No data record can be evicted and the new record does not fit.
    NoSpace,
    /// A payload is longer than the store's per-record bound.
    RecordTooLarge { len: u32, max: u32 },
    /// A label name is empty, longer than 255 bytes, or not UTF-8.
    InvalidLabelName,
    /// The label table (in memory) is full, or the id space (u16) is exhausted.
    LabelTableFull,
    /// The in-memory record index is full.
    IndexFull,
    /// A label id that the label table does not hold.
    UnknownLabel(u16),
    /// A record's CRC does not match its bytes.
    CorruptRecord { offset: u32 },
    /// A caller-provided buffer is too small.
    BufferTooSmall { needed: u32, got: u32 },
    /// Codec parameters or tensor shapes do not agree (k, bits, N, D, slice lengths).
    InvalidShape,
    /// A codec record is malformed (bad header, truncated, unknown bit width).
    CorruptCodecRecord,
    /// The OCW state holds its capacity of labels; a new label cannot be added.
    OcwFull { label: u16 },
    /// The serialised OCW state has a version this code does not read.
    UnsupportedOcwVersion { found: u8, supported: u8 },
    /// The serialised OCW state is truncated, malformed or holds invalid values.
    CorruptOcwState,
    /// Opening found records that cannot be read (see [`crate::ring::OpenReport`]); the
    /// store is read-only until it is repaired, so that no write erases what is left.
    Damaged,
    /// A restored record's sequence number is not above the store's last one.
    OutOfOrder { seq: u32, next: u32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::OutOfBounds { offset, len } => {
                write!(
                    f,
                    "flash access of {len} bytes at {offset} is out of bounds or misaligned"
                )
            }
            Error::NorViolation { offset } => {
                write!(f, "write at {offset} would set a cleared bit (NOR flash)")
            }
            Error::FlashFailure => write!(f, "flash failure (power lost or I/O error)"),
            Error::NotAStore => write!(f, "not an anytime-edge store (bad magic)"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "store format version {found} is newer than the supported version {supported}"
            ),
            Error::CorruptHeader => write!(f, "store header is corrupt (CRC or geometry)"),
            Error::Truncated { expected, found } => {
                write!(
                    f,
                    "store is truncated: {found} bytes, header says {expected}"
                )
            }
            Error::BadGeometry => write!(
                f,
                "unusable store geometry (a segment must hold two of the largest records, \
                 there must be at least 4 segments, and the region at most 4 GiB)"
            ),
            Error::NoSpace => write!(f, "no space left and nothing evictable"),
            Error::RecordTooLarge { len, max } => {
                write!(
                    f,
                    "payload of {len} bytes exceeds the record bound of {max}"
                )
            }
            Error::InvalidLabelName => {
                write!(f, "label names must be 1 to 255 bytes of UTF-8")
            }
            Error::LabelTableFull => write!(f, "label table is full"),
            Error::IndexFull => write!(f, "record index is full"),
            Error::UnknownLabel(id) => write!(f, "unknown label id {id}"),
            Error::CorruptRecord { offset } => write!(f, "record at {offset} fails its CRC"),
            Error::BufferTooSmall { needed, got } => {
                write!(f, "buffer too small: {needed} needed, {got} given")
            }
            Error::InvalidShape => write!(f, "codec parameters or shapes do not agree"),
            Error::CorruptCodecRecord => write!(f, "codec record is malformed"),
            Error::OcwFull { label } => write!(f, "OCW state is full; cannot add label {label}"),
            Error::UnsupportedOcwVersion { found, supported } => {
                write!(
                    f,
                    "OCW state version {found} is not the supported version {supported}"
                )
            }
            Error::CorruptOcwState => write!(f, "OCW state bytes are malformed"),
            Error::Damaged => write!(f, "the store is damaged and read-only until it is repaired"),
            Error::OutOfOrder { seq, next } => write!(
                f,
                "record sequence {seq} is below the store's next sequence {next}"
            ),
        }
    }
}

#[cfg(any(test, feature = "std"))]
impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn every_variant_has_its_own_message_with_its_fields() {
        let all = [
            (
                Error::OutOfBounds {
                    offset: 70,
                    len: 71,
                },
                &["70", "71"][..],
            ),
            (Error::NorViolation { offset: 72 }, &["72"]),
            (Error::FlashFailure, &[]),
            (Error::NotAStore, &[]),
            (
                Error::UnsupportedVersion {
                    found: 73,
                    supported: 74,
                },
                &["73", "74"],
            ),
            (Error::CorruptHeader, &[]),
            (
                Error::Truncated {
                    expected: 75,
                    found: 76,
                },
                &["75", "76"],
            ),
            (Error::BadGeometry, &[]),
            (Error::NoSpace, &[]),
            (Error::RecordTooLarge { len: 77, max: 78 }, &["77", "78"]),
            (Error::InvalidLabelName, &[]),
            (Error::LabelTableFull, &[]),
            (Error::IndexFull, &[]),
            (Error::UnknownLabel(79), &["79"]),
            (Error::CorruptRecord { offset: 80 }, &["80"]),
            (
                Error::BufferTooSmall {
                    needed: 81,
                    got: 82,
                },
                &["81", "82"],
            ),
            (Error::InvalidShape, &[]),
            (Error::CorruptCodecRecord, &[]),
            (Error::OcwFull { label: 83 }, &["83"]),
            (
                Error::UnsupportedOcwVersion {
                    found: 84,
                    supported: 85,
                },
                &["84", "85"],
            ),
            (Error::CorruptOcwState, &[]),
            (Error::Damaged, &[]),
            (Error::OutOfOrder { seq: 86, next: 87 }, &["86", "87"]),
        ];
        let mut seen = Vec::new();
        for (e, fields) in all {
            let m = e.to_string();
            assert!(m.len() > 10, "{e:?}: {m:?}");
            for f in fields {
                assert!(m.contains(f), "{e:?}: {m:?} lacks {f}");
            }
            assert!(!seen.contains(&m), "{e:?} shares its message");
            seen.push(m);
        }
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Error {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(f, "{}", defmt::Debug2Format(self))
    }
}
