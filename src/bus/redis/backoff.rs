//! The delays between attempts to reach Redis again.

use std::time::Duration;

/// The delay before attempt `attempt` (from 0): doubling from `min` up to `max`, randomised
/// between half and all of it, so instances do not retry in lockstep.
pub(super) fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    let base = min.checked_mul(factor).unwrap_or(max).min(max);
    let unit = (crate::random::u64() >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(0.5 + unit / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in [0, 1, 5, 31, 32, u32::MAX] {
            let delay = backoff(min, max, attempt);
            let base = min
                .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .unwrap_or(max)
                .min(max);
            assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
        }
    }
}
