//! Where a response body ends: its length, the end of its chunked coding, or the close.

use std::io;

use super::codec::Framing;
use super::{MAX_CHUNK_LINE, MAX_HEADERS};

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

/// Most bytes of chunk extensions in one body, and of its trailer section (hyper's limits).
const MAX_EXTENSIONS: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Finds where a chunked body ends (RFC 9112 §7.1) while it passes through unchanged. It takes
/// exactly what hyper's client decoder takes, so the two paths agree on every body: CRLF after
/// each line (a bare LF is an error), whitespace only before extensions, trailer fields that
/// parse as fields.
#[derive(Default)]
pub(super) struct ChunkScan {
    state: Chunk,
    /// Bytes in the current framing line, bounded by [`MAX_CHUNK_LINE`].
    line: usize,
    extensions: usize,
    /// The trailer section so far, checked once it ends.
    trailers: Vec<u8>,
}

#[derive(Default, Debug, PartialEq)]
enum Chunk {
    /// At the start of a size line: a hex digit must come.
    #[default]
    SizeStart,
    Size(u64),
    /// Whitespace after the size: only more of it, extensions or the line end may follow.
    SizeLws(u64),
    Extension(u64),
    /// `\r` seen at the end of a size line.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk's size line, and after each trailer field: the empty line or a field.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
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
            if self.state == Chunk::Done {
                return Ok(i);
            }
            let b = bytes[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err("a chunk framing line is too long");
            }
            self.state = match std::mem::take(&mut self.state) {
                Chunk::SizeStart => Chunk::Size(u64::from(hex(b).ok_or("a chunk size is not hexadecimal")?)),
                Chunk::Size(size) => match b {
                    b'\r' => Chunk::SizeLf(size),
                    b' ' | b'\t' => Chunk::SizeLws(size),
                    b';' => Chunk::Extension(size),
                    _ => {
                        let d = u64::from(hex(b).ok_or("a chunk size line is malformed")?);
                        Chunk::Size(
                            size.checked_mul(16)
                                .and_then(|s| s.checked_add(d))
                                .ok_or("a chunk is too large")?,
                        )
                    }
                },
                Chunk::SizeLws(size) => match b {
                    b'\r' => Chunk::SizeLf(size),
                    b' ' | b'\t' => Chunk::SizeLws(size),
                    b';' => Chunk::Extension(size),
                    _ => return Err("a chunk size line is malformed"),
                },
                Chunk::Extension(size) => match b {
                    b'\r' => Chunk::SizeLf(size),
                    b'\n' => return Err("a chunk extension holds a bare LF"),
                    _ => {
                        self.extensions += 1;
                        if self.extensions >= MAX_EXTENSIONS {
                            return Err("chunk extensions are too long");
                        }
                        Chunk::Extension(size)
                    }
                },
                Chunk::SizeLf(size) if b == b'\n' => {
                    self.line = 0;
                    if size == 0 { Chunk::EndCr } else { Chunk::Data(size) }
                }
                Chunk::SizeLf(_) => return Err("a chunk size line does not end with CRLF"),
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => {
                    self.line = 0;
                    Chunk::SizeStart
                }
                Chunk::DataCr | Chunk::DataLf => return Err("a chunk does not end with CRLF"),
                Chunk::EndCr if b == b'\r' => Chunk::EndLf,
                Chunk::EndLf if b == b'\n' => {
                    self.state = Chunk::Done;
                    self.check_trailers()?;
                    return Ok(i);
                }
                Chunk::EndLf => return Err("a chunked body does not end with CRLF"),
                Chunk::EndCr | Chunk::Trailer => {
                    self.trailer_byte(b)?;
                    if b == b'\r' { Chunk::TrailerLf } else { Chunk::Trailer }
                }
                Chunk::TrailerLf if b == b'\n' => {
                    self.trailer_byte(b)?;
                    self.line = 0;
                    Chunk::EndCr
                }
                Chunk::TrailerLf => return Err("a trailer field does not end with CRLF"),
                Chunk::Data(_) | Chunk::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }

    fn trailer_byte(&mut self, b: u8) -> Result<(), &'static str> {
        if self.trailers.len() >= MAX_TRAILERS {
            return Err("the trailer fields are too long");
        }
        self.trailers.push(b);
        Ok(())
    }

    /// Trailer fields must read as fields (hyper's client fails the body otherwise).
    fn check_trailers(&mut self) -> Result<(), &'static str> {
        if self.trailers.is_empty() {
            return Ok(());
        }
        self.trailers.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(&self.trailers, &mut fields) {
            Ok(httparse::Status::Complete((_, fields)))
                if fields.iter().all(|f| hyper::header::HeaderValue::from_bytes(f.value).is_ok()) =>
            {
                Ok(())
            }
            _ => Err("a trailer field is malformed"),
        }
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
        for bad in [
            &b"x\r\n"[..],
            b"4\r\nwikiXX",
            b"ffffffffffffffffff\r\n",
            b"4\rx",
            // Bare LF where hyper's client wants CRLF: the two paths must frame alike.
            b"5\nhello\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5;ext\nhello",
            b"0\n\n",
            b"5 x\r\n",
            b"0\r\nnot a field\r\n\r\n",
        ] {
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
