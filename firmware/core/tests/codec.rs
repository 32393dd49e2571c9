//! Codec properties: error falls with k, exact at k = N−1 without quantisation, the
//! ViT-B/32 record size, and malformed records rejected without panics.

use anytime_core::codec::{
    decode, encode, encode_scratch_len, encoded_len, record_shape, CodecParams,
};
use anytime_core::rng::SplitMix64;

/// Tokens with rank-`r` structure plus noise, and attention-like weights (CLS = 1, patches a
/// softmax).
fn tokens(n: usize, d: usize, r: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = SplitMix64::new(seed);
    let a: Vec<f32> = (0..n * r).map(|_| rng.normal()).collect();
    let b: Vec<f32> = (0..r * d).map(|_| rng.normal()).collect();
    let mut t = vec![0f32; n * d];
    for i in 0..n {
        for j in 0..d {
            let s: f32 = (0..r).map(|q| a[i * r + q] * b[q * d + j]).sum();
            t[i * d + j] = s + 0.5 + noise * rng.normal();
        }
    }
    let logits: Vec<f32> = (1..n).map(|_| 2.0 * rng.normal()).collect();
    let m = logits.iter().cloned().fold(f32::MIN, f32::max);
    let z: f32 = logits.iter().map(|l| (l - m).exp()).sum();
    let mut w = vec![1.0f32];
    w.extend(logits.iter().map(|l| (l - m).exp() / z));
    (t, w)
}

/// The record of `t` (weights `w`), in buffers of exactly the advertised sizes; checks that
/// `encode` reports the length `encoded_len` promised.
fn encoded(t: &[f32], w: &[f32], n: usize, d: usize, p: &CodecParams) -> Vec<u8> {
    let mut scratch = vec![0f32; encode_scratch_len(n, d, p.k as usize)];
    let mut rec = vec![0u8; encoded_len(n, d, p)];
    let len = encode(t, w, n, d, p, &mut scratch, &mut rec).unwrap();
    assert_eq!(len, rec.len());
    rec
}

fn round_trip(t: &[f32], w: &[f32], n: usize, d: usize, p: CodecParams) -> (Vec<f32>, usize) {
    let rec = encoded(t, w, n, d, &p);
    let len = rec.len();
    let mut out = vec![0f32; n * d];
    assert_eq!(decode(&rec, &mut out).unwrap(), (n, d));
    (out, len)
}

/// `‖a − b‖ / ‖a‖`; panics on a non-finite value on either side (so NaN never passes).
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    anytime_testkit::max_abs_diff(a, b);
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn error_decreases_with_k() {
    let (n, d) = (50, 64);
    let (t, w) = tokens(n, d, 12, 0.1, 1);
    for bits in [32u8, 8] {
        let mut last = f64::INFINITY;
        for k in [1u16, 2, 3, 5, 8, 12, 20] {
            let (out, _) = round_trip(
                &t,
                &w,
                n,
                d,
                CodecParams {
                    k,
                    bits,
                    weighted: true,
                },
            );
            let e = rel_err(&t, &out);
            let slack = if bits == 32 { 1e-6 } else { 5e-3 };
            assert!(e <= last + slack, "bits {bits} k {k}: {e} after {last}");
            last = e;
        }
        assert!(last < 0.05, "bits {bits}: k = 20 leaves {last}");
    }
}

#[test]
fn exact_at_n_minus_one_without_quantisation() {
    let (n, d) = (50, 64);
    let (t, w) = tokens(n, d, 60, 0.3, 2);
    for weighted in [true, false] {
        let p = CodecParams {
            k: n as u16 - 1,
            bits: 32,
            weighted,
        };
        let (out, _) = round_trip(&t, &w, n, d, p);
        let max = anytime_testkit::max_abs_diff(&t, &out);
        assert!(max < 1e-4, "weighted {weighted}: max error {max}");
    }
}

#[test]
fn vit_b32_record_size() {
    let (n, d) = (50, 768);
    let p = CodecParams::DEFAULT;
    assert!(encoded_len(n, d, &p) <= 5400, "{}", encoded_len(n, d, &p));
    let (t, w) = tokens(n, d, 5, 0.2, 3);
    let (out, len) = round_trip(&t, &w, n, d, p);
    assert!(len <= 5400);
    assert!(rel_err(&t, &out) < 0.5);
    let p4 = CodecParams { bits: 4, ..p };
    assert!(encoded_len(n, d, &p4) < 3000);
}

#[test]
fn weighting_favours_heavy_tokens() {
    // The CLS token (weight 1) lies off the patches' main structure: the weighted fit keeps it.
    let (n, d) = (50, 64);
    let (mut t, w) = tokens(n, d, 6, 0.05, 4);
    let mut rng = SplitMix64::new(5);
    for x in &mut t[..d] {
        *x = 4.0 * rng.normal();
    }
    let cls_err = |weighted| {
        let (out, _) = round_trip(
            &t,
            &w,
            n,
            d,
            CodecParams {
                k: 3,
                bits: 32,
                weighted,
            },
        );
        rel_err(&t[..d], &out[..d])
    };
    assert!(
        cls_err(true) < 0.5 * cls_err(false),
        "{} vs {}",
        cls_err(true),
        cls_err(false)
    );
}

/// The record says how it was encoded: its header gives back k, bits and the weighting,
/// for every combination; a weighted record's bits byte is the bits alone (as every record
/// written before the flag existed).
#[test]
fn the_header_records_k_bits_and_weighting() {
    let (n, d) = (10, 16);
    let (t, w) = tokens(n, d, 3, 0.05, 2);
    for bits in [4, 8, 32] {
        for weighted in [true, false] {
            let p = CodecParams {
                k: 3,
                bits,
                weighted,
            };
            let out = encoded(&t, &w, n, d, &p);
            assert_eq!(out[1] == bits, weighted, "bits byte {:#x}", out[1]);
            assert_eq!(record_shape(&out).unwrap(), (n, d, p));
        }
    }
}

#[test]
fn malformed_records_are_rejected() {
    let (n, d) = (10, 16);
    let (t, w) = tokens(n, d, 3, 0.1, 6);
    let p = CodecParams {
        k: 3,
        bits: 4,
        weighted: true,
    };
    let rec = encoded(&t, &w, n, d, &p);
    let mut out = vec![0f32; n * d];
    assert!(decode(&rec[..rec.len() - 1], &mut out).is_err());
    assert!(decode(&rec, &mut out[..n * d - 1]).is_err());
    let mut rng = SplitMix64::new(7);
    for _ in 0..2000 {
        let len = rng.below(64) as usize;
        let mut junk: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if len > 0 && rng.below(2) == 0 {
            junk[0] = 1;
        }
        let _ = decode(&junk, &mut out);
    }
    // Bad parameters.
    let mut scratch = vec![0f32; encode_scratch_len(n, d, 3)];
    let bad = CodecParams { k: 11, ..p };
    assert!(encode(&t, &w, n, d, &bad, &mut scratch, &mut rec.clone()).is_err());
    // A width other than 4, 8, 32 is refused as such, with room enough for any width
    // (not by the length check), when encoding and when reading a header.
    let mut roomy = vec![0u8; encoded_len(n, d, &CodecParams { bits: 32, ..p })];
    for bits in [0u8, 1, 5, 7, 16, 31, 33, 64] {
        let bad = CodecParams { bits, ..p };
        assert!(
            matches!(
                encode(&t, &w, n, d, &bad, &mut scratch, &mut roomy),
                Err(anytime_core::Error::InvalidShape)
            ),
            "bits {bits}"
        );
        let mut header = rec.clone();
        header[1] = bits;
        header.resize(roomy.len(), 0);
        assert!(
            matches!(
                record_shape(&header),
                Err(anytime_core::Error::CorruptCodecRecord)
            ),
            "bits {bits}"
        );
        assert!(decode(&header, &mut out).is_err(), "bits {bits}");
    }
}

/// Value `i` of a quantised row (min, max, values), the plain way.
fn value(row: &[u8], bits: u8, i: usize) -> f32 {
    let lo = f32::from_le_bytes(row[0..4].try_into().unwrap());
    let hi = f32::from_le_bytes(row[4..8].try_into().unwrap());
    match bits {
        32 => f32::from_le_bytes(row[8 + 4 * i..12 + 4 * i].try_into().unwrap()),
        8 => lo + (hi - lo) * (row[8 + i] as f32 / 255.0),
        _ => {
            let b = row[8 + i / 2];
            let q = if i.is_multiple_of(2) {
                b & 0x0F
            } else {
                b >> 4
            };
            lo + (hi - lo) * (q as f32 / 15.0)
        }
    }
}

/// `decode` gives, bit for bit, `μ_j + Σ_r c_ir v_rj` added in direction order with every
/// value read the plain way (FORMAT.md's record layout).
#[test]
fn decode_equals_the_plain_reconstruction() {
    let (n, d) = (50, 77);
    for (k, bits) in [(5u16, 8u8), (3, 4), (5, 32), (1, 8), (50, 32)] {
        let (t, w) = tokens(n, d, 4, 0.1, 7 + u64::from(k));
        let p = CodecParams {
            k,
            bits,
            weighted: true,
        };
        let rec = encoded(&t, &w, n, d, &p);
        let mut out = vec![f32::NAN; n * d];
        decode(&rec, &mut out).unwrap();

        let k = k as usize;
        let row = |m: usize| {
            8 + match bits {
                4 => m.div_ceil(2),
                8 => m,
                _ => 4 * m,
            }
        };
        let (rd, rk) = (row(d), row(k));
        let mu = &rec[8..8 + rd];
        let v = |r: usize| &rec[8 + rd + r * rd..8 + rd + (r + 1) * rd];
        let c = |i: usize| &rec[8 + rd + k * rd + i * rk..8 + rd + k * rd + (i + 1) * rk];
        for i in 0..n {
            for j in 0..d {
                let mut want = value(mu, bits, j);
                for r in 0..k {
                    let coef = value(c(i), bits, r);
                    if coef != 0.0 {
                        want += coef * value(v(r), bits, j);
                    }
                }
                assert_eq!(
                    out[i * d + j].to_bits(),
                    want.to_bits(),
                    "k {k} bits {bits}: token {i}, channel {j}"
                );
            }
        }
    }
}

/// The codec against an independent implementation: numpy's SVD of the weighted centred
/// tokens (`tests/data/codec_svd_reference.py`, which CI reruns with `--check`). For
/// k = 1…5, weighted and plain, the unquantised round trip equals numpy's reconstruction.
#[test]
fn unquantised_round_trip_equals_numpy_svd() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/codec_svd_reference.bin"
    );
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(&bytes[..8], b"SVDREF1\0", "{path}: magic");
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let (n, d, k_max) = (u32_at(8), u32_at(12), u32_at(16));
    let floats: Vec<f32> = bytes[20..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats.len(), n * d + n + 2 * k_max * n * d, "{path}: size");
    let (t, rest) = floats.split_at(n * d);
    let (w, mut recs) = rest.split_at(n);
    let scale = t.iter().fold(0f32, |m, x| m.max(x.abs()));
    for weighted in [true, false] {
        for k in 1..=k_max {
            let (want, tail) = recs.split_at(n * d);
            recs = tail;
            let p = CodecParams {
                k: k as u16,
                bits: 32,
                weighted,
            };
            let (ours, _) = round_trip(t, w, n, d, p);
            let diff = anytime_testkit::max_abs_diff(&ours, want);
            assert!(
                diff <= 1e-4 * f64::from(scale),
                "k {k}, weighted {weighted}: max |diff| {diff} (max |T| {scale})"
            );
        }
    }
}

/// `encode` owes nothing to its scratch's contents: scratch full of NaN, or left over from
/// a record of other tokens, gives the bytes a zeroed one gives.
#[test]
fn a_dirty_scratch_changes_nothing() {
    for (n, d, k, weighted) in [(50, 128, 5, true), (9, 16, 3, false), (1, 4, 1, true)] {
        let p = CodecParams {
            k,
            bits: 8,
            weighted,
        };
        let (t, w) = tokens(n, d, 4.min(n), 0.05, 17);
        let (other, _) = tokens(n, d, 2.min(n), 0.3, 18);
        let len = encode_scratch_len(n, d, k as usize);
        let mut want = vec![0u8; encoded_len(n, d, &p)];
        encode(&t, &w, n, d, &p, &mut vec![0f32; len], &mut want).unwrap();
        let mut nan = vec![f32::NAN; len];
        let mut used = vec![0f32; len];
        let mut scrap = vec![0u8; want.len()];
        encode(&other, &w, n, d, &p, &mut used, &mut scrap).unwrap();
        for scratch in [&mut nan, &mut used] {
            let mut got = vec![0u8; want.len()];
            encode(&t, &w, n, d, &p, scratch, &mut got).unwrap();
            assert_eq!(got, want, "n {n} d {d} k {k} weighted {weighted}");
        }
    }
}

/// The codec has no absolute threshold: tokens scaled by 1e-4 … 1e4 round-trip with the
/// relative error of the unscaled ones.
#[test]
fn the_round_trip_error_does_not_depend_on_the_scale() {
    let (n, d) = (50, 64);
    let (t, w) = tokens(n, d, 8, 0.05, 23);
    let p = CodecParams {
        k: 5,
        bits: 32,
        weighted: true,
    };
    let base = rel_err(&t, &round_trip(&t, &w, n, d, p).0);
    assert!(base > 1e-3, "the test needs a lossy round trip ({base})");
    for scale in [1e-4f32, 1e-2, 1e2, 1e4] {
        let ts: Vec<f32> = t.iter().map(|x| x * scale).collect();
        let err = rel_err(&ts, &round_trip(&ts, &w, n, d, p).0);
        assert!(
            (err - base).abs() <= 1e-3 * base,
            "scale {scale}: relative error {err} against {base}"
        );
    }
}

/// Directions beyond the data's rank are stored as zero rows (not normalised round-off):
/// tokens `μ + aᵢ b` (rank 1 after centring) at k = 3 keep one direction.
#[test]
fn directions_beyond_the_rank_are_zero() {
    use anytime_core::codec::quant::row_len;
    use anytime_core::codec::CODEC_HEADER_LEN;
    let (n, d) = (20, 16);
    let mut rng = SplitMix64::new(31);
    let b: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
    let mu: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
    let mut t = vec![0f32; n * d];
    for i in 0..n {
        let a = rng.normal();
        for j in 0..d {
            t[i * d + j] = mu[j] + a * b[j];
        }
    }
    let w = vec![1.0f32; n];
    for weighted in [true, false] {
        let p = CodecParams {
            k: 3,
            bits: 32,
            weighted,
        };
        let rec = encoded(&t, &w, n, d, &p);
        let rd = row_len(d, 32);
        let direction = |r: usize| {
            let row = &rec[CODEC_HEADER_LEN + rd * (1 + r)..][..rd];
            (0..d).map(|i| value(row, 32, i)).collect::<Vec<f32>>()
        };
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!(
            (norm(&direction(0)) - 1.0).abs() < 1e-5,
            "the data's direction"
        );
        for r in 1..3 {
            assert_eq!(
                direction(r),
                vec![0.0; d],
                "direction {r} (weighted {weighted})"
            );
        }
    }
}

/// Every input `encode` refuses, each alone (the others valid), with the error it names;
/// the buffers' lengths are exact: one byte or float less is refused, none more is needed.
#[test]
fn encode_refuses_each_bad_input_alone() {
    use anytime_core::Error;
    let (n, d, k) = (6usize, 5usize, 2u16);
    let (t, w) = tokens(n, d, 2, 0.1, 41);
    let p = CodecParams {
        k,
        bits: 8,
        weighted: true,
    };
    let scratch_len = encode_scratch_len(n, d, 2);
    // n·d + n² + k·d + n·k + 3n + d + k
    assert_eq!(scratch_len, 30 + 36 + 10 + 12 + 18 + 5 + 2);
    let need = encoded_len(n, d, &p);
    let run = |t: &[f32], w: &[f32], n: usize, d: usize, p: &CodecParams, s: usize, o: usize| {
        encode(t, w, n, d, p, &mut vec![0f32; s], &mut vec![0u8; o])
    };
    assert_eq!(run(&t, &w, n, d, &p, scratch_len, need), Ok(need));
    let shape = |r: Result<usize, Error>, what: &str| {
        assert!(matches!(r, Err(Error::InvalidShape)), "{what}: {r:?}");
    };
    shape(run(&t, &w, 0, d, &p, scratch_len, need), "n = 0");
    shape(run(&t, &w, n, 0, &p, scratch_len, need), "d = 0");
    shape(
        run(&t, &w, n, d, &CodecParams { k: 0, ..p }, 1 << 10, 1 << 10),
        "k = 0",
    );
    let k7 = CodecParams { k: 7, ..p };
    shape(run(&t, &w, n, d, &k7, 1 << 10, 1 << 10), "k > n");
    let wide = u16::MAX as usize + 1;
    let ones = vec![1f32; wide];
    let one = CodecParams { k: 1, ..p };
    shape(run(&ones, &ones, wide, 1, &one, 0, 0), "n > 65535");
    shape(run(&ones, &[1.0], 1, wide, &one, 0, 0), "d > 65535");
    shape(
        run(&t[1..], &w, n, d, &p, scratch_len, need),
        "tokens one short",
    );
    shape(
        run(&t, &w[1..], n, d, &p, scratch_len, need),
        "weights one short",
    );
    for bad in [f32::NAN, -1e-3, f32::INFINITY, f32::NEG_INFINITY] {
        let mut wb = w.clone();
        wb[3] = bad;
        shape(run(&t, &wb, n, d, &p, scratch_len, need), "a bad weight");
    }
    shape(
        run(&t, &vec![0.0; n], n, d, &p, scratch_len, need),
        "all weights 0",
    );
    // The edges that are allowed: a zero weight among others, k = n, and n or d of 65535
    // (refused only for the buffers given here, not for the shape).
    let mut w0 = w.clone();
    w0[3] = 0.0;
    assert_eq!(run(&t, &w0, n, d, &p, scratch_len, need), Ok(need));
    let kn = CodecParams { k: n as u16, ..p };
    let (s_kn, o_kn) = (encode_scratch_len(n, d, n), encoded_len(n, d, &kn));
    assert_eq!(run(&t, &w, n, d, &kn, s_kn, o_kn), Ok(o_kn));
    let edge = u16::MAX as usize;
    for (en, ed) in [(edge, 1), (1, edge)] {
        let ones = vec![1f32; en * ed];
        let r = run(&ones, &ones[..en], en, ed, &one, 0, 0);
        assert!(
            matches!(r, Err(Error::BufferTooSmall { .. })),
            "{en}×{ed}: {r:?}"
        );
    }
    assert_eq!(
        run(&t, &w, n, d, &p, scratch_len, need - 1),
        Err(Error::BufferTooSmall {
            needed: need as u32,
            got: need as u32 - 1
        })
    );
    assert_eq!(
        run(&t, &w, n, d, &p, scratch_len - 1, need),
        Err(Error::BufferTooSmall {
            needed: scratch_len as u32,
            got: scratch_len as u32 - 1
        })
    );
}

/// A header whose k, n or d is 0, or whose k exceeds n, is corrupt however long the record;
/// a record one byte short of its header's length is corrupt; `decode` names the room it
/// needs.
#[test]
fn record_shape_refuses_each_bad_header_field() {
    use anytime_core::Error;
    let (n, d) = (6usize, 5usize);
    let (t, w) = tokens(n, d, 2, 0.1, 43);
    let p = CodecParams {
        k: 2,
        bits: 8,
        weighted: false,
    };
    let rec = encoded(&t, &w, n, d, &p);
    let len = rec.len();
    assert_eq!(record_shape(&rec), Ok((n, d, p)));
    assert_eq!(
        record_shape(&rec[..len - 1]),
        Err(Error::CorruptCodecRecord)
    );
    for (at, value, what) in [
        (2, 0u16, "k = 0"),
        (4, 0, "n = 0"),
        (6, 0, "d = 0"),
        (2, 7, "k > n"),
    ] {
        let mut bad = rec.clone();
        bad[at..at + 2].copy_from_slice(&value.to_le_bytes());
        bad.resize(1 << 12, 0);
        assert_eq!(record_shape(&bad), Err(Error::CorruptCodecRecord), "{what}");
    }
    let mut out = vec![0f32; n * d - 1];
    assert_eq!(
        decode(&rec, &mut out),
        Err(Error::BufferTooSmall {
            needed: (n * d) as u32,
            got: (n * d - 1) as u32
        })
    );
}
