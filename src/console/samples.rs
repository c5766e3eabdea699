//! The health page's figures: the gateway's admin `/metrics` scraped every few seconds,
//! each scrape turned at once into one [`Point`] of rates and gauges (the raw text is
//! kept only until the next scrape), and the last hour of points kept in a ring.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One sample of the exposition: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`popgw_requests_total`, `…_bucket`).
    pub name: String,
    /// Its labels in the order written.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a scrape gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The admin listener could not be reached or answered badly.
    #[error("cannot scrape {url}: {reason}")]
    Http {
        /// What was asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A line of the exposition could not be read.
    #[error("metrics line {line}: {reason}")]
    Parse {
        /// Its number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Reads a Prometheus or OpenMetrics text exposition: comments (`# TYPE`, `# EOF`…) are
/// skipped, every other line is `name{label="value",…} value [timestamp]`.
pub fn parse(text: &str) -> Result<Vec<Sample>, ScrapeError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| ScrapeError::Parse {
            line: i + 1,
            reason,
        };
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            (labels, rest) = parse_labels(body).map_err(bad)?;
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// A sample's labels, in the order written.
type Labels = Vec<(String, String)>;

/// The labels after a `{`, and what follows their `}`.
fn parse_labels(body: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Vec::new();
    let mut rest = body;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated escape"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key, value));
        rest = &rest[end + 1..];
    }
}

/// One scrape's figures, as rates over the time since the scrape before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Point {
    /// When (Unix ms).
    pub at_ms: i64,
    /// Requests answered per second.
    pub rps: f64,
    /// Per gRPC code.
    pub by_code: BTreeMap<String, f64>,
    /// Per client identity.
    pub by_client: BTreeMap<String, f64>,
    /// Latency percentiles over the interval (ms), `None` without requests.
    pub p50_ms: Option<f64>,
    /// The 99th.
    pub p99_ms: Option<f64>,
    /// Cache hits over hits and misses, `None` without either.
    pub hit_ratio: Option<f64>,
    /// Upstream breaker: 0 closed, 1 open, 2 half-open (the worst of any).
    pub breaker: f64,
    /// Records waiting for the audit writer.
    pub audit_queue: f64,
    /// Mean records per audit write over the interval.
    pub batch_records: Option<f64>,
    /// Refused TLS handshakes per second, per reason.
    pub tls_refusals: BTreeMap<String, f64>,
    /// Days until each loaded certificate expires.
    pub certificate_days: BTreeMap<String, f64>,
    /// Witness lag (records), central index pending messages.
    pub witness_lag: f64,
    /// Messages the index has not yet taken.
    pub index_pending: f64,
    /// Whether the index is up (1) — `None` without an index configured.
    pub index_up: Option<f64>,
}

fn sum_by<'a>(
    samples: &'a [Sample],
    name: &str,
    key: impl Fn(&'a Sample) -> Option<String>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some(k) = key(s) {
            *out.entry(k).or_insert(0.0) += s.value;
        }
    }
    out
}

fn total(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum::<f64>()
        // An empty sum is -0.0: shown as 0.
        + 0.0
}

/// A counter's growth; a counter that went down was reset (the gateway restarted) and
/// counts from zero, as Prometheus's `rate` takes it.
fn growth(now: f64, before: f64) -> f64 {
    if now < before {
        now
    } else {
        now - before
    }
}

fn rates(
    now: BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    now.into_iter()
        .map(|(k, v)| {
            let d = growth(v, before.get(&k).copied().unwrap_or(0.0));
            (k, d / secs)
        })
        .collect()
}

/// A quantile of the request latency histogram's growth between two scrapes (summed
/// over RPCs), interpolated within its bucket, in ms.
fn quantile(now: &[Sample], before: &[Sample], q: f64) -> Option<f64> {
    let le = |s: &Sample| s.label("le").and_then(|v| v.parse::<f64>().ok());
    let buckets = |samples: &[Sample]| {
        let mut b: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == "popgw_request_duration_seconds_bucket")
        {
            if let Some(le) = le(s) {
                b.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
            }
        }
        let mut v: Vec<(f64, f64)> = b.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let now = buckets(now);
    let mut before = buckets(before);
    // Any bucket that went down: the histogram was reset; it counts from zero.
    if now.iter().any(|&(le, n)| {
        before
            .iter()
            .any(|&(l, b)| l.to_bits() == le.to_bits() && n < b)
    }) {
        before.clear();
    }
    let grown: Vec<(f64, f64)> = now
        .iter()
        .map(|&(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l.to_bits() == le.to_bits())
                .map_or(0.0, |(_, c)| *c);
            (le, n - b)
        })
        .collect();
    let count = grown.last()?.1;
    if count <= 0.0 {
        return None;
    }
    let rank = q * count;
    let mut lower = (0.0, 0.0);
    for &(le, c) in &grown {
        if c >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let span = c - lower.1;
            let within = if span > 0.0 {
                (rank - lower.1) / span
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * within) * 1000.0);
        }
        lower = (le, c);
    }
    None
}

/// The point between two scrapes `secs` apart.
pub fn point(at_ms: i64, now: &[Sample], before: &[Sample], secs: f64) -> Point {
    let secs = secs.max(0.001);
    let code = |s: &Sample| s.label("code").map(str::to_string);
    let client = |s: &Sample| s.label("client").map(str::to_string);
    let reason = |s: &Sample| s.label("reason").map(str::to_string);
    let by_code = rates(
        sum_by(now, "popgw_requests_total", code),
        &sum_by(before, "popgw_requests_total", code),
        secs,
    );
    let grown = |name| growth(total(now, name), total(before, name));
    let hits = grown("popgw_cache_hits_total");
    let misses = grown("popgw_cache_misses_total");
    let writes = grown("popgw_audit_batch_records_count");
    let written = grown("popgw_audit_batch_records_sum");
    Point {
        at_ms,
        rps: by_code.values().sum(),
        by_client: rates(
            sum_by(now, "popgw_requests_total", client),
            &sum_by(before, "popgw_requests_total", client),
            secs,
        ),
        by_code,
        p50_ms: quantile(now, before, 0.50),
        p99_ms: quantile(now, before, 0.99),
        hit_ratio: (hits + misses > 0.0).then(|| hits / (hits + misses)),
        breaker: now
            .iter()
            .filter(|s| s.name == "popgw_upstream_breaker_state")
            .map(|s| s.value)
            .fold(0.0, f64::max),
        audit_queue: total(now, "popgw_audit_queue_depth"),
        batch_records: (writes > 0.0).then(|| written / writes),
        tls_refusals: rates(
            sum_by(now, "popgw_tls_handshake_refusals_total", reason),
            &sum_by(before, "popgw_tls_handshake_refusals_total", reason),
            secs,
        ),
        certificate_days: sum_by(now, "popgw_certificate_expiry_seconds", |s| {
            s.label("certificate").map(str::to_string)
        })
        .into_iter()
        .map(|(k, v)| (k, v / 86_400.0))
        .collect(),
        witness_lag: total(now, "popgw_audit_witness_lag_records"),
        index_pending: total(now, "popgw_audit_index_pending_messages"),
        index_up: now
            .iter()
            .find(|s| s.name == "popgw_audit_index_up")
            .map(|s| s.value),
    }
}

/// The last hour of points.
#[derive(Debug)]
pub struct Ring {
    points: VecDeque<Point>,
    keep: usize,
    last: Option<(std::time::Instant, Vec<Sample>)>,
    /// The last scrape's error, shown on the page until a scrape succeeds.
    pub error: Option<String>,
}

impl Ring {
    /// A ring of `keep` points.
    pub fn new(keep: usize) -> Ring {
        Ring {
            points: VecDeque::with_capacity(keep),
            keep: keep.max(2),
            last: None,
            error: None,
        }
    }

    /// Takes one scrape: a point once there is a scrape before it.
    pub fn push(&mut self, at_ms: i64, samples: Vec<Sample>) {
        let now = std::time::Instant::now();
        if let Some((then, before)) = &self.last {
            let p = point(
                at_ms,
                &samples,
                before,
                now.duration_since(*then).as_secs_f64(),
            );
            if self.points.len() == self.keep {
                self.points.pop_front();
            }
            self.points.push_back(p);
        }
        self.last = Some((now, samples));
        self.error = None;
    }

    /// The points, oldest first.
    pub fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    /// The newest point.
    pub fn latest(&self) -> Option<&Point> {
        self.points.back()
    }
}

/// Fetches the exposition at `url` (plain HTTP: the admin listener, on loopback).
pub async fn scrape(url: &str, timeout: Duration) -> Result<Vec<Sample>, ScrapeError> {
    let http = |reason: String| ScrapeError::Http {
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| http(format!("{e}")))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(timeout, client.get(uri))
        .await
        .map_err(|_| http("timed out".into()))?
        .map_err(|e| http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(http(format!("HTTP {}", response.status())));
    }
    // A mistyped URL may answer with anything: 8 MiB at most (popgw's is a few kB).
    let body = http_body_util::Limited::new(response.into_body(), 8 << 20);
    let body = tokio::time::timeout(timeout, body.collect())
        .await
        .map_err(|_| http("timed out".into()))?
        .map_err(|e| http(e.to_string()))?
        .to_bytes();
    parse(&String::from_utf8_lossy(&body))
}

/// An SVG polyline's points for `values` (None = a gap, drawn as 0) scaled into a
/// `width` × `height` box, the largest value at the top.
pub fn polyline(values: &[Option<f64>], width: f64, height: f64) -> (String, f64) {
    let max = values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let scale = if max > 0.0 { height / max } else { 0.0 };
    let step = if values.len() > 1 {
        width / (values.len() - 1) as f64
    } else {
        0.0
    };
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        let y = height - v.unwrap_or(0.0).max(0.0) * scale;
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{:.1},{:.1}", i as f64 * step, y));
    }
    (out, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE popgw_requests counter
popgw_requests_total{rpc="VerifyIdentity",procedure="P03",client="spiffe://a",code="OK"} 10
popgw_request_duration_seconds_bucket{le="0.001",rpc="VerifyIdentity"} 5
popgw_request_duration_seconds_bucket{le="0.002",rpc="VerifyIdentity"} 10
popgw_request_duration_seconds_bucket{le="+Inf",rpc="VerifyIdentity"} 10
popgw_cache_hits_total 0
popgw_cache_misses_total 0
# EOF
"#;
    const NOW: &str = r#"popgw_requests_total{rpc="VerifyIdentity",procedure="P03",client="spiffe://a",code="OK"} 30
popgw_requests_total{rpc="VerifyIdentity",procedure="P03",client="spiffe://b \"x\"",code="PERMISSION_DENIED"} 10
popgw_request_duration_seconds_bucket{le="0.001",rpc="VerifyIdentity"} 5
popgw_request_duration_seconds_bucket{le="0.002",rpc="VerifyIdentity"} 50
popgw_request_duration_seconds_bucket{le="+Inf",rpc="VerifyIdentity"} 50
popgw_cache_hits_total 30
popgw_cache_misses_total 10
popgw_upstream_breaker_state{upstream="x"} 1
popgw_certificate_expiry_seconds{certificate="server"} 864000
"#;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_point_is_the_rates_between_two_scrapes() {
        let p = point(0, &parse(NOW).unwrap(), &parse(BEFORE).unwrap(), 10.0);
        assert!(close(p.rps, 3.0));
        assert!(close(p.by_code["OK"], 2.0));
        assert!(close(p.by_code["PERMISSION_DENIED"], 1.0));
        assert!(close(p.by_client["spiffe://b \"x\""], 1.0));
        // All 40 new requests fell between 1 and 2 ms.
        let p50 = p.p50_ms.unwrap();
        assert!((1.0..=2.0).contains(&p50), "{p50}");
        assert!(close(p.hit_ratio.unwrap(), 0.75));
        assert!(close(p.breaker, 1.0));
        assert!(close(p.certificate_days["server"], 10.0));
    }

    #[test]
    fn a_restarted_gateway_counts_from_zero() {
        // BEFORE holds 10 requests; a restart leaves 4 (all under 1 ms).
        let now = parse(
            "popgw_requests_total{code=\"OK\"} 4\n\
             popgw_request_duration_seconds_bucket{le=\"0.001\"} 4\n\
             popgw_request_duration_seconds_bucket{le=\"0.002\"} 4\n\
             popgw_request_duration_seconds_bucket{le=\"+Inf\"} 4\n\
             popgw_cache_hits_total 2\npopgw_cache_misses_total 2\n",
        )
        .unwrap();
        let p = point(0, &now, &parse(BEFORE).unwrap(), 1.0);
        assert!(close(p.rps, 4.0), "{p:?}");
        assert!(p.p99_ms.unwrap() <= 1.0, "{:?}", p.p99_ms);
        assert!(close(p.hit_ratio.unwrap(), 0.5));
    }

    #[test]
    fn an_unreadable_line_is_named() {
        let e = parse("ok 1\npopgw_x{le=1} 2\n").unwrap_err();
        assert!(matches!(e, ScrapeError::Parse { line: 2, .. }), "{e}");
        assert!(parse("popgw_x{a=\"1\"} many").is_err());
    }

    #[test]
    fn no_requests_no_percentiles() {
        let s = parse(BEFORE).unwrap();
        let p = point(0, &s, &s, 5.0);
        assert!(close(p.rps, 0.0) && p.p50_ms.is_none() && p.hit_ratio.is_none());
    }
}
