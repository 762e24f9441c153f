//! Requests to Redis under a time limit, and the errors they become.

use std::{future::Future, time::Duration};

use ::redis::RedisResult;
use tokio::time::timeout;

use crate::error::{BusError, BusErrorKind};

/// An error for which [`BusError::is_unavailable`] is true.
pub(super) fn unavailable(reason: impl Into<String>) -> BusError {
    BusError::new(BusErrorKind::Unavailable(reason.into()))
}

/// A duration as the milliseconds Redis takes, at least 1.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Runs `request` (`what`, for messages) for at most `limit`; a failure or timeout becomes a
/// one-line reason naming `server`.
pub(super) async fn timed<T>(
    server: &str,
    what: &str,
    limit: Duration,
    request: impl Future<Output = RedisResult<T>>,
) -> Result<T, String> {
    match timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what} failed: {e}")),
        Err(_elapsed) => Err(format!("{server} did not answer {what} within {limit:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_at_least_one() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
