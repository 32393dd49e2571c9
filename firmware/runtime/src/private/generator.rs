//! SPEC §7's class-conditional generator `G(z, y)` of token records.
//!
//! Input: noise `z ∈ R^64` (standard normal) and the label's L2-normalised text embedding
//! `e_y` times `sqrt(E)`, so that both halves have unit scale per element. The label is
//! given by its text embedding rather than a learned per-label table: a new label is
//! conditioned from its first step, the parameters do not grow with the label set, and
//! `e_y` is the very vector the confidence loss scores the generated tokens against.
//!
//! An MLP, `h = QuickGELU(x W1ᵀ + b1)` (hidden width [`HIDDEN`]), `r = h W2ᵀ + b2`, gives a
//! record `r = [μ (D) | V (k×D) | C (N×k)]` (`k` = [`COMPONENTS`]), decoded exactly as SPEC §5
//! reconstructs, unquantised: `T̂ = C V + μ`.
//!
//! Parameter format, version 1, little-endian (the AdamW moments are not stored: each
//! consolidation trains against a new snapshot, a new objective, from the stored
//! parameters with fresh moments):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `AEGN` |
//! | 4..6 | version (u16, 1) |
//! | 6..30 | u32 each: token width `D`, tokens per image `N`, conditioning width `E`, hidden width, components `k`, noise width (64) |
//! | 30.. | f32: `W1` `[H, 64+E]`, `b1` `[H]`, `W2` `[R, H]`, `b2` `[R]` (`R = D + kD + Nk`) |
//! | last 4 | CRC-32 (ISO-HDLC) of every byte before it |

use anytime_core::rng::SplitMix64;
use anytime_linalg::{AlignedVec, Gemm, MatMut, MatRef};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

use super::codec::{checked_body, seal, write_header, Header};
use super::PrivateError;
use crate::block::{quick_gelu_rows, BlockDims};
use crate::train::adamw::adamw_update_slice;
use crate::train::TrainConfig;

/// Width of the noise `z`.
pub const NOISE: usize = 64;
/// Default hidden width of the MLP.
pub const HIDDEN: usize = 256;
/// Default number of components `k` of a record (SPEC §5's default).
pub const COMPONENTS: usize = 5;

const MAGIC: [u8; 4] = *b"AEGN";
const HEADER_LEN: usize = 30;
const WHAT: &str = "generator parameters";

/// The generator's parameter tensors, in [`GeneratorParams::tensors`] order.
pub const GENERATOR_TENSORS: [&str; 4] = ["w1", "b1", "w2", "b2"];

/// Shapes of a generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratorDims {
    /// `D`, token width.
    pub width: usize,
    /// `N`, tokens per image, CLS included.
    pub tokens: usize,
    /// `E`, width of the conditioning text embedding.
    pub embed: usize,
    /// Hidden width of the MLP.
    pub hidden: usize,
    /// `k`, components of a record.
    pub components: usize,
}

impl GeneratorDims {
    /// The generator of records for `block`'s tokens: [`HIDDEN`], [`COMPONENTS`].
    pub fn for_block(block: &BlockDims) -> Self {
        GeneratorDims {
            width: block.width,
            tokens: block.tokens,
            embed: block.embed,
            hidden: HIDDEN,
            components: COMPONENTS,
        }
    }

    /// Input width, `64 + E`.
    pub fn input(&self) -> usize {
        NOISE + self.embed
    }

    /// Record width `R = D + k·D + N·k`.
    pub fn record(&self) -> usize {
        (1 + self.components) * self.width + self.tokens * self.components
    }

    /// Trainable scalars: `W1`, `b1`, `W2`, `b2`.
    pub fn params(&self) -> usize {
        let (i, h, r) = (self.input(), self.hidden, self.record());
        h * i + h + r * h + r
    }

    /// Values of one image's tokens, `N·D`.
    pub fn tokens_len(&self) -> usize {
        self.tokens * self.width
    }

    /// Whether every dim is non-zero and fits the format's u32.
    pub fn is_valid(&self) -> bool {
        [
            self.width,
            self.tokens,
            self.embed,
            self.hidden,
            self.components,
        ]
        .iter()
        .all(|&v| v > 0 && v <= u32::MAX as usize)
    }
}

/// The MLP's tensors (PyTorch `Linear` layout, `y = x Wᵀ + b`); also the shape of their
/// gradients and AdamW moments.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorParams {
    /// `[H, 64+E]`.
    pub w1: Vec<f32>,
    /// `[H]`.
    pub b1: Vec<f32>,
    /// `[R, H]`.
    pub w2: Vec<f32>,
    /// `[R]`.
    pub b2: Vec<f32>,
}

impl GeneratorParams {
    /// All zero.
    pub fn zeros(dims: &GeneratorDims) -> Self {
        let (i, h, r) = (dims.input(), dims.hidden, dims.record());
        GeneratorParams {
            w1: vec![0.0; h * i],
            b1: vec![0.0; h],
            w2: vec![0.0; r * h],
            b2: vec![0.0; r],
        }
    }

    /// PyTorch `Linear`'s default start: every weight and bias uniform in
    /// `±1/sqrt(fan_in)`.
    pub fn init(dims: &GeneratorDims, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut p = Self::zeros(dims);
        let (s1, s2) = (
            1.0 / (dims.input() as f32).sqrt(),
            1.0 / (dims.hidden as f32).sqrt(),
        );
        for (t, s) in [
            (&mut p.w1, s1),
            (&mut p.b1, s1),
            (&mut p.w2, s2),
            (&mut p.b2, s2),
        ] {
            t.iter_mut().for_each(|x| *x = rng.gen_range(-s..s));
        }
        p
    }

    /// The tensors, in [`GENERATOR_TENSORS`] order.
    pub fn tensors(&self) -> [&[f32]; 4] {
        [&self.w1, &self.b1, &self.w2, &self.b2]
    }

    /// Mutable tensors, in [`GENERATOR_TENSORS`] order.
    pub fn tensors_mut(&mut self) -> [&mut Vec<f32>; 4] {
        [&mut self.w1, &mut self.b1, &mut self.w2, &mut self.b2]
    }

    /// Whether every tensor has the length `dims` asks for.
    pub fn matches(&self, dims: &GeneratorDims) -> bool {
        let z = Self::zeros(dims);
        let lengths = z.tensors().map(<[f32]>::len);
        self.tensors()
            .iter()
            .zip(lengths)
            .all(|(a, n)| a.len() == n)
    }
}

/// Whether AdamW decays the generator tensor `name` (the weights, not the biases).
pub fn generator_is_decayed(name: &str) -> bool {
    name.starts_with('w')
}

/// What a batch's forward leaves for its backward, and the tokens it generated.
#[derive(Clone, Debug)]
pub struct GeneratorSaved {
    pub batch: usize,
    /// The MLP's input `[B, 64+E]`.
    input: AlignedVec,
    /// QuickGELU of the hidden pre-activation `[B, H]`, and its derivative there.
    act: AlignedVec,
    dact: AlignedVec,
    /// Records `[B, R]`.
    pub record: AlignedVec,
    /// Decoded tokens `T̂ = C V + μ`, `[B, N, D]`.
    pub tokens: Vec<f32>,
}

/// The generator, its AdamW moments and step count.
#[derive(Clone, Debug, PartialEq)]
pub struct Generator {
    dims: GeneratorDims,
    pub params: GeneratorParams,
    m: GeneratorParams,
    v: GeneratorParams,
    step: u64,
}

impl Generator {
    /// A fresh generator ([`GeneratorParams::init`] of `seed`).
    pub fn new(dims: GeneratorDims, seed: u64) -> Result<Self, PrivateError> {
        Self::from_params(dims, GeneratorParams::init(&dims, seed))
    }

    /// A generator of these parameters, zero moments, step 0.
    pub fn from_params(dims: GeneratorDims, params: GeneratorParams) -> Result<Self, PrivateError> {
        if !dims.is_valid() {
            return Err(PrivateError::Invalid {
                what: "generator dims",
                why: "every dim must be between 1 and 2³² − 1",
            });
        }
        let zeros = GeneratorParams::zeros(&dims);
        for ((name, t), z) in GENERATOR_TENSORS
            .iter()
            .zip(params.tensors())
            .zip(zeros.tensors())
        {
            if t.len() != z.len() {
                return Err(PrivateError::Shape {
                    what: name,
                    expected: z.len(),
                    found: t.len(),
                });
            }
            if t.iter().any(|v| !v.is_finite()) {
                return Err(PrivateError::NonFinite { what: name });
            }
        }
        Ok(Generator {
            dims,
            params,
            m: zeros.clone(),
            v: zeros,
            step: 0,
        })
    }

    pub fn dims(&self) -> GeneratorDims {
        self.dims
    }

    /// Updates applied so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// `batch` noise vectors `[B, 64]`, standard normal, from SplitMix64 of `seed` (the
    /// same values on every platform).
    pub fn noise(batch: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..batch * NOISE).map(|_| rng.normal()).collect()
    }

    /// Forward of a batch (`B ≥ 1`): noise `z` `[B, 64]`, conditioning text embeddings
    /// `cond` `[B, E]` (L2-normalised), to records and tokens.
    pub fn forward(
        &self,
        gemm: &Gemm,
        z: &[f32],
        cond: &[f32],
        batch: usize,
    ) -> Result<GeneratorSaved, PrivateError> {
        let d = &self.dims;
        let (e, i, h, r) = (d.embed, d.input(), d.hidden, d.record());
        if batch == 0 {
            return Err(PrivateError::Invalid {
                what: "generator batch",
                why: "no sample",
            });
        }
        for (what, expected, found) in [
            ("noise (B·64)", batch * NOISE, z.len()),
            ("conditioning (B·E)", batch * e, cond.len()),
        ] {
            if expected != found {
                return Err(PrivateError::Shape {
                    what,
                    expected,
                    found,
                });
            }
        }
        if z.iter().chain(cond).any(|v| !v.is_finite()) {
            return Err(PrivateError::NonFinite {
                what: "noise or conditioning",
            });
        }
        let scale = (e as f32).sqrt();
        let mut input = gemm.zeros(batch * i);
        for ((row, zr), cr) in input
            .chunks_exact_mut(i)
            .zip(z.chunks_exact(NOISE))
            .zip(cond.chunks_exact(e))
        {
            row[..NOISE].copy_from_slice(zr);
            row[NOISE..]
                .iter_mut()
                .zip(cr)
                .for_each(|(x, &c)| *x = scale * c);
        }
        let mut act = gemm.zeros(batch * h);
        broadcast(&mut act, &self.params.b1);
        gemm.matmul(
            MatRef::new(&input, batch, i, i),
            MatRef::new(&self.params.w1, h, i, i).t(),
            MatMut::new(&mut act, batch, h, h),
            true,
        );
        let mut dact = gemm.zeros(batch * h);
        quick_gelu_rows(&mut act, &mut dact, h);
        let mut record = gemm.zeros(batch * r);
        broadcast(&mut record, &self.params.b2);
        gemm.matmul(
            MatRef::new(&act, batch, h, h),
            MatRef::new(&self.params.w2, r, h, h).t(),
            MatMut::new(&mut record, batch, r, r),
            true,
        );
        let mut tokens = vec![0.0f32; batch * d.tokens_len()];
        tokens
            .par_chunks_mut(d.tokens_len())
            .zip(record.par_chunks(r))
            .for_each(|(t, rec)| decode(d, rec, t));
        Ok(GeneratorSaved {
            batch,
            input,
            act,
            dact,
            record,
            tokens,
        })
    }

    /// The gradients of every parameter given `d_tokens` (`[B, N, D]`, the gradient of a
    /// loss by the tokens of `saved`).
    pub fn backward(
        &self,
        gemm: &Gemm,
        saved: &GeneratorSaved,
        d_tokens: &[f32],
    ) -> GeneratorParams {
        let d = &self.dims;
        let (i, h, r, batch) = (d.input(), d.hidden, d.record(), saved.batch);
        assert_eq!(
            d_tokens.len(),
            batch * d.tokens_len(),
            "d_tokens must be [B, N, D]"
        );
        let mut d_rec = gemm.zeros(batch * r);
        d_rec
            .par_chunks_mut(r)
            .zip(saved.record.par_chunks(r))
            .zip(d_tokens.par_chunks(d.tokens_len()))
            .for_each(|((dr, rec), dt)| decode_backward(d, rec, dt, dr));

        let mut g = GeneratorParams::zeros(d);
        gemm.matmul(
            MatRef::new(&d_rec, batch, r, r).t(),
            MatRef::new(&saved.act, batch, h, h),
            MatMut::new(&mut g.w2, r, h, h),
            false,
        );
        column_sums(&d_rec, &mut g.b2);
        let mut d_pre = gemm.zeros(batch * h);
        gemm.matmul(
            MatRef::new(&d_rec, batch, r, r),
            MatRef::new(&self.params.w2, r, h, h),
            MatMut::new(&mut d_pre, batch, h, h),
            false,
        );
        d_pre
            .iter_mut()
            .zip(saved.dact.iter())
            .for_each(|(g, &s)| *g *= s);
        gemm.matmul(
            MatRef::new(&d_pre, batch, h, h).t(),
            MatRef::new(&saved.input, batch, i, i),
            MatMut::new(&mut g.w1, h, i, i),
            false,
        );
        column_sums(&d_pre, &mut g.b1);
        g
    }

    /// One AdamW update of every tensor by `grads` (the weights decayed, the biases not:
    /// [`generator_is_decayed`]), as a step of this generator's own count.
    pub fn update(&mut self, cfg: &TrainConfig, grads: &GeneratorParams) {
        assert!(grads.matches(&self.dims), "gradients do not match the dims");
        self.step += 1;
        let parts = self
            .params
            .tensors_mut()
            .into_iter()
            .zip(grads.tensors())
            .zip(self.m.tensors_mut().into_iter().zip(self.v.tensors_mut()))
            .zip(GENERATOR_TENSORS);
        for (((p, g), (m, v)), name) in parts {
            let decay = generator_is_decayed(name);
            adamw_update_slice(cfg, self.step, decay, p, g, m, v);
        }
    }

    /// `count` token sets `[count, N, D]` of the label whose L2-normalised text embedding
    /// is `text` (`[E]`), from the noise of `seed` ([`Self::noise`]); none for `count` 0.
    pub fn generate(
        &self,
        text: &[f32],
        count: usize,
        seed: u64,
    ) -> Result<Vec<f32>, PrivateError> {
        let e = self.dims.embed;
        if text.len() != e {
            return Err(PrivateError::Shape {
                what: "text embedding (E)",
                expected: e,
                found: text.len(),
            });
        }
        if count == 0 {
            return Ok(Vec::new());
        }
        let cond: Vec<f32> = text.iter().copied().cycle().take(count * e).collect();
        let z = Self::noise(count, seed);
        Ok(self.forward(&Gemm::default(), &z, &cond, count)?.tokens)
    }

    /// Bytes of the encoding of a generator of `dims`.
    pub fn encoded_len(dims: &GeneratorDims) -> usize {
        HEADER_LEN + 4 * dims.params() + 4
    }

    /// The version 1 encoding of the parameters (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let d = &self.dims;
        let mut out = Vec::with_capacity(Self::encoded_len(d));
        let fields = [d.width, d.tokens, d.embed, d.hidden, d.components, NOISE];
        write_header(&mut out, MAGIC, &fields);
        for t in self.params.tensors() {
            t.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        seal(&mut out);
        out
    }

    /// Reads a version 1 encoding for a generator of `dims`: length, magic, version, every
    /// dim and the checksum are checked, and every value must be finite. The moments start
    /// at zero, the step count at 0.
    pub fn from_bytes(bytes: &[u8], dims: &GeneratorDims) -> Result<Self, PrivateError> {
        if !dims.is_valid() {
            return Err(PrivateError::Invalid {
                what: "generator dims",
                why: "every dim must be between 1 and 2³² − 1",
            });
        }
        let expected = Self::encoded_len(dims);
        let header = Header {
            what: WHAT,
            magic: MAGIC,
            len: HEADER_LEN,
            short: expected,
            fields: &[
                ("width", 6, dims.width),
                ("tokens per image", 10, dims.tokens),
                ("conditioning width", 14, dims.embed),
                ("hidden width", 18, dims.hidden),
                ("components", 22, dims.components),
                ("noise width", 26, NOISE),
            ],
        };
        let body = checked_body(bytes, &header, |_| expected)?;
        let mut floats = body[HEADER_LEN..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")));
        let mut params = GeneratorParams::zeros(dims);
        for t in params.tensors_mut() {
            t.iter_mut()
                .for_each(|x| *x = floats.next().expect("the length was checked"));
        }
        Self::from_params(*dims, params)
    }
}

/// Every row of `c` set to `bias`.
fn broadcast(c: &mut [f32], bias: &[f32]) {
    for row in c.chunks_exact_mut(bias.len()) {
        row.copy_from_slice(bias);
    }
}

/// Column sums of `dy` (`[rows, n]`) into `db` (`[n]`).
fn column_sums(dy: &[f32], db: &mut [f32]) {
    db.fill(0.0);
    for row in dy.chunks_exact(db.len()) {
        db.iter_mut().zip(row).for_each(|(g, &x)| *g += x);
    }
}

/// The parts `(μ, V, C)` of one record.
fn parts<'r>(d: &GeneratorDims, rec: &'r [f32]) -> (&'r [f32], &'r [f32], &'r [f32]) {
    let (mu, rest) = rec.split_at(d.width);
    let (v, c) = rest.split_at(d.components * d.width);
    (mu, v, c)
}

/// One record to its tokens `T̂ = C V + μ` (`[N, D]`).
fn decode(d: &GeneratorDims, rec: &[f32], t: &mut [f32]) {
    let (mu, v, c) = parts(d, rec);
    for (row, cr) in t
        .chunks_exact_mut(d.width)
        .zip(c.chunks_exact(d.components))
    {
        row.copy_from_slice(mu);
        for (&cj, vj) in cr.iter().zip(v.chunks_exact(d.width)) {
            row.iter_mut().zip(vj).for_each(|(x, &w)| *x += cj * w);
        }
    }
}

/// The gradient by one record (`dr`) given its tokens' gradient `dt` (`[N, D]`):
/// `dμ = Σ_n dT_n`, `dV_j = Σ_n C_nj dT_n`, `dC_nj = dT_n · V_j`.
fn decode_backward(d: &GeneratorDims, rec: &[f32], dt: &[f32], dr: &mut [f32]) {
    let (_, v, c) = parts(d, rec);
    let (dmu, rest) = dr.split_at_mut(d.width);
    let (dv, dc) = rest.split_at_mut(d.components * d.width);
    dmu.fill(0.0);
    dv.fill(0.0);
    for ((g, cr), dcr) in dt
        .chunks_exact(d.width)
        .zip(c.chunks_exact(d.components))
        .zip(dc.chunks_exact_mut(d.components))
    {
        dmu.iter_mut().zip(g).for_each(|(s, &x)| *s += x);
        for ((&cj, dvj), (vj, dcj)) in cr
            .iter()
            .zip(dv.chunks_exact_mut(d.width))
            .zip(v.chunks_exact(d.width).zip(dcr.iter_mut()))
        {
            dvj.iter_mut().zip(g).for_each(|(s, &x)| *s += cj * x);
            *dcj = vj.iter().zip(g).map(|(&a, &b)| a * b).sum();
        }
    }
}
