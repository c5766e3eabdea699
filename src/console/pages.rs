//! The console's pages. Each handler makes its calls on the gateway as the operator (each
//! call audited there), turns the answers into display rows and renders a template from
//! `templates/console/` (askama: compiled in, HTML escaped). Nothing here logs a form's
//! values: the personal id an operator types goes to the gateway only, which
//! pseudonymises it.

use std::convert::Infallible;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{FixedOffset, NaiveDateTime, TimeZone as _};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};

use super::labels::{Labels, Lang};
use super::samples::{self, Point};
use super::{Console, ConsoleError, Verified};
use crate::proto::gateway as pb;

/// The cookie holding the chosen language.
const LANG_COOKIE: &str = "popgw_lang";
/// Records on one search page.
pub const PAGE_SIZE: usize = 50;
/// Search pages at most (5,000 records: narrow the search beyond).
pub const MAX_PAGES: usize = 100;
/// Records of one citizen's history at most.
pub const HISTORY_LIMIT: u32 = 1_000;
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The routes (unguarded: [`super::router`] adds the guard).
pub fn routes() -> Router<Console> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/live") }))
        .route("/live", get(live))
        .route("/live/stream", get(live_stream))
        .route("/search", get(search_form).post(search))
        .route("/integrity", get(integrity))
        .route("/integrity/verify", post(verify))
        .route("/health", get(health))
        .route("/citizen", get(citizen_form).post(citizen))
        .route("/lang/{code}", get(set_lang))
        .route("/logout", post(log_out))
        .route(
            "/assets/console.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/assets/console.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// Vietnam's time: every time on the pages, and the search form's, is in UTC+7.
fn vietnam() -> FixedOffset {
    FixedOffset::east_opt(7 * 3600).expect("a valid offset")
}

/// A Unix ms time as the pages show it.
pub fn show_time(ms: i64) -> String {
    match vietnam().timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
        None => ms.to_string(),
    }
}

/// What every page shows around its content.
pub struct Frame {
    /// The words.
    pub t: &'static Labels,
    /// The page's language code.
    pub lang: &'static str,
    /// The other one's.
    pub other_lang: &'static str,
    /// Which page (for the navigation).
    pub nav: &'static str,
    /// The operator's identity.
    pub operator: String,
    /// The gateway.
    pub gateway: String,
}

impl Console {
    fn frame(&self, headers: &HeaderMap, nav: &'static str) -> Frame {
        let lang = lang_of(headers);
        Frame {
            t: lang.labels(),
            lang: lang.code(),
            other_lang: match lang {
                Lang::Vi => "en",
                Lang::En => "vi",
            },
            nav,
            operator: self.inner.operator.as_str().to_string(),
            gateway: self.inner.nodes[0].addr.clone(),
        }
    }
}

fn lang_of(headers: &HeaderMap) -> Lang {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| super::guard::cookies(h, LANG_COOKIE).next())
        .and_then(Lang::parse)
        .unwrap_or(Lang::Vi)
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::Form(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        };
        (status, self.to_string()).into_response()
    }
}

fn render(t: &impl Template) -> Result<Response, ConsoleError> {
    Ok(Html(t.render()?).into_response())
}

/// A gateway error shown inside the page that asked (the page stays usable).
pub struct Failure {
    /// The gRPC code's name.
    pub code: &'static str,
    /// The gateway's message (it never carries a value).
    pub message: String,
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        Failure {
            code: crate::telemetry::code_name(s.code()),
            message: s.message().to_string(),
        }
    }
}

/// One audit record as a table row.
pub struct Row {
    /// Its sequence number on its node.
    pub seq: u64,
    /// Its time, in Vietnam.
    pub time: String,
    /// Its node.
    pub node: String,
    /// The request id.
    pub request_id: String,
    /// The client identity.
    pub client: String,
    /// The RPC.
    pub rpc: String,
    /// The procedure claimed.
    pub procedure: String,
    /// The dossier's pseudonym.
    pub case_id: String,
    /// The subject's pseudonym.
    pub subject: String,
    /// Outcome word.
    pub outcome: String,
    /// gRPC code.
    pub code: String,
    /// Whether the request was refused or failed.
    pub refused: bool,
    /// Cache outcome.
    pub cache: String,
    /// Latency, ms.
    pub latency: String,
    /// Fields disclosed.
    pub fields: String,
    /// Related people's pseudonyms.
    pub related: String,
    /// What was compared or refused (never a value).
    pub detail: String,
    /// The matching rule.
    pub rule: String,
    /// The chain: the previous record's hash.
    pub prev_hash: String,
    /// This one's.
    pub hash: String,
    /// The exact line, as chained.
    pub json: String,
}

impl From<pb::AuditRecord> for Row {
    fn from(r: pb::AuditRecord) -> Row {
        Row {
            seq: r.seq,
            time: show_time(r.time_unix_ms),
            refused: r.code != "OK",
            latency: format!("{:.2}", r.latency_us as f64 / 1000.0),
            fields: r.fields.join(", "),
            related: r.related.join(", "),
            node: r.node,
            request_id: r.request_id,
            client: r.client,
            rpc: r.rpc,
            procedure: r.procedure,
            case_id: r.case_id,
            subject: r.subject,
            outcome: r.outcome,
            code: r.code,
            cache: r.cache,
            detail: r.detail,
            rule: r.rule,
            prev_hash: r.prev_hash,
            hash: r.hash,
            json: r.json,
        }
    }
}

// ---- Live ----

#[derive(Template)]
#[template(path = "console/live.html")]
struct LivePage {
    page: Frame,
}

async fn live(State(c): State<Console>, headers: HeaderMap) -> Result<Response, ConsoleError> {
    render(&LivePage {
        page: c.frame(&headers, "live"),
    })
}

/// What the live page receives per record (rendered by the script with textContent).
#[derive(Serialize)]
struct LiveRecord {
    seq: u64,
    time: String,
    node: String,
    request_id: String,
    client: String,
    rpc: String,
    procedure: String,
    outcome: String,
    code: String,
    cache: String,
    latency_ms: String,
    subject: String,
}

/// Server-sent events: AuditLog.Watch from the latest signed checkpoint on (or, when the
/// browser reconnects, from after the last record it got: `Last-Event-ID`).
async fn live_stream(
    State(c): State<Console>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ConsoleError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|seq| seq.checked_add(1));
    let from = match resume {
        Some(from) => from,
        None => match c.audit().head(pb::AuditHeadRequest {}).await {
            Ok(head) => head.into_inner().seq,
            Err(s) if s.code() == tonic::Code::NotFound => 1,
            Err(s) => return Err(s.into()),
        },
    };
    let records = c
        .audit()
        .watch(pb::AuditWatchRequest { from_seq: from })
        .await?
        .into_inner();
    let stopping = c.inner.stopping.clone().cancelled_owned();
    let events = records
        .map(|r| {
            Ok(match r {
                Ok(r) => {
                    let row = Row::from(r);
                    let record = LiveRecord {
                        seq: row.seq,
                        time: row.time,
                        node: row.node,
                        request_id: row.request_id,
                        client: row.client,
                        rpc: row.rpc,
                        procedure: row.procedure,
                        outcome: row.outcome,
                        code: row.code,
                        cache: row.cache,
                        latency_ms: row.latency,
                        subject: row.subject,
                    };
                    Event::default()
                        .id(record.seq.to_string())
                        .data(serde_json::to_string(&record).unwrap_or_default())
                }
                Err(s) => Event::default()
                    .event("end")
                    .data(ConsoleError::Gateway(s).to_string()),
            })
        })
        .take_until(stopping);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

// ---- Search ----

/// The search form (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SearchForm {
    /// A personal id (pseudonymised by the gateway).
    pub personal_id: String,
    /// A dossier number (pseudonymised by the gateway).
    pub case_id: String,
    /// A client identity.
    pub client: String,
    /// A procedure code.
    pub procedure: String,
    /// An outcome word or gRPC code name.
    pub outcome: String,
    /// A cache outcome.
    pub cache: String,
    /// From (`YYYY-MM-DDTHH:MM`, Vietnam time).
    pub from: String,
    /// To.
    pub to: String,
    /// The page, from 0.
    pub page: usize,
}

/// A form's time (Vietnam time) as Unix ms; empty is 0 (no bound).
fn form_time(value: &str, field: &'static str) -> Result<i64, ConsoleError> {
    if value.trim().is_empty() {
        return Ok(0);
    }
    let naive = NaiveDateTime::parse_from_str(value.trim(), "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(value.trim(), "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| ConsoleError::Form(field))?;
    vietnam()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.timestamp_millis())
        .ok_or(ConsoleError::Form(field))
}

#[derive(Template)]
#[template(path = "console/search.html")]
struct SearchPage {
    page: Frame,
    form: SearchForm,
    searched: bool,
    rows: Vec<Row>,
    has_next: bool,
    failure: Option<Failure>,
    page_number: usize,
}

async fn search_form(
    State(c): State<Console>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    render(&SearchPage {
        page: c.frame(&headers, "search"),
        form: SearchForm::default(),
        searched: false,
        rows: Vec::new(),
        has_next: false,
        failure: None,
        page_number: 1,
    })
}

async fn search(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(mut form): Form<SearchForm>,
) -> Result<Response, ConsoleError> {
    let page = c.frame(&headers, "search");
    // Beyond the last page: refused, and the form shown again from its first page.
    let too_far = form.page >= MAX_PAGES;
    if too_far {
        form.page = 0;
    }
    let times = form_time(&form.from, "from: expected a date and time")
        .and_then(|from| Ok((from, form_time(&form.to, "to: expected a date and time")?)));
    let (rows, has_next, failure) = match times {
        Err(ConsoleError::Form(why)) => (
            Vec::new(),
            false,
            Some(Failure {
                code: "INVALID_ARGUMENT",
                message: why.to_string(),
            }),
        ),
        Err(e) => return Err(e),
        Ok(_) if too_far => (
            Vec::new(),
            false,
            Some(Failure {
                code: "INVALID_ARGUMENT",
                message: format!("page: at most {MAX_PAGES} pages; narrow the search"),
            }),
        ),
        Ok((from, to)) => {
            let skip = form.page * PAGE_SIZE;
            let query = pb::AuditQueryRequest {
                from_unix_ms: from,
                to_unix_ms: to,
                client: form.client.trim().to_string(),
                procedure: form.procedure.trim().to_string(),
                case_id: form.case_id.trim().to_string(),
                personal_id: form.personal_id.trim().to_string(),
                outcome: form.outcome.trim().to_string(),
                // One more than the page: whether there is a next one.
                limit: (skip + PAGE_SIZE + 1) as u32,
                cache: form.cache.trim().to_string(),
            };
            match collect(&c, query, skip, PAGE_SIZE + 1).await {
                Ok(mut records) => {
                    let has_next = records.len() > PAGE_SIZE;
                    records.truncate(PAGE_SIZE);
                    (records.into_iter().map(Row::from).collect(), has_next, None)
                }
                Err(s) => (Vec::new(), false, Some(s.into())),
            }
        }
    };
    let page_number = form.page + 1;
    render(&SearchPage {
        page,
        form,
        searched: true,
        rows,
        has_next,
        failure,
        page_number,
    })
}

/// The query's records after the first `skip`, `take` at most: the skipped ones are
/// dropped as they stream, and the stream is closed once enough have come.
async fn collect(
    c: &Console,
    query: pb::AuditQueryRequest,
    skip: usize,
    take: usize,
) -> Result<Vec<pb::AuditRecord>, tonic::Status> {
    let mut stream = c.audit().query(query).await?.into_inner();
    let mut out = Vec::new();
    let mut seen = 0usize;
    while out.len() < take {
        let Some(r) = stream.next().await else { break };
        let r = r?;
        seen += 1;
        if seen > skip {
            out.push(r);
        }
    }
    Ok(out)
}

// ---- Integrity ----

/// The head as the integrity page shows it.
pub struct Head {
    seq: u64,
    time: String,
    node: String,
    head_hash: String,
    signature: String,
    public_key: String,
    witnessed: bool,
    witnessed_seq: u64,
    witness_lag: u64,
    witness_alarm: String,
}

/// The last verification as shown.
pub struct VerifiedView {
    at: String,
    r: pb::AuditVerifyReport,
}

/// One node on the integrity page.
pub struct NodeView {
    /// Its place in the console's nodes (the verify form names it).
    index: usize,
    /// Its address.
    addr: String,
    head: Option<Head>,
    head_failure: Option<Failure>,
    verified: Option<VerifiedView>,
    verify_failure: Option<Failure>,
}

#[derive(Template)]
#[template(path = "console/integrity.html")]
struct IntegrityPage {
    page: Frame,
    nodes: Vec<NodeView>,
    index: Option<(bool, u64)>,
}

async fn node_view(c: &Console, index: usize, verify_failure: Option<Failure>) -> NodeView {
    let (head, head_failure) = match c.audit_of(index).head(pb::AuditHeadRequest {}).await {
        Ok(h) => {
            let h = h.into_inner();
            (
                Some(Head {
                    seq: h.seq,
                    time: show_time(h.time_unix_ms),
                    node: h.node,
                    head_hash: h.head_hash,
                    signature: h.signature,
                    public_key: h.public_key,
                    witnessed: h.witnessed,
                    witnessed_seq: h.witnessed_seq,
                    witness_lag: h.witness_lag,
                    witness_alarm: h.witness_alarm,
                }),
                None,
            )
        }
        Err(s) => (None, Some(s.into())),
    };
    let verified = c
        .inner
        .verified
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&index)
        .cloned()
        .map(|v| VerifiedView {
            at: show_time(v.at_ms),
            r: v.report,
        });
    NodeView {
        index,
        addr: c.inner.nodes[index].addr.clone(),
        head,
        head_failure,
        verified,
        verify_failure,
    }
}

async fn integrity_page(
    c: &Console,
    headers: &HeaderMap,
    verify_failure: Option<(usize, Failure)>,
) -> Result<Response, ConsoleError> {
    let (failed_node, mut failure) = match verify_failure {
        Some((node, f)) => (Some(node), Some(f)),
        None => (None, None),
    };
    // Every node's head at once: one slow node does not hold the others back.
    let nodes = futures::future::join_all((0..c.inner.nodes.len()).map(|i| {
        let f = if failed_node == Some(i) {
            failure.take()
        } else {
            None
        };
        node_view(c, i, f)
    }))
    .await;
    let index = {
        let ring = c.inner.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.latest()
            .and_then(|p| p.index_up.map(|up| (up >= 1.0, p.index_pending as u64)))
    };
    render(&IntegrityPage {
        page: c.frame(headers, "integrity"),
        nodes,
        index,
    })
}

async fn integrity(State(c): State<Console>, headers: HeaderMap) -> Result<Response, ConsoleError> {
    integrity_page(&c, &headers, None).await
}

/// Which node to verify.
#[derive(Deserialize)]
struct VerifyForm {
    node: usize,
}

/// Runs AuditLog.Verify on one node and shows the page with its verdict.
async fn verify(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<VerifyForm>,
) -> Result<Response, ConsoleError> {
    if form.node >= c.inner.nodes.len() {
        return Err(ConsoleError::Form("node: no such node"));
    }
    let failure = match c
        .audit_of(form.node)
        .verify(pb::AuditVerifyRequest {})
        .await
    {
        Ok(report) => {
            c.inner
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    form.node,
                    Verified {
                        at_ms: chrono::Utc::now().timestamp_millis(),
                        report: report.into_inner(),
                    },
                );
            None
        }
        Err(s) => Some((form.node, s.into())),
    };
    integrity_page(&c, &headers, failure).await
}

// ---- Health ----

/// One plotted series.
pub struct Chart {
    title: &'static str,
    points: String,
    max: String,
    now: String,
}

const CHART_W: f64 = 600.0;
const CHART_H: f64 = 120.0;

fn chart(title: &'static str, points: &[&Point], value: impl Fn(&Point) -> Option<f64>) -> Chart {
    let values: Vec<Option<f64>> = points.iter().map(|p| value(p)).collect();
    let (line, max) = samples::polyline(&values, CHART_W, CHART_H);
    Chart {
        title,
        points: line,
        max: format!("{max:.2}"),
        now: values
            .last()
            .copied()
            .flatten()
            .map_or_else(|| "–".to_string(), |v| format!("{v:.2}")),
    }
}

#[derive(Template)]
#[template(path = "console/health.html")]
struct HealthPage {
    page: Frame,
    charts: Vec<Chart>,
    by_code: Vec<(String, String)>,
    by_client: Vec<(String, String)>,
    tls_refusals: Vec<(String, String)>,
    certificates: Vec<(String, String, bool)>,
    breaker: &'static str,
    scrape_error: Option<String>,
    scraping: bool,
    samples: usize,
    /// The node's name and latest signed seq, from the page's own audited call.
    node: Result<(String, u64), Failure>,
}

async fn health(State(c): State<Console>, headers: HeaderMap) -> Result<Response, ConsoleError> {
    let page = c.frame(&headers, "health");
    let t = page.t;
    // The figures come from the admin listener, which records nothing: the page is also
    // an AuditLog.Head, so that looking at it is on the record like every other page.
    let node = match c.audit().head(pb::AuditHeadRequest {}).await {
        Ok(h) => {
            let h = h.into_inner();
            Ok((h.node, h.seq))
        }
        Err(s) => Err(Failure::from(s)),
    };
    let ring = c.inner.ring.lock().unwrap_or_else(|e| e.into_inner());
    let points: Vec<&Point> = ring.points().collect();
    let latest = ring.latest().cloned().unwrap_or_default();
    // Rates in the tables: the mean of the last minute's points (one point is a few
    // seconds: at low traffic it is mostly zeros).
    let minute: Vec<&Point> = points
        .iter()
        .copied()
        .filter(|p| p.at_ms >= latest.at_ms - 60_000)
        .collect();
    let rate = |of: fn(&Point) -> &std::collections::BTreeMap<String, f64>| {
        let mut sum = std::collections::BTreeMap::<String, f64>::new();
        for p in &minute {
            for (k, v) in of(p) {
                *sum.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        let n = minute.len().max(1) as f64;
        sum.into_iter()
            .map(|(k, v)| (k, format!("{:.2}", v / n)))
            .collect::<Vec<_>>()
    };
    let charts = vec![
        chart(t.requests_per_second, &points, |p| Some(p.rps)),
        chart("p50 (ms)", &points, |p| p.p50_ms),
        chart("p99 (ms)", &points, |p| p.p99_ms),
        chart(t.cache_hit_ratio, &points, |p| p.hit_ratio),
        chart(t.audit_queue, &points, |p| Some(p.audit_queue)),
        chart(t.batch_records, &points, |p| p.batch_records),
    ];
    let health = HealthPage {
        charts,
        by_code: rate(|p| &p.by_code),
        by_client: rate(|p| &p.by_client),
        tls_refusals: rate(|p| &p.tls_refusals),
        certificates: latest
            .certificate_days
            .iter()
            .map(|(k, d)| (k.clone(), format!("{d:.1}"), *d < 30.0))
            .collect(),
        breaker: match latest.breaker as u8 {
            0 => "closed",
            1 => "OPEN",
            _ => "half-open",
        },
        scrape_error: ring.error.clone(),
        scraping: c.inner.options.metrics_url.is_some(),
        samples: points.len(),
        node,
        page,
    };
    drop(ring);
    render(&health)
}

// ---- A citizen's history ----

/// The citizen form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CitizenForm {
    /// The citizen's personal id, as the operator types it.
    pub personal_id: String,
}

/// One event of the citizen's own report.
pub struct EventRow {
    time: String,
    agency: String,
    procedure: String,
    action: &'static str,
    outcome: String,
    as_relative: bool,
    fields: String,
}

#[derive(Template)]
#[template(path = "console/citizen.html")]
struct CitizenPage {
    page: Frame,
    personal_id: String,
    searched: bool,
    rows: Vec<Row>,
    rows_failure: Option<Failure>,
    events: Vec<EventRow>,
    events_failure: Option<Failure>,
    truncated: bool,
    source: String,
}

async fn citizen_form(
    State(c): State<Console>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    render(&CitizenPage {
        page: c.frame(&headers, "citizen"),
        personal_id: String::new(),
        searched: false,
        rows: Vec::new(),
        rows_failure: None,
        events: Vec::new(),
        events_failure: None,
        truncated: false,
        source: String::new(),
    })
}

async fn citizen(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<CitizenForm>,
) -> Result<Response, ConsoleError> {
    let page = c.frame(&headers, "citizen");
    let lang = lang_of(&headers);
    let id = form.personal_id.trim().to_string();
    let query = pb::AuditQueryRequest {
        personal_id: id.clone(),
        limit: HISTORY_LIMIT,
        ..Default::default()
    };
    let (rows, rows_failure) = match collect(&c, query, 0, HISTORY_LIMIT as usize).await {
        Ok(r) => (r.into_iter().map(Row::from).collect(), None),
        Err(s) => (Vec::new(), Some(Failure::from(s))),
    };
    let report = c
        .access()
        .access_report(pb::AccessReportRequest {
            personal_id: id.clone(),
            from_unix_ms: 0,
            to_unix_ms: 0,
        })
        .await;
    let (events, events_failure, truncated, source) = match report {
        Ok(r) => {
            let r = r.into_inner();
            let events = r
                .events
                .into_iter()
                .map(|e| EventRow {
                    action: match e.action() {
                        pb::AccessAction::Verified => "VERIFIED",
                        pb::AccessAction::Disclosed => "DISCLOSED",
                        pb::AccessAction::Unspecified => "?",
                    },
                    time: show_time(e.time_unix_ms),
                    agency: e.agency,
                    procedure: format!(
                        "{} {}",
                        e.procedure_code,
                        match lang {
                            Lang::Vi => e.procedure_name_vi,
                            Lang::En => e.procedure_name_en,
                        }
                    ),
                    outcome: e.outcome,
                    as_relative: e.as_relative,
                    fields: e.fields.join(", "),
                })
                .collect();
            (events, None, r.truncated, r.source)
        }
        Err(s) => (Vec::new(), Some(Failure::from(s)), false, String::new()),
    };
    render(&CitizenPage {
        page,
        personal_id: id,
        searched: true,
        rows,
        rows_failure,
        events,
        events_failure,
        truncated,
        source,
    })
}

// ---- Language ----

#[derive(Deserialize)]
struct Back {
    back: Option<String>,
}

/// Sets the language and goes back to the page it was chosen on (one of the console's).
async fn set_lang(Path(code): Path<String>, Query(back): Query<Back>) -> Response {
    let Some(lang) = Lang::parse(&code) else {
        return (StatusCode::NOT_FOUND, "no such language").into_response();
    };
    let to = match back.back.as_deref() {
        Some(p @ ("live" | "search" | "integrity" | "health" | "citizen")) => format!("/{p}"),
        _ => "/live".to_string(),
    };
    let mut r = Redirect::to(&to).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={}; SameSite=Strict; Path=/; Max-Age=31536000",
        lang.code()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Ends the browser's session: its secret is refused from now on and its cookie is
/// cleared. The login address was spent when the session opened, so signing in again
/// takes a restart of the console (one session per start).
async fn log_out(State(console): State<Console>, headers: HeaderMap) -> Response {
    for session in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| super::guard::cookies(h, super::guard::COOKIE))
    {
        console.log_out(session);
    }
    let mut r = (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Đã đăng xuất. Signed out.\n\
         popgw console opens one session per start: restart it to sign in again.\n",
    )
        .into_response();
    let cleared = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        super::guard::COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&cleared) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
