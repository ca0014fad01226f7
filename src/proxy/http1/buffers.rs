//! A worker's spare buffers for the HTTP/1 paths. A connection that waits for its next request
//! gives its read buffer back here, and takes one when bytes arrive; an answer's head is written
//! into one for the time of one write. An idle connection holds no buffer, and a busy worker
//! allocates none per request.

use std::cell::RefCell;

use bytes::BytesMut;

/// The read buffer's size when a request begins to arrive.
pub const READ_SIZE: usize = 8 * 1024;
/// The most spare buffers of each kind a worker keeps.
pub const SPARE: usize = 64;
/// An answer's buffer larger than this is let go rather than kept spare.
const SPARE_WRITE_LIMIT: usize = 16 * 1024;

/// The spare buffers of one worker.
#[derive(Default)]
pub struct Buffers {
    read: RefCell<Vec<BytesMut>>,
    write: RefCell<Vec<Vec<u8>>>,
}

impl Buffers {
    pub fn take_read(&self) -> BytesMut {
        self.read.borrow_mut().pop().unwrap_or_default()
    }

    /// Keeps `buf` if it is empty and nothing shares it any more (the last request's head,
    /// split off it, is gone), with its whole room back.
    pub fn put_read(&self, mut buf: BytesMut) {
        if buf.is_empty() && buf.try_reclaim(READ_SIZE) {
            let mut spare = self.read.borrow_mut();
            if spare.len() < SPARE {
                spare.push(buf);
            }
        }
    }

    pub fn take_write(&self) -> Vec<u8> {
        self.write
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(2048))
    }

    pub fn put_write(&self, mut out: Vec<u8>) {
        if out.capacity() <= SPARE_WRITE_LIMIT {
            out.clear();
            let mut spare = self.write.borrow_mut();
            if spare.len() < SPARE {
                spare.push(out);
            }
        }
    }

    /// How many buffers are spare: read and write.
    #[cfg(test)]
    pub fn spare(&self) -> (usize, usize) {
        (self.read.borrow().len(), self.write.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_buffer_is_kept_spare_only_when_nothing_shares_it() {
        let buffers = Buffers::default();
        let read = |buffers: &Buffers| {
            let mut buf = buffers.take_read();
            buf.reserve(READ_SIZE);
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let head = buf.split().freeze();
            (buf, head)
        };
        // The head still lives (the request holds it): the buffer is not kept.
        let (buf, head) = read(&buffers);
        assert!(buf.capacity() > 0);
        buffers.put_read(buf);
        assert_eq!(buffers.spare(), (0, 0));
        drop(head);
        // A buffer with bytes in it (a pipelined request) is not kept either.
        let mut pending = BytesMut::from(&b"GET"[..]);
        pending.reserve(READ_SIZE);
        buffers.put_read(pending);
        assert_eq!(buffers.spare(), (0, 0));
        // Nothing shares it now: kept, with its whole room back, and handed out again.
        let (buf, head) = read(&buffers);
        drop(head);
        buffers.put_read(buf);
        assert_eq!(buffers.spare(), (1, 0));
        let again = buffers.take_read();
        assert!(again.capacity() >= READ_SIZE, "{}", again.capacity());
        assert_eq!(buffers.spare(), (0, 0));
        // Never more than SPARE of them.
        for _ in 0..SPARE + 3 {
            let mut buf = BytesMut::new();
            buf.reserve(READ_SIZE);
            buffers.put_read(buf);
        }
        assert_eq!(buffers.spare(), (SPARE, 0));
    }

    #[test]
    fn a_write_buffer_comes_back_empty_unless_it_grew_too_large() {
        let buffers = Buffers::default();
        let mut out = buffers.take_write();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        buffers.put_write(out);
        assert_eq!(buffers.spare(), (0, 1));
        let out = buffers.take_write();
        assert!(out.is_empty() && out.capacity() >= 2048);
        buffers.put_write(Vec::with_capacity(SPARE_WRITE_LIMIT + 1));
        assert_eq!(buffers.spare(), (0, 0));
    }
}
