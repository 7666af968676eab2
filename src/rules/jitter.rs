//! Spreading a fleet's requests in time: nodes that all saw the same change must not all
//! answer it in the same millisecond.

use std::time::Duration;

/// A random number below `n` (n > 0), from the standard library's randomly keyed hasher: good
/// enough to spread nodes over time, with no generator to seed.
pub fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    (hasher.finish() % n.max(1) as u64) as usize
}

/// The wait before the next poll: `interval` ±20%, drawn afresh each time.
pub fn jittered(interval: Duration) -> Duration {
    let fifth = interval / 5;
    let spread = (fifth * 2).as_micros().max(1) as usize;
    let offset = Duration::from_micros(random_below(spread) as u64);
    interval - fifth + offset
}
