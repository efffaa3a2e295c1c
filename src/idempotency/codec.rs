//! [`StoredAnswer`] as bytes, for the Redis backend: a version byte, the status (u16), the
//! stream flag, the header count (u16) with each name and value length-prefixed (u32), then the
//! body to the end. Big-endian throughout; a record that does not parse is treated as absent.

use bytes::Bytes;

use super::StoredAnswer;

const VERSION: u8 = 1;

impl StoredAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size() + 16 + self.headers.len() * 8);
        out.push(VERSION);
        out.extend_from_slice(&self.status.to_be_bytes());
        out.push(u8::from(self.stream));
        out.extend_from_slice(&(self.headers.len().min(u16::MAX as usize) as u16).to_be_bytes());
        for (k, v) in self.headers.iter().take(u16::MAX as usize) {
            for part in [k, v] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(b: &[u8]) -> Option<StoredAnswer> {
        let (&version, mut rest) = b.split_first()?;
        if version != VERSION {
            return None;
        }
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(n)?;
            rest = tail;
            Some(head)
        };
        let status = u16::from_be_bytes(take(2)?.try_into().ok()?);
        let stream = take(1)?[0] == 1;
        let count = u16::from_be_bytes(take(2)?.try_into().ok()?);
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let mut pair = [String::new(), String::new()];
            for part in &mut pair {
                let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
                *part = String::from_utf8(take(len)?.to_vec()).ok()?;
            }
            let [k, v] = pair;
            headers.push((k, v));
        }
        Some(StoredAnswer { status, headers, body: Bytes::copy_from_slice(rest), stream })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let a = StoredAnswer {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: Bytes::from_static(b"data: {}\n\n\xff"),
            stream: true,
        };
        assert_eq!(StoredAnswer::decode(&a.encode()), Some(a.clone()));
        let enc = a.encode();
        for cut in 0..enc.len() - a.body.len() {
            assert_eq!(StoredAnswer::decode(&enc[..cut]), None, "cut at {cut}");
        }
        assert_eq!(StoredAnswer::decode(b"\x02rest"), None);
    }
}
