//! Frames from automerge-repo clients come from the network. Whatever their bytes, decoding
//! gives a message or an error, never a panic, and a message re-encodes to bytes that decode
//! to the same message. A joined connection fed the same bytes (whole, then split into frames
//! at each 0x0a byte, with time passing) never panics, answers each frame with at most two
//! events, and says nothing more once it has closed.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mesh::proto::amrepo::{Connection, Event, Message, PeerMetadata};

fn joined() -> Connection {
    let mut connection = Connection::new("server", Duration::ZERO);
    let join = Message::Join {
        sender_id: "client".into(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: Some(vec!["1".into()]),
    };
    let events = connection.handle(&join.encode(), Duration::ZERO);
    assert!(matches!(
        events.as_slice(),
        [Event::Send(_), Event::Joined { .. }]
    ));
    connection
}

fn check(connection: &mut Connection, frame: &[u8], now: Duration) {
    let was_closed = connection.is_closed();
    let events = connection.handle(frame, now);
    assert!(events.len() <= 2);
    if was_closed {
        assert!(events.is_empty());
    }
    if matches!(events.last(), Some(Event::Close { .. })) {
        assert!(connection.is_closed());
        assert_eq!(connection.poll_timeout(), None);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(Message::decode(&message.encode()), Ok(message));
    }

    check(&mut joined(), data, Duration::from_secs(1));

    let mut connection = joined();
    let mut now = Duration::ZERO;
    for frame in data.split(|b| *b == b'\n') {
        now += Duration::from_secs(u64::from(frame.first().copied().unwrap_or(0) % 8));
        if let Some(at) = connection.poll_timeout()
            && at <= now
        {
            let _ = connection.handle_timeout(now);
        }
        check(&mut connection, frame, now);
    }
});
