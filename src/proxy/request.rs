//! The client's JSON request, parsed once without building a value tree.
//!
//! The top-level object is read as an ordered list of (key, raw JSON) pairs: the fields tidegate
//! cares about are type-checked, everything else is kept as the exact bytes the client sent, so
//! unknown fields pass through untouched and the upstream body is written by splicing rather
//! than by a `serde_json::Value` round trip.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// A top-level JSON object as ordered raw fields.
#[derive(Debug)]
pub struct RawObject<'a> {
    pub fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                let mut fields: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::with_capacity(16);
                while let Some(Key(k)) = map.next_key()? {
                    let v: &'de RawValue = map.next_value()?;
                    if fields.iter().any(|(f, _)| *f == k) {
                        return Err(de::Error::custom(format!("duplicate field `{k}`")));
                    }
                    fields.push((k, v));
                }
                Ok(RawObject { fields })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> RawObject<'a> {
    /// Parses a request body; any JSON or shape error is a 400 `invalid_request`.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        if body.is_empty() {
            return Err(GatewayError::invalid(
                "request body is empty; expected a JSON object",
                None,
            ));
        }
        // UTF-8 checked once for the whole body: serde_json's `&str` reader then skips the
        // per-string check its slice reader does.
        let text = std::str::from_utf8(body).map_err(|e| {
            GatewayError::invalid(
                format!("malformed JSON: invalid UTF-8 at byte {}", e.valid_up_to()),
                None,
            )
        })?;
        if let Some(at) = lone_surrogate(body) {
            return Err(GatewayError::invalid(
                format!("malformed JSON: a lone UTF-16 surrogate escape at byte {at}"),
                None,
            ));
        }
        serde_json::from_str(text).map_err(|e| {
            let what = if e.is_data() { "expected a JSON object" } else { "malformed JSON" };
            GatewayError::invalid(format!("{what}: {e}"), None)
        })
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The field deserialized as `T`; JSON `null` reads as absent. A wrong type is a 400 naming
    /// the field.
    pub fn typed<T: Deserialize<'a>>(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, GatewayError> {
        let Some(raw) = self.get(key) else { return Ok(None) };
        if raw.get() == "null" {
            return Ok(None);
        }
        serde_json::from_str(raw.get()).map(Some).map_err(|_| {
            GatewayError::invalid(
                format!("`{key}` must be {expected}, got {}", preview(raw.get())),
                Some(key),
            )
        })
    }

    /// Writes the object back with `replace` fields substituted (or appended when absent) and
    /// `remove` fields dropped, everything else byte-for-byte.
    pub fn write(&self, replace: &[(&str, &str)], remove: &[&str]) -> Vec<u8> {
        let cap = self.fields.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum::<usize>() + 64;
        let mut out = Vec::with_capacity(cap);
        out.push(b'{');
        let mut first = true;
        let mut push = |out: &mut Vec<u8>, k: &str, v: &str| {
            if !first {
                out.push(b',');
            }
            first = false;
            // Keys were valid JSON strings on the way in; re-escape on the way out.
            let _ = serde_json::to_writer(&mut *out, k);
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        };
        for (k, v) in &self.fields {
            if remove.contains(&k.as_ref()) {
                continue;
            }
            match replace.iter().find(|(rk, _)| *rk == k.as_ref()) {
                Some((_, rv)) => push(&mut out, k, rv),
                None => push(&mut out, k, v.get()),
            }
        }
        for (rk, rv) in replace {
            if self.get(rk).is_none() {
                push(&mut out, rk, rv);
            }
        }
        out.push(b'}');
        out
    }
}

/// A short excerpt of a raw value for error messages.
/// Where a `\uD800`-`\uDFFF` escape that is not half of a surrogate pair starts, if any. Such
/// a string is not text: serde_json refuses it where it decodes a string, but passes it where it
/// only skips one (the fields forwarded untouched), so the upstream would get it. Backslashes
/// are found with `memchr`; only a `\u` escape is looked at closer.
fn lone_surrogate(body: &[u8]) -> Option<usize> {
    let hex = |at: usize| -> Option<u16> {
        let digits = body.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    let mut i = 0;
    while let Some(off) = body.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let at = i + off;
        if body.get(at + 1) != Some(&b'u') {
            // Any other escape (an escaped backslash included) is two bytes.
            i = at + 2;
            continue;
        }
        i = at + 6;
        match hex(at + 2) {
            Some(0xD800..=0xDBFF) => {
                let low = body.get(at + 6..at + 8) == Some(b"\\u".as_slice())
                    && matches!(hex(at + 8), Some(0xDC00..=0xDFFF));
                if !low {
                    return Some(at);
                }
                i = at + 12;
            }
            Some(0xDC00..=0xDFFF) => return Some(at),
            // Not hex: serde_json reports it.
            _ => {}
        }
    }
    None
}

fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(40).collect();
    if p.len() < s.len() {
        p.push('…');
    }
    p
}

/// What tidegate reads from a chat completions request.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub obj: RawObject<'a>,
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// Choices asked for (default 1).
    pub n: u64,
}

/// Other `stream_options` keys are not ours to check; they pass through.
#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl<'a> ChatRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        let obj = RawObject::parse(body)?;
        let model: Option<Cow<'a, str>> = obj.typed("model", "a string")?;
        let stream = obj.typed::<bool>("stream", "a boolean")?.unwrap_or(false);
        let include_usage = match obj
            .typed::<StreamOptions>("stream_options", "an object like {\"include_usage\": true}")?
        {
            Some(o) => o.include_usage.unwrap_or(false),
            None => false,
        };
        let max_tokens = obj.typed::<u64>("max_tokens", "a non-negative integer")?;
        let max_completion_tokens =
            obj.typed::<u64>("max_completion_tokens", "a non-negative integer")?;
        if max_tokens.is_some() && max_completion_tokens.is_some() {
            return Err(GatewayError::invalid(
                "set either `max_tokens` or `max_completion_tokens`, not both",
                Some("max_tokens"),
            ));
        }
        check_messages(&obj)?;
        let n = obj.typed::<u64>("n", "a positive integer")?.unwrap_or(1);
        if n == 0 {
            return Err(GatewayError::invalid("`n` must be at least 1", Some("n")));
        }
        Ok(Self { obj, model, stream, include_usage, max_tokens, max_completion_tokens, n })
    }
}

/// `messages` is present and a non-empty array of objects with a string `role`; content is the
/// provider's business.
fn check_messages(obj: &RawObject<'_>) -> Result<(), GatewayError> {
    let Some(raw) = obj.get("messages") else {
        return Err(GatewayError::invalid("`messages` is required", Some("messages")));
    };
    let msgs: Vec<MessageShape<'_>> = serde_json::from_str(raw.get()).map_err(|_| {
        GatewayError::invalid(
            "`messages` must be an array of objects each with a string `role`",
            Some("messages"),
        )
    })?;
    if msgs.is_empty() {
        return Err(GatewayError::invalid("`messages` must not be empty", Some("messages")));
    }
    Ok(())
}

/// Only the shape is checked here; content is the provider's business.
#[derive(Deserialize)]
struct MessageShape<'a> {
    #[serde(borrow)]
    #[expect(dead_code, reason = "deserialized only to check the type")]
    role: Cow<'a, str>,
}

/// What tidegate reads from an embeddings request.
#[derive(Debug)]
pub struct EmbeddingsRequest<'a> {
    pub obj: RawObject<'a>,
    pub model: Option<Cow<'a, str>>,
}

impl<'a> EmbeddingsRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        let obj = RawObject::parse(body)?;
        let model = obj.typed("model", "a string")?;
        const EXPECTED: &str = "a string or an array of strings or token arrays";
        match obj.get("input").map(RawValue::get).filter(|raw| *raw != "null") {
            Some(raw) if raw.starts_with(['"', '[']) => {}
            None => {
                let message = format!("`input` is required: {EXPECTED}");
                return Err(GatewayError::invalid(message, Some("input")));
            }
            Some(raw) => {
                let message = format!("`input` must be {EXPECTED}, got {}", preview(raw));
                return Err(GatewayError::invalid(message, Some("input")));
            }
        }
        Ok(Self { obj, model })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_need_a_positive_max_tokens() {
        let parse = |max: &str| {
            let body = format!(
                r#"{{"model":"m","max_tokens":{max},"messages":[{{"role":"user","content":"x"}}]}}"#
            );
            MessagesRequest::parse(body.as_bytes()).map(|m| m.max_tokens).map_err(|e| e.message)
        };
        assert_eq!(parse("1"), Ok(1));
        for bad in ["0", "-1", "1.5", "\"5\""] {
            assert!(parse(bad).unwrap_err().contains("max_tokens"), "{bad}");
        }
    }

    #[test]
    fn embeddings_input_missing_or_of_the_wrong_type_says_which() {
        let message = |body: &str| EmbeddingsRequest::parse(body.as_bytes()).unwrap_err().message;
        for missing in [r#"{"model":"m"}"#, r#"{"model":"m","input":null}"#] {
            assert!(message(missing).starts_with("`input` is required: a string"), "{missing}");
        }
        for (wrong, got) in [("5.5", "5.5"), ("{\"a\":1}", "{\"a\":1}"), ("true", "true")] {
            let m = message(&format!(r#"{{"model":"m","input":{wrong}}}"#));
            assert_eq!(
                m,
                format!(
                    "`input` must be a string or an array of strings or token arrays, got {got}"
                )
            );
        }
        assert!(EmbeddingsRequest::parse(br#"{"model":"m","input":["a"]}"#).is_ok());
    }

    #[test]
    fn lone_surrogate_escapes_are_found() {
        for (body, want) in [
            (r#"{"a":"\ud83d\ude00"}"#, None),
            (r#"{"a":"\uD83D\uDE00 and \u00e9"}"#, None),
            (r#"{"a":"\ud800"}"#, Some(6)),
            (r#"{"a":"\ud800\u0041"}"#, Some(6)),
            (r#"{"a":"x\udc00"}"#, Some(7)),
            (r#"{"a":"\\ud800"}"#, None),
            (r#"{"a":"\\\ud800"}"#, Some(8)),
            (r#"{"a":"\"\ud800"}"#, Some(8)),
            (r#"{"a":"\ud800"#, Some(6)),
            ("\\", None),
            ("\\u", None),
            ("\\ud83d\\", Some(0)),
        ] {
            assert_eq!(lone_surrogate(body.as_bytes()), want, "{body}");
        }
        let body = br#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#;
        let e = ChatRequest::parse(body).err().unwrap();
        assert!(e.message.contains("lone UTF-16 surrogate escape at byte"), "{}", e.message);
    }

    #[test]
    fn invalid_utf8_is_named_with_its_offset() {
        let e = RawObject::parse(b"{\"model\":\"m\xff\"}").unwrap_err();
        assert!(e.message.contains("invalid UTF-8 at byte 11"), "{}", e.message);
        // Escapes still decode on the `&str` path.
        let o = RawObject::parse(br#"{"k\u00e9y":"v\n"}"#).unwrap();
        assert_eq!(o.fields[0].0, "k\u{e9}y");
        assert_eq!(o.fields[0].1.get(), r#""v\n""#);
    }

    #[test]
    fn unknown_fields_pass_through_and_replacements_apply() {
        let body = br#"{"model":"a","messages":[{"role":"user","content":"hi"}],"x_custom":{"deep":[1,2]},"stream":true}"#;
        let r = ChatRequest::parse(body).unwrap();
        assert!(r.stream);
        let out =
            r.obj.write(&[("model", "\"b\""), ("stream_options", "{\"include_usage\":true}")], &[]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "b");
        assert_eq!(v["x_custom"]["deep"][1], 2);
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = ChatRequest::parse(br#"{"model":"a","messages":[{"role":"user"}],"stream":"yes"}"#)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream"));
        let e = ChatRequest::parse(br#"{"model":"a","messages":[{"role":"user"}],"max_tokens":1,"max_completion_tokens":2}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = ChatRequest::parse(br#"{"model":"a","messages":"hi"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = ChatRequest::parse(br#"{"model":"a","model":"b","messages":[{"role":"user"}]}"#)
            .unwrap_err();
        assert!(e.message.contains("duplicate"), "{}", e.message);
    }

    #[test]
    fn escaped_keys_survive() {
        let body = br#"{"mo\u0064el":"a","messages":[{"role":"user"}]}"#;
        let r = ChatRequest::parse(body).unwrap();
        assert_eq!(r.model.as_deref(), Some("a"));
        let out = r.obj.write(&[("model", "\"z\"")], &[]);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&out).unwrap()["model"], "z");
    }

    #[test]
    fn deep_nesting_is_a_clean_error() {
        let mut s = String::from(r#"{"model":"a","messages":[{"role":"user"}],"x":"#);
        s.push_str(&"[".repeat(100_000));
        let e = ChatRequest::parse(s.as_bytes()).unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::InvalidRequest);
    }
}

/// What tidegate reads from an Anthropic Messages request (`/v1/messages`).
#[derive(Debug)]
pub struct MessagesRequest<'a> {
    pub obj: RawObject<'a>,
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub max_tokens: u64,
}

impl<'a> MessagesRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        let obj = RawObject::parse(body)?;
        let model: Option<Cow<'a, str>> = obj.typed("model", "a string")?;
        let stream = obj.typed::<bool>("stream", "a boolean")?.unwrap_or(false);
        let max_tokens = obj
            .typed::<u64>("max_tokens", "a positive integer")?
            .ok_or_else(|| GatewayError::invalid("`max_tokens` is required", Some("max_tokens")))?;
        if max_tokens == 0 {
            // Anthropic requires at least 1 (helper-45: 0 went through to an empty answer).
            return Err(GatewayError::invalid(
                "`max_tokens` must be at least 1",
                Some("max_tokens"),
            ));
        }
        check_messages(&obj)?;
        Ok(Self { obj, model, stream, max_tokens })
    }
}
