//! The dashboard, clicked through in headless Chromium (Debian's chromium and
//! chromium-driver, which `scripts/services.sh` installs): connections and their
//! health, stopping and starting a sync, the log, the mapping editor with its errors,
//! pushing a test call, the dead letters and the live feed.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::hubspot::API_TOKEN;
use crmsync_testkit::eventually;

/// The retry and discard buttons of the push's dead letter (not of the stream's
/// advisories beside it).
const PUSH_RETRY: &str = "//tr[td[contains(., '.out.odoo.')]]//button[@class='dlq-retry']";
const PUSH_DISCARD: &str = "//tr[td[contains(., '.out.odoo.')]]//button[@class='dlq-discard']";

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A W3C WebDriver session on chromedriver.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: std::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = std::env::var("CRMSYNC_CHROMEDRIVER")
            .expect("CRMSYNC_CHROMEDRIVER names chromedriver: run scripts/services.sh");
        let port = common::free_port();
        let driver = std::process::Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        eventually(Duration::from_secs(20), || async {
            let r = http.get(format!("{base}/status")).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            (v["value"]["ready"] == true).then_some(())
        })
        .await
        .expect("chromedriver is ready");
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ];
        args.push("--window-size=1400,1000");
        let mut options = json!({"args": args});
        if let Ok(binary) = std::env::var("CRMSYNC_CHROMIUM") {
            options["binary"] = json!(binary);
        }
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        Browser {
            http,
            base,
            session,
            _driver: driver,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let answer: Value = self
            .http
            .request(method, url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// An element by CSS selector, or by XPath when it starts with `//`.
    async fn find(&self, css: &str) -> String {
        let using = if css.starts_with("//") {
            "xpath"
        } else {
            "css selector"
        };
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": using, "value": css}),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Clicks `css`, finding it again when the page replaced it meanwhile.
    async fn click(&self, css: &str) {
        for _ in 0..20 {
            let id = self.find(css).await;
            let path = format!("/element/{id}/click");
            let answer = self.call(reqwest::Method::POST, &path, json!({})).await;
            match answer.get("error").and_then(Value::as_str) {
                None => return,
                Some("stale element reference") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Some(other) => panic!("clicking {css}: {other}: {answer}"),
            }
        }
        panic!("{css} kept being replaced");
    }

    async fn fill(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            json!({}),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/text"),
            json!({}),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until the text of `css` satisfies `ok`; the text.
    async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..150 {
            last = self.text(css).await;
            if ok(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never showed what was awaited; last: {last:?}");
    }

    async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_clicked_through_in_headless_chromium() {
    let (db, _) = common::odoo::connected(20, 3, 3).await;
    let engine = &db.engine;
    let (account, email): (String, String) = eventually(Duration::from_secs(20), || async {
        sqlx::query_as(
            "SELECT workspace_id, email FROM contacts WHERE provider = 'odoo'
             AND email IS NOT NULL AND NOT deleted ORDER BY remote_id LIMIT 1",
        )
        .fetch_optional(&engine.pool)
        .await
        .unwrap()
    })
    .await
    .expect("a contact is projected");
    let browser = Browser::start().await;
    browser.open(&engine.url("/dashboard")).await;
    browser.fill("#token", API_TOKEN).await;
    browser.fill("#workspace", "acme").await;
    browser.click("#load").await;

    // Overview: the connection, its health, its objects; the consumers.
    let row = browser
        .wait_text("#connections tbody", |t| {
            t.contains("odoo") && t.contains("healthy")
        })
        .await;
    assert!(row.contains("res.partner: ok"), "{row}");
    browser
        .wait_text("#consumers tbody", |t| t.contains("proj-odoo"))
        .await;

    // Stop and start the sync.
    browser.click(".sync-toggle").await;
    browser.wait_text(".sync-toggle", |t| t == "Start").await;
    let stopped: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_sync_pauses")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(stopped, 1);
    browser.click(".sync-toggle").await;
    browser.wait_text(".sync-toggle", |t| t == "Stop").await;

    // The log.
    browser.click("nav button[data-tab=logs]").await;
    browser
        .wait_text("#log-table tbody", |t| t.contains("poll"))
        .await;

    // The mapping editor: a refused mapping says why; a good one is stored.
    browser.click("nav button[data-tab=mappings]").await;
    browser.fill("#map-account", &account).await;
    browser.click("#map-provider option:nth-child(3)").await;
    browser.click("#map-load").await;
    browser
        .wait_text("#map-defaults", |t| t.contains("function → job_title"))
        .await;
    browser
        .fill(
            "#map-rules",
            r#"[{"source": "function", "target": "$role"}]"#,
        )
        .await;
    browser.click("#map-save").await;
    browser
        .wait_text("#map-result", |t| t.contains("rules[0].target"))
        .await;
    browser
        .fill(
            "#map-rules",
            r#"[{"source": "function", "target": "role"}]"#,
        )
        .await;
    browser.click("#map-save").await;
    browser
        .wait_text("#map-result", |t| t.starts_with("saved"))
        .await;
    let rules: Value = sqlx::query_scalar("SELECT rules FROM crm_field_mappings")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(rules[0]["target"], "role");

    // Push a test call: it is sent; one to nobody fails and is dead-lettered.
    browser.click("nav button[data-tab=push]").await;
    browser.fill("#push-email", &email).await;
    browser.fill("#push-call", "dash-1").await;
    browser.click("#push-provider option:nth-child(4)").await;
    browser.click("#push-send").await;
    browser
        .wait_text("#push-state", |t| t.contains("\"sent\""))
        .await;
    browser.fill("#push-email", "nobody@nowhere.example").await;
    browser.fill("#push-call", "dash-2").await;
    browser.click("#push-send").await;
    browser
        .wait_text("#push-state", |t| t.contains("\"failed\""))
        .await;

    browser.click("nav button[data-tab=dlq]").await;
    let mut shown = String::new();
    for _ in 0..50 {
        browser.click("#load").await;
        shown = browser.text("#dlq-table tbody").await;
        if shown.contains(".out.odoo.") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(shown.contains(".out.odoo."), "{shown}");
    // Retried, it leaves the list, fails again and is back under a new id; then
    // discarded.
    let first = shown
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    browser.click(PUSH_RETRY).await;
    let mut back = String::new();
    for _ in 0..100 {
        browser.click("#load").await;
        back = browser.text("#dlq-table tbody").await;
        let ids: Vec<&str> = back
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if back.contains(".out.odoo.") && !ids.contains(&first.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids: Vec<&str> = back
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        back.contains(".out.odoo.") && !ids.contains(&first.as_str()),
        "the retried push failed again, as a new dead letter: {back}"
    );
    // Let the last reload land before clicking in the table it renders.
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser.click(PUSH_DISCARD).await;
    browser
        .wait_text("#dlq-table tbody", |t| !t.contains(".out.odoo."))
        .await;

    // Conflicts load without an error.
    browser.click("nav button[data-tab=conflicts]").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(browser.text("#error").await, "");

    // Live: changes polled now appear as they are projected.
    browser.click("nav button[data-tab=live]").await;
    browser.click("#live-start").await;
    browser
        .wait_text("#live-status", |t| t == "following")
        .await;
    db.odoo.mutate(5);
    let (status, _) = db
        .post("/crm/odoo/poll", &json!({"workspace": "acme"}))
        .await;
    assert_eq!(status, 200);
    browser
        .wait_text("#live-events", |t| t.contains("odoo"))
        .await;
    assert_eq!(browser.text("#error").await, "");
    browser.quit().await;
    db.engine.stop().await;
}
