//! The one error type of the private mode.

/// Why a private-mode operation or codec refused its input.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrivateError {
    /// An input of the wrong length.
    #[error("{what}: expected {expected} values, found {found}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// Input values that are NaN or infinite.
    #[error("{what} holds NaN or an infinity")]
    NonFinite { what: &'static str },
    /// Patch tokens that do not fill a square grid.
    #[error("{patches} patch tokens (N = {tokens}) do not lie on a square grid")]
    Grid { tokens: usize, patches: usize },
    /// A label index out of range of the label set.
    #[error("label index {label} out of range for a label set of {n_labels}")]
    Label { label: u32, n_labels: usize },
    /// A label has no published statistics (fewer than `MIN_SAMPLES` samples).
    #[error("label {label} has no published token statistics")]
    Unpublished { label: u16 },
    /// Nothing to train on: no label has published statistics.
    #[error("no label has published token statistics")]
    NoPublishedLabel,
    /// A setting out of its range.
    #[error("{what} = {value} is out of range ({why})")]
    Setting {
        what: &'static str,
        value: f64,
        why: &'static str,
    },
    /// Bytes of the wrong length for their header.
    #[error("{what} of {found} bytes, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("not {what} (magic {found:02x?})")]
    Magic { what: &'static str, found: [u8; 4] },
    #[error("{what} version {found} (this build reads {supported})")]
    Version {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    /// Encoded dimensions other than the caller's (width, tokens, components, ...).
    #[error("{what}: encoded {field} {found}, expected {expected}")]
    Dims {
        what: &'static str,
        field: &'static str,
        expected: usize,
        found: u64,
    },
    #[error("{what}: checksum mismatch (damaged bytes)")]
    Checksum { what: &'static str },
    /// Decoded values that cannot be: a negative spread, labels out of order.
    #[error("{what}: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
}
