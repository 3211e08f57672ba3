//! End to end in a real browser: the real fleet (swtpm, Mosquitto, the
//! authority, the collector, an agent), the real `mctc-console` binary,
//! and Debian's headless Chromium driven over the DevTools protocol.
//!
//! The operator reaches the console the way an operator's workstation
//! would through a TLS client: a loopback tunnel in this test terminates
//! the browser's plain connection and dials the console with a genuine
//! operator certificate (headless Chromium cannot pick a client
//! certificate by itself), so the console's own client-certificate check
//! is what admits it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failure stops the test loudly"
)]

use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mctc_service::BrokerConfig;
use mctc_tests::fleet::Fleet;
use mctc_tests::{Proc, bin_path, free_port, require_program, wait_until};
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;
use tungstenite::{Message, WebSocket};

const PATIENCE: Duration = Duration::from_secs(60);

fn chromium() -> PathBuf {
    require_program(
        "chromium",
        "chromium (Debian's package; no downloaded browsers)",
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn screens_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screens");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback tunnel: plain TCP in, TLS with the operator's certificate out.
fn operator_tunnel(
    console_port: u16,
    operator: BrokerConfig,
) -> (u16, std::thread::JoinHandle<()>) {
    let client = mctc_service::tls::client_config(&operator).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let connector = TlsConnector::from(Arc::clone(&client));
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let connector = connector.clone();
                tokio::spawn(async move {
                    let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", console_port)).await
                    else {
                        return;
                    };
                    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                    let Ok(mut tls) = connector.connect(name, tcp).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut tls).await;
                });
            }
        });
    });
    (port, handle)
}

/// A minimal DevTools-protocol client on one page target.
struct DevTools {
    ws: WebSocket<StdTcpStream>,
    session: String,
    next_id: u64,
}

impl DevTools {
    fn open(user_data: &Path, url: &str) -> DevTools {
        let file = user_data.join("DevToolsActivePort");
        assert!(
            wait_until(PATIENCE, || file.exists()).is_some(),
            "chromium wrote no DevToolsActivePort"
        );
        let mut text = String::new();
        wait_until(PATIENCE, || {
            text = std::fs::read_to_string(&file).unwrap_or_default();
            text.lines().count() >= 2
        });
        let mut lines = text.lines();
        let port: u16 = lines.next().unwrap().trim().parse().unwrap();
        let path = lines.next().unwrap().trim().to_owned();
        let stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream).unwrap();
        let mut dt = DevTools {
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = dt.call(None, "Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = dt.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        dt.session = attached["sessionId"].as_str().unwrap().to_owned();
        dt
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(message.to_string())).unwrap();
        loop {
            let Message::Text(text) = self.ws.read().unwrap() else {
                continue;
            };
            let answer: Value = serde_json::from_str(text.as_str()).unwrap();
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value as a string.
    fn eval(&mut self, expression: &str) -> String {
        let session = self.session.clone();
        let result = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn gate_of(dt: &mut DevTools, device: &str) -> String {
    dt.eval(&format!(
        "(function(){{var r=document.querySelector('tr[data-device=\"{device}\"] .gate');return r?r.getAttribute('data-state'):'missing'}})()"
    ))
}

#[test]
fn dashboard_shows_a_contained_gate_closed_within_a_second_via_sse() {
    let browser = chromium();
    let mut fleet = Fleet::new();
    fleet.start_authority();
    fleet.start_collector();
    let mut device = fleet.device("dev-a", "locker");
    device.bring_up();

    // The console: its own server certificate, the monitor identity on
    // the broker, operators from the harness's CA.
    let pki = fleet.broker.pki();
    let server = pki.server("mctc-console").unwrap();
    let monitor = fleet.broker.identity("mctc-monitor").unwrap();
    let operator = fleet.broker.identity("operator-alice").unwrap();
    let port = free_port();
    let dir = fleet.dir.path();
    let config = dir.join("console.toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "127.0.0.1:{port}"
silent_after_secs = 30
[tls]
cert = "{cert}"
key = "{key}"
operator_ca = "{ca}"
[stores]
authority = "{adb}"
collector = "{cdb}"
[broker]
url = "{url}"
ca = "{ca}"
cert = "{mcert}"
key = "{mkey}"
keep_alive_secs = 5
"#,
            cert = server.cert.display(),
            key = server.key.display(),
            ca = server.ca.display(),
            adb = dir.join("authority.db").display(),
            cdb = dir.join("collector.db").display(),
            url = fleet.broker.url(),
            mcert = monitor.cert.display(),
            mkey = monitor.key.display(),
        ),
    )
    .unwrap();
    let check = Command::new(bin_path("mctc-console").unwrap())
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = dir.join("console.log");
    let mut command = Command::new(bin_path("mctc-console").unwrap());
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("MCTC_LOG", "info");
    let _console = Proc::spawn_command("mctc-console", command, &log).unwrap();
    let ready = wait_until(PATIENCE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("console listening") && text.contains("console subscribed")
    });
    assert!(
        ready.is_some(),
        "console not ready:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let (tunnel, _tunnel_thread) = operator_tunnel(
        port,
        BrokerConfig {
            url: format!("mqtts://127.0.0.1:{port}"),
            ca: operator.ca.clone(),
            cert: operator.cert.clone(),
            key: operator.key.clone(),
            keep_alive_secs: 15,
        },
    );
    let url = format!("http://127.0.0.1:{tunnel}/");

    let profile = tempfile::tempdir().unwrap();
    let mut chrome = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--remote-debugging-port=0",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut dt = DevTools::open(profile.path(), &url);

    // The page at load shows the gate open, and the live feed is on.
    let open = wait_until(PATIENCE, || gate_of(&mut dt, "dev-a") == "open");
    assert!(
        open.is_some(),
        "dashboard never showed dev-a open: {}",
        gate_of(&mut dt, "dev-a")
    );
    let live = wait_until(PATIENCE, || {
        dt.eval("document.documentElement.getAttribute('data-live')||''") == "on"
    });
    assert!(live.is_some(), "the page never connected to /events");
    assert!(device.permits(), "the device permits while open");

    let contained = fleet.cli(&["devices", "contain", "dev-a", "--reason", "browser-test"]);
    assert_eq!(contained.code, 0, "{contained:?}");
    let start = Instant::now();
    let mut shown = String::new();
    let closed = wait_until(Duration::from_secs(10), || {
        shown = gate_of(&mut dt, "dev-a");
        shown != "open"
    });
    let elapsed = start.elapsed();
    println!(
        "dashboard showed dev-a {shown} {} ms after the contain command",
        elapsed.as_millis()
    );
    assert!(closed.is_some(), "dashboard still shows dev-a open");
    assert!(
        elapsed <= Duration::from_secs(1),
        "dashboard took {} ms to show the gate closed",
        elapsed.as_millis()
    );
    assert!(shown == "contained" || shown == "closed", "{shown}");
    // The deny behind the picture: the device itself refuses now.
    assert!(!device.permits(), "a contained device must deny");

    // What it saw, for a person: a fresh load in a second browser.
    let shot = screens_dir().join("dashboard-contained.png");
    let _ = std::fs::remove_file(&shot);
    let profile2 = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile2.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );

    // Without an operator certificate the console admits no one: straight
    // to the console (TLS, no client certificate) the dashboard is a 403.
    let dump = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--ignore-certificate-errors",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tempfile::tempdir().unwrap().path().display()
        ))
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(dom.contains("forbidden"), "no 403 page: {dom}");
    assert!(
        !dom.contains("dev-a"),
        "dashboard shown without an operator certificate: {dom}"
    );

    let _ = chrome.kill();
    let _ = chrome.wait();
}
