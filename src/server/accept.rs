//! Accepting connections without spinning when the process runs out of a resource.
//!
//! `accept` fails at once, again and again, while the process is out of file descriptors
//! (`EMFILE`, `ENFILE`), memory (`ENOMEM`) or socket buffers (`ENOBUFS`): the pending
//! connection stays in the kernel's queue and the listener stays readable. Retrying at once
//! burns a core. Such errors back off instead, from 5 ms doubling up to 200 ms (a success
//! starts over), and are logged once per episode: a warning at its first failure, a note at
//! the first success 10 s after its last failure. Near the limit, accepts succeed and fail by
//! turns as connections close and open: that is one episode, not one per connection.
//! Errors that concern only the connection being accepted (it was reset or aborted before
//! being accepted) are skipped at once.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_millis(200);
/// An episode ends with a success this long after its last failure.
const QUIET: Duration = Duration::from_secs(10);

/// A listener and the state of its current accept-error episode.
#[derive(Debug)]
pub(super) struct Acceptor {
    listener: TcpListener,
    backoff: Backoff,
}

impl Acceptor {
    pub(super) fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            backoff: Backoff::default(),
        }
    }

    /// The next connection. Cancel-safe: cancelled while backing off, it accepts nothing.
    pub(super) async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff.succeeded();
                    return accepted;
                }
                Err(e) if concerns_one_connection(&e) => {
                    tracing::debug!(error = %e, "a connection failed before it was accepted");
                }
                Err(e) => tokio::time::sleep(self.backoff.failed(&e)).await,
            }
        }
    }
}

/// Errors after which the next `accept` may well succeed at once.
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Exponential backoff, and the episode of failures it belongs to.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// Failures since the last success.
    consecutive: u32,
    episode: Option<Episode>,
}

#[derive(Debug)]
struct Episode {
    failures: u64,
    since: Instant,
    last: Instant,
}

impl Backoff {
    /// Records a failure; returns how long to wait before the next attempt.
    pub(super) fn failed(&mut self, error: &io::Error) -> Duration {
        let now = Instant::now();
        match &mut self.episode {
            Some(episode) if now.duration_since(episode.last) < QUIET => {
                episode.failures += 1;
                episode.last = now;
            }
            _ => {
                tracing::warn!(
                    %error,
                    "cannot accept connections (out of file descriptors or memory?); retrying \
                     with backoff; lower the connection cap or raise the limit"
                );
                self.episode = Some(Episode {
                    failures: 1,
                    since: now,
                    last: now,
                });
            }
        }
        let doublings = self.consecutive.min(16);
        self.consecutive = self.consecutive.saturating_add(1);
        FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
    }

    /// Records a success: the backoff starts over, and a quiet one ends the episode.
    pub(super) fn succeeded(&mut self) {
        self.consecutive = 0;
        let Some(episode) = &self.episode else { return };
        if episode.last.elapsed() >= QUIET {
            tracing::info!(
                failed_attempts = episode.failures,
                lasted = ?episode.last.duration_since(episode.since),
                "accepting connections again"
            );
            self.episode = None;
        }
    }

    /// Whether an episode of failures is going on.
    #[cfg(test)]
    fn in_episode(&self) -> bool {
        self.episode.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    #[tokio::test(start_paused = true)]
    async fn doubles_up_to_the_maximum_and_starts_over() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.failed(&emfile())).collect();
        let ms = Duration::from_millis;
        let expected = [5, 10, 20, 40, 80, 160, 200, 200].map(ms);
        assert_eq!(delays, expected);
        for _ in 0..100 {
            assert_eq!(backoff.failed(&emfile()), MAX_DELAY);
        }
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile()), FIRST_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_between_failures_do_not_end_the_episode() {
        let mut backoff = Backoff::default();
        backoff.failed(&emfile());
        let started = backoff.episode.as_ref().unwrap().since;
        // A connection closes, one is accepted, the next accept fails again: a minute of it.
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            backoff.succeeded();
            backoff.failed(&emfile());
        }
        let episode = backoff.episode.as_ref().unwrap();
        assert_eq!((episode.since, episode.failures), (started, 61));
        // Ten quiet seconds end it.
        tokio::time::advance(QUIET - Duration::from_millis(1)).await;
        backoff.succeeded();
        assert!(backoff.in_episode());
        tokio::time::advance(Duration::from_millis(1)).await;
        backoff.succeeded();
        assert!(!backoff.in_episode());
        backoff.failed(&emfile());
        assert_ne!(backoff.episode.as_ref().unwrap().since, started);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn only_per_connection_errors_skip_the_backoff() {
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
        ] {
            assert!(concerns_one_connection(&io::Error::from(kind)));
        }
        // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
        for errno in [24, 23, 105, 12] {
            assert!(!concerns_one_connection(&io::Error::from_raw_os_error(
                errno
            )));
        }
    }
}
