//! A few recorded plans kept across calls, least recently used evicted.
//!
//! The learner alternates a batch-1 probe (`loss_embed`) and a batch-`B` step on the same
//! label set; with one plan per backend each call rebuilt the other's buffers and bind
//! groups. Keeping [`PLANS_KEPT`] plans lets the probe's, the step's and one more shape (a
//! rehearsal or diet batch of another size) live side by side.

/// Plans a [`PlanCache`] keeps: the probe's, the step's and one more shape.
pub(crate) const PLANS_KEPT: usize = 3;

/// Up to [`PLANS_KEPT`] plans, least recently used first.
#[derive(Debug)]
pub(crate) struct PlanCache<T> {
    kept: Vec<T>,
}

impl<T> Default for PlanCache<T> {
    fn default() -> Self {
        PlanCache { kept: Vec::new() }
    }
}

impl<T> PlanCache<T> {
    /// Makes the first plan `fits` accepts the most recently used one; whether there was
    /// one.
    pub fn touch(&mut self, fits: impl Fn(&T) -> bool) -> bool {
        match self.kept.iter().position(fits) {
            Some(i) => {
                let plan = self.kept.remove(i);
                self.kept.push(plan);
                true
            }
            None => false,
        }
    }

    /// Drops the least recently used plan while the cache is full, so that a plan about to
    /// be built does not raise the count above [`PLANS_KEPT`] even for a moment.
    pub fn make_room(&mut self) {
        while self.kept.len() >= PLANS_KEPT {
            self.kept.remove(0);
        }
    }

    /// Adds `plan` as the most recently used one (the least recently used beyond
    /// [`PLANS_KEPT`] is dropped).
    pub fn insert(&mut self, plan: T) {
        self.make_room();
        self.kept.push(plan);
    }

    /// The most recently used plan.
    pub fn current(&self) -> Option<&T> {
        self.kept.last()
    }

    /// Every kept plan.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.kept.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recently_used_plans() {
        let mut cache = PlanCache::default();
        for shape in [1, 32, 1, 32] {
            if !cache.touch(|&p| p == shape) {
                cache.insert(shape);
            }
        }
        assert_eq!(cache.iter().copied().collect::<Vec<_>>(), [1, 32]);
        assert_eq!(cache.current(), Some(&32));
        assert!(cache.touch(|&p| p == 1));
        cache.insert(7);
        cache.insert(8); // evicts 32, the least recently used
        assert_eq!(cache.iter().copied().collect::<Vec<_>>(), [1, 7, 8]);
        assert!(!cache.touch(|&p| p == 32));
        assert_eq!(cache.current(), Some(&8));
    }
}
