//! A layer's decompression (and the hashing under it) on a thread of its own, a few chunks ahead
//! of the thread creating its files: with more than one core, inflating a layer and writing its
//! files overlap instead of taking turns (the two cost about the same for a typical layer).

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, sync_channel};

/// Bytes per chunk, and chunks in flight: enough to keep both threads busy, little memory.
const CHUNK: usize = 256 * 1024;
const AHEAD: usize = 8;

/// Runs `consume` on what `source` yields, read on another thread. Whatever `consume` leaves
/// unread is not read from `source` either (beyond the chunks already in flight).
pub fn read_ahead<R: Read + Send, T>(mut source: R, consume: impl FnOnce(&mut dyn Read) -> T) -> T {
    std::thread::scope(|scope| {
        let (chunks, receiver) = sync_channel::<io::Result<Vec<u8>>>(AHEAD);
        scope.spawn(move || {
            loop {
                let mut chunk = vec![0; CHUNK];
                let read = match source.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = chunks.send(Err(e));
                        return;
                    }
                };
                chunk.truncate(read);
                // The consumer is done (or failed): stop reading.
                if chunks.send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        let mut reader = Chunks { receiver, chunk: Vec::new(), at: 0 };
        // Dropped before the scope joins the reader thread, so a consumer that stops early
        // never leaves it blocked on a full channel.
        let result = consume(&mut reader);
        drop(reader);
        result
    })
}

struct Chunks {
    receiver: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.receiver.recv() {
                Ok(chunk) => (self.chunk, self.at) = (chunk?, 0),
                // The reader thread ended: the source is at its end.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in uneven pieces, then fails once if asked to.
    struct Source {
        data: Vec<u8>,
        at: usize,
        fail_at_end: bool,
    }

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                if std::mem::take(&mut self.fail_at_end) {
                    return Err(io::Error::other("disk gone"));
                }
                return Ok(0);
            }
            let n = buf.len().min(self.data.len() - self.at).min(1 + self.at % 7919);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn the_consumer_reads_exactly_what_the_source_holds() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK * AHEAD * 3 + 17] {
            let expected = data(len);
            let source = Source { data: expected.clone(), at: 0, fail_at_end: false };
            let got = read_ahead(source, |r| {
                let mut all = Vec::new();
                r.read_to_end(&mut all).unwrap();
                all
            });
            assert_eq!(got.len(), len);
            assert!(got == expected, "the bytes differ for a source of {len}");
        }
    }

    #[test]
    fn an_error_of_the_source_reaches_the_consumer() {
        let source = Source { data: data(CHUNK * 2), at: 0, fail_at_end: true };
        let err = read_ahead(source, |r| r.read_to_end(&mut Vec::new()).unwrap_err());
        assert_eq!(err.to_string(), "disk gone");
    }

    #[test]
    fn a_consumer_that_stops_early_does_not_wait_for_the_rest() {
        // Far more than fits in flight: the reader thread must stop, or the scope never ends.
        let source = Source { data: data(CHUNK * AHEAD * 8), at: 0, fail_at_end: false };
        let first = read_ahead(source, |r| {
            let mut one = [0u8; 10];
            r.read_exact(&mut one).unwrap();
            one
        });
        assert_eq!(first.to_vec(), data(10));
    }
}
