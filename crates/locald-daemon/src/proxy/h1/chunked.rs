//! Where a response body ends: its length, the end of its chunked coding, or the close.

use std::io;

use super::MAX_CHUNK_LINE;
use super::codec::Framing;

/// How much of the body is still to come.
pub(super) enum Remaining {
    Length(u64),
    Chunked(ChunkScan),
    UntilClose,
}

impl Remaining {
    pub(super) fn new(framing: &Framing) -> Self {
        match framing {
            Framing::Empty => Remaining::Length(0),
            Framing::Length(n) => Remaining::Length(*n),
            Framing::Chunked => Remaining::Chunked(ChunkScan::default()),
            Framing::UntilClose => Remaining::UntilClose,
        }
    }

    /// How many of `bytes` belong to the body.
    pub(super) fn take(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Remaining::Length(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Ok(n as usize)
            }
            Remaining::Chunked(scan) => {
                scan.scan(bytes).map_err(|cause| io::Error::new(io::ErrorKind::InvalidData, cause))
            }
            Remaining::UntilClose => Ok(bytes.len()),
        }
    }

    pub(super) fn done(&self) -> bool {
        match self {
            Remaining::Length(left) => *left == 0,
            Remaining::Chunked(scan) => scan.done(),
            Remaining::UntilClose => false,
        }
    }
}

/// Finds where a chunked body ends (RFC 9112 §7.1) while it passes through unchanged.
#[derive(Default)]
pub(super) struct ChunkScan {
    state: Chunk,
    /// Bytes in the current framing line, bounded by [`MAX_CHUNK_LINE`].
    line: usize,
}

#[derive(Default, Debug, PartialEq)]
enum Chunk {
    /// At the start of a size line.
    #[default]
    SizeStart,
    /// In a size line: the size so far, whether in the extensions after it.
    Size {
        size: u64,
        ext: bool,
    },
    /// `\r` seen at the end of a size line.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line, or inside one (`empty`: nothing but a `\r` in it yet).
    Trailer {
        empty: bool,
    },
    Done,
}

impl ChunkScan {
    pub(super) fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// How many of `bytes` belong to the body; fewer than all only when it has ended.
    pub(super) fn scan(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(left) = &mut self.state {
                let n = (*left).min((bytes.len() - i) as u64);
                *left -= n;
                i += n as usize;
                if *left == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err("a chunk framing line is too long");
            }
            self.state = match std::mem::take(&mut self.state) {
                Chunk::SizeStart => match hex(b) {
                    Some(d) => Chunk::Size { size: u64::from(d), ext: false },
                    None => return Err("a chunk size is not hexadecimal"),
                },
                Chunk::Size { size, ext: false } if hex(b).is_some() => {
                    let d = u64::from(hex(b).unwrap_or_default());
                    let size =
                        size.checked_mul(16).and_then(|s| s.checked_add(d)).ok_or("a chunk is too large")?;
                    Chunk::Size { size, ext: false }
                }
                Chunk::Size { size, .. } if b == b'\r' => Chunk::SizeLf { size },
                Chunk::Size { size, .. } | Chunk::SizeLf { size } if b == b'\n' => {
                    self.line = 0;
                    if size == 0 { Chunk::Trailer { empty: true } } else { Chunk::Data(size) }
                }
                Chunk::Size { size, ext: false } if matches!(b, b';' | b' ' | b'\t') => {
                    Chunk::Size { size, ext: true }
                }
                Chunk::Size { size, ext: true } if b != b'\r' => Chunk::Size { size, ext: true },
                Chunk::Size { .. } | Chunk::SizeLf { .. } => return Err("a chunk size line is malformed"),
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataCr | Chunk::DataLf if b == b'\n' => {
                    self.line = 0;
                    Chunk::SizeStart
                }
                Chunk::DataCr | Chunk::DataLf => return Err("a chunk does not end with CRLF"),
                Chunk::Trailer { empty } if b == b'\n' => {
                    self.line = 0;
                    if empty {
                        self.state = Chunk::Done;
                        return Ok(i);
                    }
                    Chunk::Trailer { empty: true }
                }
                Chunk::Trailer { empty } if b == b'\r' => Chunk::Trailer { empty },
                Chunk::Trailer { .. } => Chunk::Trailer { empty: false },
                Chunk::Data(_) => unreachable!("handled above"),
                Chunk::Done => {
                    self.state = Chunk::Done;
                    return Ok(i - 1);
                }
            };
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ends_are_found_however_the_bytes_are_split() {
        let body =
            b"4\r\nwiki\r\n5;name=\"v\"\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nexpires: never\r\n\r\n";
        let next = b"HTTP/1.1 200 OK";
        let all = [&body[..], next].concat();
        for split in 0..all.len() {
            let mut scan = ChunkScan::default();
            let first = scan.scan(&all[..split]).unwrap();
            let taken = if scan.done() { first } else { first + scan.scan(&all[split..]).unwrap() };
            assert!(scan.done(), "split at {split}");
            assert_eq!(taken, body.len(), "split at {split}");
        }
    }

    #[test]
    fn malformed_chunk_framing_is_an_error() {
        for bad in [&b"x\r\n"[..], b"4\r\nwikiXX", b"ffffffffffffffffff\r\n", b"4\rx"] {
            let mut scan = ChunkScan::default();
            assert!(scan.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut scan = ChunkScan::default();
        assert_eq!(scan.scan(b"0\r\n\r"), Ok(4));
        assert!(!scan.done(), "the empty line after the last chunk has not come yet");
        let mut scan = ChunkScan::default();
        assert!(scan.scan(&[b'1'; MAX_CHUNK_LINE + 1]).is_err(), "an endless size line");
    }
}
