//! [`StubServer`]: the listener, tonic serving the `Streams` service on it, and the tracking of
//! accepted connections that lets [`StubServer::stop`] close them at once.
//!
//! tonic's graceful shutdown only asks connections to finish (HTTP/2 `GOAWAY`) and keeps the
//! listening socket open until they have; a client would then see a server that accepts TCP
//! connections and never answers. A test that stops the server wants the opposite — the client
//! must see it as down — so the stub accepts connections itself (the accept task owns the
//! listener and is aborted on stop, which closes the port at once), keeps a duplicate of each
//! accepted socket, and on stop shuts every socket down (`shutdown(2)`), which ends the
//! connections on both sides immediately.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

use crate::proto::event_store::client::streams::streams_server::StreamsServer;
use crate::service::StreamsService;
use crate::store::{Store, StoredEvent};
use crate::MAX_GRPC_MESSAGE_SIZE;

/// Accepted connections waiting for tonic to pick them up.
const ACCEPT_QUEUE: usize = 64;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Longest [`StubServer::stop`] waits for tonic to wind down after the connections are closed
/// before it aborts it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// An in-memory KurrentDB server (see the [crate] documentation for what it implements).
///
/// Stopping it (or dropping it) closes the port and every connection; the events stay, and
/// [`StubServer::restart`] serves them again on the same address.
#[derive(Debug)]
pub struct StubServer {
    addr: SocketAddr,
    store: Arc<Store>,
    options: StubOptions,
    running: Option<Running>,
}

/// How the server treats its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StubOptions {
    /// Acknowledge every TCP read at once (`TCP_QUICKACK`, Linux) instead of the kernel's delayed
    /// ACK. A client without `TCP_NODELAY` (the published `kurrentdb` 1.2; wallex's patched copy
    /// sets it) sends the last frame of each streamed append only when the server has
    /// acknowledged the previous one — up to the 40 ms of a delayed ACK. With this on, such a
    /// client is measured without that wait; wallex's own benchmarks no longer need it.
    pub quick_ack: bool,
}

/// The tasks of a serving server.
#[derive(Debug)]
struct Running {
    /// Owns the listener; aborting it closes the port.
    accept: JoinHandle<()>,
    /// Tells tonic to stop.
    shutdown: Option<oneshot::Sender<()>>,
    /// tonic's serving future.
    serve: JoinHandle<()>,
    /// The accepted connections.
    connections: Arc<Connections>,
}

impl StubServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving an empty store.
    pub async fn start(addr: SocketAddr) -> io::Result<StubServer> {
        Self::start_with(addr, StubOptions::default()).await
    }

    /// [`StubServer::start`] with `options` (kept across restarts).
    pub async fn start_with(addr: SocketAddr, options: StubOptions) -> io::Result<StubServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Store::default());
        let running = serve(listener, Arc::clone(&store), options);
        info!(%addr, ?options, "wallex-kurrentdb-stub serving (in memory, not durable)");
        Ok(StubServer {
            addr,
            store,
            options,
            running: Some(running),
        })
    }

    /// The address the server is bound to (with the port it picked if asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection string for the `kurrentdb` client: `kurrentdb://IP:PORT?tls=false` (the
    /// loopback address if the server is bound to the unspecified address).
    pub fn connection_string(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!(
            "kurrentdb://{}?tls=false",
            SocketAddr::new(ip, self.addr.port())
        )
    }

    /// Whether the server is serving (started or restarted, and not stopped).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops serving: closes the port and every open connection at once, so that clients see
    /// the server as down (their calls fail with a connection error). The events are kept. Does
    /// nothing if the server is already stopped.
    pub async fn stop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        running.accept.abort();
        // The listener is dropped with the accept task: wait for it, so that the port is closed
        // (and free for `restart`) when this returns.
        let _ = (&mut running.accept).await;
        if let Some(shutdown) = running.shutdown.take() {
            let _ = shutdown.send(());
        }
        let closed = running.connections.close_all();
        if tokio::time::timeout(STOP_TIMEOUT, &mut running.serve)
            .await
            .is_err()
        {
            warn!("tonic did not stop in {STOP_TIMEOUT:?} after the connections were closed; aborting it");
            running.serve.abort();
        }
        info!(addr = %self.addr, connections = closed, "wallex-kurrentdb-stub stopped");
    }

    /// Serves again, on the same address and with the same events, after [`StubServer::stop`].
    /// Does nothing if the server is running.
    pub async fn restart(&mut self) -> io::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.running = Some(serve(listener, Arc::clone(&self.store), self.options));
        info!(addr = %self.addr, "wallex-kurrentdb-stub serving again");
        Ok(())
    }

    /// A copy of the events of stream `name`, in revision order (empty if it does not exist).
    pub fn stream(&self, name: &str) -> Vec<StoredEvent> {
        self.store.stream(name)
    }

    /// Number of events in the store (in `$all`).
    pub fn event_count(&self) -> usize {
        self.store.event_count()
    }
}

impl Drop for StubServer {
    /// Stops serving without waiting: the port and the connections close as the runtime drops
    /// the aborted tasks.
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.accept.abort();
            if let Some(shutdown) = running.shutdown.take() {
                let _ = shutdown.send(());
            }
            running.connections.close_all();
            running.serve.abort();
        }
    }
}

/// Starts the accept task and tonic on `listener`.
fn serve(listener: TcpListener, store: Arc<Store>, options: StubOptions) -> Running {
    let connections = Arc::new(Connections {
        quick_ack: options.quick_ack,
        ..Connections::default()
    });
    let (accepted_tx, accepted_rx) = mpsc::channel::<io::Result<TrackedStream>>(ACCEPT_QUEUE);

    let accept = tokio::spawn({
        let connections = Arc::clone(&connections);
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => match connections.track(stream) {
                        Ok(stream) => {
                            debug!(%peer, "connection accepted");
                            if accepted_tx.send(Ok(stream)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => warn!(%peer, %error, "could not set up a connection"),
                    },
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            }
        }
    });

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let service = StreamsServer::new(StreamsService::new(store))
        .max_decoding_message_size(MAX_GRPC_MESSAGE_SIZE);
    let serve = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(ReceiverStream::new(accepted_rx), async {
                let _ = shutdown_rx.await;
            })
            .await;
        if let Err(error) = result {
            warn!(%error, "the gRPC server failed");
        }
    });

    Running {
        accept,
        shutdown: Some(shutdown_tx),
        serve,
        connections,
    }
}

/// The open accepted connections: a duplicate of each socket, to shut it down on stop.
#[derive(Debug, Default)]
struct Connections {
    inner: Mutex<ConnectionsInner>,
    /// See [`StubOptions::quick_ack`].
    quick_ack: bool,
}

#[derive(Debug, Default)]
struct ConnectionsInner {
    next_id: u64,
    open: HashMap<u64, std::net::TcpStream>,
    /// Set by [`Connections::close_all`]: later connections are shut down as they come.
    closed: bool,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, ConnectionsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an accepted connection.
    fn track(self: &Arc<Self>, stream: TcpStream) -> io::Result<TrackedStream> {
        // Small gRPC messages must not wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        let stream = stream.into_std()?;
        let duplicate = stream.try_clone()?;
        let stream = TcpStream::from_std(stream)?;
        let mut inner = self.lock();
        if inner.closed {
            let _ = duplicate.shutdown(Shutdown::Both);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, duplicate);
        Ok(TrackedStream {
            stream,
            quick_ack: self.quick_ack,
            _guard: ConnectionGuard {
                id,
                connections: Arc::clone(self),
            },
        })
    }

    /// Shuts every open connection down; returns how many there were.
    fn close_all(&self) -> usize {
        let mut inner = self.lock();
        inner.closed = true;
        let count = inner.open.len();
        for (_, socket) in inner.open.drain() {
            // Fails only if the peer is already gone.
            let _ = socket.shutdown(Shutdown::Both);
        }
        count
    }
}

/// Removes a connection from [`Connections`] when tonic drops it.
#[derive(Debug)]
struct ConnectionGuard {
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

/// An accepted connection, registered in [`Connections`] while it is open.
#[derive(Debug)]
struct TrackedStream {
    stream: TcpStream,
    /// See [`StubOptions::quick_ack`].
    quick_ack: bool,
    _guard: ConnectionGuard,
}

impl Connected for TrackedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        // The kernel leaves quick-ACK mode by itself: set it again after every read.
        if self.quick_ack && read.is_ready() {
            let _ = self.stream.set_quickack(true);
        }
        read
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
