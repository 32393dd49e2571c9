//! Byte layout of the store: header, segment headers, record headers (see `FORMAT.md`).
//! All integers little-endian.

use crate::crc32::{crc32, Crc32};
use crate::error::Error;

/// First 8 bytes of every store.
pub const STORE_MAGIC: [u8; 8] = *b"ANYTSTOR";
/// The format version this code writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of the store header (it lives in its own block of one segment size at offset 0).
pub const STORE_HEADER_LEN: usize = 36;
/// Magic of a segment header ("ASEG").
pub const SEGMENT_MAGIC: [u8; 4] = *b"ASEG";
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: u32 = 20;
/// `source` of a segment header that was opened for appends, not by a compaction.
pub const NO_SOURCE: u32 = u32::MAX;
/// Bytes of a record header (markers, fields, header CRC).
pub const RECORD_HEADER_LEN: u32 = 20;
/// Header plus trailing CRC: the fixed cost of a record before padding.
pub const RECORD_OVERHEAD: u32 = RECORD_HEADER_LEN + 4;
/// Records start on multiples of this.
pub const ALIGN: u32 = 4;
/// Label names are at most this many bytes.
pub const MAX_LABEL_NAME: usize = 255;
/// Label id used by state records (never a data label).
pub const STATE_LABEL: u16 = 0xFFFF;

/// Kind byte of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Compressed tokens of one labelled sample.
    Data = 1,
    /// One label table entry: `label` = id, payload = UTF-8 name.
    Label = 2,
    /// A blob of learner state; the newest copy (highest sequence) wins.
    State = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Data),
            2 => Some(Kind::Label),
            3 => Some(Kind::State),
            _ => None,
        }
    }
}

/// Total bytes a record with a `len`-byte payload occupies (aligned).
pub const fn record_size(len: u32) -> u32 {
    (RECORD_OVERHEAD + len).div_ceil(ALIGN) * ALIGN
}

/// A marker byte counts as set (committed / deleted) when fewer than 4 of its bits are 1.
/// Markers are written as `0x00` over `0xFF`, so up to 3 bit flips are tolerated.
pub fn marker_set(b: u8) -> bool {
    b.count_ones() < 4
}

/// How the store is cut into segments, and its logical capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per segment (a multiple of the flash erase unit); the header block has this size too.
    pub segment_size: u32,
    /// Number of segments after the header block.
    pub segment_count: u32,
    /// Largest record (total bytes, see [`record_size`]) the store accepts.
    pub max_record: u32,
    /// Logical capacity: the live records' total size never exceeds it.
    pub capacity: u64,
}

impl Geometry {
    /// Bytes of a segment available to records.
    pub const fn usable(&self) -> u32 {
        self.segment_size - SEGMENT_HEADER_LEN
    }

    /// Largest payload the store accepts.
    pub const fn max_payload(&self) -> u32 {
        self.max_record - RECORD_OVERHEAD
    }

    /// The largest logical capacity this segmentation supports: one segment is always kept
    /// free for compaction, one is the write head, one absorbs fragmentation, and each
    /// segment can waste less than one record at its end.
    pub const fn max_capacity(&self) -> u64 {
        if self.segment_count < 4 {
            return 0;
        }
        (self.segment_count as u64 - 3) * (self.usable() - self.max_record) as u64
    }

    /// Bytes of flash the store occupies (header block + segments).
    pub const fn region_len(&self) -> u64 {
        self.segment_size as u64 * (self.segment_count as u64 + 1)
    }

    /// A geometry for a logical `capacity`, with segments of `segment_size` bytes and payloads
    /// of at most `max_payload` bytes: the smallest segment count that supports it.
    pub fn for_capacity(capacity: u64, segment_size: u32, max_payload: u32) -> Result<Self, Error> {
        let max_record = record_size(max_payload);
        if segment_size < SEGMENT_HEADER_LEN + 2 * max_record || !segment_size.is_multiple_of(ALIGN)
        {
            return Err(Error::BadGeometry);
        }
        let per = (segment_size - SEGMENT_HEADER_LEN - max_record) as u64;
        let count = capacity.div_ceil(per).max(1) + 3;
        let count = u32::try_from(count).map_err(|_| Error::BadGeometry)?;
        let g = Geometry {
            segment_size,
            segment_count: count,
            max_record,
            capacity,
        };
        g.validate()?;
        Ok(g)
    }

    /// The geometry that fills a region of `region_len` bytes (capacity = the maximum).
    pub fn for_region(region_len: u64, segment_size: u32, max_payload: u32) -> Result<Self, Error> {
        if segment_size == 0 {
            return Err(Error::BadGeometry);
        }
        let count = (region_len / segment_size as u64).saturating_sub(1);
        let mut g = Geometry {
            segment_size,
            segment_count: u32::try_from(count).map_err(|_| Error::BadGeometry)?,
            max_record: record_size(max_payload),
            capacity: 0,
        };
        g.capacity = g.max_capacity();
        g.validate()?;
        Ok(g)
    }

    /// Checks the invariants the ring relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let ok = self.segment_size.is_multiple_of(ALIGN)
            && self.segment_size >= SEGMENT_HEADER_LEN + 2 * self.max_record
            && self.max_record >= RECORD_OVERHEAD
            && self.max_record.is_multiple_of(ALIGN)
            && self.segment_count >= 4
            && self.capacity > 0
            && self.capacity <= self.max_capacity()
            && self.region_len() <= u32::MAX as u64;
        if ok {
            Ok(())
        } else {
            Err(Error::BadGeometry)
        }
    }

    /// Flash offset of segment `i`.
    pub const fn segment_offset(&self, i: u32) -> u32 {
        (i + 1) * self.segment_size
    }

    /// Segment holding flash offset `off` (which must be past the header block).
    pub const fn segment_of(&self, off: u32) -> u32 {
        off / self.segment_size - 1
    }
}

/// Serialises the store header.
pub fn encode_store_header(g: &Geometry) -> [u8; STORE_HEADER_LEN] {
    let mut b = [0u8; STORE_HEADER_LEN];
    b[0..8].copy_from_slice(&STORE_MAGIC);
    b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&0u16.to_le_bytes());
    b[12..16].copy_from_slice(&g.segment_size.to_le_bytes());
    b[16..20].copy_from_slice(&g.segment_count.to_le_bytes());
    b[20..24].copy_from_slice(&g.max_record.to_le_bytes());
    b[24..32].copy_from_slice(&g.capacity.to_le_bytes());
    let c = crc32(&b[0..32]);
    b[32..36].copy_from_slice(&c.to_le_bytes());
    b
}

/// Parses and checks the store header: magic, then version, then CRC, then geometry.
pub fn decode_store_header(b: &[u8; STORE_HEADER_LEN]) -> Result<Geometry, Error> {
    if b[0..8] != STORE_MAGIC {
        return Err(Error::NotAStore);
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version == 0 {
        return Err(Error::NotAStore);
    }
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if crc32(&b[0..32]) != le32(&b[32..36]) {
        return Err(Error::CorruptHeader);
    }
    let g = Geometry {
        segment_size: le32(&b[12..16]),
        segment_count: le32(&b[16..20]),
        max_record: le32(&b[20..24]),
        capacity: u64::from_le_bytes([b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31]]),
    };
    g.validate().map_err(|_| Error::CorruptHeader)?;
    Ok(g)
}

/// Offset of the store header's copy: the last [`STORE_HEADER_LEN`] bytes of the header
/// block, or `None` when the header block is too small to hold both copies apart.
pub const fn header_copy_offset(g: &Geometry) -> Option<u32> {
    if g.segment_size >= 2 * STORE_HEADER_LEN as u32 {
        Some(g.segment_size - STORE_HEADER_LEN as u32)
    } else {
        None
    }
}

/// [`decode_store_header`], correcting one flipped bit: the geometry, and whether a bit
/// was corrected. A header that no single flip makes valid gives the plain decode's error.
pub fn decode_store_header_fixing(b: &[u8; STORE_HEADER_LEN]) -> Result<(Geometry, bool), Error> {
    let first = match decode_store_header(b) {
        Ok(g) => return Ok((g, false)),
        Err(e) => e,
    };
    let mut t = *b;
    for bit in 0..STORE_HEADER_LEN * 8 {
        t[bit / 8] ^= 1 << (bit % 8);
        if let Ok(g) = decode_store_header(&t) {
            return Ok((g, true));
        }
        t[bit / 8] ^= 1 << (bit % 8);
    }
    Err(first)
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Monotonic sequence number of the segment (order of opening).
    pub seq: u32,
    /// How many times this segment has been erased by the ring.
    pub erase_count: u32,
    /// Sequence of the segment whose records this one received by compaction, or
    /// [`NO_SOURCE`]. While that segment is still active the compaction is incomplete.
    pub source: u32,
}

/// Serialises a segment header.
pub fn encode_segment_header(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
    b[0..4].copy_from_slice(&SEGMENT_MAGIC);
    b[4..8].copy_from_slice(&h.seq.to_le_bytes());
    b[8..12].copy_from_slice(&h.erase_count.to_le_bytes());
    b[12..16].copy_from_slice(&h.source.to_le_bytes());
    let c = crc32(&b[0..16]);
    b[16..20].copy_from_slice(&c.to_le_bytes());
    b
}

/// Parses a segment header; `None` when absent, torn or corrupt.
pub fn decode_segment_header(b: &[u8; SEGMENT_HEADER_LEN as usize]) -> Option<SegmentHeader> {
    if b[0..4] != SEGMENT_MAGIC || crc32(&b[0..16]) != le32(&b[16..20]) {
        return None;
    }
    Some(SegmentHeader {
        seq: le32(&b[4..8]),
        erase_count: le32(&b[8..12]),
        source: le32(&b[12..16]),
    })
}

/// What the 20 bytes at the start of a segment say about it (see `FORMAT.md` §1.4, §1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentRead {
    /// Erased, or an erase cut short (its first byte is `0xFF`).
    Erased,
    /// A valid header; `corrected` when one flipped bit had to be corrected to read it.
    Active {
        header: SegmentHeader,
        corrected: bool,
    },
    /// A retired header (magic cleared, wholly or in part): its fields as written.
    Retired(SegmentHeader),
    /// Neither: a torn header write, or damage.
    Unreadable,
}

/// Classifies a segment header, correcting one flipped bit (an active header with one
/// flipped bit reads as active; a retired one as retired).
pub fn classify_segment_header(b: &[u8; SEGMENT_HEADER_LEN as usize]) -> SegmentRead {
    // An erase runs from the first byte up: a leading 0xFF is an erase cut short (neither
    // a flipped bit nor a zeroed run makes one out of `A` or 0).
    if b[0] == 0xFF {
        return SegmentRead::Erased;
    }
    if let Some(header) = decode_segment_header(b) {
        return SegmentRead::Active {
            header,
            corrected: false,
        };
    }
    let mut as_if = *b;
    as_if[0..4].copy_from_slice(&SEGMENT_MAGIC);
    let mut foreign = 0; // bits set that the magic does not have
    let mut missing = 0; // bits of the magic that are cleared
    for i in 0..4 {
        foreign += (b[i] & !SEGMENT_MAGIC[i]).count_ones();
        missing += (SEGMENT_MAGIC[i] & !b[i]).count_ones();
    }
    if foreign + missing <= 1 {
        // The magic is intact or one bit off: an active header with one flipped bit.
        let fixed = if foreign + missing == 1 {
            decode_segment_header(&as_if)
        } else {
            correct_segment_fields(&as_if)
        };
        return match fixed {
            Some(header) => SegmentRead::Active {
                header,
                corrected: true,
            },
            None => SegmentRead::Unreadable,
        };
    }
    if foreign <= 1 {
        // The magic is cleared (retired, or a retirement cut short), maybe one flipped bit.
        let fields = decode_segment_header(&as_if).or_else(|| {
            if foreign == 0 {
                correct_segment_fields(&as_if)
            } else {
                None
            }
        });
        if let Some(h) = fields {
            return SegmentRead::Retired(h);
        }
    }
    SegmentRead::Unreadable
}

/// A segment header (with a valid magic) made valid by flipping one bit of bytes 4..20.
fn correct_segment_fields(b: &[u8; SEGMENT_HEADER_LEN as usize]) -> Option<SegmentHeader> {
    let mut t = *b;
    for bit in 32..SEGMENT_HEADER_LEN as usize * 8 {
        t[bit / 8] ^= 1 << (bit % 8);
        if let Some(h) = decode_segment_header(&t) {
            return Some(h);
        }
        t[bit / 8] ^= 1 << (bit % 8);
    }
    None
}

/// The fields of a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Commit marker byte as read (see [`marker_set`]).
    pub commit: u8,
    /// Deletion marker byte as read.
    pub deleted: u8,
    /// Record kind.
    pub kind: Kind,
    /// Caller flags (data records).
    pub flags: u8,
    /// Label id (data, label records) or [`STATE_LABEL`].
    pub label: u16,
    /// Store-wide sequence number (kept when a record is moved by compaction).
    pub seq: u32,
    /// Payload length in bytes.
    pub len: u32,
}

/// What 20 header bytes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRead {
    /// All `0xFF`: free space.
    Erased,
    /// Not a valid header (torn write, bit flip, garbage).
    Invalid,
    /// A header whose CRC checks.
    Valid(RecordHeader),
}

/// Serialises bytes 2..20 of a record header (the markers are not part of the body).
pub fn encode_record_fields(kind: Kind, flags: u8, label: u16, seq: u32, len: u32) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0] = kind as u8;
    b[1] = flags;
    b[2..4].copy_from_slice(&label.to_le_bytes());
    b[4..6].copy_from_slice(&0u16.to_le_bytes());
    b[6..10].copy_from_slice(&seq.to_le_bytes());
    b[10..14].copy_from_slice(&len.to_le_bytes());
    let c = crc32(&b[0..14]);
    b[14..18].copy_from_slice(&c.to_le_bytes());
    b
}

/// Parses a record header.
pub fn decode_record_header(b: &[u8; RECORD_HEADER_LEN as usize]) -> HeaderRead {
    if b.iter().all(|&x| x == 0xFF) {
        return HeaderRead::Erased;
    }
    let f = &b[2..];
    if crc32(&f[0..14]) != le32(&f[14..18]) || f[4] != 0 || f[5] != 0 {
        return HeaderRead::Invalid;
    }
    let Some(kind) = Kind::from_u8(f[0]) else {
        return HeaderRead::Invalid;
    };
    HeaderRead::Valid(RecordHeader {
        commit: b[0],
        deleted: b[1],
        kind,
        flags: f[1],
        label: u16::from_le_bytes([f[2], f[3]]),
        seq: le32(&f[6..10]),
        len: le32(&f[10..14]),
    })
}

/// A record header made valid by flipping one bit of bytes 2..20 (the CRC-protected part),
/// with its corrected bytes. `None` when no single flip does it.
pub fn correct_record_header(
    b: &[u8; RECORD_HEADER_LEN as usize],
) -> Option<(RecordHeader, [u8; RECORD_HEADER_LEN as usize])> {
    let mut t = *b;
    for bit in 16..RECORD_HEADER_LEN as usize * 8 {
        t[bit / 8] ^= 1 << (bit % 8);
        if let HeaderRead::Valid(h) = decode_record_header(&t) {
            return Some((h, t));
        }
        t[bit / 8] ^= 1 << (bit % 8);
    }
    None
}

/// CRC of a record: header fields (bytes 2..16 of the record) then the payload.
pub fn record_crc(fields: &[u8], payload: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(&fields[0..14]);
    c.update(payload);
    c.finish()
}

pub(crate) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let g = Geometry::for_capacity(10_000, 1024, 100).unwrap();
        assert!(g.capacity <= g.max_capacity());
        assert_eq!(decode_store_header(&encode_store_header(&g)), Ok(g));
        let s = SegmentHeader {
            seq: 9,
            erase_count: 3,
            source: NO_SOURCE,
        };
        assert_eq!(decode_segment_header(&encode_segment_header(&s)), Some(s));
        let f = encode_record_fields(Kind::Data, 7, 3, 42, 10);
        let mut h = [0xFFu8; 20];
        h[2..].copy_from_slice(&f);
        match decode_record_header(&h) {
            HeaderRead::Valid(r) => {
                assert_eq!(
                    (r.kind, r.flags, r.label, r.seq, r.len),
                    (Kind::Data, 7, 3, 42, 10)
                );
                assert!(!marker_set(r.commit));
            }
            other => panic!("{other:?}"),
        }
        h[5] ^= 1;
        assert_eq!(decode_record_header(&h), HeaderRead::Invalid);
        assert_eq!(record_size(0), 24);
        assert_eq!(record_size(1), 28);
    }

    #[test]
    fn markers_read_set_below_four_one_bits() {
        for b in 0..=255u8 {
            assert_eq!(marker_set(b), b.count_ones() <= 3, "{b:#010b}");
        }
    }

    #[test]
    fn geometry_from_a_capacity_is_the_smallest_that_holds_it() {
        // Payloads up to 16 bytes: records up to 40; segments of at least 20 + 2 * 40.
        let max_record = record_size(16);
        assert_eq!(max_record, 40);
        let least = SEGMENT_HEADER_LEN + 2 * max_record;
        assert!(Geometry::for_capacity(500, least, 16).is_ok());
        // (A segment smaller than the header and one record leaves no room at all.)
        for seg in [least - ALIGN, least + 2, max_record, 0] {
            assert_eq!(
                Geometry::for_capacity(500, seg, 16),
                Err(Error::BadGeometry),
                "segment {seg}"
            );
        }
        // 128-byte segments hold 128 - 20 - 40 = 68 bytes a segment, plus three spare.
        let per = 128 - SEGMENT_HEADER_LEN - max_record;
        for (capacity, count) in [(1u64, 4u32), (68 * 5, 8), (68 * 5 + 1, 9)] {
            let g = Geometry::for_capacity(capacity, 128, 16).unwrap();
            assert_eq!(
                g,
                Geometry {
                    segment_size: 128,
                    segment_count: count,
                    max_record,
                    capacity,
                },
                "capacity {capacity}"
            );
            assert_eq!(u64::from(count - 3) * u64::from(per), g.max_capacity());
            assert_eq!(g.usable(), 108);
            assert_eq!(g.max_payload(), 16);
            assert_eq!(g.region_len(), 128 * u64::from(count + 1));
        }
        assert_eq!(Geometry::for_capacity(0, 128, 16), Err(Error::BadGeometry));
    }

    #[test]
    fn geometry_for_a_region_fills_it() {
        assert_eq!(Geometry::for_region(4096, 0, 16), Err(Error::BadGeometry));
        let g = Geometry::for_region(128 * 9 + 100, 128, 16).unwrap();
        assert_eq!((g.segment_count, g.capacity), (8, 5 * 68));
        assert_eq!(
            Geometry::for_region(128 * 4, 128, 16),
            Err(Error::BadGeometry),
            "3 segments"
        );
    }

    #[test]
    fn validate_refuses_each_bad_field_alone() {
        let good = Geometry {
            segment_size: 128,
            segment_count: 6,
            max_record: 40,
            capacity: 3 * 68,
        };
        assert_eq!(good.validate(), Ok(()));
        assert_eq!(
            Geometry {
                segment_count: 3,
                ..good
            }
            .max_capacity(),
            0
        );
        let bad = [
            Geometry {
                segment_size: 126,
                ..good
            },
            Geometry {
                segment_size: 96,
                max_record: 40,
                capacity: 1,
                ..good
            },
            Geometry {
                max_record: 20,
                segment_size: 128,
                ..good
            },
            Geometry {
                max_record: 42,
                ..good
            },
            Geometry {
                segment_count: 3,
                capacity: 1,
                ..good
            },
            Geometry {
                capacity: 0,
                ..good
            },
            Geometry {
                capacity: 3 * 68 + 1,
                ..good
            },
            Geometry {
                segment_size: 1 << 24,
                segment_count: 256,
                max_record: 40,
                capacity: 1,
            },
        ];
        for g in bad {
            assert_eq!(g.validate(), Err(Error::BadGeometry), "{g:?}");
        }
        // The smallest accepted segment for these records, and the largest region.
        assert_eq!(
            Geometry {
                segment_size: 100,
                capacity: 3 * 40,
                ..good
            }
            .validate(),
            Ok(())
        );
        let big = Geometry {
            segment_size: 1 << 24,
            segment_count: 255,
            max_record: 40,
            capacity: 1,
        };
        assert_eq!(big.region_len(), 1 << 32);
        assert_eq!(big.validate(), Err(Error::BadGeometry));
        let fits = Geometry {
            segment_count: 254,
            ..big
        };
        assert_eq!(fits.validate(), Ok(()));
    }

    #[test]
    fn segments_and_offsets_agree() {
        let g = Geometry::for_capacity(1000, 128, 16).unwrap();
        for i in 0..g.segment_count {
            let o = g.segment_offset(i);
            assert_eq!(o, 128 * (i + 1));
            assert_eq!(g.segment_of(o), i);
            assert_eq!(g.segment_of(o + 127), i);
        }
        // The header's copy sits at the end of the header block, when both fit apart.
        let at = |segment_size| header_copy_offset(&Geometry { segment_size, ..g });
        assert_eq!(at(128), Some(128 - STORE_HEADER_LEN as u32));
        assert_eq!(
            at(2 * STORE_HEADER_LEN as u32),
            Some(STORE_HEADER_LEN as u32)
        );
        assert_eq!(at(2 * STORE_HEADER_LEN as u32 - 4), None);
    }

    fn record_header(kind: Kind, label: u16, seq: u32, len: u32) -> [u8; 20] {
        let mut h = [0xFFu8; 20];
        h[0] = 0;
        h[2..].copy_from_slice(&encode_record_fields(kind, 3, label, seq, len));
        h
    }

    #[test]
    fn one_flipped_bit_of_a_record_header_is_corrected_back() {
        let h = record_header(Kind::Data, 0x0102, 0x0A0B_0C0D, 77);
        let HeaderRead::Valid(want) = decode_record_header(&h) else {
            panic!("not valid");
        };
        for bit in 16..160 {
            let mut b = h;
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_record_header(&b), HeaderRead::Invalid, "bit {bit}");
            assert_eq!(correct_record_header(&b), Some((want, h)), "bit {bit}");
        }
        // Two flips are beyond one correction (CRC-32's distance is at least 4 here).
        let mut b = h;
        b[5] ^= 0x11;
        assert_eq!(correct_record_header(&b), None);
    }

    #[test]
    fn reserved_bytes_must_be_zero() {
        for at in [4usize, 5] {
            let mut f = encode_record_fields(Kind::Label, 0, 1, 2, 3);
            f[at] = 1;
            let c = crc32(&f[0..14]);
            f[14..18].copy_from_slice(&c.to_le_bytes());
            let mut h = [0xFFu8; 20];
            h[2..].copy_from_slice(&f);
            assert_eq!(decode_record_header(&h), HeaderRead::Invalid, "byte {at}");
        }
    }

    /// Each way a segment header reads: the magic intact, one bit off, cleared wholly or in
    /// part, or foreign; the fields as written or one bit off.
    #[test]
    fn segment_headers_are_classified_by_magic_and_fields() {
        use SegmentRead::*;
        let h = SegmentHeader {
            seq: 7,
            erase_count: 2,
            source: NO_SOURCE,
        };
        let good = encode_segment_header(&h);
        let with = |f: &dyn Fn(&mut [u8; 20])| {
            let mut b = good;
            f(&mut b);
            classify_segment_header(&b)
        };
        let active = |corrected| Active {
            header: h,
            corrected,
        };
        assert_eq!(with(&|_| {}), active(false));
        assert_eq!(with(&|b| b[5] ^= 0x10), active(true));
        // One bit of the magic, cleared ('A' = 0x41) or set.
        assert_eq!(with(&|b| b[0] ^= 0x01), active(true));
        assert_eq!(with(&|b| b[1] ^= 0x80), active(true));
        // Retired (the magic zeroed), with or without one flipped bit in the fields.
        assert_eq!(with(&|b| b[0..4].fill(0)), Retired(h));
        assert_eq!(with(&|b| b[1] = 0), Retired(h));
        assert_eq!(
            with(&|b| {
                b[0..4].fill(0);
                b[9] ^= 0x04;
            }),
            Retired(h)
        );
        // A bit the magic lacks set in a cleared magic: fields as written are still read,
        // a second fault is not corrected.
        assert_eq!(
            with(&|b| b[0..4].copy_from_slice(&[0x80, 0, 0, 0])),
            Retired(h)
        );
        assert_eq!(
            with(&|b| {
                b[0..4].copy_from_slice(&[0x80, 0, 0, 0]);
                b[9] ^= 0x04;
            }),
            Unreadable
        );
        // A foreign magic (every bit inverted) and two bad field bits are not a header.
        let foreign = [
            !SEGMENT_MAGIC[0],
            !SEGMENT_MAGIC[1],
            !SEGMENT_MAGIC[2],
            !SEGMENT_MAGIC[3],
        ];
        assert_eq!(with(&|b| b[0..4].copy_from_slice(&foreign)), Unreadable);
        assert_eq!(with(&|b| b[5] ^= 0x11), Unreadable);
        assert_eq!(with(&|b| b[0] = 0xFF), Erased);
    }
}
