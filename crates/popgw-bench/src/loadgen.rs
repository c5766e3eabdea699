//! A load generator for popgw and the baseline (`popgw-bench loadgen`).
//!
//! Raw HTTP/2 (h2) over tokio-rustls, requests encoded once before the run: per call the
//! generator builds a header block, sends the pre-encoded body and reads the answer's
//! status (and, for `VerifyIdentity`, its verdict). The tonic client stack (a buffer task
//! and a channel hop per call) would cost the generator's core more than the servers
//! it measures spend.
//!
//! Three modes: **closed** (N callers, each waits for its answer: capacity), **open**
//! (call i is due at start + i / rate; its latency counts from that intended time, so a
//! stall shows instead of slowing the generator down; calls are dispatched from a thread
//! of their own with the OS timer, not tokio's millisecond one; calls beyond `max_in_flight` are
//! dropped and counted; a call sent more than 2 ms after it was due is counted late),
//! **connect** (each call on a new TCP + full mutual-TLS + HTTP/2 connection: session
//! resumption is off). Loopback targets only.
//!
//! For the reliability run (`benches/reliability.py`): `verify_false` declarations expect
//! NO_MATCH, so a false MATCH is counted as surely as a false NO_MATCH; each answered
//! call's request id and answer can be written to a file (its audit record is looked up
//! by it); the report carries a per-second timeline; a closed-loop caller can be paced and
//! can dial again when its connection is lost (a node killed and restarted under load).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use hdrhistogram::Histogram;
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use popgw::proto::gateway as pb;
use popgw::proto::registry::CitizenRecord;

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The generator refuses anything but loopback: it is not a tool to aim elsewhere.
    #[error("{0}: the load generator only targets loopback addresses")]
    NotLoopback(SocketAddr),
    /// A certificate, key or population file.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An impossible plan (no callers, an empty mix, a rate of zero...).
    #[error("bad plan: {0}")]
    Plan(String),
    /// The first connections could not be opened.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The target.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// The RPCs the generator can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rpc {
    /// `VerifyIdentity` for P03 as the portal; expects MATCH.
    Verify,
    /// `VerifyIdentity` for P03 as the portal, the declared name not the citizen's;
    /// expects NO_MATCH (a MATCH is a false verdict).
    VerifyFalse,
    /// `GetCitizen` for P12 as the ministry.
    Citizen,
    /// `GetHousehold` for P17 as the ministry.
    Household,
}

impl Rpc {
    /// `verify`, `citizen` or `household`.
    pub fn parse(name: &str) -> Option<Rpc> {
        match name {
            "verify" => Some(Rpc::Verify),
            "verify_false" => Some(Rpc::VerifyFalse),
            "citizen" => Some(Rpc::Citizen),
            "household" => Some(Rpc::Household),
            _ => None,
        }
    }
    fn path(self) -> &'static str {
        match self {
            Rpc::Verify | Rpc::VerifyFalse => "/popgw.v1.IdentityGateway/VerifyIdentity",
            Rpc::Citizen => "/popgw.v1.IdentityGateway/GetCitizen",
            Rpc::Household => "/popgw.v1.IdentityGateway/GetHousehold",
        }
    }
    /// The dev PKI's client that sends it.
    fn client(self) -> usize {
        match self {
            Rpc::Verify | Rpc::VerifyFalse => PORTAL,
            Rpc::Citizen | Rpc::Household => MINISTRY,
        }
    }
    fn encode(self, person: &CitizenRecord, case_id: String) -> Bytes {
        let personal_id = person.personal_id.clone();
        match self {
            Rpc::Verify => frame(&pb::VerifyIdentityRequest {
                personal_id,
                full_name: person.full_name.clone(),
                date_of_birth: person.date_of_birth.clone(),
                sex: person.sex,
                procedure_code: "P03".into(),
                case_id,
            }),
            Rpc::VerifyFalse => frame(&pb::VerifyIdentityRequest {
                personal_id,
                full_name: wrong_name(&person.full_name).into(),
                date_of_birth: person.date_of_birth.clone(),
                sex: person.sex,
                procedure_code: "P03".into(),
                case_id,
            }),
            Rpc::Citizen => frame(&pb::GetCitizenRequest {
                personal_id,
                procedure_code: "P12".into(),
                case_id,
            }),
            Rpc::Household => frame(&pb::GetHouseholdRequest {
                personal_id,
                procedure_code: "P17".into(),
                case_id,
            }),
        }
    }
}

/// A well-formed name that is not `name` (nor a spelling of it): the population's names
/// are Vietnamese, these two never occur in it.
fn wrong_name(name: &str) -> &'static str {
    if name == "ZZYZX QUORTLE" {
        "QWXY ZORBLAT"
    } else {
        "ZZYZX QUORTLE"
    }
}

const PORTAL: usize = 0;
const MINISTRY: usize = 1;
const CLIENT_NAMES: [&str; 2] = ["portal", "ministry"];

/// How calls are sent.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Mode {
    /// `callers` tasks, each sending its next call when its answer arrives.
    Closed {
        /// Concurrent callers.
        callers: usize,
    },
    /// A fixed rate, whatever the answers do.
    Open {
        /// Calls per second.
        rate: f64,
        /// Calls outstanding at most; a call due beyond is dropped (and counted).
        max_in_flight: usize,
    },
    /// Each call on a connection of its own: TCP, a full mutual-TLS handshake, HTTP/2.
    Connect {
        /// Concurrent callers.
        callers: usize,
    },
}

/// One run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The server (loopback only).
    pub addr: SocketAddr,
    /// The name the server's certificate is checked against.
    pub server_name: String,
    /// A dev-PKI folder: `ca.pem`, `portal.pem`/`.key`, `ministry.pem`/`.key`.
    pub certs: PathBuf,
    /// HTTP/2 connections per client certificate (closed and open loops).
    pub connections: usize,
    /// Closed, open or connect.
    pub mode: Mode,
    /// RPCs and their weights.
    pub mix: Vec<(Rpc, u32)>,
    /// Ids drawn from the population uniformly (`None`) or by a Zipf law of this exponent.
    pub zipf: Option<f64>,
    /// Calls before this long are not measured.
    pub warmup: Duration,
    /// How long the measured part lasts at most.
    pub duration: Duration,
    /// Measured calls at most.
    pub max_calls: Option<u64>,
    /// The server's process, whose CPU time is read over the measured part (Linux).
    pub server_pid: Option<u32>,
    /// A name for the report.
    pub label: String,
    /// Closed loop: a caller whose connection fails dials a new one (after 100 ms) and
    /// goes on, so that a server restarted under load is loaded again (`reliability.py`).
    pub reconnect: bool,
    /// Closed loop: each caller starts at most this many calls a second (a steady load).
    pub caller_rate: Option<f64>,
    /// Write each answered call's request id and answer to this file.
    pub answers: Option<PathBuf>,
    /// Each call's deadline from when it was due (sent as grpc-timeout; abandoned and
    /// counted "expired in the caller" when it passes).
    pub deadline: Option<Duration>,
}

/// Latency percentiles, microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// What a run measured (the JSON report).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The plan's label.
    pub label: String,
    /// The target address.
    pub target: String,
    /// The mode.
    pub mode: Mode,
    /// Connections per client certificate (not used by connect mode).
    pub connections: usize,
    /// RPC → weight.
    pub mix: BTreeMap<Rpc, u32>,
    /// `uniform` or `zipf(s)`, over how many people.
    pub ids: String,
    /// Length of the measured part.
    pub seconds: f64,
    /// Calls measured (answered or not).
    pub calls: u64,
    /// Calls answered OK (and for VerifyIdentity the verdict the declaration called for).
    pub ok: u64,
    /// VerifyIdentity of a true declaration answered OK but not MATCH.
    pub not_match: u64,
    /// VerifyIdentity of a false declaration (`verify_false`) answered MATCH.
    pub false_match: u64,
    /// Failed calls by gRPC code name, or `transport`/`connect`.
    pub errors: BTreeMap<String, u64>,
    /// `ok` per second: the figure quoted.
    pub throughput: f64,
    /// Open loop: calls sent more than 2 ms after they were due.
    pub late_sends: u64,
    /// Open loop: calls not sent, `max_in_flight` being reached.
    pub dropped_sends: u64,
    /// Latency of measured calls (open loop: from the intended send time).
    pub latency_us: Latency,
    /// The same, of the calls answered as expected only (not refusals).
    pub latency_ok_us: Latency,
    /// The generator's CPU over the measured part, in cores (1.0 = one core busy).
    pub generator_cpu: Option<f64>,
    /// The server's CPU (with `server_pid`), in cores.
    pub server_cpu: Option<f64>,
    /// Per second since the start (warm-up included): [answered as expected, false
    /// verdicts, errors].
    pub timeline: Vec<[u64; 3]>,
    /// The generator used over 90 % of a core (open loop: sent over 1 % of its calls
    /// late): the figure may be its limit, not the server's.
    pub generator_limited: bool,
}

/// The declarations the generator makes: living people of a population file (JSON lines
/// of `CitizenRecord`, as `popgw serve` writes on first start).
#[derive(Clone, Debug)]
pub struct Population(Arc<Vec<CitizenRecord>>);

impl Population {
    /// These declarations, as they are (dead or alive: a test may want NO_MATCH).
    pub fn new(people: Vec<CitizenRecord>) -> Result<Population, LoadError> {
        if people.is_empty() {
            return Err(LoadError::Plan("an empty population".into()));
        }
        Ok(Population(Arc::new(people)))
    }
    /// Reads at most `take` living people from `path`.
    pub fn load(path: &Path, take: usize) -> Result<Population, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Population::parse(&text, &path.display().to_string(), take)
    }
    /// The population a zero-config `popgw serve` imports on first start (`[registry]
    /// demo_count`, `demo_seed`): the same deterministic generator, in memory.
    pub fn demo(count: u64, seed: u64, take: usize) -> Result<Population, LoadError> {
        let mut out = Vec::new();
        popgw_population::generate(count, seed, &mut out)
            .map_err(|e| LoadError::Plan(format!("generating the demo population: {e}")))?;
        Population::parse(&String::from_utf8_lossy(&out), "the demo population", take)
    }
    fn parse(text: &str, path: &str, take: usize) -> Result<Population, LoadError> {
        let err = |reason: String| LoadError::File {
            path: path.to_string(),
            reason,
        };
        let mut people = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if people.len() >= take {
                break;
            }
            let r: CitizenRecord = serde_json::from_str(line)
                .map_err(|e| err(format!("line {}: {}", n + 1, e.classify_kind())))?;
            if r.date_of_death.is_empty() && r.date_of_disappearance.is_empty() {
                people.push(r);
            }
        }
        if people.is_empty() {
            return Err(err("no living person in it".into()));
        }
        Ok(Population(Arc::new(people)))
    }
    /// The people.
    pub fn people(&self) -> &[CitizenRecord] {
        &self.0
    }
}

trait ClassifyKind {
    fn classify_kind(&self) -> &'static str;
}
impl ClassifyKind for serde_json::Error {
    fn classify_kind(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "not a CitizenRecord",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// A gRPC message frame: uncompressed flag, length, message.
fn frame(m: &impl Message) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(5 + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    m.encode(&mut b).expect("capacity reserved");
    b.freeze()
}

/// A mutual-TLS client configuration for `name` of the dev PKI in `dir`; no session
/// resumption, so that each new connection is a full handshake.
pub fn client_config(dir: &Path, name: &str) -> Result<Arc<rustls::ClientConfig>, LoadError> {
    let file = |f: String| dir.join(f);
    let err = |path: &Path, reason: String| LoadError::File {
        path: path.display().to_string(),
        reason,
    };
    let ca = file("ca.pem".into());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&ca).map_err(|e| err(&ca, e.to_string()))? {
        roots
            .add(c.map_err(|e| err(&ca, e.to_string()))?)
            .map_err(|e| err(&ca, e.to_string()))?;
    }
    let cert = file(format!("{name}.pem"));
    let chain = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| err(&cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&cert, e.to_string()))?;
    let key_path = file(format!("{name}.key"));
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| err(&key_path, e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(popgw::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LoadError::Plan(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| err(&cert, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Opens connections to the target as one client.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) addr: SocketAddr,
    pub(crate) name: ServerName<'static>,
    pub(crate) tls: TlsConnector,
}

impl Dialer {
    pub(crate) async fn open(&self) -> Result<SendRequest<Bytes>, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("tcp: {e}"))?;
        let tls = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(8 << 20)
            .handshake(tls)
            .await
            .map_err(|e| format!("http2: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(send)
    }
}

/// One call's result.
enum Answer {
    /// OK, and for a verification the verdict expected.
    Ok,
    /// A true declaration answered NO_MATCH (or no verdict).
    NotMatch,
    /// A false declaration answered MATCH.
    FalseMatch,
    Status(i32),
    Transport,
    /// The caller's deadline passed before an answer came (abandoned by the caller).
    Expired,
}

impl Answer {
    fn word(&self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::NotMatch => "false_no_match",
            Answer::FalseMatch => "false_match",
            Answer::Status(_) | Answer::Transport | Answer::Expired => "error",
        }
    }
}

/// The one field of `GetCitizenResponse` and `GetHouseholdResponse` the generator reads.
#[derive(Clone, PartialEq, prost::Message)]
struct RequestIdOnly {
    #[prost(string, tag = "1")]
    request_id: String,
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An answered call as its audit record should show it: the request id the gateway gave
/// it, and what it said (`MATCH`, `NO_MATCH`, or `OK` for a disclosure).
type Said = Option<(String, &'static str)>;

/// [`call`] for a caller whose deadline is `due + deadline`: the call carries the time
/// left as its grpc-timeout and is abandoned when it runs out (waiting for HTTP/2 stream
/// credit included), as a caller with a deadline does.
async fn call_by(
    send: &mut SendRequest<Bytes>,
    uri: &http::Uri,
    body: Bytes,
    rpc: Rpc,
    due: Instant,
    deadline: Option<Duration>,
    said: bool,
) -> (Answer, Said) {
    let Some(deadline) = deadline else {
        return call(send, uri, body, rpc, None, said).await;
    };
    let until = due + deadline;
    if until <= Instant::now() {
        return (Answer::Expired, None);
    }
    tokio::time::timeout_at(until.into(), call(send, uri, body, rpc, Some(until), said))
        .await
        .unwrap_or((Answer::Expired, None))
}

/// Sends one pre-encoded call and reads its answer (and, with `said`, for an answered
/// message what it said). With a deadline, the time left when the stream opens (after any wait for
/// HTTP/2 stream credit) goes as its grpc-timeout.
async fn call(
    send: &mut SendRequest<Bytes>,
    uri: &http::Uri,
    body: Bytes,
    rpc: Rpc,
    until: Option<Instant>,
    said: bool,
) -> (Answer, Said) {
    if futures::future::poll_fn(|cx| send.poll_ready(cx))
        .await
        .is_err()
    {
        return (Answer::Transport, None);
    }
    let mut request = http::Request::new(());
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    if let Some(until) = until {
        // Milliseconds, rounded up: at most 8 digits (the gRPC wire format).
        let left = until.saturating_duration_since(Instant::now());
        let ms = left.as_micros().div_ceil(1000).clamp(1, 99_999_999);
        if let Ok(v) = HeaderValue::from_str(&format!("{ms}m")) {
            headers.insert("grpc-timeout", v);
        }
    }
    let Ok((response, mut stream)) = send.send_request(request, false) else {
        return (Answer::Transport, None);
    };
    if stream.send_data(body, true).is_err() {
        return (Answer::Transport, None);
    }
    let Ok(response) = response.await else {
        return (Answer::Transport, None);
    };
    let (parts, mut body) = response.into_parts();
    if let Some(code) = grpc_status(&parts.headers) {
        // Trailers-only: a refusal before any message.
        return if code == 0 {
            (Answer::Ok, None)
        } else {
            (Answer::Status(code), None)
        };
    }
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else {
            return (Answer::Transport, None);
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
    }
    let code = match body.trailers().await {
        Ok(Some(trailers)) => grpc_status(&trailers).unwrap_or(2),
        Ok(None) => 2,
        Err(_) => return (Answer::Transport, None),
    };
    if code != 0 {
        return (Answer::Status(code), None);
    }
    let message = message.get(5..).unwrap_or_default();
    match rpc {
        Rpc::Verify | Rpc::VerifyFalse => {
            let answer = pb::VerifyIdentityResponse::decode(message).ok();
            let matched = answer
                .as_ref()
                .is_some_and(|r| r.verdict() == pb::Verdict::Match);
            let verdict = match (rpc, matched) {
                (Rpc::Verify, true) | (Rpc::VerifyFalse, false) => Answer::Ok,
                (Rpc::Verify, false) => Answer::NotMatch,
                _ => Answer::FalseMatch,
            };
            let said = if matched { "MATCH" } else { "NO_MATCH" };
            (verdict, answer.map(|r| (r.request_id, said)))
        }
        // Decoded only for an answer file: a benchmark's disclosures cost the generator
        // no decode.
        Rpc::Citizen | Rpc::Household if said => (
            Answer::Ok,
            RequestIdOnly::decode(message)
                .ok()
                .map(|r| (r.request_id, "OK")),
        ),
        Rpc::Citizen | Rpc::Household => (Answer::Ok, None),
    }
}

/// Where answered calls are written, one line each: the request id, the RPC's method,
/// what it said (`MATCH`, `NO_MATCH`, `OK`) and whether that was right (`ok`,
/// `false_no_match`, `false_match`) — what `benches/reliability.py` looks for in the
/// audit log.
type AnswerLog = Mutex<std::io::BufWriter<std::fs::File>>;

fn log_answer(log: Option<&AnswerLog>, rpc: Rpc, answer: &Answer, said: Said) {
    let (Some(log), Some((id, said))) = (log, said) else {
        return;
    };
    let method = rpc.path().rsplit('/').next().unwrap_or_default();
    let mut w = log.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(w, "{id}\t{method}\t{said}\t{}", answer.word());
}

/// Per-task tallies, merged at the end.
struct Tally {
    hist: Histogram<u64>,
    /// Calls answered as expected only.
    hist_ok: Histogram<u64>,
    calls: u64,
    ok: u64,
    not_match: u64,
    false_match: u64,
    errors: BTreeMap<String, u64>,
    /// Per second since the start: [answered as expected, false verdicts, errors].
    timeline: Vec<[u64; 3]>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("static bounds"),
            hist_ok: Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("static bounds"),
            calls: 0,
            ok: 0,
            not_match: 0,
            false_match: 0,
            errors: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }
    fn second(&mut self, second: usize, column: usize) {
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, [0; 3]);
        }
        self.timeline[second][column] += 1;
    }
    fn count(&mut self, answer: Answer, latency: Duration, second: usize) {
        self.calls += 1;
        let ns = (latency.as_nanos() as u64).max(1);
        let _ = self.hist.record(ns);
        let column = match answer {
            Answer::Ok => {
                let _ = self.hist_ok.record(ns);
                self.ok += 1;
                0
            }
            Answer::NotMatch => {
                self.not_match += 1;
                1
            }
            Answer::FalseMatch => {
                self.false_match += 1;
                1
            }
            Answer::Status(code) => {
                *self
                    .errors
                    .entry(format!("{:?}", tonic::Code::from(code)))
                    .or_default() += 1;
                2
            }
            Answer::Transport => {
                *self.errors.entry("transport".into()).or_default() += 1;
                2
            }
            Answer::Expired => {
                *self
                    .errors
                    .entry("expired in the caller".into())
                    .or_default() += 1;
                2
            }
        };
        self.second(second, column);
    }
    fn error(&mut self, kind: &str, second: usize) {
        self.calls += 1;
        *self.errors.entry(kind.to_string()).or_default() += 1;
        self.second(second, 2);
    }
    fn merge(&mut self, other: Tally) {
        let _ = self.hist.add(other.hist);
        let _ = self.hist_ok.add(other.hist_ok);
        self.calls += other.calls;
        self.ok += other.ok;
        self.not_match += other.not_match;
        self.false_match += other.false_match;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), [0; 3]);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
    }
}

/// Picks the next call: an RPC by weight, a person uniformly or by Zipf rank.
struct Picker {
    rng: ChaCha8Rng,
    weights: Vec<(Rpc, u32)>,
    total: u32,
    zipf: Option<rand_distr::Zipf<f64>>,
    people: usize,
}

impl Picker {
    fn new(plan: &Plan, people: usize, seed: u64) -> Picker {
        Picker {
            rng: ChaCha8Rng::seed_from_u64(seed),
            weights: plan.mix.clone(),
            total: plan.mix.iter().map(|(_, w)| w).sum(),
            zipf: plan
                .zipf
                .map(|s| rand_distr::Zipf::new(people as u64, s).expect("checked in run")),
            people,
        }
    }
    fn next(&mut self) -> (Rpc, usize) {
        let mut w = self.rng.gen_range(0..self.total);
        let mut rpc = self.weights[0].0;
        for &(r, weight) in &self.weights {
            if w < weight {
                rpc = r;
                break;
            }
            w -= weight;
        }
        let person = match &self.zipf {
            Some(z) => (z.sample(&mut self.rng) as usize).clamp(1, self.people) - 1,
            None => self.rng.gen_range(0..self.people),
        };
        (rpc, person)
    }
}

/// Everything the tasks share.
struct Shared {
    start: Instant,
    answers: Option<AnswerLog>,
    uris: BTreeMap<Rpc, http::Uri>,
    /// `bodies[rpc][person]`: each call's bytes, encoded once.
    bodies: BTreeMap<Rpc, Vec<Bytes>>,
    measure_from: Instant,
    end: Instant,
    budget: Option<u64>,
    measured: AtomicU64,
}

impl Shared {
    /// Whether a call started at `t` is measured (after the warm-up).
    fn measured(&self, t: Instant) -> bool {
        t >= self.measure_from
    }
    /// The second of the timeline `t` falls in.
    fn second(&self, t: Instant) -> usize {
        t.saturating_duration_since(self.start).as_secs() as usize
    }
    fn over(&self, now: Instant) -> bool {
        now >= self.end
            || self
                .budget
                .is_some_and(|b| self.measured.load(Ordering::Relaxed) >= b)
    }
}

/// CPU time (user + system) of a process so far, from `/proc/<pid>/stat` (Linux;
/// 100 ticks a second, the kernel's USER_HZ).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs `plan` with the declarations of `population`; the report of the measured part.
pub async fn run(plan: Plan, population: Population) -> Result<Report, LoadError> {
    if !plan.addr.ip().is_loopback() {
        return Err(LoadError::NotLoopback(plan.addr));
    }
    if plan.mix.is_empty() || plan.mix.iter().all(|(_, w)| *w == 0) {
        return Err(LoadError::Plan("the mix has no RPC with a weight".into()));
    }
    if plan
        .caller_rate
        .is_some_and(|r| !(r.is_finite() && (1e-3..=1e6).contains(&r)))
    {
        return Err(LoadError::Plan(
            "the caller rate must be 0.001 to 1,000,000 calls a second".into(),
        ));
    }
    if plan
        .deadline
        .is_some_and(|d| d.is_zero() || d > Duration::from_secs(86_400))
    {
        return Err(LoadError::Plan(
            "a deadline is longer than zero and a day at most".into(),
        ));
    }
    if plan.connections == 0 {
        return Err(LoadError::Plan("connections must be at least 1".into()));
    }
    match plan.mode {
        Mode::Closed { callers } | Mode::Connect { callers } if callers == 0 => {
            return Err(LoadError::Plan("callers must be at least 1".into()))
        }
        Mode::Open {
            rate,
            max_in_flight,
        } if !(rate > 0.0 && rate.is_finite()) || max_in_flight == 0 => {
            return Err(LoadError::Plan(
                "the rate and max_in_flight must be positive".into(),
            ))
        }
        _ => {}
    }
    if plan
        .mix
        .iter()
        .try_fold(0u32, |sum, (_, w)| sum.checked_add(*w))
        .is_none()
    {
        return Err(LoadError::Plan(
            "the mix's weights add up to more than 2^32".into(),
        ));
    }
    if let Mode::Open {
        rate,
        max_in_flight,
    } = plan.mode
    {
        if !(1e-3..=1e7).contains(&rate) || max_in_flight > 1 << 20 {
            return Err(LoadError::Plan(
                "the rate must be 0.001 to 10,000,000 calls a second, max_in_flight at most 1,048,576"
                    .into(),
            ));
        }
    }
    if plan.warmup > Duration::from_secs(86_400) || plan.duration > Duration::from_secs(86_400) {
        return Err(LoadError::Plan(
            "warm-up and duration: a day at most".into(),
        ));
    }
    if plan.zipf.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        return Err(LoadError::Plan("the Zipf exponent must be positive".into()));
    }
    let name = ServerName::try_from(plan.server_name.clone())
        .map_err(|e| LoadError::Plan(format!("server name: {e}")))?;
    let mut dialers = Vec::new();
    for client in CLIENT_NAMES {
        dialers.push(Dialer {
            addr: plan.addr,
            name: name.clone(),
            tls: TlsConnector::from(client_config(&plan.certs, client)?),
        });
    }
    let people = population.people();
    let mut uris = BTreeMap::new();
    let mut bodies = BTreeMap::new();
    for &(rpc, _) in &plan.mix {
        let uri = format!("https://{}{}", plan.server_name, rpc.path())
            .parse()
            .map_err(|e| LoadError::Plan(format!("uri: {e}")))?;
        uris.insert(rpc, uri);
        bodies.insert(
            rpc,
            people
                .iter()
                .enumerate()
                .map(|(i, p)| rpc.encode(p, format!("BENCH-{i}")))
                .collect(),
        );
    }
    // Connections per client the mix needs (closed and open loops).
    let mut pools: Vec<Vec<SendRequest<Bytes>>> = vec![Vec::new(), Vec::new()];
    if !matches!(plan.mode, Mode::Connect { .. }) {
        for &(rpc, _) in &plan.mix {
            let client = rpc.client();
            while pools[client].len() < plan.connections {
                let send = dialers[client]
                    .open()
                    .await
                    .map_err(|reason| LoadError::Connect {
                        addr: plan.addr,
                        reason,
                    })?;
                pools[client].push(send);
            }
        }
    }
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let answers = match &plan.answers {
        Some(path) => Some(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| LoadError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
        ))),
        None => None,
    };
    let shared = Arc::new(Shared {
        start,
        answers,
        uris,
        bodies,
        measure_from,
        end: measure_from + plan.duration,
        budget: plan.max_calls,
        measured: AtomicU64::new(0),
    });
    let cpu = Arc::new(Mutex::new(None::<(Instant, Option<f64>, Option<f64>)>));
    // The CPU clock starts when the warm-up ends.
    let sampler = {
        let cpu = cpu.clone();
        let pid = plan.server_pid;
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            *cpu.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                Instant::now(),
                cpu_seconds(None),
                pid.and_then(|p| cpu_seconds(Some(p))),
            ));
        })
    };
    let people_n = people.len();
    let deadline = plan.deadline;
    let mut total = Tally::new();
    let (mut late, mut dropped) = (0, 0);
    match plan.mode {
        Mode::Closed { callers } => {
            let mut tasks = Vec::new();
            for c in 0..callers {
                let shared = shared.clone();
                let mut picker = Picker::new(&plan, people_n, c as u64);
                let mut sends: Vec<Option<SendRequest<Bytes>>> = pools
                    .iter()
                    .map(|p| (!p.is_empty()).then(|| p[c % p.len()].clone()))
                    .collect();
                let dialers = dialers.clone();
                let (reconnect, pace) = (plan.reconnect, plan.caller_rate.map(|r| 1.0 / r));
                tasks.push(tokio::spawn(async move {
                    let mut tally = Tally::new();
                    let mut next_start = Instant::now();
                    loop {
                        if let Some(pace) = pace {
                            tokio::time::sleep_until(next_start.into()).await;
                            next_start += Duration::from_secs_f64(pace);
                        }
                        let t = Instant::now();
                        if shared.over(t) {
                            break;
                        }
                        let (rpc, person) = picker.next();
                        let client = rpc.client();
                        let send = sends[client].as_mut().expect("pool per client");
                        let body = shared.bodies[&rpc][person].clone();
                        let (answer, request_id) = call_by(
                            send,
                            &shared.uris[&rpc],
                            body,
                            rpc,
                            t,
                            deadline,
                            shared.answers.is_some(),
                        )
                        .await;
                        let lost = matches!(answer, Answer::Transport);
                        log_answer(shared.answers.as_ref(), rpc, &answer, request_id);
                        if shared.measured(t) {
                            shared.measured.fetch_add(1, Ordering::Relaxed);
                            tally.count(answer, t.elapsed(), shared.second(t));
                        }
                        // A lost connection: dial until one opens (each failed dial
                        // counts as a call refused at connect) or the run ends.
                        if lost && reconnect {
                            loop {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                let t = Instant::now();
                                if shared.over(t) {
                                    break;
                                }
                                match dialers[client].open().await {
                                    Ok(fresh) => {
                                        sends[client] = Some(fresh);
                                        break;
                                    }
                                    Err(_) if shared.measured(t) => {
                                        tally.error("connect", shared.second(t));
                                    }
                                    Err(_) => {}
                                }
                            }
                        }
                        next_start = next_start.max(Instant::now() - Duration::from_secs(1));
                    }
                    tally
                }));
            }
            for t in tasks {
                total.merge(t.await.expect("caller task"));
            }
        }
        Mode::Connect { callers } => {
            let mut tasks = Vec::new();
            for c in 0..callers {
                let shared = shared.clone();
                let dialers = dialers.clone();
                let mut picker = Picker::new(&plan, people_n, c as u64);
                tasks.push(tokio::spawn(async move {
                    let mut tally = Tally::new();
                    loop {
                        let t = Instant::now();
                        if shared.over(t) {
                            break;
                        }
                        let (rpc, person) = picker.next();
                        let answer = match dialers[rpc.client()].open().await {
                            Ok(mut send) => {
                                let body = shared.bodies[&rpc][person].clone();
                                let (a, id) = call_by(
                                    &mut send,
                                    &shared.uris[&rpc],
                                    body,
                                    rpc,
                                    t,
                                    deadline,
                                    shared.answers.is_some(),
                                )
                                .await;
                                log_answer(shared.answers.as_ref(), rpc, &a, id);
                                Ok(a)
                            }
                            Err(reason) => Err(reason),
                        };
                        if shared.measured(t) {
                            shared.measured.fetch_add(1, Ordering::Relaxed);
                            match answer {
                                Ok(a) => tally.count(a, t.elapsed(), shared.second(t)),
                                Err(reason) => {
                                    let stage = reason.split(':').next().unwrap_or("connect");
                                    tally.error(&format!("connect ({stage})"), shared.second(t));
                                }
                            }
                        }
                    }
                    tally
                }));
            }
            for t in tasks {
                total.merge(t.await.expect("caller task"));
            }
        }
        Mode::Open {
            rate,
            max_in_flight,
        } => {
            let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
            let shards: Arc<Vec<Mutex<Tally>>> =
                Arc::new((0..16).map(|_| Mutex::new(Tally::new())).collect());
            // The dispatcher runs on a thread of its own, sleeping with the OS timer
            // (microseconds) rather than tokio's (milliseconds, so calls would leave in
            // bursts once a millisecond); it spawns each call onto the runtime.
            let mut picker = Picker::new(&plan, people_n, 0);
            let interval = Duration::from_secs_f64(1.0 / rate);
            let handle = tokio::runtime::Handle::current();
            let (in_flight2, shards2, shared2) =
                (in_flight.clone(), shards.clone(), shared.clone());
            let dispatcher = std::thread::spawn(move || {
                let (in_flight, shards, shared) = (in_flight2, shards2, shared2);
                let (mut late, mut dropped) = (0u64, 0u64);
                let mut next = [0usize; 2];
                let mut i: u64 = 0;
                loop {
                    let due = start + interval.mul_f64(i as f64);
                    if shared.over(due) {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    i += 1;
                    let measured = shared.measured(due);
                    if measured && due.elapsed() > Duration::from_millis(2) {
                        late += 1;
                    }
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        if measured {
                            dropped += 1;
                        }
                        continue;
                    };
                    let (rpc, person) = picker.next();
                    let client = rpc.client();
                    let mut send = pools[client][next[client] % pools[client].len()].clone();
                    next[client] += 1;
                    let shared = shared.clone();
                    let shards = shards.clone();
                    handle.spawn(async move {
                        let body = shared.bodies[&rpc][person].clone();
                        let (answer, id) = call_by(
                            &mut send,
                            &shared.uris[&rpc],
                            body,
                            rpc,
                            due,
                            deadline,
                            shared.answers.is_some(),
                        )
                        .await;
                        log_answer(shared.answers.as_ref(), rpc, &answer, id);
                        if measured {
                            shared.measured.fetch_add(1, Ordering::Relaxed);
                            shards[(i % 16) as usize]
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .count(answer, due.elapsed(), shared.second(due));
                        }
                        drop(permit);
                    });
                }
                (late, dropped)
            });
            (late, dropped) = tokio::task::spawn_blocking(move || dispatcher.join())
                .await
                .expect("dispatcher")
                .expect("dispatcher thread");
            // Wait for the calls in flight.
            let _ = in_flight.acquire_many(max_in_flight as u32).await;
            for shard in shards.iter() {
                let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
                total.merge(std::mem::replace(&mut *s, Tally::new()));
            }
        }
    }
    if let Some(log) = &shared.answers {
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush()
            .map_err(|e| LoadError::File {
                path: plan
                    .answers
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason: e.to_string(),
            })?;
    }
    let stopped = Instant::now();
    let generator_end = cpu_seconds(None);
    let server_end = plan.server_pid.and_then(|p| cpu_seconds(Some(p)));
    sampler.abort();
    let began = *cpu.lock().unwrap_or_else(|p| p.into_inner());
    let (seconds, generator_cpu, server_cpu) = match began {
        Some((t, g, s)) => {
            let secs = stopped.duration_since(t).as_secs_f64();
            let share = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs);
            (secs, share(g, generator_end), share(s, server_end))
        }
        None => (
            stopped.duration_since(measure_from).as_secs_f64(),
            None,
            None,
        ),
    };
    let us = |ns: u64| ns as f64 / 1000.0;
    let latency = |h: &Histogram<u64>| Latency {
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: h.mean() / 1000.0,
    };
    Ok(Report {
        label: plan.label.clone(),
        target: plan.addr.to_string(),
        mode: plan.mode,
        connections: plan.connections,
        mix: plan.mix.iter().copied().collect(),
        ids: match plan.zipf {
            Some(s) => format!("zipf({s}) over {people_n}"),
            None => format!("uniform over {people_n}"),
        },
        seconds,
        calls: total.calls,
        ok: total.ok,
        not_match: total.not_match,
        false_match: total.false_match,
        throughput: total.ok as f64 / seconds.max(1e-9),
        late_sends: late,
        dropped_sends: dropped,
        latency_us: latency(&total.hist),
        latency_ok_us: latency(&total.hist_ok),
        generator_limited: generator_cpu.is_some_and(|c| c > 0.9)
            || (matches!(plan.mode, Mode::Open { .. }) && late * 100 > total.calls.max(1)),
        generator_cpu,
        server_cpu,
        errors: total.errors,
        timeline: total.timeline,
    })
}

impl Report {
    /// One line for a terminal.
    pub fn summary(&self) -> String {
        let cpu = |c: Option<f64>| c.map_or("?".into(), |c| format!("{:.0} %", c * 100.0));
        format!(
            "{}: {:.0}/s OK ({} calls in {:.1} s; not MATCH {}; false MATCH {}; errors {:?}; late {}, dropped {}) \
             p50 {:.0} µs p90 {:.0} µs p99 {:.0} µs p99.9 {:.0} µs max {:.0} µs; \
             generator CPU {}{}, server CPU {}",
            self.label,
            self.throughput,
            self.calls,
            self.seconds,
            self.not_match,
            self.false_match,
            self.errors,
            self.late_sends,
            self.dropped_sends,
            self.latency_us.p50,
            self.latency_us.p90,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            cpu(self.generator_cpu),
            if self.generator_limited {
                " (generator-limited)"
            } else {
                ""
            },
            cpu(self.server_cpu),
        )
    }
}
