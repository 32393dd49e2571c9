//! Power cut at every byte of a scripted sequence of label-table updates, appends (with
//! evictions and compactions), removals and state updates. After each cut the store reopens
//! with exactly the records acknowledged before the interrupted operation (that operation's
//! own effect may be partly there), never a corrupt one, and it stays appendable.

mod common;

use anytime_core::ring::Geometry;
use anytime_core::Error;
use common::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Label(&'static str),
    Append(u16, usize),
    Remove(usize),
    State(usize),
}

fn script() -> Vec<Op> {
    use Op::*;
    let mut v = vec![
        Label("cat"),
        Append(0, 5),
        Append(0, 16),
        Label("dog"),
        State(6),
    ];
    for i in 0..14 {
        v.push(Append((i % 3 == 0) as u16, i % 17));
    }
    v.extend([Label("emu"), Remove(3), State(12), Append(2, 0)]);
    for i in 0..10 {
        v.push(Append((i % 3) as u16, 16 - i));
    }
    v.push(State(3));
    v
}

fn geo() -> Geometry {
    small_geometry(200)
}

/// Runs the script; returns the index of the op that failed (or len) and the seq list.
fn run(
    ring: &mut MemRing,
    ops: &[Op],
    after_each: &mut dyn FnMut(&mut MemRing),
) -> Result<(), (usize, Error)> {
    let mut seqs = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let r = match *op {
            Op::Label(n) => ring.label_id(n).map(|_| ()),
            Op::Append(l, len) => ring.append(l, 0, &payload(i, len)).map(|s| seqs.push(s)),
            Op::Remove(k) => ring.remove(seqs[k]).map(|_| ()),
            Op::State(len) => ring.set_state(&payload(i + 1000, len)),
        };
        r.map_err(|e| (i, e))?;
        after_each(ring);
    }
    Ok(())
}

#[test]
fn power_cut_at_every_byte() {
    let ops = script();
    // Reference run: the state after every op, and the bytes the script touches.
    let mut ring = create(geo());
    let start = ring.flash_mut().bytes_touched;
    let mut states = vec![snapshot(&mut ring)];
    run(&mut ring, &ops, &mut |r| states.push(snapshot(r))).expect("reference run");
    let total = ring.flash_mut().bytes_touched - start;
    assert!(total > 2000, "script too short: {total} bytes");
    let appended = ops.iter().filter(|o| matches!(o, Op::Append(..))).count();
    assert!(ring.len() + 1 < appended, "the script must evict");
    assert!(
        ring.segments_opened() > 2 * ring.geometry().segment_count,
        "the script must wrap around: {} segments opened",
        ring.segments_opened()
    );
    eprintln!("cutting power at each of {total} bytes");

    for k in 0..total {
        let mut ring = create(geo());
        ring.flash_mut().cut_after(k);
        let failed = match run(&mut ring, &ops, &mut |_| {}) {
            Err((i, Error::FlashFailure)) => i,
            Err((i, e)) => panic!("cut {k}: op {i} failed with {e}"),
            Ok(()) => panic!("cut {k}: script finished"),
        };
        let bytes = ring.into_flash().into_inner();
        let mut re = reopen(bytes);
        assert_eq!(re.open_report().corrupt, 0, "cut {k}");
        assert!(
            !re.open_report().is_damaged(),
            "cut {k}: {:?}",
            re.open_report()
        );
        assert_eq!(re.verify(), Ok(0), "cut {k}");
        let got = snapshot(&mut re);
        // What recovery wrote (an undone compaction, the header copy) opens the same again.
        let mut again = reopen(re.flash_mut().bytes().to_vec());
        let report = again.open_report();
        assert!(
            !report.is_damaged() && report.corrupt == 0,
            "cut {k}, opened twice: {report:?}"
        );
        assert_eq!(snapshot(&mut again), got, "cut {k}, opened twice");
        let (before, after) = (&states[failed], &states[failed + 1]);
        for (seq, rec) in &got.records {
            let known = before.records.get(seq).or(after.records.get(seq));
            assert_eq!(
                known,
                Some(rec),
                "cut {k} op {failed}: unexpected or corrupt record {seq}"
            );
        }
        for (seq, rec) in &before.records {
            if after.records.get(seq) == Some(rec) {
                assert_eq!(
                    got.records.get(seq),
                    Some(rec),
                    "cut {k} op {failed}: lost record {seq}"
                );
            }
        }
        assert!(
            got.labels == before.labels || got.labels == after.labels,
            "cut {k}: labels {:?}",
            got.labels
        );
        assert!(
            got.state == before.state || got.state == after.state,
            "cut {k}: state"
        );

        // Still appendable, and the new record survives a reopen.
        let label = re.label_id("cat").expect("label");
        let seq = re.append(label, 1, b"after the cut").unwrap_or_else(|e| {
            panic!(
                "cut {k} op {failed}: append after cut: {e} live {} {:?}",
                re.live_bytes(),
                re.geometry()
            )
        });
        let mut re2 = reopen(re.into_flash().into_inner());
        assert!(!re2.open_report().is_damaged(), "cut {k}");
        let s2 = snapshot(&mut re2);
        assert_eq!(
            s2.records.get(&seq),
            Some(&(label, b"after the cut".to_vec())),
            "cut {k}"
        );
    }
}
