//! Connections a request handler can reset. A handler (or a response body) calls
//! [`Reset::trigger`]; from then on the connection refuses to read or write, so hyper gives up on
//! it, and closing it sends a TCP RST (zero linger) instead of a clean FIN: the client sees a
//! reset, never a clean end.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The reset switch of one connection (in each request's extensions as `ConnectInfo<Reset>`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Reset(Arc<AtomicBool>);

impl Reset {
    /// Resets the connection: nothing more is read or written, and closing it sends an RST.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, ResetListener>> for Reset {
    fn connect_info(stream: IncomingStream<'_, ResetListener>) -> Self {
        stream.io().reset.clone()
    }
}

/// A TCP listener whose connections can be reset.
pub(crate) struct ResetListener(pub TcpListener);

impl Listener for ResetListener {
    type Io = ResettableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (inner, addr) = Listener::accept(&mut self.0).await;
        let io = ResettableStream {
            inner,
            reset: Reset::default(),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A TCP stream that fails every operation once its [`Reset`] is triggered.
pub(crate) struct ResettableStream {
    inner: TcpStream,
    reset: Reset,
}

fn reset_error() -> io::Error {
    io::ErrorKind::ConnectionReset.into()
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset.is_set() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.reset.is_set() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.reset.is_set() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset.is_set() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset.is_set() {
            // No FIN: the RST comes when the stream is dropped.
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.is_set() {
            // Zero linger: closing discards unsent data and sends an RST. Best effort: if it
            // fails the close is a plain FIN, still without a (complete) response.
            let _ = self.inner.set_zero_linger();
        }
    }
}
