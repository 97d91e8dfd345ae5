//! The edge's HTTP listener. hyper's connection builder (HTTP/1 and HTTP/2) with a timer, so a
//! client that sends its request headers too slowly (slowloris) is cut off after
//! `header_read_timeout` instead of holding a connection for ever; TCP_NODELAY on every
//! connection (streamed answers are many small writes, which Nagle's algorithm and delayed ACKs
//! would hold back); and graceful shutdown: stop accepting, let requests in flight finish within
//! a grace period (an SSE stream never finishes on its own), then close.
//!
//! A connection whose first request byte does not arrive within the header-read timeout is closed
//! too (hyper's timer starts only with a request). With TLS (`tls.rs`) each accepted connection
//! does its handshake in its own task, within that same budget (a client that stalls the
//! handshake is cut off too), with the
//! acceptor current at that moment; a client certificate mapped to a principal is put into the
//! extensions of every request on that connection.

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::tls::Tls;

/// How long a client may take to send a request's headers, by default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: the next accept may succeed.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let (app, builder, watcher, tls) = (
            app.clone(),
            builder.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            // Handshake and the request's first byte within one header-read timeout: hyper's
            // timer only starts once a request has begun, so a client that never sends a byte
            // would otherwise hold its connection for ever.
            let deadline = tokio::time::Instant::now() + header_read_timeout;
            let ended = match tls {
                None => {
                    match tokio::time::timeout_at(deadline, tcp.peek(&mut [0u8; 1])).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => {
                            tracing::debug!(%peer, "no request within the header-read timeout");
                            return;
                        }
                    }
                    let service = TowerToHyperService::new(app);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    let handshake = tls.acceptor().accept(tcp);
                    let stream = match tokio::time::timeout_at(deadline, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let identity = tls.principal(stream.get_ref().1.peer_certificates());
                    let mut stream = BufReader::new(stream);
                    match tokio::time::timeout_at(deadline, stream.fill_buf()).await {
                        Ok(Ok(first)) if !first.is_empty() => {}
                        _ => {
                            tracing::debug!(%peer, "no request within the header-read timeout");
                            return;
                        }
                    }
                    let app = app.map_request(move |mut req: Request<Incoming>| {
                        if let Some(id) = &identity {
                            req.extensions_mut().insert(id.clone());
                        }
                        req
                    });
                    let service = TowerToHyperService::new(app);
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("connections still open after the grace period; closing them");
    }
}
