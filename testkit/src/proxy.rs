//! A TCP proxy that adds a fixed one-way delay to every chunk in both directions,
//! so that a client sees a round trip of twice the delay, while pipelined traffic
//! still flows (latency is added, throughput is not capped).
//!
//! It uses OS threads and `std::thread::sleep` rather than an async timer: tokio's
//! timer has a 1 ms tick, which would turn a 1 ms delay into nearly 2 ms.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A running delay proxy; stops accepting when dropped.
pub struct DelayProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    /// Both ends of every connection so far, for [`DelayProxy::cut`].
    open: Arc<Mutex<Vec<TcpStream>>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, held: Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            // A network partition: nothing passes, nothing is closed.
            while held.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn connect_pair(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    held: &Arc<AtomicBool>,
    open: &Mutex<Vec<TcpStream>>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    if let Ok(mut open) = open.lock() {
        open.push(client.try_clone()?);
        open.push(server.try_clone()?);
    }
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let (h1, h2) = (held.clone(), held.clone());
    thread::spawn(move || pump(client, server, delay, h1));
    thread::spawn(move || pump(s2, c2, delay, h2));
    Ok(())
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards to `upstream` with `one_way` delay.
    pub fn start(upstream: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        Self::start_on(0, upstream, one_way)
    }

    /// Like [`Self::start`], on loopback port `port` (0: a free one): a store that comes
    /// up at an address a client already tried.
    pub fn start_on(port: u16, upstream: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (stopping, holding, tracked) = (stop.clone(), held.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = client {
                    let _ = connect_pair(c, upstream, one_way, &holding, &tracked);
                }
            }
        });
        Ok(Self { addr, stop, held, open })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A fault: while held, no byte passes in either direction on any connection
    /// (new ones are accepted and stall too), as in a network partition; connections
    /// stay open. Released, everything held is delivered.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::SeqCst);
    }

    /// A fault: every connection open now is shut down at both ends, as by a
    /// load balancer or a network reset; new connections pass again.
    pub fn cut(&self) {
        if let Ok(mut open) = self.open.lock() {
            for s in open.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
