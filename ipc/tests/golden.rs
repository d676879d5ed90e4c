//! Golden bytes: the wire encoding is a contract between processes of one build and, during
//! an upgrade, between the old supervisor's children and the new one. A change here means
//! `PROTOCOL_VERSION` must change too.

use sipcraft_ipc::codec::{self, Decoder, MAX_FRAME};
use sipcraft_ipc::state::Update;
use sipcraft_ipc::wire::{Envelope, FromChild, Hello, Role, ToChild, PROTOCOL_VERSION};

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    codec::encode(msg).expect("encodes")
}

#[test]
fn hello_frame_is_pinned() {
    let hello = Envelope {
        id: 0,
        body: FromChild::Hello(Hello {
            version: 3,
            role: Role::Worker,
            name: "udp-0".into(),
            pid: 300,
        }),
    };
    // 2: `Health` gained `handed_requests`. 3: `ChildStatus` gained `held_records`.
    assert_eq!(PROTOCOL_VERSION, 3);
    // len=12 | id=0 | variant Hello=0 | version=3 | role Worker=1 | "udp-0" | pid=300 (varint ac 02)
    assert_eq!(
        frame(&hello),
        [12, 0, 0, 0, 0, 0, 3, 1, 5, b'u', b'd', b'p', b'-', b'0', 0xac, 0x02]
    );
}

#[test]
fn lifecycle_and_update_frames_are_pinned() {
    assert_eq!(
        frame(&Envelope {
            id: 7,
            body: FromChild::Ready
        }),
        [2, 0, 0, 0, 7, 1]
    );
    assert_eq!(frame(&Envelope::new(ToChild::Drain)), [2, 0, 0, 0, 0, 8]);
    assert_eq!(frame(&Envelope::new(ToChild::Stop)), [2, 0, 0, 0, 0, 9]);
    let update = ToChild::Update {
        seq: 5,
        update: Update::ExtensionDeleted("1001".into()),
    };
    assert_eq!(
        frame(&Envelope::new(update)),
        [9, 0, 0, 0, 0, 5, 5, 2, 4, b'1', b'0', b'0', b'1']
    );
}

#[test]
fn decoder_reads_back_what_was_pinned() {
    let mut dec = Decoder::new(MAX_FRAME);
    dec.push(&[2, 0, 0, 0, 7, 1]).unwrap();
    let got: Envelope<FromChild> = dec.take().unwrap().unwrap();
    assert_eq!(
        got,
        Envelope {
            id: 7,
            body: FromChild::Ready
        }
    );
}
