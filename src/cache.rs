//! The cache tier's store: the last good text answer per (route, normalized request), bounded
//! by entry count and entry size, oldest entries evicted first.
//!
//! Only routes with a `cache` tier write here. A request is normalized by dropping the fields
//! that do not change the answer (`stream`, `stream_options`) and serializing the rest with
//! sorted keys, so a streamed and a plain call of the same prompt share an entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Entries kept at most (all routes together).
pub const MAX_ENTRIES: usize = 10_000;
/// Longest answer text kept, in bytes; longer answers are not cached.
pub const MAX_ANSWER_BYTES: usize = 256 << 10;

/// A cached answer in neutral form, rendered in whatever dialect the next client speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAnswer {
    pub text: String,
    /// The upstream model that produced it.
    pub model: String,
}

type Key = [u8; 32];

struct Entry {
    stored: Instant,
    answer: CachedAnswer,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Insertion order, for eviction (may hold keys already replaced; skipped when popped).
    order: VecDeque<(Key, Instant)>,
}

/// The store; one per process, shared across config versions.
#[derive(Default)]
pub struct AnswerCache {
    inner: Mutex<Inner>,
}

/// The cache key of a request on a route; `None` if the body is not a JSON object.
pub fn key(route: &str, body: &serde_json::Value) -> Option<Key> {
    let mut obj = body.as_object()?.clone();
    obj.remove("stream");
    obj.remove("stream_options");
    // serde_json's map is ordered by key, so this serialization is canonical.
    let canonical = serde_json::to_vec(&obj).ok()?;
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(&canonical);
    Some(h.finalize().into())
}

impl AnswerCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The answer stored under `key`, if younger than `max_age`.
    pub fn get(&self, key: &Key, max_age: std::time::Duration) -> Option<CachedAnswer> {
        let inner = self.lock();
        let e = inner.map.get(key)?;
        (e.stored.elapsed() <= max_age).then(|| e.answer.clone())
    }

    /// Stores `answer` under `key`, replacing any older one.
    pub fn put(&self, key: Key, answer: CachedAnswer) {
        if answer.text.len() > MAX_ANSWER_BYTES || answer.text.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.map.insert(key, Entry { stored: now, answer });
        inner.order.push_back((key, now));
        while inner.map.len() > MAX_ENTRIES || inner.order.len() > 2 * MAX_ENTRIES {
            let Some((old, at)) = inner.order.pop_front() else { break };
            // Only evict if this queue slot is the entry's current version.
            if inner.map.get(&old).is_some_and(|e| e.stored == at) {
                inner.map.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn streamed_and_plain_share_a_key_routes_do_not() {
        let a =
            key("r", &json!({"model": "m", "messages": [1], "stream": true, "stream_options": {}}))
                .unwrap();
        let b = key("r", &json!({"messages": [1], "model": "m"})).unwrap();
        let c = key("other", &json!({"messages": [1], "model": "m"})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_and_bound() {
        let cache = AnswerCache::default();
        let k = key("r", &json!({"m": 1})).unwrap();
        cache.put(k, CachedAnswer { text: "hi".into(), model: "m".into() });
        assert!(cache.get(&k, std::time::Duration::from_secs(60)).is_some());
        tokio::time::advance(std::time::Duration::from_secs(61)).await;
        assert!(cache.get(&k, std::time::Duration::from_secs(60)).is_none());
        for i in 0..(MAX_ENTRIES + 50) {
            let k = key("r", &json!({ "i": i })).unwrap();
            cache.put(k, CachedAnswer { text: "x".into(), model: "m".into() });
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
    }
}
