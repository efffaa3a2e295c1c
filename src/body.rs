//! Response and upstream body types, and bounded body reading.
//!
//! [`Body`] is the one response body type of the data plane: a whole buffer, or a channel fed by
//! a task that forwards a stream. Dropping a channel body (the client went away) closes the
//! channel, which the forwarding task notices and turns into an upstream cancel.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// Boxed error used across body boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body or handler that broke; hyper closes the connection. A concrete type rather
/// than `BoxError` keeps hyper's connection futures free of higher-ranked lifetime trouble.
#[derive(Debug)]
pub struct Broken(pub String);

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Broken {}

/// How the task feeding a channel body ended it. A body whose senders are all gone ends
/// cleanly only if the task said so ([`Abort::end_cleanly`]); otherwise (it panicked, its
/// runtime went away, or it [`Abort::set`] because its error event could not be queued to a
/// client that stopped reading) the body ends with an error once the queued bytes are out, so
/// hyper ends the response without its last chunk (HTTP/1) or resets the stream (HTTP/2) and
/// the client sees a broken transfer, never a clean-looking truncated answer.
#[derive(Clone, Default)]
pub struct Abort(std::sync::Arc<std::sync::atomic::AtomicU8>);

const RUNNING: u8 = 0;
const CLEAN: u8 = 1;
const ABORTED: u8 = 2;

impl Abort {
    /// The stream must not look complete.
    pub fn set(&self) {
        self.0.store(ABORTED, std::sync::atomic::Ordering::Release);
    }

    /// The task ended the stream on purpose (unless it was aborted).
    pub fn end_cleanly(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let _ = self.0.compare_exchange(RUNNING, CLEAN, AcqRel, Acquire);
    }

    fn ended_cleanly(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == CLEAN
    }
}

/// The data plane's response body.
pub struct Body {
    kind: Kind,
    /// Keeps the load-shedding permit alive until the body is finished or dropped, so a long
    /// stream counts against `max_concurrent_requests` for as long as it runs.
    _permit: Option<OwnedSemaphorePermit>,
    /// Anything else that must live as long as the body (a connection's open-stream count).
    _guard: Option<Box<dyn Send + Sync>>,
}

enum Kind {
    Full(Option<Bytes>),
    /// Ends when every sender is gone: cleanly, or with an error if [`Abort`] was set.
    Channel(mpsc::Receiver<Bytes>, Abort),
    /// The mock provider's body served over HTTP (`tidegate mock-provider`), which can break.
    Mock(crate::providers::mock::MockBody),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self { kind: Kind::Full((!bytes.is_empty()).then_some(bytes)), _permit: None, _guard: None }
    }

    pub fn empty() -> Self {
        Self { kind: Kind::Full(None), _permit: None, _guard: None }
    }

    /// A body fed chunk by chunk through `rx`; it ends when every sender is dropped, with an
    /// error (hyper then aborts the response) if `abort` was set.
    pub fn channel(rx: mpsc::Receiver<Bytes>, abort: Abort) -> Self {
        Self { kind: Kind::Channel(rx, abort), _permit: None, _guard: None }
    }

    pub fn mock(body: crate::providers::mock::MockBody) -> Self {
        Self { kind: Kind::Mock(body), _permit: None, _guard: None }
    }

    /// The bytes of a whole (non-streaming) body.
    pub fn full_bytes(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Full(b) => Some(b.clone().unwrap_or_default()),
            _ => None,
        }
    }

    pub fn with_permit(mut self, permit: Option<OwnedSemaphorePermit>) -> Self {
        self._permit = permit;
        self
    }

    /// Keeps `guard` until the body is finished or dropped.
    pub fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> Self {
        self._guard = Some(guard);
        self
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Broken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Broken>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Channel(rx, abort) => match rx.poll_recv(cx) {
                Poll::Ready(None) if !abort.ended_cleanly() => {
                    Poll::Ready(Some(Err(Broken("the stream was cut".into()))))
                }
                polled => polled.map(|o| o.map(|b| Ok(Frame::data(b)))),
            },
            Kind::Mock(m) => Pin::new(m).poll_frame(cx).map_err(|e| Broken(e.to_string())),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Channel(..) => false,
            Kind::Mock(m) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Channel(..) => SizeHint::default(),
            Kind::Mock(m) => m.size_hint(),
        }
    }
}

/// Why a bounded read stopped.
#[derive(Debug)]
pub enum ReadError {
    /// More than the limit arrived.
    TooLarge,
    /// The body errored (a malformed chunk, an upstream cut).
    Broken(String),
    /// The client went away before its body was whole: the connection closed or was reset,
    /// or it reset the HTTP/2 stream. Nobody is left to answer.
    Gone,
    /// The read did not finish in time.
    TimedOut,
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_limited<B>(mut body: Pin<&mut B>, limit: usize) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::error::Error + 'static,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if client_left(&e) { ReadError::Gone } else { ReadError::Broken(e.to_string()) }
        })?;
        let Ok(data) = frame.into_data() else { continue };
        let total = first.as_ref().map_or(0, Bytes::len) + buf.len() + data.len();
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        // The common case is one frame: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// Whether a request body's error means the client left (rather than sent something broken,
/// such as a malformed chunk, which is `InvalidInput`/`InvalidData`): hyper's "incomplete" (an
/// HTTP/1 connection closed before the body's length), a connection reset, or an HTTP/2 reset
/// or GOAWAY from the client.
fn client_left(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let io_gone = |e: &std::io::Error| {
        matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
    };
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && (h2.is_remote() || h2.get_io().is_some_and(io_gone))
        {
            return true;
        }
        if e.downcast_ref::<std::io::Error>().is_some_and(io_gone) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// After a 413, reads and discards what the client keeps sending, up to `bound` bytes or `time`,
/// so the client reads our response instead of a connection reset.
pub async fn drain<B>(mut body: Pin<&mut B>, bound: usize, time: Duration)
where
    B: HttpBody<Data = Bytes>,
{
    let mut seen = 0usize;
    let _ = tokio::time::timeout(time, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                seen += d.len();
                if seen > bound {
                    break;
                }
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel body ends cleanly only when its task said so: one whose task panicked or was
    /// dropped (helper-48), or that was aborted, ends with an error after its bytes.
    #[tokio::test]
    async fn a_channel_body_ends_cleanly_only_when_told() {
        for (how, clean) in [("told", true), ("never told", false), ("aborted", false)] {
            let (tx, rx) = mpsc::channel(4);
            let abort = Abort::default();
            tx.send(Bytes::from_static(b"data: x\n\n")).await.unwrap();
            match how {
                "told" => abort.end_cleanly(),
                "aborted" => {
                    abort.set();
                    abort.end_cleanly();
                }
                _ => {}
            }
            drop(tx);
            let mut body = Body::channel(rx, abort);
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&first[..], b"data: x\n\n", "{how}");
            let end = body.frame().await;
            assert_eq!(end.is_none(), clean, "{how}");
        }
    }
    use http_body_util::Full;

    #[tokio::test]
    async fn limited_read_accepts_at_limit_and_refuses_over() {
        let mut a = Full::new(Bytes::from_static(b"12345"));
        let ok = read_limited(Pin::new(&mut a), 5).await;
        assert_eq!(ok.unwrap(), Bytes::from_static(b"12345"));
        let mut b = Full::new(Bytes::from_static(b"123456"));
        let over = read_limited(Pin::new(&mut b), 5).await;
        assert!(matches!(over, Err(ReadError::TooLarge)));
    }

    #[tokio::test]
    async fn channel_body_ends_when_senders_drop() {
        let (tx, rx) = mpsc::channel(2);
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        drop(tx);
        let abort = Abort::default();
        abort.end_cleanly();
        let got = Body::channel(rx, abort).collect().await.unwrap().to_bytes();
        assert_eq!(got, Bytes::from_static(b"a"));
    }
}
