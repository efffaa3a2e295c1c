//! The pooled upstream HTTP client: hyper-util's legacy client over rustls (webpki roots plus
//! an optional extra CA file), HTTP/1.1 and HTTP/2 by ALPN, plain http allowed, keep-alive and
//! `TCP_NODELAY`.
//!
//! One [`Upstream`] exists per distinct (connect timeout, CA file) pair, shared across config
//! reloads so connection pools stay warm. Each thread that sends through it gets its own client
//! and pool: a data-plane worker's upstream connections are driven by tasks on that worker, so
//! a request and its upstream call never hop between threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The upstream client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

/// Builds one client.
pub fn build(connect_timeout: Duration, ca_file: Option<&Path>) -> Result<HttpClient, String> {
    Ok(Spec::new(connect_timeout, ca_file)?.client())
}

/// What a client is built from; the CA file is read and checked once, when the spec is made.
struct Spec {
    connect_timeout: Duration,
    tls: rustls::ClientConfig,
}

impl Spec {
    fn new(connect_timeout: Duration, ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad PEM in CA file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { connect_timeout, tls })
    }

    fn client(&self) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(https)
    }
}

/// An upstream client shared by every thread, each of which gets its own connection pool.
#[derive(Clone)]
pub struct Upstream {
    spec: Arc<Spec>,
}

thread_local! {
    /// This thread's clients, by spec (a handful at most: one per connect timeout and CA file).
    static CLIENTS: RefCell<Vec<(Arc<Spec>, HttpClient)>> = const { RefCell::new(Vec::new()) };
}

impl Upstream {
    /// Runs `f` with this thread's client, building it on the thread's first use.
    pub fn with<R>(&self, f: impl FnOnce(&HttpClient) -> R) -> R {
        CLIENTS.with_borrow_mut(|clients| {
            let at = match clients.iter().position(|(s, _)| Arc::ptr_eq(s, &self.spec)) {
                Some(at) => at,
                None => {
                    // Clients whose spec only this list still holds belong to gateways that
                    // are gone (tests and embedders start many).
                    clients.retain(|(s, _)| Arc::strong_count(s) > 1);
                    clients.push((self.spec.clone(), self.spec.client()));
                    clients.len() - 1
                }
            };
            f(&clients[at].1)
        })
    }
}

/// Clients by (connect timeout, CA file), reused across reloads.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<(Duration, Option<PathBuf>), Upstream>>,
}

impl ClientCache {
    pub fn get(
        &self,
        connect_timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Upstream, String> {
        let key = (connect_timeout, ca_file.map(Path::to_owned));
        let mut map = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = Upstream { spec: Arc::new(Spec::new(connect_timeout, ca_file)?) };
        map.insert(key, c.clone());
        Ok(c)
    }
}
