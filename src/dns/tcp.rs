//! DNS over TCP on the gateway (RFC 7766): each message is preceded by its length as two
//! bytes. A guest's resolver comes here when a UDP answer was truncated; the query goes
//! upstream over TCP too, so the whole answer comes back.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{answer, HostResolver, Transport};

/// The most connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a connection may sit without a whole query.
const IDLE: Duration = Duration::from_secs(10);

/// Serves the connections from `guest` to `listener` until `stop` is set (the listener
/// has a receive timeout, so `accept` comes back to look).
pub(super) fn serve(
    listener: TcpListener,
    guest: Ipv4Addr,
    resolver: HostResolver,
    offline: bool,
    stop: Arc<AtomicBool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((connection, from)) = listener.accept() else { continue };
            if from.ip() != guest {
                continue;
            }
            if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                open.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (resolver, open) = (resolver.clone(), open.clone());
            std::thread::spawn(move || {
                let _ = answer_all(connection, &resolver, offline);
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

/// Answers the queries on `connection` one after another until the guest closes it.
fn answer_all(mut connection: TcpStream, resolver: &HostResolver, offline: bool) -> io::Result<()> {
    connection.set_read_timeout(Some(IDLE))?;
    connection.set_write_timeout(Some(IDLE))?;
    while let Some(query) = read_message(&mut connection)? {
        match answer(&query, resolver, offline, Transport::Tcp) {
            Some(reply) => write_message(&mut connection, &reply)?,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// One length-prefixed message; `None` at a clean end of stream.
pub(super) fn read_message(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut message = vec![0u8; u16::from_be_bytes(length) as usize];
    stream.read_exact(&mut message)?;
    Ok(Some(message))
}

/// Writes `message` with its length before it, in one write.
pub(super) fn write_message(stream: &mut impl Write, message: &[u8]) -> io::Result<()> {
    let length = u16::try_from(message.len()).map_err(|_| io::Error::other("a DNS message over 64 KiB"))?;
    stream.write_all(&[&length.to_be_bytes()[..], message].concat())
}

/// Asks `server` over TCP; the answer as it sent it.
pub(super) fn ask(server: std::net::SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write_message(&mut stream, query)?;
    read_message(&mut stream)?.ok_or_else(|| io::Error::other("the nameserver closed the connection"))
}
