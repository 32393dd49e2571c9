//! Image loading and CLIP preprocessing: resize the shortest side to `S` with a
//! bicubic filter, centre-crop `S × S`, scale to [0, 1], normalise per channel.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, Limits};

use super::EncoderError;
use crate::assets::Preprocess;

/// Largest accepted image side, in pixels. Larger images are refused before
/// they are decoded.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest accepted image file, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Largest accepted decoded image, in bytes.
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_IMAGE_SIDE);
    l.max_image_height = Some(MAX_IMAGE_SIDE);
    l.max_alloc = Some(MAX_IMAGE_BYTES);
    l
}

/// Reads and decodes an image file, guessing the format from its bytes.
pub fn load_image(path: &Path) -> Result<DynamicImage, EncoderError> {
    let io = |source| EncoderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(EncoderError::Image {
            path: path.to_path_buf(),
            message: format!(
                "file too large ({len} bytes; at most {} MiB)",
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| EncoderError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image(&bytes).map_err(|message| EncoderError::Image {
        path: path.to_path_buf(),
        message,
    })
}

/// Decodes an image from memory; the error says why it cannot be used.
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not an image (unrecognised format)".into());
    }
    reader.limits(limits());
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => format!(
            "image too large ({l}; at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} pixels and {} MiB decoded)",
            MAX_IMAGE_BYTES >> 20
        ),
        other => format!("cannot decode: {other}"),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(img)
}

/// CLIP preprocessing of one image into `3 × S × S` f32 values (channel-major),
/// appended to `out`.
pub fn preprocess_into(img: &DynamicImage, size: usize, norm: &Preprocess, out: &mut Vec<f32>) {
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    // Shortest side to `size`, the other scaled and truncated (torchvision's rule).
    let (nw, nh) = if w <= h {
        (size, (size * h / w).max(size))
    } else {
        ((size * w / h).max(size), size)
    };
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, nw as u32, nh as u32, FilterType::CatmullRom)
    };
    // Centre crop with rounding, as torchvision's CenterCrop.
    let left = ((nw - size) as f64 / 2.0).round() as usize;
    let top = ((nh - size) as f64 / 2.0).round() as usize;
    out.reserve(3 * size * size);
    for c in 0..3 {
        let (mean, std) = (norm.mean[c], norm.std[c]);
        for y in 0..size {
            for x in 0..size {
                let p = resized.get_pixel((left + x) as u32, (top + y) as u32);
                out.push((f32::from(p[c]) / 255.0 - mean) / std);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    #[test]
    fn preprocess_crops_the_centre_and_normalises() {
        // A 40×20 image: left half red, right half blue; centre crop of the
        // resized 16×8→... keeps both halves symmetric.
        let mut img = RgbImage::new(40, 20);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 20 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            };
        }
        let norm = Preprocess::default();
        let mut out = Vec::new();
        preprocess_into(&DynamicImage::ImageRgb8(img), 10, &norm, &mut out);
        assert_eq!(out.len(), 300);
        // Red channel at the left edge of the crop is bright, at the right edge dark.
        let red = |x: usize, y: usize| out[y * 10 + x];
        let hi = (1.0 - norm.mean[0]) / norm.std[0];
        let lo = (0.0 - norm.mean[0]) / norm.std[0];
        assert!(anytime_testkit::close(red(0, 5), hi, 1e-5, 0.0));
        assert!(anytime_testkit::close(red(9, 5), lo, 1e-5, 0.0));
    }

    #[test]
    fn garbage_and_empty_bytes_are_refused() {
        assert!(decode_image(b"").unwrap_err().contains("empty"));
        assert!(decode_image(b"this is not an image at all")
            .unwrap_err()
            .contains("not an image"));
        // A PNG signature followed by junk.
        let mut bad = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        bad.extend_from_slice(&[0u8; 40]);
        assert!(decode_image(&bad).unwrap_err().contains("cannot decode"));
    }
}
