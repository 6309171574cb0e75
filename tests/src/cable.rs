//! A TCP link on loopback that a test can cut and plug back: while cut, no byte crosses it in
//! either direction, yet every connection stays open, as behind a failed switch or a dead
//! uplink (nothing is refused, nothing is reset; a client learns of it only by waiting).
//! Plugged back, what was held flows again and new connections go through.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The switch: cut or not, and a way to wait for it to be plugged.
#[derive(Debug, Default)]
struct Switch {
    cut: Mutex<bool>,
    plugged: Condvar,
}

impl Switch {
    fn wait_plugged(&self) {
        let mut cut = self.cut.lock().unwrap();
        while *cut {
            cut = self.plugged.wait(cut).unwrap();
        }
    }
}

/// A forwarder from a local port to `target`.
#[derive(Debug)]
pub struct Cable {
    /// Where clients connect.
    pub addr: SocketAddr,
    switch: Arc<Switch>,
    stopped: Arc<AtomicBool>,
}

impl Cable {
    /// A cable to `target`, plugged.
    pub fn to(target: SocketAddr) -> Cable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let switch = Arc::new(Switch::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let (sw, st) = (switch.clone(), stopped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let sw = sw.clone();
                    std::thread::spawn(move || pump(from, to, &sw));
                }
            }
        });
        Cable {
            addr,
            switch,
            stopped,
        }
    }

    /// No byte crosses from now on, in either direction.
    pub fn cut(&self) {
        *self.switch.cut.lock().unwrap() = true;
    }

    /// What was held flows again.
    pub fn plug(&self) {
        *self.switch.cut.lock().unwrap() = false;
        self.switch.plugged.notify_all();
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.plug();
        // Wakes the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

/// Copies `from` to `to`, holding each chunk while the cable is cut.
fn pump(mut from: TcpStream, mut to: TcpStream, switch: &Switch) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        switch.wait_plugged();
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    // A close is news too: it does not cross a cut link either.
    switch.wait_plugged();
    let _ = to.shutdown(Shutdown::Write);
}
