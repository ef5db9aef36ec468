//! The NETLINK_ROUTE socket: datagrams to the kernel and back, whole.
//!
//! A receive first peeks at the next datagram's true size (`MSG_PEEK|MSG_TRUNC`) and grows
//! the buffer to fit it, so no reply, however large a dump part, is ever cut short. The
//! socket is bound in the network namespace of the thread that opens it.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, recvmsg, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

/// The receive buffer's size to start with (the kernel's largest dump part is 32 KiB).
const BUFFER_LEN: usize = 32 * 1024;

/// A bound NETLINK_ROUTE socket.
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens a socket, with a port id the kernel picks.
    pub fn open() -> io::Result<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Socket { fd })
    }

    /// Sends `request` to the kernel.
    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        let kernel = NetlinkAddr::new(0, 0);
        let sent = retry(|| sendto(self.fd.as_raw_fd(), request, &kernel, MsgFlags::empty()))?;
        if sent != request.len() {
            return Err(io::Error::other(format!("netlink took {sent} of {} bytes", request.len())));
        }
        Ok(())
    }

    /// Receives the next datagram into `buffer`, grown to fit it; returns its length and
    /// whether the kernel (port id 0) sent it.
    pub fn receive(&self, buffer: &mut Vec<u8>) -> io::Result<(usize, bool)> {
        let fd = self.fd.as_raw_fd();
        buffer.resize(buffer.len().max(BUFFER_LEN), 0);
        let len = retry(|| recv(fd, buffer, MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC))?;
        buffer.resize(buffer.len().max(len), 0);
        let mut slices = [IoSliceMut::new(buffer)];
        let (len, flags, sender) = retry(|| {
            let message = recvmsg::<NetlinkAddr>(fd, &mut slices, None, MsgFlags::empty())?;
            Ok((message.bytes, message.flags, message.address))
        })?;
        if flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::other("a netlink reply was truncated"));
        }
        Ok((len, sender.is_some_and(|sender| sender.pid() == 0)))
    }
}

/// Runs `call` again while a signal interrupts it.
fn retry<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::socket::{send, socketpair};

    use super::*;

    /// A datagram larger than the buffer grows it and arrives whole; one that has no
    /// netlink sender is not the kernel's.
    #[test]
    fn a_datagram_larger_than_the_buffer_arrives_whole() {
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let datagram: Vec<u8> = (0..100_000u32).map(|n| (n % 251) as u8).collect();
        send(theirs.as_raw_fd(), &datagram, MsgFlags::empty()).unwrap();
        let socket = Socket { fd: ours };
        let mut buffer = Vec::new();
        assert_eq!(socket.receive(&mut buffer).unwrap(), (100_000, false));
        assert!(buffer[..100_000] == datagram[..]);
    }
}
