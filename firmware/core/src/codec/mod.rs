//! Token codec: attention-weighted PCA of one image's tokens, quantised (SPEC §5).

mod pca;
pub mod quant;
mod record;

pub use record::{
    decode, encode, encode_scratch_len, encoded_len, record_shape, CodecParams, CODEC_HEADER_LEN,
    CODEC_VERSION,
};
