//! Label checking and CLIP tokenisation (BPE through the `tokenizers` crate).

use std::collections::HashSet;
use std::path::Path;

use tokenizers::Tokenizer;

use super::EncoderError;

/// The prompt every label is embedded in.
pub const PROMPT_PREFIX: &str = "a photo of a ";
pub const PROMPT_SUFFIX: &str = ".";
/// Longest label accepted, in bytes of UTF-8 (the store's label table holds at most 255).
pub const MAX_LABEL_BYTES: usize = 255;
/// Most labels in one query.
pub const MAX_LABELS: usize = 10_000;

/// Why a label or a label set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("the label set is empty")]
    EmptySet,
    #[error("too many labels ({0}; at most {MAX_LABELS})")]
    TooMany(usize),
    #[error("label #{index} is empty")]
    Empty { index: usize },
    #[error("label #{index} is too long ({len} bytes; at most {MAX_LABEL_BYTES})")]
    TooLong { index: usize, len: usize },
    #[error("label #{index} ({label:?}) contains a control character")]
    Control { index: usize, label: String },
    #[error("label {label:?} appears more than once")]
    Duplicate { label: String },
}

/// Checks one label and returns it trimmed.
pub fn check_label(index: usize, label: &str) -> Result<&str, LabelError> {
    let t = label.trim();
    if t.is_empty() {
        return Err(LabelError::Empty { index });
    }
    if t.len() > MAX_LABEL_BYTES {
        return Err(LabelError::TooLong {
            index,
            len: t.len(),
        });
    }
    if t.chars().any(char::is_control) {
        return Err(LabelError::Control {
            index,
            label: t.chars().take(40).collect(),
        });
    }
    Ok(t)
}

/// Checks a label set (non-empty, each label valid, no duplicates ignoring case
/// and surrounding space) and returns the trimmed labels in order.
pub fn check_labels<S: AsRef<str>>(labels: &[S]) -> Result<Vec<String>, LabelError> {
    if labels.is_empty() {
        return Err(LabelError::EmptySet);
    }
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany(labels.len()));
    }
    let mut seen = HashSet::with_capacity(labels.len());
    let mut out = Vec::with_capacity(labels.len());
    for (i, l) in labels.iter().enumerate() {
        let t = check_label(i, l.as_ref())?;
        if !seen.insert(t.to_lowercase()) {
            return Err(LabelError::Duplicate {
                label: t.to_string(),
            });
        }
        out.push(t.to_string());
    }
    Ok(out)
}

/// CLIP's BPE tokenizer with the fixed context length.
pub(crate) struct ClipTokenizer {
    inner: Tokenizer,
    context: usize,
    eot: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("context", &self.context)
            .field("eot", &self.eot)
            .finish()
    }
}

impl ClipTokenizer {
    pub(crate) fn load(path: &Path, context: usize) -> Result<Self, EncoderError> {
        let inner = Tokenizer::from_file(path).map_err(|e| EncoderError::Tokenizer {
            message: format!("cannot load {}: {e}", path.display()),
        })?;
        let eot = inner
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| EncoderError::Tokenizer {
                message: format!("{} has no <|endoftext|> token", path.display()),
            })?;
        if context < 2 {
            return Err(EncoderError::Tokenizer {
                message: format!("context length {context} is too short"),
            });
        }
        Ok(Self {
            inner,
            context,
            eot,
        })
    }

    /// Token ids of `text` with start/end tokens, truncated (the last kept token
    /// becomes end-of-text, as OpenCLIP does) and padded with 0 to the context length.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<i64>, EncoderError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| EncoderError::Tokenizer {
                message: format!(
                    "cannot tokenise {:?}: {e}",
                    text.chars().take(40).collect::<String>()
                ),
            })?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        if ids.len() > self.context {
            ids.truncate(self.context);
            ids[self.context - 1] = i64::from(self.eot);
        }
        ids.resize(self.context, 0);
        Ok(ids)
    }
}

/// The prompt for a label.
pub fn prompt(label: &str) -> String {
    format!("{PROMPT_PREFIX}{label}{PROMPT_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real CLIP BPE from the shared assets, against SOURCE.md's known case.
    #[test]
    fn real_clip_tokenizer_matches_the_known_tokenisation() {
        // CI provides no real CLIP assets: their absence is logged, not a failure.
        const TEST: &str = "real_clip_tokenizer_matches_the_known_tokenisation";
        let Some(root) = crate::assets::assets_root() else {
            let why = format!("${} is not set", crate::assets::ASSETS_ENV);
            anytime_testkit::skip::not_here(TEST, &why);
            return;
        };
        let path = root.join("models/clip-bpe/tokenizer.json");
        if !path.is_file() {
            let why = format!("{} is absent", path.display());
            anytime_testkit::skip::not_here(TEST, &why);
            return;
        }
        let tok = ClipTokenizer::load(&path, 77).unwrap();
        let ids = tok.encode(&prompt("cat")).unwrap();
        assert_eq!(ids.len(), 77);
        assert_eq!(&ids[..8], &[49406, 320, 1125, 539, 320, 2368, 269, 49407]);
        assert!(ids[8..].iter().all(|&i| i == 0));
        // Truncation keeps end-of-text last.
        let long = tok.encode(&"cat ".repeat(100)).unwrap();
        assert_eq!(long.len(), 77);
        assert_eq!(long[0], 49406);
        assert_eq!(long[76], 49407);
    }

    #[test]
    fn label_sets_are_checked() {
        assert_eq!(check_labels::<&str>(&[]), Err(LabelError::EmptySet));
        assert_eq!(
            check_labels(&["cat", " "]),
            Err(LabelError::Empty { index: 1 })
        );
        let long = "x".repeat(10 * 1024);
        assert!(matches!(
            check_labels(&[long.as_str()]),
            Err(LabelError::TooLong {
                index: 0,
                len: 10240
            })
        ));
        assert!(matches!(
            check_labels(&["Cat", "dog", " cat "]),
            Err(LabelError::Duplicate { .. })
        ));
        assert!(matches!(
            check_labels(&["ca\u{0}t"]),
            Err(LabelError::Control { .. })
        ));
        assert_eq!(
            check_labels(&[" cat", "hot dog "]).unwrap(),
            vec!["cat".to_string(), "hot dog".to_string()]
        );
    }
}
