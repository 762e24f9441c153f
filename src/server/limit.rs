//! The default cap on open connections: below the process's file descriptor limit.
//!
//! Past its `RLIMIT_NOFILE` (soft limit) a process can open no file, socket or pipe: not
//! the next client's connection, but not a Redis connection, a log file or a DNS lookup
//! either. The server stops accepting before that, leaving a reserve of a tenth of the limit
//! (at least 64 descriptors, at most half the limit) for everything else. With a limit of
//! 1 024 that caps connections at 922; with 256, at 192. Where the limit cannot be read, or
//! is unlimited, there is no default cap.

/// The default cap, if the descriptor limit can be read.
pub(super) fn default_max_connections() -> Option<usize> {
    let limit = descriptor_limit()?;
    Some(cap_below(limit))
}

/// The cap for a descriptor limit of `limit`.
fn cap_below(limit: u64) -> usize {
    let reserve = (limit / 10).max(64).min(limit / 2);
    usize::try_from(limit - reserve)
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
    target_os = "solaris"
))]
fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos",
    target_os = "solaris"
)))]
fn descriptor_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_a_reserve() {
        assert_eq!(cap_below(256), 192);
        assert_eq!(cap_below(1024), 922);
        assert_eq!(cap_below(65_536), 58_983);
        assert_eq!(cap_below(100), 50);
        assert_eq!(cap_below(1), 1);
        assert_eq!(cap_below(0), 1);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_the_process_limit() {
        assert!(default_max_connections().is_some());
    }
}
