//! `inspect-store`: prints a store's header, labels and counts per label, bytes used, and
//! verifies every CRC. Works on an in-memory copy of the file, so the file is never modified
//! (opening a store can repair it, e.g. undo an interrupted compaction; the copy absorbs that).
//! Exits with an error when the store is unreadable or any record fails its CRC.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::layout::{STORE_HEADER_LEN, STORE_MAGIC};
use anytime_core::ring::{LabelRef, RecordRef, Ring, MAX_LABEL_NAME};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store file.
    path: PathBuf,
    /// Also list every live record (sequence, label, flags, payload bytes).
    #[arg(long)]
    records: bool,
}

pub fn run(args: Args) -> Result<()> {
    let bytes =
        std::fs::read(&args.path).with_context(|| format!("reading {}", args.path.display()))?;
    let file_len = bytes.len() as u64;
    if file_len > u32::MAX as u64 {
        bail!(
            "{}: {} bytes exceed the 4 GiB a store can address",
            args.path.display(),
            file_len
        );
    }
    if bytes.len() >= STORE_HEADER_LEN && bytes[..8] == STORE_MAGIC {
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        println!(
            "file           {} ({} bytes)",
            args.path.display(),
            file_len
        );
        println!("magic          {}", String::from_utf8_lossy(&bytes[..8]));
        println!("format version {version}");
    }
    let flash = MemFlash::new(bytes, anytime_runtime::store::FILE_ERASE_SIZE);
    let mut ring: Ring<_, Vec<RecordRef>, Vec<LabelRef>> =
        Ring::open(flash, Vec::new(), Vec::new())
            .with_context(|| format!("opening {}", args.path.display()))?;
    let g = *ring.geometry();
    let report = ring.open_report();
    println!(
        "segments       {} × {} bytes (+ header block)",
        g.segment_count, g.segment_size
    );
    println!(
        "max record     {} bytes (payload ≤ {})",
        g.max_record,
        g.max_payload()
    );
    println!(
        "capacity       {} bytes; live {} bytes ({:.1}%)",
        g.capacity,
        ring.live_bytes(),
        100.0 * ring.live_bytes() as f64 / g.capacity as f64
    );
    println!(
        "active segs    {} of {}; segments opened since creation {}",
        report.active_segments,
        g.segment_count,
        ring.segments_opened()
    );
    println!("records        {}", ring.len());
    let state = ring.state_len();
    println!(
        "state blob     {}",
        state.map_or("none".to_string(), |n| format!("{n} bytes"))
    );
    println!();
    println!("{:>6}  {:>8}  name", "id", "records");
    for id in 0..ring.labels().len() {
        let count = ring.labels()[id].count;
        let mut buf = [0u8; MAX_LABEL_NAME];
        let name = match ring.label_name(id as u16, &mut buf) {
            Ok(s) => s.to_string(),
            Err(e) => format!("<{e}>"),
        };
        println!("{id:>6}  {count:>8}  {name}");
    }
    if args.records {
        println!();
        println!(
            "{:>10}  {:>6}  {:>5}  {:>8}  offset",
            "seq", "label", "flags", "bytes"
        );
        for r in ring.records() {
            println!(
                "{:>10}  {:>6}  {:>5}  {:>8}  {}",
                r.seq, r.label, r.flags, r.len, r.offset
            );
        }
    }
    let bad = ring.verify().context("verifying CRCs")?;
    println!();
    println!(
        "CRC check      {} live records re-read, {} fail; at open: {} corrupt skipped, {} torn writes, {} duplicates",
        ring.len(),
        bad,
        report.corrupt,
        report.torn,
        report.duplicates
    );
    if bad > 0 || report.corrupt > 0 {
        bail!(
            "{}: {} corrupt records",
            args.path.display(),
            bad + report.corrupt
        );
    }
    Ok(())
}
