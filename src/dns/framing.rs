//! DNS messages over a stream (RFC 7766): each is preceded by its length as two bytes.
//! The gateway's TCP server reads and writes them so, and a query that came over TCP goes
//! upstream so.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

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
