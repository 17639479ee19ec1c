//! `GET /crm/feed`: a workspace's projection changes as server-sent events, each sent
//! once its row is committed, resumable with `Last-Event-ID` without a gap or a
//! repeat.

mod common;

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use common::hubspot::API_TOKEN;
use common::TestEngine;
use crmsync_sandbox::hubspot::webhooks::{EventFactory, Signature};

/// An open feed and what it has sent so far, not yet read.
struct Feed {
    body: reqwest::Response,
    buffer: String,
}

impl Feed {
    async fn open(engine: &TestEngine, workspace: &str, last_id: Option<u64>) -> Feed {
        let mut request = engine
            .http
            .get(engine.url(&format!("/crm/feed?workspace={workspace}")))
            .bearer_auth(API_TOKEN);
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Feed {
            body: response,
            buffer: String::new(),
        }
    }

    /// The next `change` event: (its id, its data).
    async fn next(&mut self) -> (u64, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<u64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                    }
                }
                match kind.as_deref() {
                    Some("change") => return (id.unwrap(), data.unwrap()),
                    None => continue, // a keep-alive comment
                    Some(other) => panic!("unexpected event {other}: {block}"),
                }
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.chunk())
                .await
                .expect("a change within 20 s")
                .unwrap()
                .expect("the feed stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Nothing more comes within `wait`.
    async fn quiet(&mut self, wait: Duration) -> bool {
        !self.buffer.contains("event:")
            && tokio::time::timeout(wait, self.body.chunk()).await.is_err()
    }
}

fn batch(f: &mut EventFactory, from: u64, at: i64, tag: &str) -> Vec<Value> {
    (from..from + 5)
        .map(|c| {
            f.property_change(
                "contact",
                c,
                at + c as i64,
                "email",
                &format!("c{c}-{tag}@example.com"),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_feed_sends_each_projected_change_once_and_resumes_after_the_last_seen() {
    let engine = TestEngine::start(&[("CRM_API_TOKEN", API_TOKEN)]).await;
    let (status, _) = common::get_json(&engine, "/crm/feed?workspace=55", None).await;
    assert_eq!(status, 401);
    let bad = engine
        .http
        .get(engine.url("/crm/feed?workspace=55"))
        .bearer_auth(API_TOKEN)
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let mut feed = Feed::open(&engine, "55", None).await;
    let mut f = EventFactory::new(55);
    let mut other = EventFactory::new(56);
    let at = Utc::now().timestamp_millis() - 60_000;
    engine
        .post_events(Signature::V3, &batch(&mut f, 1, at, "a"))
        .await;
    engine
        .post_events(Signature::V3, &batch(&mut other, 1, at, "other"))
        .await;
    let mut last = 0;
    for c in 1..=5u64 {
        let (id, change) = feed.next().await;
        assert!(id > last, "ids grow");
        last = id;
        assert_eq!(change["seq"], id);
        assert_eq!(
            change["workspace"], "55",
            "another portal's changes stay out"
        );
        assert_eq!(change["object"], "contact");
        assert_eq!(change["id"], c.to_string());
        assert_eq!(change["projected"], true);
        let email = format!("c{c}-a@example.com");
        assert_eq!(change["row"]["email"], email.as_str(), "{change}");
        // Sent once committed: Postgres already shows it.
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT email FROM contacts WHERE workspace_id = '55' AND remote_id = $1",
        )
        .bind(c.to_string())
        .fetch_one(&engine.pool)
        .await
        .unwrap();
        assert_eq!(stored.as_deref(), Some(email.as_str()));
    }
    assert!(feed.quiet(Duration::from_millis(300)).await, "nothing else");

    // The client goes away; changes go on; it comes back with the last id it saw.
    drop(feed);
    engine
        .post_events(Signature::V3, &batch(&mut f, 6, at, "b"))
        .await;
    let mut feed = Feed::open(&engine, "55", Some(last)).await;
    for c in 6..=10u64 {
        let (id, change) = feed.next().await;
        assert!(id > last, "no repeat of what it had seen");
        last = id;
        assert_eq!(change["id"], c.to_string(), "no gap: {change}");
    }
    assert!(feed.quiet(Duration::from_millis(300)).await, "nothing else");
    engine.stop().await;
}
