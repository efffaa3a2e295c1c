//! The pooled upstream HTTP client: hyper-util's legacy client over rustls (webpki roots plus
//! an optional extra CA file), HTTP/1.1 and HTTP/2 by ALPN, plain http allowed, keep-alive and
//! `TCP_NODELAY`. One client exists per distinct (connect timeout, CA file) pair, shared across
//! config reloads so connection pools stay warm.

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
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Clients by (connect timeout, CA file), reused across reloads.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<(Duration, Option<PathBuf>), HttpClient>>,
}

impl ClientCache {
    pub fn get(
        &self,
        connect_timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<HttpClient, String> {
        let key = (connect_timeout, ca_file.map(Path::to_owned));
        let mut map = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let c = build(connect_timeout, ca_file)?;
        map.insert(key, c.clone());
        Ok(c)
    }
}
