//! Labelled image datasets on disk.
//!
//! Two layouts are read:
//! - **image folder**: `root/<split>/<class>/*.{jpg,jpeg,png}` with split `train` and
//!   `test` (or `val` / `validation` when there is no `test`); class names are the
//!   sorted union of the class folders of both splits, label ids their index;
//! - **CIFAR binary**: CIFAR-10 (`data_batch_*.bin`, `test_batch.bin`: 1 label byte +
//!   3072 pixel bytes per record, class names from `batches.meta.txt`) and CIFAR-100
//!   (`train.bin`, `test.bin`: coarse and fine label bytes + 3072; the fine label is
//!   used, names from `fine_label_names.txt`). The files may sit in `root` or in the
//!   archive's own sub-folder (`cifar-10-batches-bin`, `cifar-100-binary`). Pixels are
//!   stored plane by plane (1024 red, 1024 green, 1024 blue), rows top to bottom.
//! - **IDX** (MNIST's format, as Fashion-MNIST ships it): `train-images-idx3-ubyte`,
//!   `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each
//!   plain or `.gz`; grey images, read into memory when the dataset is opened. Class
//!   names from `classes.txt` (one a line) when present, else Fashion-MNIST's for a
//!   folder whose name contains "fashion", else `class_<i>`.
//!
//! A dataset is named by a path or by a name looked up as
//! `$ANYTIME_EDGE_ASSETS/data/<name>`, then `/usr/share/datasets/<name>` (where Debian's
//! dataset packages, such as `dataset-fashion-mnist`, put them). CIFAR and image-folder
//! images are read lazily, one at a time.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use image::{DynamicImage, GrayImage, RgbImage};

/// Environment variable naming the assets root (`<root>/data/<name>` holds datasets).
pub const ASSETS_ENV: &str = "ANYTIME_EDGE_ASSETS";

const CIFAR_PIXELS: usize = 3 * 32 * 32;
/// Where Debian's dataset packages install datasets (`<dir>/<name>`).
pub const SYSTEM_DATASETS: &str = "/usr/share/datasets";
/// Fashion-MNIST's class names, as the project prompts them (`models/train_mini_clip.py`
/// pretrains with the same).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];
/// Largest IDX image accepted, in pixels (rows × columns).
const IDX_MAX_PIXELS: usize = 4096 * 4096;
/// Largest decompressed IDX file read, in bytes.
const IDX_MAX_BYTES: u64 = 1 << 31;
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One of a dataset's two splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// The on-disk layout a dataset was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    ImageFolder,
    Cifar10,
    Cifar100,
    Idx,
}

/// Where one image's pixels are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An encoded image file (JPEG or PNG).
    File(PathBuf),
    /// Record `record` of CIFAR binary file `file` (an index into the dataset's files).
    Cifar { file: u16, record: u32 },
    /// Image `index` of an IDX split held in memory.
    Idx { split: Split, index: u32 },
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub image: ImageRef,
    /// Index into [`Dataset::classes`].
    pub label: u16,
}

/// A labelled image dataset with a train and a test split.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name (the folder's name, or the name it was looked up by).
    pub name: String,
    pub root: PathBuf,
    pub format: Format,
    /// Class names; a label id is an index into this list.
    pub classes: Vec<String>,
    pub train: Vec<Item>,
    pub test: Vec<Item>,
    cifar_files: Vec<PathBuf>,
    cifar_label_bytes: usize,
    /// IDX only: the decoded images of each split.
    idx: Option<Arc<IdxImages>>,
}

/// The images of an IDX dataset, both splits, in memory.
#[derive(Debug)]
struct IdxImages {
    rows: usize,
    cols: usize,
    train: Vec<u8>,
    test: Vec<u8>,
}

/// Resolves `name_or_path`: an existing directory is used as it is, anything else is
/// looked up as `<assets>/data/<name>`, with `assets` from `$ANYTIME_EDGE_ASSETS`, then
/// as `/usr/share/datasets/<name>`.
pub fn find(name_or_path: &str) -> Result<PathBuf> {
    find_in(
        name_or_path,
        std::env::var_os(ASSETS_ENV).map(PathBuf::from).as_deref(),
    )
}

/// [`find`] with the assets root given explicitly.
pub fn find_in(name_or_path: &str, assets: Option<&Path>) -> Result<PathBuf> {
    let direct = Path::new(name_or_path);
    if direct.is_dir() {
        return Ok(direct.to_path_buf());
    }
    let plain_name = !name_or_path.is_empty()
        && !name_or_path.contains(['/', '\\'])
        && !name_or_path.starts_with('.');
    let mut tried = Vec::new();
    if let Some(assets) = assets {
        tried.push(assets.join("data").join(name_or_path));
    }
    if plain_name {
        tried.push(Path::new(SYSTEM_DATASETS).join(name_or_path));
    }
    if let Some(found) = tried.iter().find(|p| p.is_dir()) {
        return Ok(found.clone());
    }
    let places: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "dataset `{name_or_path}` not found: it is not a directory{}{} (datasets are looked up \
         as ${ASSETS_ENV}/data/<name>, then {SYSTEM_DATASETS}/<name>)",
        if assets.is_none() {
            format!(", ${ASSETS_ENV} is not set")
        } else {
            String::new()
        },
        if places.is_empty() {
            String::new()
        } else {
            format!(", and there is no {}", places.join(" nor "))
        }
    )
}

impl Dataset {
    /// Finds (see [`find`]) and opens a dataset.
    pub fn open(name_or_path: &str) -> Result<Self> {
        let root = find(name_or_path)?;
        Self::open_dir(&root)
    }

    /// Opens the dataset in `root`, detecting its layout.
    pub fn open_dir(root: &Path) -> Result<Self> {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".to_owned());
        for dir in [
            root.to_path_buf(),
            root.join("cifar-10-batches-bin"),
            root.join("cifar-100-binary"),
        ] {
            if dir.join("test_batch.bin").is_file() || dir.join("data_batch_1.bin").is_file() {
                return Self::open_cifar(name, root, &dir, Format::Cifar10);
            }
            if dir.join("train.bin").is_file() || dir.join("test.bin").is_file() {
                return Self::open_cifar(name, root, &dir, Format::Cifar100);
            }
        }
        if idx_file(root, "train-images-idx3-ubyte").is_some()
            || idx_file(root, "t10k-images-idx3-ubyte").is_some()
        {
            return Self::open_idx(name, root);
        }
        Self::open_image_folder(name, root)
    }

    fn open_image_folder(name: String, root: &Path) -> Result<Self> {
        let train_dir = root.join("train");
        let test_dir = ["test", "val", "validation"]
            .iter()
            .map(|s| root.join(s))
            .find(|p| p.is_dir());
        ensure!(
            train_dir.is_dir() || test_dir.is_some(),
            "`{}` is not a dataset: expected `train/` and `test/` (or `val/`) folders of \
             class folders, or CIFAR binary files (data_batch_*.bin / test_batch.bin, \
             train.bin / test.bin)",
            root.display()
        );
        let mut classes = Vec::new();
        for dir in [Some(&train_dir), test_dir.as_ref()].into_iter().flatten() {
            if dir.is_dir() {
                for class in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
                    classes.push(file_name(&class));
                }
            }
        }
        classes.sort();
        classes.dedup();
        ensure!(
            classes.len() <= usize::from(u16::MAX),
            "`{}` has {} classes, more than {} supported",
            root.display(),
            classes.len(),
            u16::MAX
        );
        let read_split = |dir: Option<&PathBuf>| -> Result<Vec<Item>> {
            let mut items = Vec::new();
            let Some(dir) = dir.filter(|d| d.is_dir()) else {
                return Ok(items);
            };
            for class_dir in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
                let class = file_name(&class_dir);
                let label = classes.binary_search(&class).unwrap_or(0) as u16;
                for file in sorted_entries(&class_dir)? {
                    if is_image_file(&file) {
                        items.push(Item {
                            image: ImageRef::File(file),
                            label,
                        });
                    }
                }
            }
            Ok(items)
        };
        let train = read_split(Some(&train_dir))?;
        let test = read_split(test_dir.as_ref())?;
        ensure!(
            !train.is_empty() || !test.is_empty(),
            "`{}` holds no .jpg/.jpeg/.png images under <split>/<class>/",
            root.display()
        );
        Ok(Self {
            name,
            root: root.to_path_buf(),
            format: Format::ImageFolder,
            classes,
            train,
            test,
            cifar_files: Vec::new(),
            cifar_label_bytes: 0,
            idx: None,
        })
    }

    fn open_idx(name: String, root: &Path) -> Result<Self> {
        let mut shape = None;
        let mut read_split = |prefix: &str, split: Split| -> Result<(Vec<u8>, Vec<Item>)> {
            let (Some(images), Some(labels)) = (
                idx_file(root, &format!("{prefix}-images-idx3-ubyte")),
                idx_file(root, &format!("{prefix}-labels-idx1-ubyte")),
            ) else {
                return Ok((Vec::new(), Vec::new()));
            };
            let (dims, pixels) = read_idx(&images)?;
            ensure!(
                dims.len() == 3,
                "`{}` holds a {}-dimensional array, not images [n, rows, columns]",
                images.display(),
                dims.len()
            );
            let (n, rows, cols) = (dims[0], dims[1], dims[2]);
            ensure!(
                rows > 0 && cols > 0 && rows * cols <= IDX_MAX_PIXELS,
                "`{}`: images of {rows}×{cols} pixels are not supported",
                images.display()
            );
            match shape {
                None => shape = Some((rows, cols)),
                Some(s) => ensure!(
                    s == (rows, cols),
                    "`{}`: {rows}×{cols} images, the other split has {}×{}",
                    images.display(),
                    s.0,
                    s.1
                ),
            }
            let (label_dims, label_bytes) = read_idx(&labels)?;
            ensure!(
                label_dims == [n],
                "`{}` holds {label_dims:?} labels for {n} images",
                labels.display()
            );
            let items = label_bytes
                .iter()
                .enumerate()
                .map(|(i, &label)| {
                    Ok(Item {
                        image: ImageRef::Idx {
                            split,
                            index: u32::try_from(i)?,
                        },
                        label: u16::from(label),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((pixels, items))
        };
        let (train_pixels, train) = read_split("train", Split::Train)?;
        let (test_pixels, test) = read_split("t10k", Split::Test)?;
        let Some((rows, cols)) = shape else {
            bail!(
                "`{}` has IDX files but no complete split (images and labels)",
                root.display()
            );
        };
        let num_classes = train
            .iter()
            .chain(&test)
            .map(|i| usize::from(i.label) + 1)
            .max()
            .unwrap_or(0);
        let classes = match std::fs::read_to_string(root.join("classes.txt")) {
            Ok(text) => {
                let names: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                ensure!(
                    names.len() >= num_classes,
                    "`{}` names {} classes, the labels go up to {}",
                    root.join("classes.txt").display(),
                    names.len(),
                    num_classes.saturating_sub(1)
                );
                names
            }
            Err(_) if name.to_ascii_lowercase().contains("fashion") && num_classes <= 10 => {
                FASHION_MNIST_CLASSES
                    .iter()
                    .map(|c| c.to_string())
                    .collect()
            }
            Err(_) => (0..num_classes).map(|i| format!("class_{i}")).collect(),
        };
        Ok(Self {
            name,
            root: root.to_path_buf(),
            format: Format::Idx,
            classes,
            train,
            test,
            cifar_files: Vec::new(),
            cifar_label_bytes: 0,
            idx: Some(Arc::new(IdxImages {
                rows,
                cols,
                train: train_pixels,
                test: test_pixels,
            })),
        })
    }

    fn open_cifar(name: String, root: &Path, dir: &Path, format: Format) -> Result<Self> {
        let (label_bytes, num_classes, names_file, train_files, test_files) = match format {
            Format::Cifar10 => (
                1usize,
                10usize,
                "batches.meta.txt",
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
                vec!["test_batch.bin".to_owned()],
            ),
            _ => (
                2,
                100,
                "fine_label_names.txt",
                vec!["train.bin".to_owned()],
                vec!["test.bin".to_owned()],
            ),
        };
        let classes = match std::fs::read_to_string(dir.join(names_file)) {
            Ok(text) => {
                let names: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                ensure!(
                    names.len() == num_classes,
                    "`{}` lists {} class names, expected {num_classes}",
                    dir.join(names_file).display(),
                    names.len()
                );
                names
            }
            Err(_) => (0..num_classes).map(|i| format!("class_{i}")).collect(),
        };
        let record = label_bytes + CIFAR_PIXELS;
        let mut cifar_files = Vec::new();
        let mut read_split = |files: Vec<String>| -> Result<Vec<Item>> {
            let mut items = Vec::new();
            for f in files {
                let path = dir.join(&f);
                if !path.is_file() {
                    continue;
                }
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                ensure!(
                    bytes.len() % record == 0,
                    "`{}` is {} bytes, not a multiple of the {record}-byte CIFAR record",
                    path.display(),
                    bytes.len()
                );
                let file = cifar_files.len() as u16;
                for (i, rec) in bytes.chunks_exact(record).enumerate() {
                    // the last label byte is the label (CIFAR-100: fine after coarse)
                    let label = rec[label_bytes - 1];
                    ensure!(
                        usize::from(label) < num_classes,
                        "`{}` record {i} has label {label}, outside 0..{num_classes}",
                        path.display()
                    );
                    items.push(Item {
                        image: ImageRef::Cifar {
                            file,
                            record: i as u32,
                        },
                        label: u16::from(label),
                    });
                }
                cifar_files.push(path);
            }
            Ok(items)
        };
        let train = read_split(train_files)?;
        let test = read_split(test_files)?;
        Ok(Self {
            name,
            root: root.to_path_buf(),
            format,
            classes,
            train,
            test,
            cifar_files,
            cifar_label_bytes: label_bytes,
            idx: None,
        })
    }

    /// The items of one split.
    pub fn items(&self, split: Split) -> &[Item] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }

    /// Keeps only the images of the classes `names` (in that order: the first becomes
    /// label 0); an unknown or repeated name is an error. The dataset's name gets the
    /// classes appended (image indices change, and caches are named after it).
    pub fn restrict_classes(&mut self, names: &[String]) -> Result<()> {
        let mut map = vec![None; self.classes.len()];
        for (new, name) in names.iter().enumerate() {
            let old = self
                .classes
                .iter()
                .position(|c| c == name || c.replace('_', " ") == *name)
                .with_context(|| {
                    format!(
                        "`{}` has no class `{name}` (it has {})",
                        self.name,
                        self.classes.join(", ")
                    )
                })?;
            ensure!(map[old].is_none(), "class `{name}` is named twice");
            map[old] = Some(u16::try_from(new)?);
        }
        let keep = |items: &mut Vec<Item>| {
            items.retain_mut(|i| match map[usize::from(i.label)] {
                Some(l) => {
                    i.label = l;
                    true
                }
                None => false,
            })
        };
        keep(&mut self.train);
        keep(&mut self.test);
        self.classes = names.to_vec();
        self.name = format!("{}-{}", self.name, names.join("-").replace(' ', "_"));
        Ok(())
    }

    /// Labels of one split, in item order.
    pub fn labels(&self, split: Split) -> Vec<u16> {
        self.items(split).iter().map(|i| i.label).collect()
    }

    /// Class name as it goes into a text prompt (underscores become spaces).
    pub fn prompt_name(&self, label: u16) -> String {
        self.classes
            .get(usize::from(label))
            .map(|c| c.replace('_', " "))
            .unwrap_or_default()
    }

    /// Decodes one image.
    pub fn load(&self, item: &Item) -> Result<DynamicImage> {
        match &item.image {
            ImageRef::File(path) => {
                image::open(path).with_context(|| format!("decoding image {}", path.display()))
            }
            ImageRef::Cifar { file, record } => {
                let path = self
                    .cifar_files
                    .get(usize::from(*file))
                    .context("CIFAR file index out of range")?;
                let size = (self.cifar_label_bytes + CIFAR_PIXELS) as u64;
                let mut f =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                f.seek(SeekFrom::Start(
                    u64::from(*record) * size + self.cifar_label_bytes as u64,
                ))?;
                let mut planes = vec![0u8; CIFAR_PIXELS];
                f.read_exact(&mut planes)
                    .with_context(|| format!("reading record {record} of {}", path.display()))?;
                Ok(DynamicImage::ImageRgb8(cifar_image(&planes)))
            }
            ImageRef::Idx { split, index } => {
                let idx = self.idx.as_ref().context("not an IDX dataset")?;
                let pixels = idx.rows * idx.cols;
                let all = match split {
                    Split::Train => &idx.train,
                    Split::Test => &idx.test,
                };
                let start = *index as usize * pixels;
                let bytes = all
                    .get(start..start + pixels)
                    .with_context(|| format!("IDX image {index} out of range"))?;
                let img = GrayImage::from_raw(idx.cols as u32, idx.rows as u32, bytes.to_vec())
                    .context("IDX image buffer")?;
                Ok(DynamicImage::ImageLuma8(img))
            }
        }
    }
}

/// `<root>/<stem>` or `<root>/<stem>.gz`, whichever exists.
fn idx_file(root: &Path, stem: &str) -> Option<PathBuf> {
    [root.join(stem), root.join(format!("{stem}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Reads an IDX file of unsigned bytes, plain or gzip-compressed: its dimensions and
/// data.
fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .take(IDX_MAX_BYTES)
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {}", path.display()))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).with_context(|| format!("`{}` is not an IDX file of bytes", path.display()))
}

/// Parses IDX bytes: `00 00 08 <ndim>`, `ndim` big-endian u32 sizes, then the data.
fn parse_idx(bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    ensure!(bytes.len() >= 4, "shorter than the 4-byte magic");
    ensure!(
        bytes[0] == 0 && bytes[1] == 0,
        "bad magic {:02x}{:02x}",
        bytes[0],
        bytes[1]
    );
    ensure!(
        bytes[2] == 0x08,
        "element type 0x{:02x}: only unsigned bytes (0x08) are read",
        bytes[2]
    );
    let ndim = usize::from(bytes[3]);
    ensure!((1..=4).contains(&ndim), "{ndim} dimensions");
    let header = 4 + 4 * ndim;
    ensure!(bytes.len() >= header, "truncated header");
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("dimensions overflow")?;
    ensure!(
        bytes.len() - header == len,
        "{} data bytes for dimensions {dims:?} ({len} expected)",
        bytes.len() - header
    );
    Ok((dims, bytes[header..].to_vec()))
}

/// A 32×32 RGB image from CIFAR's planar bytes (R plane, G plane, B plane).
pub fn cifar_image(planes: &[u8]) -> RgbImage {
    RgbImage::from_fn(32, 32, |x, y| {
        let i = (y * 32 + x) as usize;
        image::Rgb([planes[i], planes[1024 + i], planes[2048 + i]])
    })
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        out.push(entry?.path());
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_image_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::synthetic::{self, SyntheticSpec};

    #[test]
    fn reads_an_image_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            classes: 3,
            train_per_class: 4,
            test_per_class: 2,
            size: 24,
            seed: 1,
        };
        let root = synthetic::write_image_folder(tmp.path(), "shapes", &spec).unwrap();
        // a stray non-image file is ignored
        std::fs::write(root.join("train").join("README.txt"), "x").unwrap();
        let first_class = root.join("train").join(&synthetic::class_names(3)[0]);
        std::fs::write(first_class.join("notes.txt"), "x").unwrap();

        let ds = Dataset::open(root.to_str().unwrap()).unwrap();
        assert_eq!(ds.format, Format::ImageFolder);
        assert_eq!(ds.name, "shapes");
        assert_eq!(ds.classes.len(), 3);
        let mut sorted = ds.classes.clone();
        sorted.sort();
        assert_eq!(ds.classes, sorted);
        assert_eq!(ds.train.len(), 12);
        assert_eq!(ds.test.len(), 6);
        for l in 0..3u16 {
            assert_eq!(
                ds.labels(Split::Train).iter().filter(|&&x| x == l).count(),
                4
            );
        }
        let img = ds.load(&ds.test[0]).unwrap();
        assert_eq!((img.width(), img.height()), (24, 24));
    }

    fn write_cifar(dir: &Path, file: &str, label_bytes: usize, labels: &[u8]) {
        let mut bytes = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            if label_bytes == 2 {
                bytes.push(l / 5); // coarse label
            }
            bytes.push(l);
            // R plane = i, G plane = 2i, B plane = pixel index (mod 256)
            bytes.extend(std::iter::repeat_n(i as u8, 1024));
            bytes.extend(std::iter::repeat_n((2 * i) as u8, 1024));
            bytes.extend((0..1024).map(|p| p as u8));
        }
        std::fs::write(dir.join(file), bytes).unwrap();
    }

    #[test]
    fn reads_cifar10_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&dir).unwrap();
        write_cifar(&dir, "data_batch_1.bin", 1, &[3, 9, 0]);
        write_cifar(&dir, "data_batch_2.bin", 1, &[1]);
        write_cifar(&dir, "test_batch.bin", 1, &[7, 2]);
        let names: Vec<String> = (0..10).map(|i| format!("name{i}")).collect();
        std::fs::write(dir.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();

        let ds = Dataset::open_dir(tmp.path()).unwrap();
        assert_eq!(ds.format, Format::Cifar10);
        assert_eq!(ds.classes, names);
        assert_eq!(ds.labels(Split::Train), [3, 9, 0, 1]);
        assert_eq!(ds.labels(Split::Test), [7, 2]);
        let img = ds.load(&ds.train[2]).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        // record 2 of the first file: R = 2, G = 4, B = pixel index
        assert_eq!(img.get_pixel(5, 1).0, [2, 4, (32 + 5) as u8]);
        let img = ds.load(&ds.train[3]).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn reads_cifar100_binary_with_fine_labels() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar(tmp.path(), "train.bin", 2, &[99, 42]);
        write_cifar(tmp.path(), "test.bin", 2, &[5]);
        let ds = Dataset::open_dir(tmp.path()).unwrap();
        assert_eq!(ds.format, Format::Cifar100);
        assert_eq!(ds.classes.len(), 100);
        assert_eq!(ds.classes[42], "class_42");
        assert_eq!(ds.labels(Split::Train), [99, 42]);
        let img = ds.load(&ds.train[1]).unwrap().to_rgb8();
        assert_eq!(img.get_pixel(0, 0).0, [1, 2, 0]);
    }

    #[test]
    fn bad_cifar_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("test_batch.bin"), [0u8; 100]).unwrap();
        let err = Dataset::open_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("not a multiple"), "{err}");
        write_cifar(tmp.path(), "test_batch.bin", 1, &[10]);
        let err = Dataset::open_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("label 10"), "{err}");
    }

    #[test]
    fn find_names_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("data").join("pets")).unwrap();
        let found = find_in("pets", Some(tmp.path())).unwrap();
        assert_eq!(found, tmp.path().join("data").join("pets"));
        let err = find_in("food101", Some(tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("food101") && err.contains("data"), "{err}");
        let err = find_in("food101", None).unwrap_err().to_string();
        assert!(err.contains(ASSETS_ENV), "{err}");
        // a path wins over the assets root
        assert_eq!(
            find_in(tmp.path().to_str().unwrap(), None).unwrap(),
            tmp.path()
        );
        // an empty folder is not a dataset
        let err = Dataset::open_dir(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("not a dataset"), "{err}");
    }

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn reads_idx_plain_and_gzipped() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("my-fashion");
        std::fs::create_dir_all(&root).unwrap();
        // two 2×3 training images (gzipped), one test image (plain)
        let train: Vec<u8> = (0..12).collect();
        std::fs::write(
            root.join("train-images-idx3-ubyte.gz"),
            gzip(&idx_bytes(&[2, 2, 3], &train)),
        )
        .unwrap();
        std::fs::write(
            root.join("train-labels-idx1-ubyte.gz"),
            gzip(&idx_bytes(&[2], &[9, 0])),
        )
        .unwrap();
        std::fs::write(
            root.join("t10k-images-idx3-ubyte"),
            idx_bytes(&[1, 2, 3], &[200; 6]),
        )
        .unwrap();
        std::fs::write(root.join("t10k-labels-idx1-ubyte"), idx_bytes(&[1], &[3])).unwrap();

        let ds = Dataset::open_dir(&root).unwrap();
        assert_eq!(ds.format, Format::Idx);
        assert_eq!(ds.classes, FASHION_MNIST_CLASSES.map(String::from).to_vec());
        assert_eq!(ds.labels(Split::Train), vec![9, 0]);
        assert_eq!(ds.labels(Split::Test), vec![3]);
        let img = ds.load(&ds.train[1]).unwrap().to_luma8();
        assert_eq!((img.width(), img.height()), (3, 2));
        assert_eq!(img.into_raw(), (6..12).collect::<Vec<u8>>());
        let img = ds.load(&ds.test[0]).unwrap().to_rgb8();
        assert!(img.pixels().all(|p| p.0 == [200, 200, 200]));

        // classes.txt names the classes when present
        std::fs::write(
            root.join("classes.txt"),
            (0..10).map(|i| format!("c{i}\n")).collect::<String>(),
        )
        .unwrap();
        assert_eq!(Dataset::open_dir(&root).unwrap().classes[9], "c9");
    }

    #[test]
    fn bad_idx_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let images = root.join("t10k-images-idx3-ubyte");
        let labels = root.join("t10k-labels-idx1-ubyte");
        std::fs::write(&labels, idx_bytes(&[2], &[1, 2])).unwrap();
        let err_of = || format!("{:#}", Dataset::open_dir(root).unwrap_err());
        // truncated data
        std::fs::write(&images, idx_bytes(&[2, 2, 2], &[0; 7])).unwrap();
        assert!(err_of().contains("7 data bytes"), "{}", err_of());
        // wrong element type (0x0D: f32)
        let mut f32s = idx_bytes(&[2, 2, 2], &[0; 8]);
        f32s[2] = 0x0d;
        std::fs::write(&images, f32s).unwrap();
        assert!(err_of().contains("only unsigned bytes"), "{}", err_of());
        // labels for a different number of images
        std::fs::write(&images, idx_bytes(&[3, 1, 1], &[0; 3])).unwrap();
        assert!(err_of().contains("labels for 3 images"), "{}", err_of());
        // not gzip after all
        std::fs::remove_file(&images).unwrap();
        std::fs::write(
            root.join("t10k-images-idx3-ubyte.gz"),
            [0x1f, 0x8b, 1, 2, 3],
        )
        .unwrap();
        assert!(err_of().contains("decompressing"), "{}", err_of());
    }

    /// The real Fashion-MNIST (Debian's `dataset-fashion-mnist`), when installed.
    #[test]
    fn reads_fashion_mnist_when_installed() {
        let Ok(root) = find("fashion-mnist") else {
            anytime_testkit::skip::data_absent(
                "reads_fashion_mnist_when_installed",
                "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)",
            );
            return;
        };
        let ds = Dataset::open_dir(&root).unwrap();
        assert_eq!((ds.train.len(), ds.test.len()), (60_000, 10_000));
        assert_eq!(ds.classes[9], "ankle boot");
        let mut counts = [0usize; 10];
        for i in &ds.test {
            counts[usize::from(i.label)] += 1;
        }
        assert_eq!(counts, [1000; 10]);
        let img = ds.load(&ds.test[0]).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28));
    }

    #[test]
    fn prompt_names_use_spaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("train").join("maple_tree");
        std::fs::create_dir_all(&dir).unwrap();
        image::RgbImage::new(4, 4).save(dir.join("a.png")).unwrap();
        let ds = Dataset::open_dir(tmp.path()).unwrap();
        assert_eq!(ds.prompt_name(0), "maple tree");
        assert!(ds.test.is_empty());
    }
}
