//! A deadline on the start of a player's connection. hyper waits for the HTTP/2 preface
//! without a time limit, and keepalive pings start only after it: a client that connects
//! and sends nothing, or dribbles a few bytes (slowloris), would hold a socket forever.
//! Each accepted connection must deliver the 24-byte preface within `HANDSHAKE_TIMEOUT`,
//! or its reads fail and hyper drops it. After that, HTTP/2 keepalive takes over.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::wrappers::TcpListenerStream;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_BYTES: usize = 24;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Deadlined {
    inner: TcpStream,
    /// Until the preface is in; `None` after.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl Deadlined {
    pub fn new(inner: TcpStream, limit: Duration) -> Self {
        Self { inner, deadline: Some(Box::pin(tokio::time::sleep(limit))), received: 0 }
    }
}

impl AsyncRead for Deadlined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        let this = &mut *self;
        if this.deadline.is_some() {
            this.received += got;
            if this.received >= PREFACE_BYTES {
                this.deadline = None;
            } else if r.is_pending()
                && let Some(d) = this.deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no HTTP/2 preface in time",
                )));
            }
        }
        r
    }
}

impl AsyncWrite for Deadlined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Deadlined {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The listener's connections, each with the handshake deadline.
pub fn incoming(
    l: TcpListener,
    limit: Duration,
) -> impl Stream<Item = std::io::Result<Deadlined>> + Send + 'static {
    TcpListenerStream::new(l).map(move |c| {
        let c = c?;
        // Accepted sockets do not inherit TCP_NODELAY: players' inputs are small.
        let _ = c.set_nodelay(true);
        Ok(Deadlined::new(c, limit))
    })
}
