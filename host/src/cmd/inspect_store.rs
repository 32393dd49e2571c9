//! `inspect-store`: prints a store's header, labels and counts per label, bytes used, and
//! verifies every CRC. Works on an in-memory copy of the file, read under a shared lock
//! (a writer beside it never tears it), so the file is never modified (opening a store can
//! repair it, e.g. undo an interrupted compaction; the copy absorbs that). Exits with an
//! error when the store is unreadable or damaged, saying what is lost; `--repair` writes a
//! store with every intact record and keeps the damaged file beside it.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use anytime_core::mem_flash::MemFlash;
use anytime_core::ring::layout::{STORE_HEADER_LEN, STORE_MAGIC};
use anytime_core::ring::{LabelRef, RecordRef, Ring, MAX_LABEL_NAME};
use anytime_runtime::learner::{folder_is_private, DietRecord, PrivateRecord};
use anytime_runtime::private::{StatsFile, StatsTable};
use anytime_runtime::store::{read_locked, Store};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store file.
    path: PathBuf,
    /// Also list every live record (sequence, label, flags, payload bytes).
    #[arg(long)]
    records: bool,
    /// Write a fresh store with every intact record (those of segments whose header is
    /// unreadable included), keeping the damaged file as `PATH.damaged`; then inspect it.
    /// Refused while a learner writes the store.
    #[arg(long)]
    repair: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.repair {
        let r = Store::repair(&args.path)?;
        println!(
            "repaired       {} records kept ({} from unreadable segments), {} labels, {}",
            r.records,
            r.recovered,
            r.labels,
            if r.state {
                "the state blob"
            } else {
                "no state blob"
            }
        );
        if r.missing_bytes > 0 {
            println!(
                "               the file was {} bytes short; the missing end read as erased",
                r.missing_bytes
            );
        }
        println!(
            "               the damaged file is kept as {}",
            r.kept_as.display()
        );
        println!();
    }
    let bytes = read_locked(&args.path)?;
    let file_len = bytes.len() as u64;
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
    let stats = print_mode(&args.path)?;
    println!();
    match &stats {
        Some(_) => println!("{:>6}  {:>8}  {:>10}  name", "id", "records", "statistics"),
        None => println!("{:>6}  {:>8}  name", "id", "records"),
    }
    for id in 0..ring.labels().len() {
        let count = ring.labels()[id].count;
        let mut buf = [0u8; MAX_LABEL_NAME];
        let name = match ring.label_name(id as u16, &mut buf) {
            Ok(s) => s.to_string(),
            Err(e) => format!("<{e}>"),
        };
        match &stats {
            Some(t) => {
                let n = t.get(id as u16).map_or(0, |s| s.samples());
                println!("{id:>6}  {count:>8}  {n:>10}  {name}");
            }
            None => println!("{id:>6}  {count:>8}  {name}"),
        }
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
    print_diet(&args.path)?;
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
    let mut findings = Vec::new();
    if report.header_from_copy {
        findings.push("the store header is unreadable; its copy was used".to_string());
    }
    if report.corrected > 0 {
        findings.push(format!(
            "{} headers had a flipped bit (corrected when read)",
            report.corrected
        ));
    }
    if report.damaged_segments > 0 {
        findings.push(format!(
            "{} segments have an unreadable header: the {} intact records in them are not read",
            report.damaged_segments, report.unreachable
        ));
    }
    if report.corrupt > 0 || bad > 0 {
        findings.push(format!(
            "{} corrupt records or unreadable runs of bytes: what they held is lost",
            report.corrupt + bad
        ));
    }
    println!(
        "damage         {}",
        if findings.is_empty() {
            "none".to_string()
        } else {
            findings.join("; ")
        }
    );
    if !findings.is_empty() {
        let hint = if report.is_damaged() || bad > 0 {
            "a learner refuses to write it until"
        } else {
            "nothing is lost;"
        };
        bail!(
            "{} is damaged: {}; {hint} `anytime-host inspect-store --repair {}` writes a store with every intact record",
            args.path.display(),
            findings.join("; "),
            args.path.display()
        );
    }
    Ok(())
}

/// Prints the learner's mode (from `learner.json` beside the store) and, for a private
/// learner (SPEC §7), its consolidations; returns its per-label token statistics.
fn print_mode(path: &std::path::Path) -> Result<Option<StatsTable>> {
    let Some(dir) = path.parent() else {
        return Ok(None);
    };
    match folder_is_private(dir)? {
        None => Ok(None),
        Some(false) => {
            println!("mode           normal");
            Ok(None)
        }
        Some(true) => {
            let record = PrivateRecord::read(dir)?.unwrap_or_default();
            println!(
                "mode           private (SPEC §7): no token record; per-label statistics in stats.bin (CLS tokens: cls_stats.bin)"
            );
            println!(
                "consolidations {} (the last at sample {}); {} old labels",
                record.consolidations,
                record.learned_at,
                record.old_labels.len()
            );
            let stats_path = dir.join("stats.bin");
            if !stats_path.exists() {
                return Ok(Some(StatsTable::new(1, 1)?));
            }
            let t = StatsFile::read_found(&stats_path)?;
            Ok(Some(t))
        }
    }
}

/// The diet settings and the last time step's budget use (SPEC §8) of the learner folder
/// holding the store `path`, if it learns on a diet.
fn print_diet(path: &std::path::Path) -> Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let Some(r) = DietRecord::read(dir)? else {
        return Ok(());
    };
    let c = &r.config;
    println!();
    println!(
        "diet           S = {} steps (batch {}) a time step, S* = {}; a time step: {}",
        c.budget, c.batch, c.s_star, c.window
    );
    println!(
        "               holds up to {} unlabelled and {} labelled samples in memory, never on flash",
        c.unlabelled_capacity, c.labelled_capacity
    );
    match &r.last {
        Some(t) => {
            let b = &t.budget;
            println!(
                "time steps     {} ended; the last: {} of {} steps used (L_m {}, L_r {}, L_b {}; {} at 0.1x lr), {} labelled, {} unlabelled, {} dropped",
                r.time_steps, b.used, b.total, b.current, b.masked, b.balanced, b.reduced_lr,
                t.labelled, t.unlabelled, t.dropped
            );
        }
        None => println!("time steps     {} ended", r.time_steps),
    }
    Ok(())
}
