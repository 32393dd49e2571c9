//! Image loading and CLIP preprocessing: resize the shortest side to `S` with a
//! bicubic filter, centre-crop `S × S`, scale to [0, 1], normalise per channel.

use std::borrow::Cow;
use std::io::{Cursor, Read};
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
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;
/// Largest accepted image, in pixels (64 megapixels: 256 MiB as RGBA).
pub const MAX_PIXELS: u64 = 64 << 20;
/// Longest side kept per unit of the shortest before resizing: the centre crop never needs
/// more, and a 1×16384 strip would otherwise be resized to 224×3.7 million pixels.
const MAX_ASPECT: u32 = 4;

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
    let refuse = |message: String| EncoderError::Image {
        path: path.to_path_buf(),
        message,
    };
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(refuse(
            "not a regular file (a folder, FIFO or device is not an image)".into(),
        ));
    }
    let too_large = |len: u64| {
        refuse(format!(
            "file too large ({len} bytes; at most {} MiB)",
            MAX_FILE_BYTES >> 20
        ))
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
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
    if let Ok((w, h)) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
    {
        if w as u64 * h as u64 > MAX_PIXELS {
            return Err(format!(
                "image too large ({w}×{h} pixels; at most {} megapixels)",
                MAX_PIXELS >> 20
            ));
        }
    }
    reader.limits(limits());
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => format!(
            "image too large ({l}; at most {MAX_IMAGE_SIDE} pixels a side, {} megapixels and {} MiB decoded)",
            MAX_PIXELS >> 20,
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
    let (iw, ih) = (img.width(), img.height());
    let (short, long) = (iw.min(ih), iw.max(ih));
    let rgb: Cow<'_, image::RgbImage> = if long > MAX_ASPECT * short {
        // Only the centre of a long strip survives the crop: cut it first (centred).
        let keep = MAX_ASPECT * short;
        let cut = img.crop_imm(
            if iw > ih { (iw - keep) / 2 } else { 0 },
            if ih > iw { (ih - keep) / 2 } else { 0 },
            if iw > ih { keep } else { iw },
            if ih > iw { keep } else { ih },
        );
        Cow::Owned(cut.to_rgb8())
    } else {
        match img.as_rgb8() {
            Some(rgb) => Cow::Borrowed(rgb),
            None => Cow::Owned(img.to_rgb8()),
        }
    };
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
        Cow::Owned(image::imageops::resize(
            &*rgb,
            nw as u32,
            nh as u32,
            FilterType::CatmullRom,
        ))
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

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        for p in [dir.path(), Path::new("/dev/zero")] {
            if !p.exists() {
                continue; // /dev/zero: every Linux and macOS has it
            }
            let e = load_image(p).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
    }

    #[test]
    fn a_file_over_the_byte_limit_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        // Sparse: no disk is used, and a read of it all would take seconds.
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = load_image(&path).unwrap_err().to_string();
        assert!(e.contains("file too large"), "{e}");
    }

    #[test]
    fn a_long_strip_is_cut_before_it_is_resized() {
        // 1×4000: resizing it whole would make 224×896000 pixels.
        let mut img = RgbImage::new(1, 4000);
        for (_, y, p) in img.enumerate_pixels_mut() {
            *p = if (1900..2100).contains(&y) {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            };
        }
        let norm = Preprocess::default();
        let mut out = Vec::new();
        preprocess_into(&DynamicImage::ImageRgb8(img), 8, &norm, &mut out);
        assert_eq!(out.len(), 3 * 8 * 8);
        // The centre of the strip (white) is what the crop keeps.
        let white = (1.0 - norm.mean[0]) / norm.std[0];
        assert!(
            out[..64].iter().all(|v| (v - white).abs() < 1e-4),
            "{:?}",
            &out[..8]
        );
    }

    #[test]
    fn too_many_pixels_are_refused_before_decoding() {
        // A BMP header saying 9000×9000 (81 megapixels, each side allowed), no pixels.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"BM");
        for v in [70u32, 0, 54, 40, 9000, 9000] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&24u16.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 40]);
        let e = decode_image(&bytes).unwrap_err();
        assert!(e.contains("megapixels"), "{e}");
    }
}
