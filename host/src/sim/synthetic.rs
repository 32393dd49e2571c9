//! A small synthetic image-folder dataset for tests: each class is a coloured shape
//! (red disk, green square, …) on a noisy dark background, with its position, size
//! and colour jittered per image, so classes are easy to tell apart and no two
//! images are the same.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 200, 60]),
    ("blue", [50, 80, 230]),
    ("yellow", [230, 220, 40]),
    ("magenta", [210, 50, 210]),
    ("cyan", [40, 210, 220]),
];
const SHAPES: [&str; 4] = ["disk", "square", "cross", "ring"];

/// Most classes [`write_image_folder`] can make (every colour × shape pair).
pub const MAX_CLASSES: usize = COLOURS.len() * SHAPES.len();

/// What to generate.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub classes: usize,
    pub train_per_class: usize,
    pub test_per_class: usize,
    /// Side of the square images in pixels.
    pub size: u32,
    pub seed: u64,
}

fn class_parts(i: usize) -> (usize, usize) {
    // colour and shape both change between consecutive classes; unique for i < 24
    (i % COLOURS.len(), (i / COLOURS.len() + i) % SHAPES.len())
}

/// The names of the first `k` classes, e.g. `red_disk`, `green_square`.
pub fn class_names(k: usize) -> Vec<String> {
    (0..k)
        .map(|i| {
            let (c, s) = class_parts(i);
            format!("{}_{}", COLOURS[c].0, SHAPES[s])
        })
        .collect()
}

/// Draws one image of class `class`.
pub fn draw(class: usize, size: u32, rng: &mut StdRng) -> RgbImage {
    let (c, s) = class_parts(class % MAX_CLASSES);
    let base = COLOURS[c].1;
    let colour = Rgb(base.map(|v| (i32::from(v) + rng.gen_range(-20..=20)).clamp(0, 255) as u8));
    let sz = size as f32;
    let cx = sz / 2.0 + rng.gen_range(-sz / 8.0..=sz / 8.0);
    let cy = sz / 2.0 + rng.gen_range(-sz / 8.0..=sz / 8.0);
    let r = rng.gen_range(sz / 5.0..=sz / 3.2);
    let mut img = RgbImage::new(size, size);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let dx = x as f32 + 0.5 - cx;
        let dy = y as f32 + 0.5 - cy;
        let inside = match SHAPES[s] {
            "disk" => dx * dx + dy * dy <= r * r,
            "square" => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
            "cross" => {
                (dx.abs() <= r * 0.3 && dy.abs() <= r) || (dy.abs() <= r * 0.3 && dx.abs() <= r)
            }
            _ => {
                let d = (dx * dx + dy * dy).sqrt();
                d <= r && d >= r * 0.6
            }
        };
        *px = if inside {
            colour
        } else {
            let g = rng.gen_range(20u8..60);
            Rgb([g, g, g])
        };
    }
    img
}

/// Writes `<dir>/<name>/{train,test}/<class>/<i>.png` and returns `<dir>/<name>`.
pub fn write_image_folder(dir: &Path, name: &str, spec: &SyntheticSpec) -> Result<PathBuf> {
    ensure!(
        (1..=MAX_CLASSES).contains(&spec.classes),
        "the synthetic dataset has 1 to {MAX_CLASSES} classes, not {}",
        spec.classes
    );
    let root = dir.join(name);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    for (split, per_class) in [
        ("train", spec.train_per_class),
        ("test", spec.test_per_class),
    ] {
        for (k, class) in class_names(spec.classes).iter().enumerate() {
            let class_dir = root.join(split).join(class);
            std::fs::create_dir_all(&class_dir)
                .with_context(|| format!("creating {}", class_dir.display()))?;
            for i in 0..per_class {
                let path = class_dir.join(format!("{i:05}.png"));
                draw(k, spec.size, &mut rng)
                    .save(&path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_unique() {
        let mut names = class_names(MAX_CLASSES);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MAX_CLASSES);
        assert_eq!(class_names(2), ["red_disk", "green_square"]);
    }

    #[test]
    fn classes_differ_in_mean_colour() {
        let mut rng = StdRng::seed_from_u64(3);
        let mean = |img: &RgbImage| {
            let mut m = [0f64; 3];
            for p in img.pixels() {
                for (acc, v) in m.iter_mut().zip(p.0) {
                    *acc += f64::from(v);
                }
            }
            m.map(|v| v / f64::from(img.width() * img.height()))
        };
        let red = mean(&draw(0, 32, &mut rng));
        let green = mean(&draw(1, 32, &mut rng));
        assert!(red[0] > red[1] + 10.0 && green[1] > green[0] + 10.0);
    }

    #[test]
    fn writes_the_layout_deterministically() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            classes: 2,
            train_per_class: 2,
            test_per_class: 1,
            size: 16,
            seed: 9,
        };
        let a = write_image_folder(tmp.path(), "a", &spec).unwrap();
        let b = write_image_folder(tmp.path(), "b", &spec).unwrap();
        let f = Path::new("train/green_square/00001.png");
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap()
        );
        assert!(a.join("test/red_disk/00000.png").is_file());
        assert!(
            write_image_folder(tmp.path(), "c", &SyntheticSpec { classes: 0, ..spec }).is_err()
        );
    }
}
