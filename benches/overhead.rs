//! End-to-end overhead: the same requests sent directly to a minimal upstream and through a
//! `tidegate serve` child process in front of it, in the same run, interleaved in rounds so
//! machine noise hits both alike. Reports p50/p99 latency, requests/s, the added latency and
//! the throughput ratio, and tidegate's peak RSS (VmHWM of the child).
//!
//! `cargo bench --bench overhead`. Environment knobs:
//! - `OVERHEAD_SECS`: seconds per measured phase per round (default 2), three rounds each.
//! - `OVERHEAD_ROUTES`: comma-separated gateway routes to measure (default `plain`); see
//!   `ROUTES` below for the variants, and `messages`: an Anthropic client on the `plain` route
//!   (`route_api`).
//! - `OVERHEAD_MODES=json,stream` and `OVERHEAD_CONC=1,64`: which phases run (for profiling
//!   one of them).
//! - `OVERHEAD_PROXY=nginx`: measure an nginx reverse proxy (keep-alive upstream, no
//!   buffering) in tidegate's place, as a reference for what any proxy hop costs here.
//! - `OVERHEAD_PROXY=exec:/path/to/bin`: any proxy taking `LISTEN UPSTREAM` arguments.
//! - `OVERHEAD_TIDEGATE_BIN=/path/to/tidegate`: measure another build (A/B against a commit).
//! - `OVERHEAD_GATEWAY_THREADS`: the tidegate child's `server.worker_threads` (default: its own
//!   default, the CPUs available).
//! - `OVERHEAD_IDEMPOTENCY=1`: every request carries a fresh `Idempotency-Key` (claimed and
//!   stored each time: the full cost of a key, never a replay).
//! - `OVERHEAD_STATE=redis://127.0.0.1:PORT`: tidegate's shared state in that Redis (start a
//!   `redis-server` first), so keys, budgets and rate limits go through it.
//! - `OVERHEAD_UNIQUE_PROMPTS=1`: every request's prompt differs (a counter in front), so
//!   nothing tidegate remembers about a prompt (token counts) helps.
//! - `OVERHEAD_PROMPT_TOKENS`: send a prompt of about this many tokens instead of one line
//!   (with the `limited` route, the cost of counting it: issue #5's 1k-token target).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[path = "prompt.rs"]
mod prompt;
use prompt::prompt_text;

const CHUNKS: usize = 20;

/// Gateway route variants, selected by `/r/{route}` in the request path. The config holds only
/// the routes measured, so a run of `plain` does not load the tokenizer the limited routes need.
const ROUTES: &str = r#"
  plain:
    targets: [{provider: up, model: bench-model}]
  anthropic:
    targets: [{provider: up_anthropic, model: bench-model}]
  limited:
    targets: [{provider: up, model: bench-model}]
    limits: {max_input_tokens: 100000, max_output_tokens: 64}
  counted:
    targets: [{provider: up, model: bench-model}]
    limits: {max_input_tokens: 5000, max_output_tokens: 64}
  budgeted:
    targets: [{provider: up, model: bench-model}]
    limits: {max_output_tokens: 64, budget: {usd: 1000000, per: 1h}, rpm: 1000000000}
"#;

fn completion() -> Bytes {
    Bytes::from_static(br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"The tide rises and the gate holds steady."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#)
}

fn chunk(delta: &str, finish: Option<&str>) -> Bytes {
    let finish = finish.map_or("null".to_owned(), |f| format!("\"{f}\""));
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
    ))
}

/// The minimal upstream: a fixed completion, or a 20-chunk stream sent chunk by chunk.
type UpBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn event(name: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The same answers in the Anthropic Messages wire.
fn anthropic(stream: bool) -> Response<UpBody> {
    if !stream {
        let body = Bytes::from_static(br#"{"id":"msg_bench","type":"message","role":"assistant","model":"bench-model","content":[{"type":"text","text":"The tide rises and the gate holds steady."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":9}}"#);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body).boxed())
            .unwrap();
    }
    let mut frames = vec![
        event(
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_bench","type":"message","role":"assistant","model":"bench-model","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        ),
        event(
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
    ];
    for i in 0..CHUNKS {
        frames.push(event("content_block_delta", &format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"w{i} "}}}}"#)));
    }
    frames.push(event("content_block_stop", r#"{"type":"content_block_stop","index":0}"#));
    frames.push(event("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":20}}"#));
    frames.push(event("message_stop", r#"{"type":"message_stop"}"#));
    let stream =
        futures_util::stream::iter(frames.into_iter().map(|b| Ok(hyper::body::Frame::data(b))));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(http_body_util::StreamBody::new(stream).boxed())
        .unwrap()
}

async fn upstream(req: Request<Incoming>) -> Result<Response<UpBody>, std::convert::Infallible> {
    let messages_api = req.uri().path() == "/v1/messages";
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let text = std::str::from_utf8(&body).unwrap_or("");
    if messages_api {
        return Ok(anthropic(text.contains("\"stream\":true")));
    }
    if !text.contains("\"stream\":true") {
        let r = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(completion()).boxed())
            .unwrap();
        return Ok(r);
    }
    let include_usage = text.contains("\"include_usage\":true");
    let mut frames = vec![chunk(r#"{"role":"assistant","content":""}"#, None)];
    for i in 0..CHUNKS {
        frames.push(chunk(&format!("{{\"content\":\"w{i} \"}}"), None));
    }
    frames.push(chunk("{}", Some("stop")));
    if include_usage {
        frames.push(Bytes::from_static(b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":20,\"total_tokens\":32}}\n\n"));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stream =
        futures_util::stream::iter(frames.into_iter().map(|b| Ok(hyper::body::Frame::data(b))));
    let r = Response::builder()
        .header("content-type", "text/event-stream")
        .body(http_body_util::StreamBody::new(stream).boxed())
        .unwrap();
    Ok(r)
}

async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(upstream))
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
}

impl Gateway {
    /// Stops the proxy with SIGTERM, as an orchestrator would, so that it exits by its own
    /// shutdown path (an instrumented build writes its profile then: `scripts/pgo-build`);
    /// one still running after 10 s is killed (Drop).
    async fn stop(mut self) {
        let pid = self.child.id().to_string();
        // The shell's builtin `kill`: no `unsafe` libc call, and no procps needed in an image.
        let termed = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
            .status()
            .is_ok_and(|s| s.success());
        for _ in 0..500 {
            if !termed || matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("the proxy (pid {pid}) did not exit within 10 s of SIGTERM: killed");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a measured route name sends: the gateway route and the API path. `messages` is an
/// Anthropic client (`/v1/messages`) on the `plain` route, translated to the OpenAI wire and the
/// answer back; measured directly, the upstream answers the same request in the Anthropic wire.
/// Its body is the same JSON: `model`, `max_tokens`, `stream` and a `messages` list of
/// string contents mean the same in both APIs.
fn route_api(route: &str) -> (&str, &str) {
    match route {
        "messages" => ("plain", "v1/messages"),
        other => (other, "v1/chat/completions"),
    }
}

/// The blocks of [`ROUTES`] named in `routes`.
fn route_config(routes: &[String]) -> String {
    let mut out = String::from("\n");
    let mut keep = false;
    for line in ROUTES.lines().filter(|l| !l.is_empty()) {
        if !line.starts_with("    ") {
            let name = line.trim().trim_end_matches(':');
            keep = routes.iter().any(|r| route_api(r).0 == name);
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

async fn start_gateway(upstream: SocketAddr, routes: &[String]) -> Gateway {
    let (data, admin) = (free_port(), free_port());
    let state = std::env::var("OVERHEAD_STATE")
        .map(|url| format!("state: {{backend: redis, url: \"{url}\"}}\n"))
        .unwrap_or_default();
    let workers = std::env::var("OVERHEAD_GATEWAY_THREADS")
        .map(|n| format!(", worker_threads: {n}"))
        .unwrap_or_default();
    let config = format!(
        "server: {{listen: 127.0.0.1:{data}, admin_listen: 127.0.0.1:{admin}, max_concurrent_requests: 4096{workers}}}\nlogging: {{sample_rate: 0.0}}\n{state}models:\n  bench-model: {{input: 0.15, output: 0.6, context: 128000}}\nproviders:\n  up: {{kind: openai_compatible, base_url: \"http://{upstream}/v1\"}}\n  up_anthropic: {{kind: anthropic, base_url: \"http://{upstream}\"}}\nroutes:{}",
        route_config(routes)
    );
    let path = std::env::temp_dir().join(format!("tidegate-bench-{}.yaml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    // OVERHEAD_TIDEGATE_BIN: another build of tidegate (e.g. an older commit) for A/B runs.
    let bin = std::env::var("OVERHEAD_TIDEGATE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tidegate").to_owned());
    let child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&path)
        .env("TIDEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Built before waiting, so a failed start still kills and reaps the child (Drop).
    wait_ready(Gateway { child, addr: format!("127.0.0.1:{data}").parse().unwrap() }).await
}

/// An nginx reverse proxy in tidegate's place (reference runs only).
async fn start_nginx(upstream: SocketAddr) -> Gateway {
    let data = free_port();
    let dir = std::env::temp_dir().join(format!("tidegate-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  upstream up {{ server {upstream}; keepalive 256; }}\n  server {{\n    listen 127.0.0.1:{data};\n    tcp_nodelay on;\n    location /r/plain/ {{ proxy_pass http://up/; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(Gateway { child, addr: format!("127.0.0.1:{data}").parse().unwrap() }).await
}

/// Waits until the proxy accepts connections; a proxy that never does is killed and reaped
/// (Gateway's Drop) by the panic.
async fn wait_ready(gw: Gateway) -> Gateway {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
            return gw;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the proxy under test did not start");
}

/// Any proxy binary taking `LISTEN UPSTREAM` arguments (reference runs only).
async fn start_exec(bin: &str, upstream: SocketAddr) -> Gateway {
    let data = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{data}").parse().unwrap();
    let gw = Gateway {
        child: Command::new(bin).arg(addr.to_string()).arg(upstream.to_string()).spawn().unwrap(),
        addr,
    };
    wait_ready(gw).await
}

/// The proxy process's CPU time (user + system, in clock ticks of 10 ms) and its read and write
/// system calls so far: divided by the requests of a phase, what one request costs the proxy
/// whatever the machine's wake-up latency is doing.
fn proc_counters(pid: u32) -> [u64; 3] {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    let cpu = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    [cpu, field("syscr:"), field("syscw:")]
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs `conc` workers sending requests back to back for `secs`; returns latencies in µs.
async fn load(
    client: &HttpClient,
    url: &str,
    body: &Bytes,
    conc: usize,
    secs: f64,
) -> (Vec<f64>, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let keyed = std::env::var("OVERHEAD_IDEMPOTENCY").is_ok_and(|v| v == "1");
    let unique = std::env::var("OVERHEAD_UNIQUE_PROMPTS").is_ok_and(|v| v == "1");
    for worker in 0..conc {
        let (client, url, body, stop) =
            (client.clone(), url.to_owned(), body.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let run = fastrand::u64(..);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut req = Request::post(&url).header("content-type", "application/json");
                if keyed {
                    n += 1;
                    req = req.header("idempotency-key", format!("bench-{run:x}-{worker}-{n}"));
                }
                let body = if unique {
                    n += u64::from(!keyed);
                    // The prompt starts right after the first `"content":"`.
                    let at =
                        body.windows(11).position(|w| w == b"\"content\":\"").map_or(0, |p| p + 11);
                    let mut b = Vec::with_capacity(body.len() + 24);
                    b.extend_from_slice(&body[..at]);
                    b.extend_from_slice(format!("{run:x}-{worker}-{n} ").as_bytes());
                    b.extend_from_slice(&body[at..]);
                    Bytes::from(b)
                } else {
                    body.clone()
                };
                let req = req.body(Full::new(body)).unwrap();
                let resp = client.request(req).await.unwrap();
                let status = resp.status();
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(
                    status.is_success(),
                    "status {status}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                assert!(!bytes.is_empty());
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rps = all.len() as f64 / elapsed;
    (all, rps)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Stats {
    p50: f64,
    p99: f64,
    rps: f64,
}

fn stats(mut lat: Vec<f64>, rps_sum: f64, rounds: usize) -> Stats {
    lat.sort_by(f64::total_cmp);
    Stats { p50: pct(&lat, 0.5), p99: pct(&lat, 0.99), rps: rps_sum / rounds as f64 }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let secs: f64 = std::env::var("OVERHEAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let routes: Vec<String> = std::env::var("OVERHEAD_ROUTES")
        .unwrap_or_else(|_| "plain".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let list = |name: &str, default: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let modes = list("OVERHEAD_MODES", "json,stream");
    let concs: Vec<usize> =
        list("OVERHEAD_CONC", "1,64").iter().map(|c| c.parse().expect("OVERHEAD_CONC")).collect();
    let rounds = 3;
    let up = start_upstream().await;
    let gw = match std::env::var("OVERHEAD_PROXY").as_deref() {
        Ok("nginx") => start_nginx(up).await,
        Ok(other) if other.starts_with("exec:") => start_exec(&other[5..], up).await,
        _ => start_gateway(up, &routes).await,
    };
    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build({
            let mut c = HttpConnector::new();
            c.set_nodelay(true);
            c
        });
    let text = match std::env::var("OVERHEAD_PROMPT_TOKENS").ok().and_then(|s| s.parse().ok()) {
        Some(n) => prompt_text(n),
        None => "Summarize this ticket in one line please.".to_owned(),
    };
    let body = |stream: bool| {
        Bytes::from(
            serde_json::json!({"model": "bench-model", "stream": stream, "max_tokens": 64,
                "messages": [{"role": "user", "content": text}]})
            .to_string(),
        )
    };
    let (non_stream, stream) = (body(false), body(true));
    println!(
        "overhead benchmark: {rounds} rounds x {secs}s per phase, upstream {up}, tidegate pid {}",
        gw.child.id()
    );
    println!(
        "{:<10} {:<7} {:>4} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>7} | {:>8} {:>5} {:>5}",
        "route",
        "mode",
        "conc",
        "dir p50",
        "dir p99",
        "dir rps",
        "tg p50",
        "tg p99",
        "tg rps",
        "add p50",
        "add p99",
        "ratio",
        "cpu/req",
        "rd/r",
        "wr/r"
    );
    for route in &routes {
        for (mode, body) in [("json", &non_stream), ("stream", &stream)] {
            if !modes.iter().any(|m| m == mode) {
                continue;
            }
            for &conc in &concs {
                // Warm both paths (connection pools, caches).
                let (gw_route, path) = route_api(route);
                let direct_url = format!("http://{up}/{path}");
                let gw_url = format!("http://{}/r/{gw_route}/{path}", gw.addr);
                load(&client, &direct_url, body, conc, 0.3).await;
                load(&client, &gw_url, body, conc, 0.3).await;
                let (mut d_lat, mut g_lat, mut d_rps, mut g_rps) =
                    (Vec::new(), Vec::new(), 0.0, 0.0);
                let mut cost = [0u64; 3];
                for _ in 0..rounds {
                    let (l, r) = load(&client, &direct_url, body, conc, secs).await;
                    d_lat.extend(l);
                    d_rps += r;
                    let before = proc_counters(gw.child.id());
                    let (l, r) = load(&client, &gw_url, body, conc, secs).await;
                    let after = proc_counters(gw.child.id());
                    for i in 0..3 {
                        cost[i] += after[i] - before[i];
                    }
                    g_lat.extend(l);
                    g_rps += r;
                }
                let served = g_lat.len().max(1) as f64;
                let d = stats(d_lat, d_rps, rounds);
                let g = stats(g_lat, g_rps, rounds);
                println!(
                    "{:<10} {:<7} {:>4} | {:>8.0}µ {:>8.0}µ {:>9.0} | {:>8.0}µ {:>8.0}µ {:>9.0} | {:>8.0}µ {:>8.0}µ {:>6.2}x | {:>7.1}µ {:>5.1} {:>5.1}",
                    route,
                    mode,
                    conc,
                    d.p50,
                    d.p99,
                    d.rps,
                    g.p50,
                    g.p99,
                    g.rps,
                    g.p50 - d.p50,
                    g.p99 - d.p99,
                    g.rps / d.rps,
                    cost[0] as f64 * 10_000.0 / served,
                    cost[1] as f64 / served,
                    cost[2] as f64 / served
                );
            }
        }
    }
    println!("tidegate peak RSS (VmHWM): {:.1} MiB", peak_rss_kib(gw.child.id()) as f64 / 1024.0);
    gw.stop().await;
}
