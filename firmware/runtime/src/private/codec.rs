//! What the private mode's byte formats share: a header of magic, version (u16) and u32
//! dims at fixed offsets, a body, and a CRC-32 (ISO-HDLC) of every byte before it.

use super::PrivateError;

/// The version every private-mode format is at.
pub(crate) const VERSION: u16 = 1;

/// How to check a format's header.
pub(crate) struct Header<'a> {
    /// The format, for messages.
    pub what: &'static str,
    pub magic: [u8; 4],
    /// Bytes before the body.
    pub len: usize,
    /// The length reported for bytes too short to hold the header and checksum.
    pub short: usize,
    /// The u32 dims: name, offset, the caller's value.
    pub fields: &'a [(&'static str, usize, usize)],
}

/// Magic, version and `fields` (u32, little-endian, at offsets 6.. in order) of a header.
pub(crate) fn write_header(out: &mut Vec<u8>, magic: [u8; 4], fields: &[usize]) {
    out.extend_from_slice(&magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for &f in fields {
        out.extend_from_slice(&(f as u32).to_le_bytes());
    }
}

/// Appends the CRC-32 of `out`.
pub(crate) fn seal(out: &mut Vec<u8>) {
    let crc = anytime_core::crc32::crc32(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The body (every byte before the checksum) of `bytes`, after checking, in this order,
/// that the header fits, the magic, the version, each dim, the length (`expected`, from
/// the header's bytes) and the checksum.
pub(crate) fn checked_body<'b>(
    bytes: &'b [u8],
    h: &Header<'_>,
    expected: impl FnOnce(&[u8]) -> usize,
) -> Result<&'b [u8], PrivateError> {
    let what = h.what;
    let length = |expected| PrivateError::Length {
        what,
        expected,
        found: bytes.len(),
    };
    if bytes.len() < h.len + 4 {
        return Err(length(h.short));
    }
    let found: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
    if found != h.magic {
        return Err(PrivateError::Magic { what, found });
    }
    let version = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
    if version != VERSION {
        return Err(PrivateError::Version {
            what,
            found: version,
            supported: VERSION,
        });
    }
    for &(field, at, want) in h.fields {
        let got = u32_at(bytes, at);
        if got as u64 != want as u64 {
            return Err(PrivateError::Dims {
                what,
                field,
                expected: want,
                found: got as u64,
            });
        }
    }
    let expected = expected(bytes);
    if bytes.len() != expected {
        return Err(length(expected));
    }
    let (body, crc) = bytes.split_at(expected - 4);
    if anytime_core::crc32::crc32(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(PrivateError::Checksum { what });
    }
    Ok(body)
}
