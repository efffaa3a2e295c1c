//! Byte-level server-sent-events decoder and the few encoders the gateway needs.
//!
//! Lines are split on bytes (CR, LF or CRLF, as the WHATWG grammar says) before any UTF-8
//! decoding, because a multi-byte character can straddle two TCP reads. Comment lines are
//! skipped, `data:` lines are joined with `\n`, and a blank line dispatches the event. A line or
//! an event over the cap is an error rather than unbounded buffering: a hostile upstream cannot
//! make the gateway hold arbitrary memory.

use bytes::{Buf, Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field, when present.
    pub event: Option<String>,
    /// The joined `data:` lines.
    pub data: Bytes,
}

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A single line, or one event's data, exceeded the cap.
    TooLong,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every decoder on the request path has the default cap.
        write!(f, "a server-sent event over tidegate's cap of {} MiB per event", DEFAULT_MAX >> 20)
    }
}

/// The event being assembled from `data:` and `event:` lines.
#[derive(Debug)]
struct Fields {
    event: Option<String>,
    data: BytesMut,
    has_data: bool,
    max_line: usize,
}

/// One line (without its terminator): an event when it is the blank line ending one.
fn line(line: &[u8], f: &mut Fields) -> Result<Option<Event>, SseError> {
    if line.is_empty() {
        // An event without data is not dispatched (WHATWG SSE: an empty data buffer resets the
        // event type): `event: ping` alone is a keep-alive, not a chunk to judge.
        if !f.has_data {
            f.event = None;
            return Ok(None);
        }
        let ev = Event { event: f.event.take(), data: f.data.split().freeze() };
        f.has_data = false;
        return Ok(Some(ev));
    }
    if line[0] == b':' {
        return Ok(None);
    }
    let (field, value) = match line.iter().position(|&b| b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    match field {
        b"data" => {
            if f.data.len() + value.len() + 1 > f.max_line {
                return Err(SseError::TooLong);
            }
            if f.has_data {
                f.data.extend_from_slice(b"\n");
            }
            f.data.extend_from_slice(value);
            f.has_data = true;
        }
        b"event" => f.event = Some(String::from_utf8_lossy(value).into_owned()),
        // `id` and `retry` mean nothing to a proxy of model streams.
        _ => {}
    }
    Ok(None)
}

/// Incremental decoder: feed bytes as they arrive, take events out.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    /// The previous chunk ended with CR: a leading LF in the next one belongs to it.
    skip_lf: bool,
    /// Bytes of `buf` already searched for a line end (none was there).
    scanned: usize,
    fields: Fields,
    max_line: usize,
}

/// Default cap on one line and on one event's data: 1 MiB.
pub const DEFAULT_MAX: usize = 1 << 20;

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX)
    }
}

impl Decoder {
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            skip_lf: false,
            scanned: 0,
            fields: Fields { event: None, data: BytesMut::new(), has_data: false, max_line },
            max_line,
        }
    }

    /// Appends bytes read from the wire.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a complete line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, if the buffered bytes hold one.
    pub fn next_event(&mut self) -> Result<Option<Event>, SseError> {
        loop {
            if self.skip_lf && !self.buf.is_empty() {
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
                self.skip_lf = false;
            }
            // Search only what earlier calls have not: a line dripped a byte per read costs
            // linear time, not quadratic.
            let from = self.scanned.min(self.buf.len());
            let Some(end) = memchr::memchr2(b'\n', b'\r', &self.buf[from..]).map(|i| from + i)
            else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_line {
                    return Err(SseError::TooLong);
                }
                return Ok(None);
            };
            self.scanned = 0;
            if end > self.max_line {
                return Err(SseError::TooLong);
            }
            // The line is read in place (no copy, no shared buffer), then skipped.
            let ev = line(&self.buf[..end], &mut self.fields)?;
            let terminator = self.buf[end];
            self.buf.advance(end + 1);
            if terminator == b'\r' {
                // CRLF: swallow the LF now or, if it has not arrived yet, when it does.
                if self.buf.is_empty() {
                    self.skip_lf = true;
                } else if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                }
            }
            if let Some(ev) = ev {
                return Ok(Some(ev));
            }
        }
    }
}

/// `data: <payload>\n\n`.
pub fn encode_data(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// `event: <name>\ndata: <payload>\n\n`.
pub fn encode_event(name: &str, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + name.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// The OpenAI stream terminator.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<Event> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c);
            while let Some(e) = d.next_event().unwrap() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn lf_crlf_cr_and_split_reads() {
        let want = vec![
            Event { event: None, data: Bytes::from_static(b"a") },
            Event { event: Some("x".into()), data: Bytes::from_static(b"b\nc") },
            Event { event: None, data: Bytes::from_static(b"d") },
        ];
        assert_eq!(all(&[b"data: a\n\nevent: x\ndata: b\ndata: c\n\ndata: d\n\n"]), want);
        assert_eq!(
            all(&[b"data: a\r\n\r\nevent: x\r\ndata: b\r\ndata: c\r\n\r\ndata: d\r\n\r\n"]),
            want
        );
        assert_eq!(all(&[b"data: a\r\revent: x\rdata: b\rdata: c\r\rdata: d\r\r"]), want);
        // CRLF split across reads, and a multibyte char split across reads.
        assert_eq!(
            all(&[b"data: a\r", b"\n\r", b"\nevent: x\ndata: b\ndata: c\n\ndata: d\n\n"]),
            want
        );
        let e = all(&[b"data: \xc3", b"\xa9\n\n"]);
        assert_eq!(&e[0].data[..], "é".as_bytes());
    }

    #[test]
    fn comments_and_unknown_fields_are_skipped() {
        let e = all(&[b": ping\nid: 3\nretry: 10\ndata:x\n\n"]);
        assert_eq!(e, vec![Event { event: None, data: Bytes::from_static(b"x") }]);
        // An event with no data is not one, and its name does not carry to the next; an empty
        // `data:` line is data.
        let e = all(&[b"event: ping\n\nid: 4\n\ndata: y\n\nevent: e\ndata:\n\n"]);
        let want = [(None, &b"y"[..]), (Some("e".to_owned()), &b""[..])];
        assert_eq!(e.iter().map(|e| (e.event.clone(), &e.data[..])).collect::<Vec<_>>(), want);
    }

    #[test]
    fn long_line_is_an_error() {
        let mut d = Decoder::new(8);
        d.feed(b"data: 0123456789");
        assert_eq!(d.next_event(), Err(SseError::TooLong));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..256);
            let bytes: Vec<u8> = (0..len)
                .map(|_| *rng.choice(b"data: event:\r\n\n:{}x\xff").unwrap_or(&b'x'))
                .collect();
            let mut d = Decoder::new(64);
            for chunk in bytes.chunks(rng.usize(1..16)) {
                d.feed(chunk);
                while let Ok(Some(_)) = d.next_event() {}
            }
        }
    }
}
