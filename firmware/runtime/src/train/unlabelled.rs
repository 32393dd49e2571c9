//! A time step's unlabelled token sets, kept for `L_r` (SPEC §8) until the time step ends.
//!
//! Bounded by a capacity in samples; when full, a new sample replaces the oldest (the
//! stream's newest samples are the ones `L_r` should adapt to, and the count of dropped
//! samples is reported). [`UnlabelledBuffer::end_of_time_step`] zeroes and frees every
//! sample: nothing unlabelled outlives its time step.

use std::collections::VecDeque;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::TrainError;
use crate::block::BlockDims;

/// Raw `[N, D]` input token sets of the last block, at most `capacity` of them.
#[derive(Debug)]
pub struct UnlabelledBuffer {
    sample_len: usize,
    capacity: usize,
    samples: VecDeque<Vec<f32>>,
    dropped: u64,
}

impl UnlabelledBuffer {
    /// An empty buffer of token sets of `dims` (`N·D` values each), holding at most
    /// `capacity` of them (0: none is kept).
    pub fn new(dims: &BlockDims, capacity: usize) -> Self {
        UnlabelledBuffer {
            sample_len: dims.tokens_len(),
            capacity,
            samples: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Adds one token set (`[N, D]`, finite); when the buffer is full the oldest is
    /// dropped for it. Returns whether a sample was dropped.
    pub fn push(&mut self, tokens: &[f32]) -> Result<bool, TrainError> {
        if tokens.len() != self.sample_len {
            return Err(TrainError::Shape {
                what: "unlabelled token set (N·D)",
                expected: self.sample_len,
                found: tokens.len(),
            });
        }
        if tokens.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite {
                what: "unlabelled token set",
            });
        }
        if self.capacity == 0 {
            self.dropped += 1;
            return Ok(true);
        }
        let full = self.samples.len() == self.capacity;
        let slot = if full {
            self.dropped += 1;
            let mut oldest = self
                .samples
                .pop_front()
                .expect("a full buffer is not empty");
            oldest.copy_from_slice(tokens);
            oldest
        } else {
            tokens.to_vec()
        };
        self.samples.push_back(slot);
        Ok(full)
    }

    /// Token sets held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no token set is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The most token sets held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Token sets dropped (or refused by a zero capacity) since the time step began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes of token data allocated (at most `capacity·N·D·4`).
    pub fn bytes(&self) -> usize {
        self.samples.iter().map(|s| s.capacity() * 4).sum()
    }

    /// The `i`-th token set held, oldest first.
    pub fn get(&self, i: usize) -> Option<&[f32]> {
        self.samples.get(i).map(|s| &s[..])
    }

    /// `[B, N, D]`: `min(size, len)` distinct token sets drawn by `seed`, in the order
    /// drawn (empty when the buffer is).
    pub fn batch(&self, size: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        let b = size.min(order.len());
        let mut out = Vec::with_capacity(b * self.sample_len);
        for i in 0..b {
            let j = rng.gen_range(i..order.len());
            order.swap(i, j);
            out.extend_from_slice(&self.samples[order[i]]);
        }
        out
    }

    /// Ends the time step: every token set is overwritten with zeros and freed, and the
    /// dropped count restarts.
    pub fn end_of_time_step(&mut self) {
        for s in &mut self.samples {
            s.fill(0.0);
            std::hint::black_box(&s[..]);
        }
        self.samples = VecDeque::new();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIMS: BlockDims = BlockDims::TEST;

    fn sample(i: usize) -> Vec<f32> {
        (0..DIMS.tokens_len())
            .map(|j| (i * 100 + j) as f32)
            .collect()
    }

    #[test]
    fn a_full_buffer_drops_its_oldest_and_never_holds_more_than_its_capacity() {
        let mut buf = UnlabelledBuffer::new(&DIMS, 3);
        let per = DIMS.tokens_len() * 4;
        for i in 0..10 {
            let dropped = buf.push(&sample(i)).unwrap();
            assert_eq!(dropped, i >= 3);
            assert!(buf.len() <= 3);
            assert!(buf.bytes() <= 3 * per, "{} bytes", buf.bytes());
        }
        assert_eq!((buf.len(), buf.dropped()), (3, 7));
        let held: Vec<&[f32]> = (0..3).map(|i| buf.get(i).unwrap()).collect();
        assert_eq!(held, [&sample(7)[..], &sample(8)[..], &sample(9)[..]]);
        assert!(buf.get(3).is_none());
        // Wrong shapes and NaN are refused and change nothing.
        assert!(matches!(buf.push(&[0.0; 5]), Err(TrainError::Shape { .. })));
        let mut nan = sample(11);
        nan[2] = f32::NAN;
        assert!(matches!(buf.push(&nan), Err(TrainError::NonFinite { .. })));
        assert_eq!((buf.len(), buf.get(0).unwrap()), (3, &sample(7)[..]));
        // A zero capacity keeps nothing.
        let mut none = UnlabelledBuffer::new(&DIMS, 0);
        assert!(none.push(&sample(0)).unwrap());
        assert_eq!((none.len(), none.bytes(), none.dropped()), (0, 0, 1));
    }

    #[test]
    fn nothing_outlives_the_time_step() {
        let mut buf = UnlabelledBuffer::new(&DIMS, 4);
        for i in 0..6 {
            buf.push(&sample(i)).unwrap();
        }
        assert_eq!(buf.batch(8, 1).len(), 4 * DIMS.tokens_len());
        buf.end_of_time_step();
        assert!(buf.is_empty());
        assert_eq!((buf.len(), buf.bytes(), buf.dropped()), (0, 0, 0));
        assert_eq!(buf.samples.capacity(), 0, "the slots are still allocated");
        assert!(buf.get(0).is_none());
        assert!(buf.batch(8, 1).is_empty());
        // The next time step starts afresh, with the same bound.
        for i in 10..15 {
            buf.push(&sample(i)).unwrap();
        }
        assert_eq!((buf.len(), buf.dropped()), (4, 1));
        assert_eq!(buf.get(0).unwrap(), &sample(11)[..]);
    }

    #[test]
    fn a_batch_draws_distinct_samples_by_its_seed() {
        let mut buf = UnlabelledBuffer::new(&DIMS, 10);
        for i in 0..10 {
            buf.push(&sample(i)).unwrap();
        }
        let per = DIMS.tokens_len();
        let firsts = |b: &[f32]| -> Vec<usize> {
            b.chunks_exact(per).map(|s| s[0] as usize / 100).collect()
        };
        let a = firsts(&buf.batch(4, 7));
        assert_eq!(a.len(), 4);
        let mut d = a.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), 4, "a sample drawn twice: {a:?}");
        assert_eq!(a, firsts(&buf.batch(4, 7)), "same seed");
        assert_ne!(a, firsts(&buf.batch(4, 8)), "another seed");
        let all = firsts(&buf.batch(20, 3));
        let mut sorted = all.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        for (s, i) in buf.batch(10, 3).chunks_exact(per).zip(&all) {
            assert_eq!(s, &sample(*i)[..]);
        }
    }
}
