//! The upstream HTTP client: hyper's connections over rustls (webpki roots plus an optional
//! extra CA file), HTTP/1.1 and HTTP/2 by ALPN, plain http allowed, keep-alive and
//! `TCP_NODELAY`, with idle connections kept by [`super::pool`].
//!
//! One connector exists per distinct (connect timeout, CA file contents) pair, shared across
//! config reloads so pooled connections stay warm; an [`Upstream`] is that connector aimed at one
//! endpoint (scheme and authority), which has a small integer id for the pool. Each thread
//! keeps its own idle connections: a data-plane worker's upstream connections are driven by
//! tasks on that worker, so a request and its upstream call never hop between threads.
//!
//! [`build`] makes a hyper-util client for the tools that are not on the request path
//! (`tidegate demo`, `tidegate config`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::pool::{self, Idle, Lease, PooledBody};
use super::{SendError, error_chain};

/// The upstream client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

/// Builds one client, trusting the webpki roots.
pub fn build(connect_timeout: Duration) -> Result<HttpClient, String> {
    Ok(Spec::new(connect_timeout, None)?.client())
}

/// A CA file as read: its path (for messages) and its contents.
pub type CaFile = (PathBuf, Vec<u8>);

/// What a client is built from.
struct Spec {
    connector: HttpsConnector<HttpConnector>,
    /// How long making a connection may take (TCP, TLS, HTTP/2 handshake), and how long a
    /// request waits for one another request is making.
    connect_timeout: Duration,
    /// Endpoint ids by `scheme://authority`, so a reload finds its pooled connections again.
    endpoints: Mutex<HashMap<String, usize>>,
}

impl Spec {
    fn new(connect_timeout: Duration, ca_file: Option<&CaFile>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some((path, pem)) = ca_file {
            add_certificates(path, pem, &mut roots)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self { connector, connect_timeout, endpoints: Mutex::default() })
    }

    fn client(&self) -> HttpClient {
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool::IDLE_TIMEOUT)
            .pool_max_idle_per_host(pool::MAX_IDLE)
            .build(self.connector.clone())
    }

    /// The id of the endpoint `base_url` points at (scheme and authority; for https, where
    /// HTTP/2 may be spoken, with `max_streams` too, so that a connection carries one limit).
    fn endpoint(&self, base_url: &str, max_streams: usize) -> usize {
        let key = match Uri::try_from(base_url) {
            Ok(u) => {
                let (scheme, authority) =
                    (u.scheme_str().unwrap_or(""), u.authority().map_or("", |a| a.as_str()));
                let streams = if u.scheme() == Some(&Scheme::HTTPS) { max_streams } else { 0 };
                format!("{scheme}://{authority} {streams}")
            }
            Err(_) => base_url.to_owned(),
        };
        let mut map = self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(key).or_insert_with(pool::new_endpoint)
    }
}

/// Reads and checks the CA file at `path`, once per provider and config load (so one config
/// version trusts one content of it, and a bad file fails the load whether a route uses the
/// provider or not).
pub fn read_ca_file(path: &Path) -> Result<CaFile, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    add_certificates(path, &pem, &mut RootCertStore::empty())?;
    Ok((path.to_owned(), pem))
}

/// Adds the certificates of the PEM file `path` holds to `roots`; bad PEM, no certificate at
/// all or one rustls cannot use is an error naming the file.
fn add_certificates(path: &Path, pem: &[u8], roots: &mut RootCertStore) -> Result<(), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file {} holds no certificate", path.display()));
    }
    for c in certs {
        roots.add(c).map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Checks a provider's `ca_file` as loading the config would (for `tidegate check`).
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    read_ca_file(path).map(drop)
}

/// Where one request goes, in both forms hyper's connections need: HTTP/1 sends the path and
/// a `Host` header, HTTP/2 the absolute URI (its `:authority` replaces `Host`).
#[derive(Clone, Debug)]
pub struct Destination {
    pub absolute: Uri,
    pub origin: Uri,
    /// The authority as a `Host` value, its port left out when it is the scheme's default.
    pub host: HeaderValue,
}

impl Destination {
    pub fn parse(url: &str) -> Result<Self, String> {
        let absolute = Uri::try_from(url).map_err(|e| format!("bad upstream URL {url:?}: {e}"))?;
        let (Some(scheme), Some(host)) = (absolute.scheme(), absolute.host()) else {
            return Err(format!("upstream URL {url:?} has no scheme or host"));
        };
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match absolute.port_u16() {
            Some(p) if p != default_port => HeaderValue::try_from(format!("{host}:{p}")),
            _ => HeaderValue::try_from(host),
        }
        .map_err(|e| format!("bad upstream host in {url:?}: {e}"))?;
        let origin = absolute
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        Ok(Self { absolute, origin, host })
    }
}

/// An upstream connector aimed at one endpoint.
#[derive(Clone)]
pub struct Upstream {
    spec: Arc<Spec>,
    endpoint: usize,
    /// Requests one shared HTTP/2 connection carries at once (the provider's
    /// `http2_max_streams`); one more opens another connection.
    max_streams: usize,
}

/// The upstream's response, its body holding the connection until it has been read.
pub type Answer = Response<PooledBody>;

/// A request that failed; `unsent` holds it back when the connection never wrote it.
struct Failed {
    unsent: Option<Request<Full<Bytes>>>,
    error: String,
}

impl Upstream {
    /// Sends `req` (method, headers and body; the URI comes from `dest`) on an idle
    /// connection, or a new one. A pooled connection the upstream closed meanwhile hands the
    /// request back unsent, and the next one is tried, as a fresh connection is last. A
    /// connection that may turn out HTTP/2 and is being made by another request is waited
    /// for, as many requests as it will carry, while the next ones make the next connection at
    /// the same time (see [`pool::connect`]); a request whose awaited connect failed fails as
    /// a connect error rather than try again. A waiter that finds the new HTTP/2 connection
    /// full (requests arriving meanwhile took its streams) waits for, or makes, another one;
    /// after a new HTTP/1.1 connection each waiter makes its own. Either way a request spends the
    /// connect timeout at most, in all, getting a connection.
    pub async fn send(
        &self,
        dest: &Destination,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Answer, SendError> {
        // Waiting for other requests' connects ends here, however many there are.
        let mut deadline = None;
        let conn = loop {
            while let Some(conn) = pool::checkout(self.endpoint, self.max_streams) {
                match self.dispatch(conn, dest, req).await {
                    Ok(answer) => return Ok(answer),
                    Err(Failed { unsent: Some(r), .. }) => req = r,
                    Err(Failed { error, .. }) => return Err(SendError::Reset(error)),
                }
            }
            let https = dest.absolute.scheme() == Some(&Scheme::HTTPS);
            match pool::connect(self.endpoint, https, self.max_streams) {
                // Boxed: connecting (TLS, the HTTP/2 handshake) needs a far larger future than
                // sending on a pooled connection, and it is the rare case.
                pool::Connect::Alone => break Box::pin(self.connect(dest, deadline)).await?,
                pool::Connect::Lead(leader) => {
                    // A waiter taking over keeps the deadline it waited under.
                    let conn = Box::pin(self.connect(dest, deadline)).await;
                    match &conn {
                        Ok(_) => leader.finish(None),
                        // Out of the time this request had left from its wait: that says
                        // nothing about the upstream, so its waiters, with time of their own,
                        // take over rather than fail with it.
                        Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                            drop(leader);
                        }
                        Err(SendError::Connect(e) | SendError::Reset(e)) => {
                            leader.finish(Some(e.clone()));
                        }
                    }
                    break conn?;
                }
                pool::Connect::Follow(made) => {
                    let within = self.spec.connect_timeout;
                    let until =
                        *deadline.get_or_insert_with(|| tokio::time::Instant::now() + within);
                    match Box::pin(made.wait(until)).await {
                        // An HTTP/2 connection is in the pool now; after an HTTP/1.1 one, the
                        // endpoint is known to speak HTTP/1, so this request makes its own.
                        Some(pool::Ended::Made) => {}
                        Some(pool::Ended::Failed(error)) => {
                            return Err(SendError::Connect(format!(
                                "{error} (the connect this request waited for)"
                            )));
                        }
                        // The leader went away: one of its waiters takes over.
                        Some(pool::Ended::Abandoned) => {}
                        None => {
                            return Err(SendError::Connect(format!(
                                "no connection within {within:?} (another request was making it)"
                            )));
                        }
                    }
                }
            }
        };
        self.dispatch(conn, dest, req).await.map_err(|f| match f.unsent {
            // Nothing reached the upstream: as safe to retry as a refused connection.
            Some(_) => SendError::Connect(f.error),
            None => SendError::Reset(f.error),
        })
    }

    async fn dispatch(
        &self,
        conn: Idle,
        dest: &Destination,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Answer, Failed> {
        let sent = match conn {
            Idle::H1(mut tx) => {
                *req.uri_mut() = dest.origin.clone();
                req.headers_mut().insert(header::HOST, dest.host.clone());
                tx.try_send_request(req).await.map(|resp| {
                    resp.map(|b| PooledBody::new(b, Some(Lease::new(self.endpoint, tx))))
                })
            }
            Idle::H2(mut tx, stream) => {
                *req.uri_mut() = dest.absolute.clone();
                req.headers_mut().remove(header::HOST);
                let sent = tx.try_send_request(req).await;
                if sent.as_ref().is_err_and(|e| e.message().is_some()) {
                    pool::forget_h2(self.endpoint);
                }
                sent.map(|resp| resp.map(|b| PooledBody::on_stream(b, stream)))
            }
        };
        sent.map_err(|mut e| Failed { unsent: e.take_message(), error: error_chain(e.error()) })
    }

    /// Makes a connection: TCP, TLS and the HTTP handshake, all within the connect timeout.
    /// `until`: the connect timeout from now, or the deadline a waiter taking over an
    /// abandoned connect already waited under.
    async fn connect(
        &self,
        dest: &Destination,
        until: Option<tokio::time::Instant>,
    ) -> Result<Idle, SendError> {
        let within = self.spec.connect_timeout;
        let until = until.unwrap_or_else(|| tokio::time::Instant::now() + within);
        tokio::time::timeout_at(until, self.handshake(dest))
            .await
            .unwrap_or_else(|_| Err(SendError::Connect(format!("no connection within {within:?}"))))
    }

    async fn handshake(&self, dest: &Destination) -> Result<Idle, SendError> {
        use tower_service::Service;
        let mut connector = self.spec.connector.clone();
        let connect_error = |e: &dyn std::error::Error| SendError::Connect(error_chain(e));
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| connect_error(&*e))?;
        let io = connector.call(dest.absolute.clone()).await.map_err(|e| connect_error(&*e))?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| connect_error(&e))?;
            drive(conn);
            Ok(pool::share_h2(self.endpoint, &tx))
        } else {
            let (tx, conn) = http1::handshake(io).await.map_err(|e| connect_error(&e))?;
            drive(conn);
            pool::speaks_http1(self.endpoint);
            Ok(Idle::H1(tx))
        }
    }

    /// This endpoint's pool id (tests).
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }

    /// Sizes of the futures a request holds (tests).
    #[cfg(test)]
    fn future_sizes(&self, dest: &Destination) -> (usize, usize) {
        let send = std::mem::size_of_val(&self.send(dest, Request::new(Full::default())));
        let connect = std::mem::size_of_val(&self.connect(dest, None));
        (send, connect)
    }
}

/// Runs a connection until it closes, on the current thread's runtime.
fn drive<F>(conn: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection closed: {}", error_chain(&e));
        }
    });
}

/// What distinguishes connectors: the connect timeout and the extra CA file, path and contents.
type SpecKey = (Duration, Option<CaFile>);

/// Connectors by (connect timeout, CA file), reused across reloads. The CA file is read at
/// every load, so a reload after it was replaced makes a new connector (and new connections)
/// trusting the new contents.
#[derive(Default)]
pub struct ClientCache {
    specs: Mutex<HashMap<SpecKey, Arc<Spec>>>,
}

impl ClientCache {
    /// The connector for `connect_timeout` and `ca_file` ([`read_ca_file`]), aimed at
    /// `base_url`'s endpoint, sharing an HTTP/2 connection among `max_streams` requests at
    /// most; a CA file rustls cannot use is an error naming it.
    pub fn get(
        &self,
        connect_timeout: Duration,
        ca_file: Option<&CaFile>,
        base_url: &str,
        max_streams: usize,
    ) -> Result<Upstream, String> {
        let key = (connect_timeout, ca_file.cloned());
        let spec = {
            let mut map = self.specs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match map.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Spec::new(connect_timeout, key.1.as_ref())?);
                    map.insert(key, s.clone());
                    s
                }
            }
        };
        let endpoint = spec.endpoint(base_url, max_streams);
        Ok(Upstream { spec, endpoint, max_streams })
    }
}

impl ClientCache {
    /// Forgets the connectors no live config uses any more (its CA file was replaced, its
    /// connect timeout changed); called after a config is activated. A connector in use is
    /// held by the snapshots' targets as well as here.
    pub fn prune(&self) {
        let mut map = self.specs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, spec| Arc::strong_count(spec) > 1);
    }

    /// How many connectors are kept (tests).
    pub fn connectors(&self) -> usize {
        self.specs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_on_a_pooled_connection_keeps_a_small_future() {
        let cache = ClientCache::default();
        let up = cache.get(Duration::from_secs(1), None, "http://127.0.0.1:9/v1", 100).unwrap();
        let dest = Destination::parse("http://127.0.0.1:9/v1/chat/completions").unwrap();
        let (send, connect) = up.future_sizes(&dest);
        // Connecting is boxed: inline, it made every request's future (and each move of it)
        // 6.6 KiB larger.
        assert!(send < 2048, "send future is {send} bytes (connect {connect})");
    }
}
