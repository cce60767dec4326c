//! LISTEN/NOTIFY: one connection per process listens on the outbox and registry channels and
//! bumps a counter per channel that workers and reconciliation wait on.

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::registry::REGISTRY_CHANNEL;

/// The channel PostgreSQL notifies on when outbox rows commit (see the projections migration).
pub const OUTBOX_CHANNEL: &str = "wallex_outbox";
/// Pause after the listener connection fails, before it reconnects.
pub const LISTENER_RETRY: Duration = Duration::from_millis(500);

/// Wake-ups for workers: bumped on every outbox notification.
pub type Wake = watch::Receiver<u64>;

/// What the listener hands out: outbox wake-ups for workers, registry changes for reconciliation.
pub struct Signals {
    /// Changes on every outbox notification (and after every reconnect).
    pub outbox: Wake,
    /// Changes on every registry notification (and after every reconnect).
    pub registry: watch::Receiver<u64>,
}

/// Listens on [`OUTBOX_CHANNEL`] and [`REGISTRY_CHANNEL`] and bumps the matching counter on every
/// notification (both after every reconnect, since notifications may have been missed). Ends at
/// shutdown.
pub fn spawn_listener(
    pool: PgPool,
    shutdown: CancellationToken,
) -> (Signals, tokio::task::JoinHandle<()>) {
    let (outbox_tx, outbox_rx) = watch::channel(0_u64);
    let (registry_tx, registry_rx) = watch::channel(0_u64);
    let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    let task = tokio::spawn(
        async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "outbox listener cannot connect");
                        tokio::select! {
                            _ = tokio::time::sleep(LISTENER_RETRY) => continue,
                            _ = shutdown.cancelled() => return,
                        }
                    }
                };
                if let Err(error) = listener
                    .listen_all([OUTBOX_CHANNEL, REGISTRY_CHANNEL])
                    .await
                {
                    tracing::warn!(%error, "outbox listener cannot LISTEN");
                    tokio::select! {
                        _ = tokio::time::sleep(LISTENER_RETRY) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
                bump(&outbox_tx);
                bump(&registry_tx);
                loop {
                    tokio::select! {
                        received = listener.try_recv() => match received {
                            Ok(Some(notification)) if notification.channel() == REGISTRY_CHANNEL => {
                                bump(&registry_tx)
                            }
                            Ok(Some(_)) => bump(&outbox_tx),
                            // The connection was lost; try_recv reconnects on the next call.
                            Ok(None) => {
                                bump(&outbox_tx);
                                bump(&registry_tx);
                            }
                            Err(error) => {
                                tracing::warn!(%error, "outbox listener failed");
                                break;
                            }
                        },
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        .instrument(tracing::info_span!("outbox_listener")),
    );
    (
        Signals {
            outbox: outbox_rx,
            registry: registry_rx,
        },
        task,
    )
}
