//! One child's writer: a snapshot first, then updates and direct messages, each wake-up's
//! worth in one system call.

use std::sync::Arc;
use std::time::Duration;

use sipcraft_ipc::codec;
use sipcraft_ipc::conn::{Writer, BATCH_BYTES};
use sipcraft_ipc::wire::{Envelope, ToChild};
use tokio::sync::{broadcast, mpsc};

use super::{Hub, Outgoing, UpdateFrame};

/// What woke a child's writer.
enum Wake {
    Direct(Outgoing),
    Update(Result<UpdateFrame, broadcast::error::RecvError>),
}

/// Writes to one child: a snapshot first, then updates and direct messages. Each wake-up
/// takes everything queued and writes it with one system call.
pub(super) struct ChildWriter {
    pub(super) hub: Arc<Hub>,
    pub(super) writer: Writer,
    pub(super) direct: mpsc::Receiver<Outgoing>,
    pub(super) name: String,
    /// This child's bus connection, as in [`UpdateFrame::origin`].
    pub(super) connection: u64,
    /// The shortest time between two writes (the dbagent's): traffic that comes sooner
    /// gathers until then. The first write after a quiet spell goes at once.
    pub(super) gather: Duration,
    /// How long the echo of the child's own update may wait for other traffic.
    pub(super) echo_wait: Duration,
}

impl ChildWriter {
    pub(super) async fn run(mut self) {
        let Some(mut updates) = send_snapshot(&self.hub, &mut self.writer).await else {
            return;
        };
        let mut last_write: Option<tokio::time::Instant> = None;
        loop {
            let Some(first) = self.wait(&mut updates).await else {
                return;
            };
            let Some(mut urgent) = self.put(first, &mut updates).await else {
                return;
            };
            if let Some(at) = last_write.map(|t| t + self.gather) {
                // A timer per write would cost as many wake-ups as writing each time: only
                // traffic that follows a write closely waits.
                if at > tokio::time::Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
            }
            if !urgent && !self.echo_wait.is_zero() {
                // Only the child's own updates so far: they wait for something it needs.
                let deadline = tokio::time::Instant::now() + self.echo_wait;
                while !urgent && self.writer.queued() < BATCH_BYTES {
                    let wake = tokio::select! {
                        biased;
                        wake = self.wait(&mut updates) => wake,
                        () = tokio::time::sleep_until(deadline) => break,
                    };
                    let Some(wake) = wake else { return };
                    match self.put(wake, &mut updates).await {
                        Some(u) => urgent = u,
                        None => return,
                    }
                }
            }
            while self.writer.queued() < BATCH_BYTES {
                let Some(wake) = take_queued(&mut self.direct, &mut updates) else {
                    break;
                };
                if self.put(wake, &mut updates).await.is_none() {
                    return;
                }
            }
            if self.writer.flush().await.is_err() {
                return;
            }
            if !self.gather.is_zero() {
                last_write = Some(tokio::time::Instant::now());
            }
        }
    }

    /// The next thing queued for the child, waiting for it; `None` when the hub is gone.
    async fn wait(&mut self, updates: &mut broadcast::Receiver<UpdateFrame>) -> Option<Wake> {
        tokio::select! {
            biased;
            out = self.direct.recv() => out.map(Wake::Direct),
            update = updates.recv() => Some(Wake::Update(update)),
        }
    }

    /// Queues one thing for the child (a resync writes everything queued and a snapshot).
    /// Returns whether the child needs it soon (anything but the echo of its own update), or
    /// `None` when the connection must end.
    async fn put(
        &mut self,
        wake: Wake,
        updates: &mut broadcast::Receiver<UpdateFrame>,
    ) -> Option<bool> {
        match wake {
            Wake::Direct(Outgoing::Msg(msg)) => {
                if matches!(*msg, ToChild::Stop | ToChild::Drain) {
                    // Direct messages usually go first; these must not overtake an update
                    // published before them (a binding a worker answered 200 for before it
                    // stopped must reach the dbagent before the dbagent's Stop).
                    self.put_published(updates).await?;
                }
                if let Err(e) = self.writer.queue(&Envelope::new(*msg)) {
                    let name = &self.name;
                    tracing::error!(%name, error = %e, "dropping a message that cannot be encoded");
                }
                Some(true)
            }
            // The child saw a gap.
            Wake::Direct(Outgoing::Resync) => {
                *updates = send_snapshot(&self.hub, &mut self.writer).await?;
                Some(true)
            }
            Wake::Update(update) => self.put_update(update, updates).await,
        }
    }

    /// Queues every update already published.
    async fn put_published(
        &mut self,
        updates: &mut broadcast::Receiver<UpdateFrame>,
    ) -> Option<()> {
        while let Some(update) = try_update(updates) {
            self.put_update(update, updates).await?;
        }
        Some(())
    }

    /// [`ChildWriter::put`] for an update, or a gap in the stream (which resyncs the child).
    async fn put_update(
        &mut self,
        update: Result<UpdateFrame, broadcast::error::RecvError>,
        updates: &mut broadcast::Receiver<UpdateFrame>,
    ) -> Option<bool> {
        match update {
            Ok(UpdateFrame {
                origin,
                frame: Some(frame),
            }) => {
                self.writer.queue_encoded(&frame);
                return Some(origin != self.connection);
            }
            Err(broadcast::error::RecvError::Closed) => return None,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let name = &self.name;
                tracing::warn!(%name, missed, "child fell behind the update stream; resyncing it from a snapshot");
            }
            // An update too big for one frame.
            Ok(UpdateFrame { frame: None, .. }) => {}
        }
        // What is queued goes first; the snapshot replaces the update stream.
        *updates = send_snapshot(&self.hub, &mut self.writer).await?;
        Some(true)
    }
}

/// Something already queued for a child, without waiting: direct messages first.
fn take_queued(
    direct: &mut mpsc::Receiver<Outgoing>,
    updates: &mut broadcast::Receiver<UpdateFrame>,
) -> Option<Wake> {
    if let Ok(out) = direct.try_recv() {
        return Some(Wake::Direct(out));
    }
    try_update(updates).map(Wake::Update)
}

/// The next update already published, as `recv` would give it; `None` when there is none yet.
fn try_update(
    updates: &mut broadcast::Receiver<UpdateFrame>,
) -> Option<Result<UpdateFrame, broadcast::error::RecvError>> {
    use broadcast::error::{RecvError, TryRecvError};
    match updates.try_recv() {
        Ok(frame) => Some(Ok(frame)),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
    }
}

/// Writes a snapshot after whatever is queued, and returns the updates that follow it. The
/// copy and its encoding are made off the runtime's thread: with 100,000 extensions they take
/// tens of milliseconds, which the other children's traffic must not wait for.
async fn send_snapshot(
    hub: &Arc<Hub>,
    writer: &mut Writer,
) -> Option<broadcast::Receiver<UpdateFrame>> {
    let hub = hub.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let (seq, parts, rx) = hub.subscribe();
        let mut out = Vec::new();
        let mut put =
            |msg: ToChild| codec::encode_into(&Envelope::new(msg), &mut out, codec::MAX_FRAME);
        put(ToChild::SnapshotBegin { seq })?;
        for part in parts {
            put(ToChild::Snapshot(part))?;
        }
        put(ToChild::SnapshotEnd)?;
        Ok::<_, codec::CodecError>((out, rx))
    })
    .await;
    let (bytes, rx) = match encoded {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not encode a snapshot");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "snapshot task failed");
            return None;
        }
    };
    writer.send_encoded(&bytes).await.ok()?;
    Some(rx)
}
