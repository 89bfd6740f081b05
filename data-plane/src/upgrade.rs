//! Restarts and binary upgrades that drop nothing (HAProxy's `-x`, Envoy's hot restart, Pingora's
//! graceful upgrade): a node started with an upgrade socket path serves it; a new process started
//! with the same path asks the running one for its listening sockets (the same kernel sockets, so
//! nothing queued on them is lost), serves on them, and once it has a table installed says
//! `ready`; the old process then stops accepting, drains its connections and exits.
//!
//! The protocol, on a `SOCK_SEQPACKET` Unix socket (one message each, so descriptors stay with
//! the message that names them):
//!
//! ```text
//! new -> old   sockets
//! old -> new   {"address": "127.0.0.1:8080", "kind": "stream"} + SCM_RIGHTS fds   (per listener)
//! old -> new   end
//! new -> old   ready            (after its first table is installed)
//! old -> new   draining         (the old process stops accepting now)
//! ```
//!
//! A new process that dies before `ready` changes nothing: the old one keeps serving.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketType,
};
use serde::{Deserialize, Serialize};

/// Descriptors per message: well under the kernel's `SCM_MAX_FD` (253).
const FDS_PER_MESSAGE: usize = 32;
const MAX_MESSAGE: usize = 4096;
/// How long either side waits for the other's next message before giving up on the handover.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketKind {
    /// tcp, tls, http and https listeners.
    Stream,
    /// udp listeners.
    Datagram,
    /// The node's admin server.
    Admin,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    address: SocketAddr,
    kind: SocketKind,
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("upgrade socket {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// Listening sockets received from the process being replaced, by address and kind.
#[derive(Default)]
pub struct Inherited {
    sockets: HashMap<(SocketAddr, SocketKind), Vec<OwnedFd>>,
}

impl Inherited {
    /// The sockets of one listener, taken (the caller serves them or drops them).
    pub fn take(&mut self, address: SocketAddr, kind: SocketKind) -> Vec<OwnedFd> {
        self.sockets.remove(&(address, kind)).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sockets.values().map(Vec::len).sum()
    }
}

/// The new process's open conversation with the old one, until it says `ready`.
pub struct Handover {
    path: PathBuf,
    conn: OwnedFd,
}

/// Asks the process serving `path` for its listening sockets. `Ok(None)`: nobody serves it (a
/// first start, or a stale file), so the caller binds its own.
pub fn receive(path: &Path) -> Result<Option<(Inherited, Handover)>, UpgradeError> {
    let io = |source| UpgradeError::Io { path: path.to_path_buf(), source };
    let conn = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).map_err(|e| io(e.into()))?;
    let addr = SocketAddrUnix::new(path).map_err(|e| io(e.into()))?;
    match rustix::net::connect(&conn, &addr) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::NOENT || e == rustix::io::Errno::CONNREFUSED => return Ok(None),
        Err(e) => return Err(io(e.into())),
    }
    set_timeouts(&conn).map_err(io)?;
    let handover = Handover { path: path.to_path_buf(), conn };
    handover.send(b"sockets", &[])?;
    let mut inherited = Inherited::default();
    loop {
        let (message, fds) = handover.recv()?;
        if message == b"end" {
            break;
        }
        let header: Header = serde_json::from_slice(&message).map_err(|e| handover.protocol(e.to_string()))?;
        inherited.sockets.entry((header.address, header.kind)).or_default().extend(fds);
    }
    Ok(Some((inherited, handover)))
}

impl Handover {
    /// Tells the old process this one serves; returns once it has stopped accepting.
    pub fn ready(self) -> Result<(), UpgradeError> {
        self.send(b"ready", &[])?;
        let (reply, _) = self.recv()?;
        if reply != b"draining" {
            return Err(self.protocol(format!("expected draining, got {:?}", String::from_utf8_lossy(&reply))));
        }
        Ok(())
    }

    fn send(&self, message: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), UpgradeError> {
        send(&self.conn, message, fds).map_err(|source| UpgradeError::Io { path: self.path.clone(), source })
    }

    fn recv(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), UpgradeError> {
        match recv(&self.conn) {
            Ok(Some(got)) => Ok(got),
            Ok(None) => Err(self.protocol("the other process closed the connection".into())),
            Err(source) => Err(UpgradeError::Io { path: self.path.clone(), source }),
        }
    }

    fn protocol(&self, reason: String) -> UpgradeError {
        UpgradeError::Protocol { path: self.path.clone(), reason }
    }
}

/// What a serving process answers with.
pub trait Serving: Send + 'static {
    /// Duplicates of every listening socket, with what they are.
    fn sockets(&self) -> Vec<(SocketAddr, SocketKind, Vec<OwnedFd>)>;
    /// A new process serves now: stop accepting (then drain and exit).
    fn handed_over(&self);
}

/// Binds `path` (replacing a stale file) and answers new processes on a thread of its own, for the
/// life of the process.
pub fn serve(path: &Path, serving: impl Serving) -> Result<(), UpgradeError> {
    let io = |source| UpgradeError::Io { path: path.to_path_buf(), source };
    let listener = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).map_err(|e| io(e.into()))?;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let addr = SocketAddrUnix::new(path).map_err(|e| io(e.into()))?;
    rustix::net::bind(&listener, &addr).map_err(|e| io(e.into()))?;
    rustix::net::listen(&listener, 4).map_err(|e| io(e.into()))?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("sluice-upgrade".into())
        .spawn(move || loop {
            let conn = match rustix::net::accept(&listener) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "upgrade socket accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            match answer(&conn, &serving) {
                Ok(true) => {
                    tracing::info!(path = %path.display(), "a new process took over the listeners: draining");
                    return;
                }
                Ok(false) => tracing::warn!("a new process took the listeners but did not get ready: still serving"),
                Err(e) => tracing::warn!(error = %e, "upgrade handover failed: still serving"),
            }
        })
        .map_err(io)?;
    Ok(())
}

/// One new process's requests. `Ok(true)`: it is ready and this process has handed over.
fn answer(conn: &OwnedFd, serving: &impl Serving) -> std::io::Result<bool> {
    set_timeouts(conn)?;
    let Some((request, _)) = recv(conn)? else { return Ok(false) };
    if request != b"sockets" {
        return Err(std::io::Error::other(format!("unexpected request {:?}", String::from_utf8_lossy(&request))));
    }
    let sockets = serving.sockets();
    let count: usize = sockets.iter().map(|(_, _, fds)| fds.len()).sum();
    for (address, kind, fds) in &sockets {
        let header = serde_json::to_vec(&Header { address: *address, kind: *kind }).map_err(std::io::Error::other)?;
        for chunk in fds.chunks(FDS_PER_MESSAGE) {
            let borrowed: Vec<BorrowedFd<'_>> = chunk.iter().map(|f| f.as_fd()).collect();
            send(conn, &header, &borrowed)?;
        }
    }
    send(conn, b"end", &[])?;
    drop(sockets);
    tracing::info!(sockets = count, "listening sockets sent to a new process; waiting for it to get ready");
    // The new process may take a while to be ready (a control plane to reach): no timeout here.
    rustix::net::sockopt::set_socket_timeout(conn, rustix::net::sockopt::Timeout::Recv, None)?;
    match recv(conn)? {
        Some((ready, _)) if ready == b"ready" => {
            serving.handed_over();
            send(conn, b"draining", &[])?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn set_timeouts(conn: &OwnedFd) -> std::io::Result<()> {
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    set_socket_timeout(conn, Timeout::Recv, Some(PEER_TIMEOUT))?;
    set_socket_timeout(conn, Timeout::Send, Some(PEER_TIMEOUT))?;
    Ok(())
}

fn send(conn: &OwnedFd, message: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors for one message"));
    }
    rustix::net::sendmsg(conn, &[IoSlice::new(message)], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// One message and the descriptors it carried; `None` when the peer closed.
fn recv(conn: &OwnedFd) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(conn, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(got.bytes);
    Ok(Some((buf, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    struct Fake {
        listener: std::net::TcpListener,
        handed: Arc<Mutex<bool>>,
    }

    impl Serving for Fake {
        fn sockets(&self) -> Vec<(SocketAddr, SocketKind, Vec<OwnedFd>)> {
            let fd = OwnedFd::from(self.listener.try_clone().unwrap());
            vec![(self.listener.local_addr().unwrap(), SocketKind::Stream, vec![fd])]
        }
        fn handed_over(&self) {
            *self.handed.lock().unwrap() = true;
        }
    }

    #[test]
    fn a_listening_socket_moves_to_the_new_process_with_what_is_queued_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(receive(&path).unwrap().is_none(), "nobody serves the path yet");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handed = Arc::new(Mutex::new(false));
        serve(&path, Fake { listener, handed: handed.clone() }).unwrap();
        // Queued before the handover, accepted by whoever holds the socket after it.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"hello").unwrap();

        let (mut inherited, handover) = receive(&path).unwrap().expect("the old process answers");
        assert_eq!(inherited.len(), 1);
        assert!(inherited.take(addr, SocketKind::Datagram).is_empty());
        let mut fds = inherited.take(addr, SocketKind::Stream);
        assert!(inherited.is_empty());
        let taken = std::net::TcpListener::from(fds.pop().unwrap());
        let (mut conn, _) = taken.accept().unwrap();
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        assert!(!*handed.lock().unwrap());
        handover.ready().unwrap();
        assert!(*handed.lock().unwrap());
    }
}
