//! Data-plane worker threads. Each runs a single-threaded tokio runtime and serves the
//! connections the acceptor hands it, start to finish: the request, the upstream call (each
//! thread keeps its own upstream connection pool, see `providers::client`) and any stream
//! forwarding stay on that thread, so a request never waits for another thread to wake up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::{ConnOptions, Connections, Handler};

/// The acceptor's handle on one worker.
pub struct Worker {
    tx: mpsc::UnboundedSender<std::net::TcpStream>,
    /// Connections handed over and not yet closed.
    open: Arc<AtomicUsize>,
}

/// Workers still serving: each waits, after draining, until all have drained, so tasks that
/// live on one worker's runtime but serve all of them (the Redis connection's driver, started
/// wherever it last reconnected) outlive every request.
#[derive(Clone)]
pub struct Draining {
    left: Arc<AtomicUsize>,
    all_done: Arc<watch::Sender<bool>>,
}

impl Draining {
    pub fn new() -> Self {
        Self { left: Arc::default(), all_done: Arc::new(watch::channel(false).0) }
    }

    /// Counts one more worker in.
    fn join(&self) -> Member {
        self.left.fetch_add(1, Ordering::AcqRel);
        Member { draining: self.clone(), gone: false }
    }
}

/// One worker's place in [`Draining`]. Dropping it (the worker drained, or its thread is
/// unwinding from a panic) counts it out, so no worker ever waits for one that is gone.
struct Member {
    draining: Draining,
    gone: bool,
}

impl Member {
    fn leave(&mut self) {
        if !std::mem::replace(&mut self.gone, true)
            && self.draining.left.fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.draining.all_done.send_replace(true);
        }
    }

    /// Counts this worker out, then waits until every worker has.
    async fn leave_and_wait(mut self) {
        let mut rx = self.draining.all_done.subscribe();
        self.leave();
        let _ = rx.wait_for(|d| *d).await;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Starts worker `index`; the receiver resolves once it has drained at shutdown, which begins
/// when the acceptor drops the returned [`Worker`] (every connection handed over before that
/// is served first).
pub fn spawn<H: Handler>(
    index: usize,
    handler: H,
    opts: ConnOptions,
    draining: &Draining,
) -> std::io::Result<(Worker, oneshot::Receiver<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let open = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = oneshot::channel();
    let counter = open.clone();
    // A thread that fails to start drops its closure, and the member with it.
    let member = draining.join();
    std::thread::Builder::new().name(format!("tidegate-worker-{index}")).spawn(move || {
        runtime.block_on(async {
            run(rx, handler, opts, counter).await;
            member.leave_and_wait().await;
        });
        // Tasks still here (a request the grace cut) are dropped with the runtime, which writes
        // their records; only then is the acceptor told, so the process exits after them.
        drop(runtime);
        let _ = done_tx.send(());
    })?;
    Ok((Worker { tx, open }, done_rx))
}

async fn run<H: Handler>(
    mut rx: mpsc::UnboundedReceiver<std::net::TcpStream>,
    handler: H,
    opts: ConnOptions,
    open: Arc<AtomicUsize>,
) {
    let conns = Connections::new(handler, opts);
    // Registering a timer that is due before the timer driver's next wake-up makes tokio wake
    // the driver through its eventfd, a write system call plus an extra epoll return, and hyper
    // registers a fresh header-read timer for every request on a keep-alive connection. A
    // tick every second keeps the next wake-up close, so the timers of a request (all due
    // later than that) register without it. The tick also closes this worker's expired idle
    // upstream connections.
    let ticker = tokio::spawn(async {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            crate::providers::pool::sweep();
        }
    });
    // Ends when the acceptor drops its sender at shutdown, after every connection it handed
    // over has been taken.
    while let Some(stream) = rx.recv().await {
        match TcpStream::from_std(stream) {
            Ok(s) => {
                let open = open.clone();
                conns.serve_then(s, move || {
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!("cannot register an accepted connection: {e}");
            }
        }
    }
    conns.drain().await;
    ticker.abort();
}

/// The period of a worker's timer tick.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// No worker is left to take connections.
#[derive(Debug)]
pub struct NoWorkers;

impl std::fmt::Display for NoWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no data-plane worker is running")
    }
}

/// Hands `stream` to the worker with the fewest open connections. A worker that has stopped
/// (its thread ended) is dropped from `pool` and the next one tried.
pub fn hand_over(pool: &mut Vec<Worker>, stream: TcpStream) -> Result<(), NoWorkers> {
    let mut stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot hand over an accepted connection: {e}");
            return Ok(());
        }
    };
    loop {
        let (at, w) = pool
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
            .ok_or(NoWorkers)?;
        w.open.fetch_add(1, Ordering::Relaxed);
        match w.tx.send(stream) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::SendError(s)) => {
                tracing::error!("data-plane worker stopped; {} left", pool.len() - 1);
                stream = s;
                pool.swap_remove(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn accepted() -> (TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, client)
    }

    fn worker() -> (Worker, mpsc::UnboundedReceiver<std::net::TcpStream>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Worker { tx, open: Arc::default() }, rx)
    }

    #[tokio::test]
    async fn hands_over_to_the_least_loaded_and_skips_stopped_workers() {
        let (a, mut rx_a) = worker();
        let (b, rx_b) = worker();
        let (c, mut rx_c) = worker();
        a.open.store(2, Ordering::Relaxed);
        c.open.store(1, Ordering::Relaxed);
        // `b` is the least loaded but its thread has stopped: the connection goes to `c`.
        drop(rx_b);
        let mut pool = vec![a, b, c];
        let (s, _client) = accepted().await;
        hand_over(&mut pool, s).unwrap();
        assert_eq!(pool.len(), 2, "the stopped worker is dropped from the pool");
        assert!(rx_c.try_recv().is_ok());
        assert!(rx_a.try_recv().is_err());
        assert_eq!(pool[1].open.load(Ordering::Relaxed), 2, "c counts the new connection");
        // A tie (2 and 2) goes to the first in the pool.
        let (s, _client2) = accepted().await;
        hand_over(&mut pool, s).unwrap();
        assert!(rx_a.try_recv().is_ok());
        assert!(rx_c.try_recv().is_err());

        drop(rx_a);
        drop(rx_c);
        let (s, _client3) = accepted().await;
        assert!(hand_over(&mut pool, s).is_err(), "no worker left");
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn draining_waits_for_every_worker_and_counts_out_a_lost_one() {
        let d = Draining::new();
        let (a, b, c) = (d.join(), d.join(), d.join());
        let first = tokio::spawn(a.leave_and_wait());
        tokio::task::yield_now().await;
        assert!(!first.is_finished(), "the first worker waits for the others");
        // A worker whose thread unwinds drops its member: it no longer holds the others.
        drop(b);
        tokio::task::yield_now().await;
        assert!(!first.is_finished());
        c.leave_and_wait().await;
        first.await.unwrap();
    }
}
