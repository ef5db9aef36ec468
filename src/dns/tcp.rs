//! DNS over TCP on the gateway (RFC 7766). A guest's resolver comes here when a UDP
//! answer was truncated; the query goes upstream over TCP too, so the whole answer comes
//! back.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::framing::{read_message, write_message};
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
