//! Background tasks: the idempotency events subscription and the connection keepalive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redis::Client;
use ::redis::aio::{ConnectionManager, PubSub};
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// Backoff between subscription attempts while Redis is away.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);
/// How often the keepalive pings through the shared connection.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// Subscribe to `channel` on a dedicated connection and forward each message (a record's
/// scope id) to `events`; resubscribe with backoff whenever the connection drops. `live` says
/// whether the subscription is up. Messages published while it is down are lost, which the
/// waiters' polling covers.
pub(super) fn spawn_listener(
    client: Client,
    channel: String,
    events: broadcast::Sender<String>,
    live: Arc<AtomicBool>,
    op_timeout: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = RESUBSCRIBE_MIN;
        loop {
            if let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(op_timeout, subscribe(&client, &channel)).await
            {
                backoff = RESUBSCRIBE_MIN;
                live.store(true, Ordering::Release);
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    if events.receiver_count() > 0
                        && let Ok(key) = std::str::from_utf8(msg.get_payload_bytes())
                    {
                        // No receiver left in between is fine: nobody waits.
                        let _ = events.send(key.to_owned());
                    }
                }
                live.store(false, Ordering::Release);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
        }
    })
}

async fn subscribe(client: &Client, channel: &str) -> ::redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Ping once a second through the shared connection, so that a dropped connection is
/// remade ahead of traffic once Redis is back (the manager reconnects on a failed call).
pub(super) fn spawn_keepalive(conn: ConnectionManager, op_timeout: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut conn = conn.clone();
            let ping = ::redis::cmd("PING");
            // The outcome does not matter here: a failure triggers the reconnect.
            let _ = tokio::time::timeout(op_timeout, ping.query_async::<()>(&mut conn)).await;
        }
    })
}
