//! An upgraded connection (WebSocket and other HTTP/1.1 upgrades): bytes copied both ways
//! between client and member until either closes, counted against the member.
//!
//! A worker that stops lets its tunnels finish within the grace period, as it does requests in
//! flight: it counts them ([`Tunnels`]). A WebSocket tunnel is told of the stop and closes
//! cleanly (RFC 6455 7.1.2): at the next frame boundary of the member's side it sends the client
//! a Close frame, 1001 "going away", and from then on passes the client's frames on to the member
//! up to the client's own Close (which the member answers); what the member sends after that
//! point is not passed on, since nothing may follow a Close. The tunnel ends when both closes
//! are through, or with the grace period. Other upgrades have no such word: they run until
//! either side closes, or the grace period ends.
//!
//! The member leaving the configuration does not end a tunnel: it was opened on the snapshot of
//! its request and lives until one of its two ends closes (as nginx and Envoy keep an upstream's
//! open connections when it leaves the set).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::upstream::lease::Lease;

/// The Close frame a stopping proxy sends a WebSocket client: unmasked (server to client),
/// status 1001 (going away), reason "going away".
const GOING_AWAY: &[u8] = b"\x88\x0c\x03\xe9going away";

/// How many bytes a tunnel reads at once, each way.
const CHUNK: usize = 16 * 1024;

/// A worker's open tunnels, and its stop as they see it. One worker thread: nothing is locked.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: Cell<usize>,
    stopping: Cell<bool>,
    /// Wakes the tunnels when the worker stops.
    stopped: Notify,
    /// Wakes the worker's drain when the last tunnel ends.
    idle: Notify,
}

impl Tunnels {
    /// Tells every tunnel the worker stops: WebSockets close, other tunnels run on.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.stopped.notify_waiters();
    }

    /// How many tunnels are open.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Waits until no tunnel is open.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.open.get() == 0 {
                return;
            }
            idle.await;
        }
    }

    async fn until_stopped(&self) {
        let stopped = self.stopped.notified();
        if !self.stopping.get() {
            stopped.await;
        }
    }
}

/// One open tunnel, counted while it lives.
struct Counted(Rc<Tunnels>);

impl Counted {
    fn new(tunnels: Rc<Tunnels>) -> Self {
        tunnels.open.set(tunnels.open.get() + 1);
        Counted(tunnels)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let tunnels = &self.0;
        tunnels.open.set(tunnels.open.get() - 1);
        if tunnels.open.get() == 0 {
            tunnels.idle.notify_waiters();
        }
    }
}

/// Joins the client's and the member's upgraded connections. `websocket`: both sides agreed on
/// `Upgrade: websocket`, so the bytes are WebSocket frames.
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    member: hyper::upgrade::OnUpgrade,
    lease: Lease,
    websocket: bool,
    tunnels: Rc<Tunnels>,
) {
    let _counted = Counted::new(tunnels.clone());
    let (client, member) = match tokio::try_join!(client, member) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut member_read, mut member_write) = tokio::io::split(TokioIo::new(member));
    let ends = Ends::default();
    let (up, down) = (Cell::new(0), Cell::new(0));
    let relays = async {
        let to_member = Relay {
            from: From::Client,
            websocket,
            ends: &ends,
            tunnels: &tunnels,
            count: &up,
        };
        let to_client = Relay {
            from: From::Member,
            count: &down,
            ..to_member
        };
        tokio::join!(
            to_member.run(&mut client_read, &mut member_write),
            to_client.run(&mut member_read, &mut client_write),
        )
    };
    tokio::select! {
        (to_member, to_client) = relays => {
            for e in [to_member.err(), to_client.err()].into_iter().flatten() {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        () = ends.closed.notified() => {
            // Both Close frames are through: end both connections, as the closing handshake says.
            let _ = client_write.shutdown().await;
            let _ = member_write.shutdown().await;
        }
    }
    lease.stats().sent_bytes.fetch_add(up.get(), Relaxed);
    lease.stats().received_bytes.fetch_add(down.get(), Relaxed);
}

/// Which end a relay reads from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum From {
    Client,
    Member,
}

/// What a stopping WebSocket tunnel waits for: a Close frame (or the end) from each side.
#[derive(Default)]
struct Ends {
    client_closed: Cell<bool>,
    member_closed: Cell<bool>,
    /// Both closes are through while stopping: the tunnel may end.
    closed: Notify,
}

impl Ends {
    fn closed_by(&self, from: From) {
        match from {
            From::Client => self.client_closed.set(true),
            From::Member => self.member_closed.set(true),
        }
    }

    /// A closing handshake that began before the stop needs no word from the proxy.
    fn closing(&self) -> bool {
        self.client_closed.get() || self.member_closed.get()
    }

    fn check(&self, tunnels: &Tunnels) {
        if tunnels.stopping.get() && self.client_closed.get() && self.member_closed.get() {
            self.closed.notify_one();
        }
    }
}

/// One direction of a tunnel.
#[derive(Clone, Copy)]
struct Relay<'a> {
    from: From,
    websocket: bool,
    ends: &'a Ends,
    tunnels: &'a Tunnels,
    /// Bytes passed on, kept up to date (the relay may be dropped halfway).
    count: &'a Cell<u64>,
}

impl Relay<'_> {
    /// Copies what `from` sends to the other side until `from` closes its side of the
    /// connection. The member's side of a WebSocket, once the worker stops, passes on the frame
    /// under way, sends the client Close 1001, and drops what follows (its Close is still
    /// noted).
    async fn run<R, W>(self, read: &mut R, write: &mut W) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; CHUNK];
        let mut frames = Frames::default();
        // The member's side of a WebSocket may have to say "going away"; `said` once it has
        // (or once it need not, the closing handshake being under way).
        let speaks = self.websocket && self.from == From::Member;
        let mut said = false;
        loop {
            let stopping = self.tunnels.stopping.get();
            if speaks && stopping && !said && frames.at_boundary() {
                self.going_away(write).await?;
                said = true;
            }
            self.ends.check(self.tunnels);
            let n = if speaks && !stopping {
                tokio::select! {
                    n = read.read(&mut buf) => n?,
                    () = self.tunnels.until_stopped() => continue,
                }
            } else {
                read.read(&mut buf).await?
            };
            if n == 0 {
                return self.closed(write).await;
            }
            let mut chunk = &buf[..n];
            if !self.websocket {
                self.pass(write, chunk).await?;
                continue;
            }
            if speaks && self.tunnels.stopping.get() && !said {
                // The rest of the frame under way goes through; the Close follows it at the
                // top of the loop, and what comes after it is dropped.
                let (taken, closed) = frames.take(chunk, true);
                self.pass(write, &chunk[..taken]).await?;
                if closed {
                    self.ends.closed_by(self.from);
                }
                chunk = &chunk[taken..];
                if !frames.at_boundary() {
                    continue;
                }
                self.going_away(write).await?;
                said = true;
            }
            let (_, closed) = frames.take(chunk, false);
            if !said {
                self.pass(write, chunk).await?;
            }
            if closed {
                self.ends.closed_by(self.from);
            }
        }
    }

    /// The member's side of a WebSocket as the worker stops: the client is told Close 1001,
    /// unless the closing handshake is under way already.
    async fn going_away<W: AsyncWrite + Unpin>(&self, write: &mut W) -> std::io::Result<()> {
        if !self.ends.closing() {
            write.write_all(GOING_AWAY).await?;
            write.flush().await?;
        }
        Ok(())
    }

    /// This side closed: the other side's writing half is shut down, so that it sees the end.
    async fn closed<W: AsyncWrite + Unpin>(&self, write: &mut W) -> std::io::Result<()> {
        self.ends.closed_by(self.from);
        self.ends.check(self.tunnels);
        write.shutdown().await
    }

    async fn pass<W: AsyncWrite + Unpin>(
        &self,
        write: &mut W,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        write.write_all(bytes).await?;
        self.count.set(self.count.get() + bytes.len() as u64);
        Ok(())
    }
}

/// Where a WebSocket byte stream is (RFC 6455 5.2): between frames, inside a frame's head, or
/// inside its payload. Only lengths and opcodes are read; payloads are never looked at.
#[derive(Debug, Default)]
struct Frames {
    /// The current head's bytes so far (at most 14: 2, an extended length of 8, a mask of 4).
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    in_payload: bool,
    opcode: u8,
}

/// A Close frame's opcode.
const CLOSE: u8 = 0x8;

impl Frames {
    fn at_boundary(&self) -> bool {
        self.have == 0 && !self.in_payload
    }

    /// Reads `bytes` from its start: all of it, or with `one_frame` only up to the end of the
    /// frame under way. Returns how many bytes it read and whether a Close frame ended in them.
    fn take(&mut self, bytes: &[u8], one_frame: bool) -> (usize, bool) {
        let mut at = 0;
        let mut closed = false;
        if one_frame && self.at_boundary() {
            return (0, false);
        }
        while at < bytes.len() {
            if self.in_payload {
                let n = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - at);
                at += n;
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.in_payload = false;
                    closed |= self.opcode == CLOSE;
                    if one_frame {
                        break;
                    }
                }
                continue;
            }
            self.head[self.have] = bytes[at];
            self.have += 1;
            at += 1;
            if let Some(length) = self.head_length() {
                self.opcode = self.head[0] & 0x0f;
                self.have = 0;
                self.remaining = length;
                self.in_payload = length > 0;
                if length == 0 {
                    closed |= self.opcode == CLOSE;
                    if one_frame {
                        break;
                    }
                }
            }
        }
        (at, closed)
    }

    /// The payload length, once the whole head is in.
    fn head_length(&self) -> Option<u64> {
        let head = &self.head[..self.have];
        let (&second, _) = head.get(1).zip(Some(()))?;
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        let (extended, short) = match second & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if head.len() < 2 + extended + mask {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            head[2..2 + extended]
                .iter()
                .fold(0u64, |n, &b| (n << 8) | u64::from(b))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked) or a server (not), with `payload`.
    fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frame_boundaries_are_found_whatever_the_reads_cut() {
        let mut stream = frame(0x1, b"hello", true);
        stream.extend(frame(0x2, &[7; 300], true));
        stream.extend(frame(0x2, &[9; 70_000], false));
        stream.extend(frame(0x9, b"", false));
        stream.extend(frame(CLOSE, b"\x03\xe8", true));
        let ends = [
            frame(0x1, b"hello", true).len(),
            frame(0x1, b"hello", true).len() + frame(0x2, &[7; 300], true).len(),
        ];
        for cut in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut frames = Frames::default();
            let mut boundaries = Vec::new();
            let mut closes = 0;
            let mut at = 0;
            while at < stream.len() {
                let end = (at + cut).min(stream.len());
                let mut piece = &stream[at..end];
                // One frame at a time, noting each boundary reached.
                while !piece.is_empty() {
                    // At a boundary, one frame reads nothing: the next frame starts with
                    // one byte read as a whole stream.
                    let (n, closed) = match frames.take(piece, true) {
                        (0, _) => frames.take(&piece[..1], false),
                        taken => taken,
                    };
                    closes += usize::from(closed);
                    at += n;
                    piece = &piece[n..];
                    if frames.at_boundary() {
                        boundaries.push(at);
                    }
                }
            }
            assert!(boundaries.contains(&ends[0]), "cut {cut}: {boundaries:?}");
            assert!(boundaries.contains(&ends[1]), "cut {cut}: {boundaries:?}");
            assert_eq!(boundaries.last(), Some(&stream.len()), "cut {cut}");
            assert_eq!(closes, 1, "cut {cut}");
        }
    }

    #[test]
    fn one_frame_stops_at_the_end_of_the_frame_under_way() {
        let first = frame(0x2, &[1; 10], false);
        let mut stream = first.clone();
        stream.extend(frame(CLOSE, b"", false));
        let mut frames = Frames::default();
        // Halfway into the first frame.
        assert_eq!(frames.take(&stream[..5], false), (5, false));
        assert!(!frames.at_boundary());
        assert_eq!(frames.take(&stream[5..], true), (first.len() - 5, false));
        assert!(frames.at_boundary());
        assert_eq!(frames.take(&stream[first.len()..], true), (0, false));
        assert_eq!(
            frames.take(&stream[first.len()..], false),
            (stream.len() - first.len(), true)
        );
    }

    #[test]
    fn the_going_away_frame_is_a_close_with_1001() {
        let mut frames = Frames::default();
        assert_eq!(frames.take(GOING_AWAY, false), (GOING_AWAY.len(), true));
        assert_eq!(&GOING_AWAY[2..4], &1001u16.to_be_bytes());
        assert_eq!(usize::from(GOING_AWAY[1]), GOING_AWAY.len() - 2);
    }
}
