//! The operators' console (`popgw console`, the binary) in front of a real gateway with
//! traffic, driven in headless Chromium through chromedriver (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them when missing). Screenshots of each page go
//! to `target/console-screenshots/` (one set is committed under `docs/console/`).

use crate::common;

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{declare, TestGateway};
use fantoccini::{Client, ClientBuilder, Locator};
use popgw::proto::gateway as pb;

/// A child process killed when the test ends, whatever happens.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// chromedriver on a port of its own and a headless Chromium session through it.
async fn browser() -> (Killed, Client) {
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!(
                "chromedriver not found: the console's tests drive Debian's Chromium; install it \
                 with `apt-get install -y chromium chromium-driver` (.ci/run does when it is missing)"
            )
        });
    let port = common::nats_server::free_port();
    let child = Killed(
        std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
    );
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"]
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session through chromedriver");
    (child, client)
}

/// `popgw console` against `gw` as its operator, with `args` besides; its process and the
/// login address it printed. Waits off the runtime's threads: the gateway answers the
/// console's first call from this runtime.
fn spawn_console(gw: &TestGateway, args: &[String]) -> (Killed, String) {
    tokio::task::block_in_place(|| {
        let mut child = Killed(
            common::bin()
                .args(["console", "--listen", "127.0.0.1:0"])
                .arg("--addr")
                .arg(format!("localhost:{}", gw.addr.port()))
                .arg("--certs")
                .arg(&gw.certs)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let login = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("open ").map(str::to_string))
            .expect("the console printed its address");
        std::thread::spawn(move || for _ in lines {});
        (child, login)
    })
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

async fn wait_for(b: &Client, css: &str) -> fantoccini::elements::Element {
    b.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

/// One HTTP/1.1 request to the console as written, and the answer's status line and body.
async fn raw_request(base: &str, request: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    answer
}

/// What a local attacker tries with a signed-in operator's console.
async fn attacks_are_refused(base: &str, login: &str, session: &fantoccini::cookies::Cookie<'_>) {
    let host = base.trim_start_matches("http://");
    let session = format!("{}={}", session.name(), session.value());
    // The printed secret opened one session; from the browser's history it opens no other.
    let again = raw_request(
        base,
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            login.trim_start_matches(base)
        ),
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 401"), "{again}");
    assert!(again.contains("already used"), "{again}");
    // A form posted by a page on another port of 127.0.0.1 carries the cookie (cookies
    // do not keep ports apart) but not the console's origin.
    let form = |origin: &str| {
        format!(
            "POST /search HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\n\
             Origin: {origin}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 6\r\nConnection: close\r\n\r\npage=0"
        )
    };
    let forged = raw_request(base, form("http://127.0.0.1:8000")).await;
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    assert!(forged.contains("another origin"), "{forged}");
    let own = raw_request(base, form(&format!("http://{host}"))).await;
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
    // DNS rebinding: the console's address under another name.
    let rebound = raw_request(
        base,
        format!(
            "GET /live HTTP/1.1\r\nHost: attacker.example:{}\r\nCookie: {session}\r\n\
             Connection: close\r\n\r\n",
            host.rsplit(':').next().unwrap()
        ),
    )
    .await;
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    // Another user of the machine, even with the session's cookie (when the test runs as
    // root it can be one: uid 65534).
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
        == Some(0)
    {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "curl",
                "-s",
            ])
            .args(["-H", &format!("Cookie: {session}"), &format!("{base}/live")])
            .output()
            .expect("setpriv and curl (util-linux, curl)");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("the user who runs it only"), "{body} {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_records_a_citizens_calls_integrity_and_health_in_a_browser() {
    let gw = TestGateway::builder()
        .config(|c| c.audit.checkpoint_every_records = 1)
        .start()
        .await;
    // A second node of the same deployment (same CA and server certificate, its own log).
    let dir2 = tempfile::tempdir().unwrap();
    let (mut config2, ca2) = common::prepare(dir2.path());
    for entry in std::fs::read_dir(&gw.certs).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            dir2.path().join("certs").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    config2.node_id = "node-2".into();
    config2.audit.checkpoint_every_records = 1;
    let gw2 = TestGateway::start_prepared(dir2, config2, ca2, None).await;
    gw2.client("portal")
        .await
        .verify_identity(declare(gw2.living(), "P03"))
        .await
        .unwrap();

    let a = gw.living().clone();
    let b_citizen = gw
        .find(|r| r.date_of_death.is_empty() && r.personal_id != a.personal_id)
        .clone();

    // Traffic about citizen A: two matches, a wrong birth date, a disclosure, a refusal.
    let mut portal = gw.client("portal").await;
    let mut about_a = HashSet::new();
    for _ in 0..2 {
        let v = portal.verify_identity(declare(&a, "P03")).await.unwrap();
        about_a.insert(v.into_inner().request_id);
    }
    let mut wrong = declare(&a, "P03");
    wrong.date_of_birth = "1901-01-01".into();
    let v = portal.verify_identity(wrong).await.unwrap().into_inner();
    assert_eq!(v.verdict(), pb::Verdict::NoMatch);
    about_a.insert(v.request_id);
    let d = gw
        .client("ministry")
        .await
        .get_citizen(pb::GetCitizenRequest {
            personal_id: a.personal_id.clone(),
            procedure_code: "P03".into(),
            case_id: "HS-CONSOLE-1".into(),
        })
        .await
        .unwrap();
    about_a.insert(d.into_inner().request_id);
    let refused = gw
        .client("stranger")
        .await
        .verify_identity(declare(&a, "P03"))
        .await
        .unwrap_err();
    about_a.insert(
        refused
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string(),
    );
    portal
        .verify_identity(declare(&b_citizen, "P03"))
        .await
        .unwrap();

    let (_console, login) = spawn_console(
        &gw,
        &[
            "--scrape-every".into(),
            "1".into(),
            "--metrics".into(),
            format!("http://{}/metrics", gw.admin),
            "--node".into(),
            format!("localhost:{}", gw2.addr.port()),
        ],
    );
    let base = login.split("/login").next().unwrap().to_string();
    let (_driver, b) = browser().await;
    let mut sources = Vec::new();

    // Without the printed secret: nothing.
    b.goto(&format!("{base}/live")).await.unwrap();
    assert!(b.source().await.unwrap().contains("not signed in"));
    b.goto(&format!("{base}/login?token=wrong")).await.unwrap();
    assert!(b
        .source()
        .await
        .unwrap()
        .contains("wrong, missing or already used token"));

    // With it: the live page, in Vietnamese first, then English.
    b.goto(&login).await.unwrap();
    assert_eq!(b.current_url().await.unwrap().path(), "/live");
    attacks_are_refused(
        &base,
        &login,
        &b.get_named_cookie("popgw_console").await.unwrap(),
    )
    .await;
    wait_for(&b, "html[lang='vi']").await;
    b.find(Locator::Css("a.lang"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&b, "html[lang='en']").await;
    let heading = b
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(heading, "Live");

    // A record written now arrives on the live page.
    let fresh = portal
        .verify_identity(declare(&b_citizen, "P16"))
        .await
        .unwrap()
        .into_inner()
        .request_id;
    let row = wait_for(&b, &format!("tr[data-request='{fresh}']")).await;
    assert!(row.text().await.unwrap().contains("MATCH"));
    // Filtered by outcome, it is hidden; cleared, it shows again.
    let outcome = b
        .find(Locator::Css("#live-filters input[name='outcome']"))
        .await
        .unwrap();
    outcome.send_keys("NO_MATCH").await.unwrap();
    assert!(
        !row.is_displayed().await.unwrap(),
        "a MATCH row under a NO_MATCH filter"
    );
    outcome.clear().await.unwrap();
    outcome.send_keys(" ").await.unwrap();
    assert!(row.is_displayed().await.unwrap());
    // Paused, new records are held back.
    b.find(Locator::Id("pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let held = portal
        .verify_identity(declare(&b_citizen, "P16"))
        .await
        .unwrap()
        .into_inner()
        .request_id;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held_css = format!("tr[data-request='{held}']");
    assert!(
        b.find(Locator::Css(&held_css)).await.is_err(),
        "shown while paused"
    );
    shoot(&b, "live").await;
    b.find(Locator::Id("pause"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&b, &held_css).await;
    sources.push(("live", b.source().await.unwrap(), None));

    // Search by the citizen's id: exactly the calls made about them, and the operator's own.
    b.goto(&format!("{base}/search")).await.unwrap();
    let form = b.form(Locator::Id("search-form")).await.unwrap();
    form.set_by_name("personal_id", &a.personal_id)
        .await
        .unwrap();
    form.submit().await.unwrap();
    wait_for(&b, "p.pager").await;
    let mut found = HashSet::new();
    for row in b.find_all(Locator::Css("tr.record")).await.unwrap() {
        let rpc = row
            .find(Locator::Css("td:nth-child(4)"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if !rpc.starts_with("AuditLog.") {
            found.insert(row.attr("data-request").await.unwrap().unwrap());
        }
    }
    assert_eq!(
        found, about_a,
        "the search finds exactly the calls about the citizen"
    );
    shoot(&b, "search").await;
    sources.push((
        "search",
        b.source().await.unwrap(),
        Some(a.personal_id.clone()),
    ));

    // The citizen's history: everything beside what their own report shows.
    b.goto(&format!("{base}/citizen")).await.unwrap();
    let form = b.form(Locator::Id("citizen-form")).await.unwrap();
    form.set_by_name("personal_id", &a.personal_id)
        .await
        .unwrap();
    form.submit().await.unwrap();
    wait_for(&b, "#citizen-view").await;
    let operator_rows = b
        .find_all(Locator::Css("#operator-view tr.record"))
        .await
        .unwrap();
    assert!(
        operator_rows.len() > about_a.len(),
        "the operator sees the calls and the searches"
    );
    let events = b
        .find_all(Locator::Css("#citizen-view tr.event"))
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        4,
        "the citizen sees the answered calls, not the refusal"
    );
    let citizen_text = b
        .find(Locator::Id("citizen-view"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(citizen_text.contains("DISCLOSED") && citizen_text.contains("NO_MATCH"));
    assert!(
        !citizen_text.contains("spiffe://"),
        "never the client's identity"
    );
    shoot(&b, "citizen").await;
    sources.push((
        "citizen",
        b.source().await.unwrap(),
        Some(a.personal_id.clone()),
    ));

    // Health: the gateway's metrics, scraped every second, plotted.
    let mut health = String::new();
    for _ in 0..30 {
        b.goto(&format!("{base}/health")).await.unwrap();
        health = b.source().await.unwrap();
        if health.contains("<th scope=\"row\">OK</th>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        health.contains("<th scope=\"row\">OK</th>"),
        "requests by code"
    );
    assert!(health.contains("<polyline points="));
    assert!(
        health.contains("spiffe://popgw.dev/portal/dvcqg"),
        "requests by client"
    );
    assert_eq!(
        b.find(Locator::Id("breaker"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "closed"
    );
    shoot(&b, "health").await;
    sources.push(("health", health, None));

    // Integrity: each node verified intact; then one turns red once a record of its log
    // is tampered with, and the other stays green.
    b.goto(&format!("{base}/integrity")).await.unwrap();
    wait_for(&b, "#verdict-0.unknown").await;
    wait_for(&b, "#verdict-1.unknown").await;
    for node in ["0", "1"] {
        b.find(Locator::Id(&format!("run-verify-{node}")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for(&b, &format!("#verdict-{node}.intact")).await;
    }
    let heads = b.find_all(Locator::Css("section.node h2")).await.unwrap();
    assert_eq!(heads.len(), 2);
    assert!(heads[1].text().await.unwrap().starts_with("node-2"));
    shoot(&b, "integrity").await;
    sources.push(("integrity", b.source().await.unwrap(), None));
    let segment = common::tamper_with_a_match(gw.gateway.audit.dir());
    b.find(Locator::Id("run-verify-0"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let verdict = wait_for(&b, "#verdict-0.broken").await;
    let why = verdict.text().await.unwrap();
    assert!(
        why.contains(&*segment.file_name().unwrap().to_string_lossy()),
        "{why}"
    );
    let colour = verdict.css_value("color").await.unwrap();
    assert_eq!(colour, "rgba(164, 0, 15, 1)", "the verdict is red");
    wait_for(&b, "#verdict-1.intact").await;
    shoot(&b, "integrity-broken").await;
    sources.push(("integrity-broken", b.source().await.unwrap(), None));

    // No page shows a personal id the operator did not type.
    for (page, html, typed) in &sources {
        for r in gw.population.iter().chain(&gw2.population) {
            if Some(&r.personal_id) != typed.as_ref() {
                assert!(
                    !html.contains(&r.personal_id),
                    "{page} shows a personal id the operator did not type"
                );
            }
        }
    }
    // Every page was a call on the gateway, recorded with the operator's identity.
    let records = gw.audit_records(pb::AuditQueryRequest::default()).await;
    for rpc in [
        "AuditLog.Watch",
        "AuditLog.Query",
        "AuditLog.Head",
        "AuditLog.Verify",
        "CitizenAccess.AccessReport",
    ] {
        assert!(
            records
                .iter()
                .any(|r| r.rpc == rpc && r.client == popgw::pki::OPERATOR_ID),
            "no {rpc} by the operator on record"
        );
    }

    // Signing out ends the session: the browser is signed out, and the old cookie,
    // replayed, opens nothing.
    let cookie = b.get_named_cookie("popgw_console").await.unwrap();
    let cookie = format!("{}={}", cookie.name(), cookie.value());
    b.find(Locator::Css("#sign-out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let mut signed_out = false;
    for _ in 0..50 {
        if b.source().await.unwrap().contains("Signed out") {
            signed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(signed_out, "the sign-out page");
    b.goto(&format!("{base}/live")).await.unwrap();
    assert!(b.source().await.unwrap().contains("not signed in"));
    let host = base.trim_start_matches("http://");
    let replayed = raw_request(
        &base,
        format!(
            "GET /live HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(replayed.starts_with("HTTP/1.1 401"), "{replayed}");
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_to_start_without_an_operator_certificate_or_off_loopback() {
    let gw = TestGateway::start().await;
    let addr = format!("localhost:{}", gw.addr.port());
    let run = |args: &[&str]| {
        let mut command = common::bin();
        command
            .arg("console")
            .args(["--addr", &addr, "--listen", "127.0.0.1:0", "--metrics", ""])
            .arg("--certs")
            .arg(&gw.certs)
            .args(args);
        tokio::task::block_in_place(|| command.output().unwrap())
    };
    // No certificate at all.
    let out = run(&["--as", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no operator certificate"), "{err}");
    // A certificate the gateway knows, but not an operator's.
    let out = run(&["--as", "ministry"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refuses this certificate as an operator"),
        "{err}"
    );
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    // Beyond loopback only when told, and never silently.
    let out = common::bin()
        .args(["console", "--listen", "0.0.0.0:0", "--addr", &addr])
        .arg("--certs")
        .arg(&gw.certs)
        .output()
        .unwrap(); // refused before any call: no need to leave the runtime
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

/// The metric families a gateway exposes (`# TYPE` lines: present before any sample).
fn families(exposition: &str) -> HashSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Every `popgw_…` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.match_indices("popgw_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn exposed(name: &str, families: &HashSet<String>) -> bool {
    families.contains(name)
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|f| families.contains(f))
            })
}

#[tokio::test]
async fn the_grafana_dashboard_and_the_alerts_use_only_metrics_the_gateway_exposes() {
    let gw = TestGateway::start().await;
    // Families with labels show once they have a sample: one answer, one refused handshake.
    let r = gw.living().clone();
    gw.client("portal")
        .await
        .verify_identity(declare(&r, "P03"))
        .await
        .unwrap();
    assert!(gw
        .verify_with(popgw::client::ClientCerts::dev(&gw.certs, "outsider"))
        .await
        .is_err());
    let (status, metrics) = gw.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let families = families(&metrics);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    let text = std::fs::read_to_string(root.join("config/prometheus/alerts.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("alerts.yml is YAML");
    let rules = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("groups[0].rules");
    let mut alerts = HashSet::new();
    for rule in rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"].as_str().expect("every alert has an expr");
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{alert}: severity"
        );
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{alert}: summary"
        );
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{alert}: no popgw metric in {expr}");
        for name in names {
            assert!(
                exposed(&name, &families),
                "{alert} uses {name}, which /metrics lacks"
            );
        }
        alerts.insert(alert.to_string());
    }
    for wanted in [
        "PopgwAuditLogFailed",
        "PopgwWitnessLagging",
        "PopgwWitnessAlarm",
        "PopgwUpstreamBreakerOpen",
        "PopgwCertificateExpiring",
        "PopgwRefusalSpike",
        "PopgwSubjectLockStorm",
    ] {
        assert!(alerts.contains(wanted), "no {wanted} alert");
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("config/grafana/popgw.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                assert!(
                    exposed(&name, &families),
                    "panel {title} uses {name}, which /metrics lacks"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_and_metrics_unreachable_are_shown_and_the_console_still_starts() {
    let gw = TestGateway::start().await;
    // The deployment's second node: started, then stopped, so nothing answers at its port.
    let down = TestGateway::start().await;
    let down_addr = format!("localhost:{}", down.addr.port());
    drop(down);
    // Nothing listens on port 1: the admin listener is out of reach.
    let (_console, login) = spawn_console(
        &gw,
        &[
            "--node".into(),
            down_addr.clone(),
            "--metrics".into(),
            "http://127.0.0.1:1/metrics".into(),
            "--scrape-every".into(),
            "1".into(),
        ],
    );
    let base = login.split("/login").next().unwrap().to_string();
    let host = base.trim_start_matches("http://").to_string();
    let signed_in = raw_request(
        &base,
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            login.trim_start_matches(&base)
        ),
    )
    .await;
    let session = signed_in
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let page = raw_request(
        &base,
        format!("GET /integrity HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains(&down_addr), "the down node is listed");
    assert!(
        page.contains("<code>UNAVAILABLE</code>"),
        "and shown down: {page}"
    );
    // The health page says why it has no figures.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let page = raw_request(
        &base,
        format!("GET /health HTTP/1.1\r\nHost: {host}\r\nCookie: {session}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("cannot scrape http://127.0.0.1:1/metrics"),
        "{page}"
    );
}
