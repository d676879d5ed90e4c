//! The bus refuses peers it cannot trust: another protocol version, or an impostor.

mod common;

use common::{Server, Setup};
use sipcraft_ipc::conn;
use sipcraft_ipc::wire::{Envelope, FromChild, Hello, Role, ToChild, PROTOCOL_VERSION};

fn answer_to(server: &Server, hello: Hello) -> ToChild {
    let bus = conn::endpoint(&server.dir.path().join("rt"), "bus");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut reader, mut writer) = conn::connect(&bus).await.expect("connect to bus");
        writer
            .send(&Envelope::new(FromChild::Hello(hello)))
            .await
            .unwrap();
        let reply: Envelope<ToChild> = reader.recv().await.unwrap().expect("an answer");
        reply.body
    })
}

#[test]
fn another_protocol_version_is_refused_clearly() {
    let server = Server::start(Setup::default());
    let hello = Hello {
        version: PROTOCOL_VERSION + 1,
        ..Hello::new(Role::Worker, "udp-0")
    };
    match answer_to(&server, hello) {
        ToChild::Refused(why) => assert!(why.contains("protocol version"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(server.log().contains("refusing bus connection"));
    server.wait_all_ready();
}

#[test]
fn a_process_the_supervisor_did_not_start_is_refused() {
    let server = Server::start(Setup::default());
    match answer_to(&server, Hello::new(Role::Worker, "udp-0")) {
        ToChild::Refused(why) => assert!(
            why.contains("not the worker this supervisor started"),
            "{why}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match answer_to(&server, Hello::new(Role::Worker, "udp-7")) {
        ToChild::Refused(why) => assert!(why.contains("no child named udp-7"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
