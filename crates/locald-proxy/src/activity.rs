//! One client connection's activity: how many requests it has open (a request is open from its
//! head until its response body ends, or its tunnel closes), when it last moved bytes, and
//! whether [`super::limits::Admission`] told it to make room. From these the connection is
//! closed when idle ([`idle_deadline`]); [`Watched`] records the bytes, [`TimedBody`] bounds a
//! request body's pauses and [`HoldBody`] keeps a request open until its response is sent.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::limits::now_ms;

pub(crate) struct Activity {
    streams: AtomicUsize,
    /// Any request seen yet: until then the connection has `Limits::header` to send one.
    started: AtomicBool,
    /// When the last request ended (or the connection began), in [`now_ms`].
    idle_since: AtomicU64,
    /// When bytes last moved either way.
    last_active: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub(crate) fn new() -> Self {
        let now = now_ms();
        Activity {
            streams: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            idle_since: AtomicU64::new(now),
            last_active: AtomicU64::new(now),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        }
    }

    pub(crate) fn streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    pub(crate) fn last_active(&self) -> u64 {
        self.last_active.load(Ordering::Relaxed)
    }

    pub(crate) fn touch_at(&self, ms: u64) {
        self.last_active.store(ms, Ordering::Relaxed);
    }

    /// A request is open until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> Open {
        self.started.store(true, Ordering::Relaxed);
        self.streams.fetch_add(1, Ordering::Relaxed);
        Open(self.clone())
    }

    /// Starts the idle time afresh: for a connection hyper's path takes over from the fast
    /// path, whose requests this does not see, so it is not judged idle since its accept.
    pub(crate) fn restart(&self) {
        self.idle_since.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn evict(&self) {
        self.evicted.store(true, Ordering::Relaxed);
        self.evict.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Resolves once [`Admission`](super::limits::Admission) wants this connection gone.
    pub(crate) async fn evicted_wait(&self) {
        self.evict.notified().await;
    }

    /// When the connection is due to close for idleness (ms, [`now_ms`]'s clock), or `None`
    /// while a request is open.
    pub(crate) fn idle_deadline(&self, header: Duration, idle: Duration) -> Option<u64> {
        if self.streams() > 0 {
            return None;
        }
        let limit = if self.started.load(Ordering::Relaxed) { idle } else { header };
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        Some(self.idle_since.load(Ordering::Relaxed).saturating_add(limit))
    }
}

/// An open request.
pub(crate) struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::Relaxed);
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client socket that records when bytes moved.
pub(crate) struct Watched<S> {
    pub inner: S,
    pub activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch_at(now_ms());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_at(now_ms());
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_at(now_ms());
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body that fails when the client pauses longer than `limit` between two pieces
/// (the service then sees its request cut short, never a shorter complete one).
pub(crate) struct TimedBody<B> {
    inner: B,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Set when the limit passed, so the client can be told 408.
    pub timed_out: Arc<AtomicBool>,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> Self {
        TimedBody {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            timed_out: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.limit;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.timed_out.store(true, Ordering::Relaxed);
                    let why = format!("the request body paused over {} s", this.limit.as_secs());
                    Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::TimedOut, why).into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps `hold` (its request's [`Open`] and service-connection permit)
/// until it has been sent or dropped.
pub(crate) struct HoldBody<B, H> {
    pub inner: B,
    /// Never read: what it holds is released when the body is dropped.
    pub _hold: H,
}

impl<B: HttpBody + Unpin, H: Unpin> HttpBody for HoldBody<B, H> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
