//! [`TimeoutIo`]: an IO object that fails when its connection moves no bytes for too long, or
//! when a write makes no progress for too long.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{sleep, Instant, Sleep},
};

/// The idle timeout of [`TimeoutIo::new`].
pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The write timeout of [`TimeoutIo::new`].
pub(super) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The idle timeout is checked this many times per period: a connection closes between the
/// timeout and a quarter more after its last byte.
const IDLE_TICKS: u32 = 4;

pin_project! {
    /// Wraps a connection's IO (a `TcpStream`, say) so that it fails with
    /// [`io::ErrorKind::TimedOut`] when the connection is idle or its writes stall; hyper then
    /// closes the connection and drops what it buffered.
    ///
    /// - **Idle timeout** (default 60 s): no byte read or written for that long, while the
    ///   server waits to read. The check runs a few times per period, so the connection closes
    ///   between the timeout and a quarter more after its last byte.
    /// - **Write timeout** (default 30 s): a write of which the socket accepts no byte for
    ///   that long, as happens when a client stops reading and the buffers fill up.
    ///
    /// The timers are armed lazily: the idle timer when a read first waits, the write timer
    /// when a write first cannot proceed. A read or write that completes only sets a flag; it
    /// does no timer work. [`Server`](super::Server) wraps every connection in one; use it
    /// directly in an accept loop of your own.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use hyper_util::rt::TokioIo;
    /// use tower_sse::server::TimeoutIo;
    ///
    /// # async fn accept(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    /// let (stream, _) = listener.accept().await?;
    /// let io = TokioIo::new(
    ///     TimeoutIo::new(stream)
    ///         .idle_timeout(Duration::from_secs(120))
    ///         .write_timeout(Duration::from_secs(20)),
    /// );
    /// // hyper::server::conn::http1::Builder::new().serve_connection(io, service) ...
    /// # let _ = io;
    /// # Ok(())
    /// # }
    /// ```
    #[project = TimeoutIoProj]
    pub struct TimeoutIo<T> {
        #[pin]
        inner: T,
        idle: Option<Duration>,
        write: Option<Duration>,
        idle_timer: Option<Pin<Box<Sleep>>>,
        write_timer: Option<Pin<Box<Sleep>>>,
        // Whether the write timer runs for the current stall.
        write_armed: bool,
        // Whether bytes moved since the idle timer last fired.
        active: bool,
        silent_ticks: u32,
    }
}

impl<T> TimeoutIo<T> {
    /// Wraps `inner` with the default timeouts: 60 s idle, 30 s per stalled write.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            write: Some(DEFAULT_WRITE_TIMEOUT),
            idle_timer: None,
            write_timer: None,
            write_armed: false,
            active: false,
            silent_ticks: 0,
        }
    }

    /// Sets the idle timeout; `None` turns it off.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle = timeout.into();
        self
    }

    /// Sets the write timeout; `None` turns it off.
    pub fn write_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.write = timeout.into();
        self
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped IO, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the IO.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: fmt::Debug> fmt::Debug for TimeoutIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutIo")
            .field("inner", &self.inner)
            .field("idle_timeout", &self.idle)
            .field("write_timeout", &self.write)
            .finish_non_exhaustive()
    }
}

impl<T> TimeoutIoProj<'_, T> {
    /// Called while a read waits: fails once `IDLE_TICKS` ticks in a row saw no byte move.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(idle) = *self.idle else {
            return Poll::Pending;
        };
        let tick = idle / IDLE_TICKS;
        let timer = self.idle_timer.get_or_insert_with(|| Box::pin(sleep(tick)));
        while timer.as_mut().poll(cx).is_ready() {
            if std::mem::take(self.active) {
                *self.silent_ticks = 0;
            } else {
                *self.silent_ticks += 1;
                if *self.silent_ticks >= IDLE_TICKS {
                    return Poll::Ready(timed_out(format!(
                        "the connection moved no bytes for {idle:?}"
                    )));
                }
            }
            timer.as_mut().reset(Instant::now() + tick);
        }
        Poll::Pending
    }

    /// Called while a write cannot proceed: fails once it has not for the write timeout.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(limit) = *self.write else {
            return Poll::Pending;
        };
        match self.write_timer {
            Some(timer) if !*self.write_armed => timer.as_mut().reset(Instant::now() + limit),
            Some(_) => {}
            None => *self.write_timer = Some(Box::pin(sleep(limit))),
        }
        *self.write_armed = true;
        let timer = self.write_timer.as_mut().expect("armed above");
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(timed_out(format!(
                "the peer accepted no byte for {limit:?}"
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Records the result of a write: bytes written end a stall and count as activity.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    *self.active = true;
                    *self.write_armed = false;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }

    /// Records the result of a flush or shutdown: done, it ends a stall (moving no bytes of
    /// its own, it is no activity).
    fn flushed(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        match result {
            Poll::Ready(result) => {
                *self.write_armed = false;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }
}

fn timed_out(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, message)
}

impl<T: AsyncRead> AsyncRead for TimeoutIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    *this.active = true;
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for TimeoutIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_write(cx, buf);
        this.wrote(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_write_vectored(cx, bufs);
        this.wrote(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_flush(cx);
        this.flushed(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let result = this.inner.as_mut().poll_shutdown(cx);
        this.flushed(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, split, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const IDLE: Duration = DEFAULT_IDLE_TIMEOUT;
    const WRITE: Duration = DEFAULT_WRITE_TIMEOUT;

    fn pair(buffer: usize) -> (TimeoutIo<DuplexStream>, DuplexStream) {
        let (ours, theirs) = duplex(buffer);
        (TimeoutIo::new(ours), theirs)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_fails_between_the_timeout_and_a_quarter_more() {
        let (mut io, _peer) = pair(64);
        let start = Instant::now();
        let err = io.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let idle = start.elapsed();
        assert!(idle >= IDLE && idle <= IDLE + IDLE / 4, "{idle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_it_open() {
        let (io, mut peer) = pair(64);
        let (mut reader, mut writer) = split(io);
        // The server waits to read (as hyper does during a response) and writes a keep-alive
        // every 15 s; the peer reads them. Ten minutes without a byte from the peer.
        let read = tokio::spawn(async move { reader.read(&mut [0; 8]).await });
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_secs(15)).await;
            writer.write_all(b":\n\n").await.unwrap();
            peer.read_exact(&mut [0; 3]).await.unwrap();
        }
        assert!(!read.is_finished());
        // Bytes from the peer count too, and the read gets them.
        peer.write_all(b"x").await.unwrap();
        assert_eq!(read.await.unwrap().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_activity_is_timed_from_the_last_byte() {
        let (mut io, mut peer) = pair(64);
        let feed = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(50)).await;
                peer.write_all(b"x").await.unwrap();
            }
            peer
        });
        for _ in 0..5 {
            assert_eq!(io.read(&mut [0; 8]).await.unwrap(), 1);
        }
        let last = Instant::now();
        let _peer = feed.await.unwrap();
        let err = io.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let idle = last.elapsed();
        assert!(idle >= IDLE && idle <= IDLE + IDLE / 4, "{idle:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_write_timeout() {
        let (mut io, mut peer) = pair(16);
        io.write_all(&[b'a'; 16]).await.unwrap();
        // The peer reads a little after 20 s: the stall ends, and the next one is timed
        // from its own start.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            peer.read_exact(&mut [0; 8]).await.unwrap();
            peer
        });
        let start = Instant::now();
        let err = io.write_all(&[b'b'; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(20) + WRITE);
        let _peer = reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn completed_reads_and_writes_arm_no_timer() {
        let (mut io, mut peer) = pair(1 << 16);
        // Unconstrained: tokio's cooperative budget would make some of them wait.
        tokio::task::unconstrained(async {
            for _ in 0..1000 {
                io.write_all(b"event\n\n").await.unwrap();
                peer.write_all(b"x").await.unwrap();
                io.read_exact(&mut [0; 1]).await.unwrap();
            }
        })
        .await;
        assert!(io.write_timer.is_none() && io.idle_timer.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_can_be_turned_off() {
        let (ours, mut peer) = duplex(16);
        let mut io = TimeoutIo::new(ours).idle_timeout(None).write_timeout(None);
        io.write_all(&[0; 16]).await.unwrap();
        let long = Duration::from_secs(3600);
        assert!(tokio::time::timeout(long, io.write_all(&[0; 1]))
            .await
            .is_err());
        peer.read_exact(&mut [0; 16]).await.unwrap();
        assert!(tokio::time::timeout(long, io.read(&mut [0; 1]))
            .await
            .is_err());
    }
}
