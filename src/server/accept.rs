//! Accepting connections without spinning when the process runs out of a resource.
//!
//! `accept` fails at once, again and again, while the process is out of file descriptors
//! (`EMFILE`, `ENFILE`), memory (`ENOMEM`) or socket buffers (`ENOBUFS`): the pending
//! connection stays in the kernel's queue and the listener stays readable. Retrying at once
//! burns a core. Such errors back off instead, from 5 ms doubling up to 200 ms, and are logged
//! once per episode: a warning at the first failure, a note when accepting works again.
//! Errors that concern only the connection being accepted (it was reset or aborted before
//! being accepted) are skipped at once.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_millis(200);

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

/// Exponential backoff over one episode of failures.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
    since: Option<Instant>,
}

impl Backoff {
    /// Records a failure; returns how long to wait before the next attempt.
    pub(super) fn failed(&mut self, error: &io::Error) -> Duration {
        if self.failures == 0 {
            self.since = Some(Instant::now());
            tracing::warn!(
                %error,
                "cannot accept connections (out of file descriptors or memory?); retrying \
                 with backoff; lower the connection cap or raise the limit"
            );
        }
        let doublings = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
    }

    /// Records a success, ending the episode.
    pub(super) fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                failed_attempts = self.failures,
                after = ?since.elapsed(),
                "accepting connections again"
            );
        }
        self.failures = 0;
    }

    /// Whether an episode of failures is going on.
    #[cfg(test)]
    fn in_episode(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_starts_over() {
        let mut backoff = Backoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let delays: Vec<_> = (0..8).map(|_| backoff.failed(&emfile)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [
                ms(5),
                ms(10),
                ms(20),
                ms(40),
                ms(80),
                ms(160),
                ms(200),
                ms(200)
            ]
        );
        for _ in 0..100 {
            assert_eq!(backoff.failed(&emfile), MAX_DELAY);
        }
        assert!(backoff.in_episode());
        backoff.succeeded();
        assert!(!backoff.in_episode());
        assert_eq!(backoff.failed(&emfile), FIRST_DELAY);
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
