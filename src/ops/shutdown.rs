//! Signals: SIGTERM and SIGINT cancel the shutdown token.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Spawns the task that turns the first SIGTERM or SIGINT into `token.cancel()`.
pub fn on_signals(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // Cancel before logging: nothing written to stderr may stand between
        // the signal and the shutdown.
        token.cancel();
        tracing::info!("{name} received");
    });
    Ok(())
}
