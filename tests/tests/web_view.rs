//! The web view in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup.sh`), driven over the DevTools protocol, loads `GET /` of a node of a
//! three-node mesh of real processes, logs in through the form with a monitor token, and the
//! test reads the rendered page: every node of the fleet is shown up, a new run appears
//! without a reload, the output plot has points, and a node killed with kill -9 turns to down.
//! A screenshot is kept as the test's artefact (`<target>/tmp/web-view.png`). Then the same
//! browser runs automerge-repo (bundled from npm by the test) and syncs a workflow with the
//! node through `GET /automerge`, both ways.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rhizome_e2e::process::{
    LogsOnPanic, Running, api_token, apply_on, connected, doc_url, init, init_in, ok, run_on, start,
};
use rhizome_e2e::wait_until;
use serde_json::{Value, json};

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// A headless Chromium with one page, and the DevTools socket of that page.
struct Browser {
    child: Child,
    page: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                // The test runs as root, where Chromium's sandbox does not start.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--window-size=1200,2400",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (scripts/setup.sh installs it)");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/<id>"
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut port = None;
        for line in stderr.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                port = rest
                    .split('/')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .map(str::to_owned);
                break;
            }
        }
        let port = port.expect("Chromium names its DevTools port");
        // Chromium goes on logging (no D-Bus here, and so on): a full pipe would stall it.
        std::thread::spawn(move || stderr.for_each(drop));
        let page_url = wait_for_page(&port);
        let (page, _) = tungstenite::connect(page_url).unwrap();
        Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Calls a DevTools method and returns its result, skipping the events in between.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.page
            .send(tungstenite::Message::Text(request.to_string().into()))
            .unwrap();
        loop {
            let tungstenite::Message::Text(text) = self.page.read().unwrap() else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (awaited when it is a promise).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let bytes = base64_decode(shot["data"].as_str().unwrap());
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DevTools socket of the browser's first page, once it is listed.
fn wait_for_page(port: &str) -> String {
    let mut found = None;
    wait_until("Chromium's page", Duration::from_secs(20), || {
        let Ok(mut tcp) = std::net::TcpStream::connect(format!("127.0.0.1:{port}")) else {
            return false;
        };
        write!(
            tcp,
            "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        // DevTools' HTTP server may keep the connection open: read what comes within a moment.
        tcp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut bytes = Vec::new();
        let _ = tcp.read_to_end(&mut bytes);
        let answer = String::from_utf8_lossy(&bytes);
        let Some((_, body)) = answer.split_once("\r\n\r\n") else {
            return false;
        };
        let Ok(targets) = serde_json::from_str::<Vec<Value>>(body) else {
            return false;
        };
        found = targets
            .iter()
            .find(|t| t["type"] == "page" && t["url"].as_str().unwrap_or("").starts_with("http"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .map(str::to_owned);
        found.is_some()
    });
    found.unwrap()
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// Polls the page until `expression` is true.
fn wait_in_page(browser: &mut Browser, what: &str, within: Duration, expression: &str) -> Duration {
    let started = Instant::now();
    loop {
        if browser.eval(expression) == json!(true) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what}: not within {within:?}; the page says {}",
            browser.eval("document.querySelector('main').innerText.slice(0, 3000)")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_state(id: &str) -> String {
    format!("(document.querySelector('#fleet tr[data-node=\"{id}\"]')?.dataset.state ?? null)")
}

#[test]
fn the_web_view_shows_the_fleet_live_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| tmp.path().join(n)).collect();
    let _logs = LogsOnPanic(dirs.clone());
    init(&dirs[0], "alpha", None);
    let mesh = dirs[0].join("mesh");
    init_in(&dirs[1], "bravo", Some(&mesh), &["--tag", "sensor"]);
    init_in(&dirs[2], "charlie", Some(&mesh), &["--tag", "sensor"]);
    let a = start(&dirs[0], &[]);
    let b = start(&dirs[1], &[&a.quic]);
    let mut c = start(&dirs[2], &[&a.quic, &b.quic]);
    for node in [&a, &b, &c] {
        wait_until("full mesh", Duration::from_secs(10), || {
            connected(node) == 2
        });
    }
    let id_of = |node: &Running| {
        ok(run_on(node, &["status", "--json"]))["node_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let ids: Vec<String> = [&a, &b, &c].into_iter().map(id_of).collect();
    // Runs every second on every node, the page's own node among them.
    apply_on(
        &a,
        "id: probe\ntrigger: {every: 1s}\nsteps:\n  - id: read\n    agent: sensor\n    config: {seed: 3}\n",
    );
    let monitor = api_token(&a.dir, "monitor", "kiosk");

    // The login form, as a person uses it.
    let mut browser = Browser::open(&format!("http://{}/", a.http));
    wait_in_page(
        &mut browser,
        "the login form",
        Duration::from_secs(20),
        "document.readyState === 'complete' && !document.getElementById('login').hidden",
    );
    browser.eval(&format!(
        "document.getElementById('token').value = {}; \
         document.getElementById('login-form').requestSubmit(); true",
        json!(monitor)
    ));
    wait_in_page(
        &mut browser,
        "the view after logging in",
        Duration::from_secs(20),
        "!document.getElementById('view').hidden && document.body.dataset.drawn !== undefined",
    );
    assert_eq!(
        browser.eval("document.getElementById('who').innerText.includes('kiosk (monitor)')"),
        json!(true)
    );

    // Every node of the fleet, up.
    for id in &ids {
        wait_in_page(
            &mut browser,
            "every node up",
            Duration::from_secs(20),
            &format!("{} === 'up'", node_state(id)),
        );
    }

    // What the first load cost: bytes over the wire (page, assets and the API's answers) and
    // the time from navigation to the whole view drawn. The login form's page load counts too.
    let first = browser.eval(
        "({ bytes: performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')).reduce((n, e) => n + (e.transferSize || 0), 0), drawn_ms: Number(document.body.dataset.firstDrawnMs) })",
    );
    eprintln!(
        "web view: first load {} bytes, the whole view drawn {} ms after navigation (login included)",
        first["bytes"], first["drawn_ms"]
    );
    // When each run first shows in the page, to compare with when it finished (run ids carry
    // their start time; every node here shares the test's clock).
    browser.eval(
        "window.seen = {}; new MutationObserver(() => { for (const r of document.querySelectorAll('#workflows tr[data-run]')) if (!(r.dataset.run in window.seen)) window.seen[r.dataset.run] = Date.now(); }).observe(document.body, { subtree: true, childList: true }); true",
    );

    // A run that finishes after the page loaded appears in it, without a reload.
    browser.eval("window.loadedOnce = true; window.runsAtFirst = new Set([...document.querySelectorAll('#workflows tr[data-run]')].map((r) => r.dataset.run)); true");
    let took = wait_in_page(
        &mut browser,
        "a new run in the page",
        Duration::from_secs(20),
        "[...document.querySelectorAll('#workflows tr[data-run]')].some((r) => !window.runsAtFirst.has(r.dataset.run))",
    );
    eprintln!("web view: a new run was in the page {took:?} after looking");
    assert_eq!(
        browser.eval("window.loadedOnce === true"),
        json!(true),
        "the page reloaded"
    );
    let points = wait_in_page(
        &mut browser,
        "points on the output plot",
        Duration::from_secs(20),
        "Number(document.querySelector('#workflows svg.plot[data-title^=\"output value\"]')?.dataset.points ?? 0) >= 2",
    );
    eprintln!("web view: the output plot had points after {points:?}");
    assert_eq!(
        browser.eval("document.querySelector('#workflows [data-versions]')?.innerText.startsWith('running: version 1 on ')"),
        json!(true),
        "where the version runs"
    );
    // A staged rollout of a second version shows where it stands, node by node.
    let second = tmp.path().join("probe-v2.yaml");
    std::fs::write(
        &second,
        "id: probe\ndescription: second\ntrigger: {every: 1s}\nsteps:\n  - id: read\n    agent: sensor\n    config: {seed: 4}\n",
    )
    .unwrap();
    ok(run_on(
        &a,
        &[
            "rollout",
            "start",
            "probe",
            "--file",
            second.to_str().unwrap(),
            "--stages",
            "1,100%",
            "--gate-soak",
            "10m",
        ],
    ));
    wait_in_page(
        &mut browser,
        "the rollout's progress",
        Duration::from_secs(20),
        "document.querySelector('#workflows [data-rollout=\"probe@2\"]')?.innerText.includes('running, stage 1 of 2')",
    );
    assert_eq!(
        browser.eval("Number(document.querySelector('#node svg.plot[data-title=\"CPU\"]').dataset.points) > 0"),
        json!(true),
        "the CPU plot has points"
    );

    std::thread::sleep(Duration::from_secs(5));
    let mut lags: Vec<i64> = browser
        .eval("Object.entries(window.seen).filter(([id]) => !window.runsAtFirst.has(id)).map(([id, at]) => at - Number(id.split('-')[1]))")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    lags.sort_unstable();
    assert!(
        !lags.is_empty(),
        "no run appeared while the page was watched"
    );
    eprintln!(
        "web view: a run's start to its row in the page over {} runs: median {} ms, max {} ms",
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );

    // kill -9 of a node: it turns to down in the page.
    c.kill();
    let took = wait_in_page(
        &mut browser,
        "charlie down",
        Duration::from_secs(20),
        &format!("{} === 'down'", node_state(&ids[2])),
    );
    eprintln!("web view: charlie killed -> shown down after {took:?}");
    assert_eq!(
        browser.eval(&format!("{} === 'up'", node_state(&ids[1]))),
        json!(true)
    );

    let artefact = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    browser.screenshot(&artefact);
    assert!(std::fs::metadata(&artefact).unwrap().len() > 10_000);
    eprintln!("web view: screenshot at {}", artefact.display());

    // The same browser runs automerge-repo, bundled from npm here, in a page of its own: it
    // reads the workflow through the node's WebSocket endpoint, edits it (an admin token), the
    // edit reaches bravo over QUIC, and a version applied on alpha reaches the page.
    let page = bundle_browser_client(tmp.path());
    browser.call(
        "Page.navigate",
        json!({"url": format!("file://{}", page.display())}),
    );
    wait_in_page(
        &mut browser,
        "the bundle loaded",
        Duration::from_secs(20),
        "document.readyState === 'complete' && typeof window.rhizome === 'object'",
    );
    let admin = api_token(&a.dir, "admin", "tab");
    let url = doc_url(&a, "workflow/probe");
    browser.eval(&format!(
        "window.rhizome.connect({}); true",
        json!(format!("ws://{}/automerge?token={admin}", a.http))
    ));
    let read = browser.eval(&format!(
        "window.rhizome.read({}, 'definition')",
        json!(url)
    ));
    let mut definition: Value = serde_json::from_str(read.as_str().unwrap()).unwrap();
    assert_eq!(definition["id"], "probe");
    definition["description"] = json!("edited in a browser tab");
    definition["version"] = json!(definition["version"].as_u64().unwrap() + 1);
    browser.eval(&format!(
        "window.rhizome.write({}, 'definition', {}).then(() => true)",
        json!(url),
        json!(definition.to_string())
    ));
    let took = wait_until(
        "the browser's edit at bravo",
        Duration::from_secs(15),
        || {
            let shown = ok(run_on(&b, &["workflow", "show", "probe", "--json"]));
            shown["description"] == "edited in a browser tab"
        },
    );
    eprintln!("web view: an edit in the browser's automerge-repo reached bravo in {took:?}");
    apply_on(
        &a,
        "id: probe\ndescription: applied on alpha\ntrigger: {every: 1s}\nsteps:\n  - id: read\n    agent: sensor\n    config: {seed: 3}\n",
    );
    wait_in_page(
        &mut browser,
        "alpha's version in the browser",
        Duration::from_secs(15),
        &format!(
            "window.rhizome.read({}, 'definition').then((d) => d.includes('applied on alpha'))",
            json!(url)
        ),
    );
    drop(b);
}

/// Bundles `tests/js/browser.mjs` (automerge-repo and its WebSocket adapter, from npm) with
/// esbuild into one classic script, and a page that loads it; returns the page's path.
fn bundle_browser_client(dir: &std::path::Path) -> PathBuf {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    let bundle = dir.join("automerge-repo.js");
    // `webpack` picks Automerge's build with its WebAssembly inlined: one file, no loader.
    let out = Command::new(js.join("node_modules/.bin/esbuild"))
        .arg(js.join("browser.mjs"))
        .args([
            "--bundle",
            "--format=iife",
            "--platform=browser",
            "--conditions=webpack",
            "--log-level=warning",
        ])
        .arg(format!("--outfile={}", bundle.display()))
        .output()
        .expect("esbuild runs (scripts/setup.sh installs tests/js)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = dir.join("automerge-repo.html");
    std::fs::write(
        &page,
        "<!doctype html><meta charset=utf-8><title>automerge-repo</title>\
         <script src=\"automerge-repo.js\"></script>",
    )
    .unwrap();
    page
}
