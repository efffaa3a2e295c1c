//! Tests' own `redis-server`: a child process on a free loopback port, killed on drop. Shared
//! by the store's unit tests (`src/store/redis.rs` includes this file) and the integration tests.
//!
//! No system service is used. A missing `redis-server` fails the test with a clear message
//! (install it with `apt-get install redis-server`): these tests never skip silently.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a fresh server gets to answer PING.
const STARTUP: Duration = Duration::from_secs(5);

pub(crate) struct TestServer {
    child: Child,
    port: u16,
}

impl TestServer {
    /// A server on a free port (a few tries, in case another test takes the port first).
    pub(crate) async fn start() -> Result<TestServer, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match TestServer::start_on(free_port()?).await {
                Ok(server) => return Ok(server),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A server on `port`, answering PING.
    pub(crate) async fn start_on(port: u16) -> Result<TestServer, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    "redis-server is not on PATH: these tests need a real Redis \
                     (apt-get install redis-server)"
                        .to_owned()
                } else {
                    format!("cannot start redis-server: {e}")
                }
            })?;
        let mut server = TestServer { child, port };
        let deadline = Instant::now() + STARTUP;
        loop {
            if answers_ping(port).await {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server on port {port} exited at start ({status})"));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {port} did not answer PING within {STARTUP:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    #[allow(
        dead_code,
        reason = "used by the store's unit tests (SIGSTOP), not the integration tests"
    )]
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("cannot read the bound port: {e}"))
}

/// Whether a server on `port` answers `PING` with `+PONG` (bounded).
async fn answers_ping(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf.get(..n)?.starts_with(b"+PONG"))
    };
    matches!(tokio::time::timeout(Duration::from_millis(500), probe).await, Ok(Some(true)))
}
