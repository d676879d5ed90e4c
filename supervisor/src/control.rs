//! The control socket that `sipcraft ctl` talks to.

use sipcraft_ipc::conn::{self, Reader, Writer};
use sipcraft_ipc::wire::{check_hello, ControlRequest, ControlResponse, Envelope, Role};
use sipcraft_ipc::Listener;
use tokio::sync::{mpsc, oneshot};

/// A control request for the main loop, with where to send the answer.
#[derive(Debug)]
pub struct ControlEvent {
    pub request: ControlRequest,
    pub reply: oneshot::Sender<ControlResponse>,
}

/// Accepts `ctl` connections until the listener fails.
pub async fn serve(listener: Listener, events: mpsc::UnboundedSender<ControlEvent>) {
    loop {
        match conn::accept(&listener).await {
            Ok((reader, writer)) => {
                tokio::spawn(session(reader, writer, events.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn session(
    mut reader: Reader,
    mut writer: Writer,
    events: mpsc::UnboundedSender<ControlEvent>,
) {
    let mut greeted = false;
    while let Ok(Some(env)) = reader.recv::<Envelope<ControlRequest>>().await {
        let response = match env.body {
            ControlRequest::Hello(hello) => match check_hello(&hello, &[Role::Control]) {
                Ok(()) => {
                    greeted = true;
                    continue;
                }
                Err(e) => ControlResponse::Failed(e.to_string()),
            },
            _ if !greeted => ControlResponse::Failed("hello expected first".into()),
            request => {
                let (tx, rx) = oneshot::channel();
                if events.send(ControlEvent { request, reply: tx }).is_err() {
                    return;
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => ControlResponse::Failed("supervisor is shutting down".into()),
                }
            }
        };
        let failed = matches!(response, ControlResponse::Failed(_)) && !greeted;
        if writer
            .send(&Envelope {
                id: env.id,
                body: response,
            })
            .await
            .is_err()
            || failed
        {
            return;
        }
    }
}
