//! The HubSpot emulator, pinned to PROVIDERS.md over real HTTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crmsync_sandbox::faults::Faults;
use crmsync_sandbox::hubspot::webhooks::Signature;
use crmsync_sandbox::hubspot::{Config, HubSpotSandbox};
use crmsync_sandbox::server::{serve, Running};

struct Portal {
    hs: Arc<HubSpotSandbox>,
    running: Running,
    token: String,
    http: reqwest::Client,
}

async fn portal(config: Config) -> Portal {
    let (hs, running) = HubSpotSandbox::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let token = hs.credentials(&running.base_url)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    Portal {
        hs,
        running,
        token,
        http: reqwest::Client::new(),
    }
}

impl Portal {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.base_url)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn search(&self, ty: &str, body: Value) -> (StatusCode, Value) {
        // Search is limited to a few calls a second: wait out a 429 like a client
        // would, but not forever.
        for _ in 0..40 {
            let r = self
                .post(&format!("/crm/v3/objects/{ty}/search"), body.clone())
                .await;
            if r.status() == 429 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let status = r.status();
            return (status, r.json().await.unwrap());
        }
        panic!("search kept answering 429 for 10 s");
    }
}

/// The first `n` contact ids of a portal.
fn contact_ids(hs: &HubSpotSandbox, n: usize) -> Vec<u64> {
    hs.snapshot("contacts").into_keys().take(n).collect()
}

fn quiet() -> Config {
    Config {
        index_lag: Duration::ZERO,
        ..Config::default()
    }
}

#[tokio::test]
async fn oauth_code_and_refresh_grants_issue_tokens_and_codes_are_single_use() {
    let p = portal(quiet()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = "http://127.0.0.1:9/callback";
    let auth = http
        .get(p.url("/oauth/authorize"))
        .query(&[
            ("client_id", "hubspot-sandbox-client"),
            ("redirect_uri", redirect),
            ("scope", "crm.objects.contacts.read"),
            ("state", "s t/1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status(), 303);
    let location = auth.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(redirect), "{location}");
    assert!(location.ends_with("&state=s%20t%2F1"), "{location}");
    let code = location
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();

    let exchange = |code: String| {
        let http = http.clone();
        let url = p.url("/oauth/v1/token");
        async move {
            http.post(url)
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("client_id", "hubspot-sandbox-client"),
                    ("client_secret", "hubspot-sandbox-secret"),
                    ("redirect_uri", redirect),
                    ("code", &code),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let first = exchange(code.clone()).await;
    assert_eq!(first.status(), 200);
    let tokens: Value = first.json().await.unwrap();
    assert_eq!(tokens["expires_in"], 1800);
    assert_eq!(tokens["token_type"], "bearer");
    let again = exchange(code).await;
    assert_eq!(again.status(), 400);
    assert_eq!(
        again.json::<Value>().await.unwrap()["status"],
        "BAD_AUTH_CODE"
    );

    let refresh = |token: String| {
        let http = http.clone();
        let url = p.url("/oauth/v1/token");
        async move {
            http.post(url)
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", "hubspot-sandbox-client"),
                    ("client_secret", "hubspot-sandbox-secret"),
                    ("refresh_token", &token),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refreshed: Value = refresh(refresh_token.clone()).await.json().await.unwrap();
    let access = refreshed["access_token"].as_str().unwrap();
    assert_ne!(access, tokens["access_token"].as_str().unwrap());
    let me: Value = http
        .get(p.url(&format!("/oauth/v1/access-tokens/{access}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["hub_id"], 62515);

    p.hs.revoke_refresh_tokens();
    let revoked = refresh(refresh_token).await;
    assert_eq!(revoked.status(), 400);
    assert_eq!(
        revoked.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn missing_and_expired_tokens_get_401_with_hubspots_body() {
    let p = portal(quiet()).await;
    let anonymous = p
        .http
        .get(p.url("/crm/v3/objects/contacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.json::<Value>().await.unwrap()["category"],
        "INVALID_AUTHENTICATION"
    );
    assert_eq!(p.get("/crm/v3/objects/contacts").await.status(), 200);
    p.hs.expire_access_tokens();
    let expired = p.get("/crm/v3/objects/contacts").await;
    assert_eq!(expired.status(), 401);
    let body: Value = expired.json().await.unwrap();
    assert_eq!(body["status"], "error");
    assert_eq!(body["category"], "EXPIRED_AUTHENTICATION");
    assert!(body["message"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn lists_page_by_cursor_with_at_most_100_a_page() {
    let p = portal(Config {
        contacts: 250,
        ..quiet()
    })
    .await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/crm/v3/objects/contacts?limit=100&after={a}&properties=email"),
            None => "/crm/v3/objects/contacts?limit=100&properties=email".to_owned(),
        };
        let page: Value = p.get(&path).await.json().await.unwrap();
        let results = page["results"].as_array().unwrap();
        assert!(results.len() <= 100);
        seen.extend(results.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        assert!(results[0]["properties"]["email"]
            .as_str()
            .unwrap()
            .ends_with("@example.com"));
        match page["paging"]["next"]["after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
    seen.dedup();
    assert_eq!(seen.len(), 250);
    assert_eq!(
        p.get("/crm/v3/objects/contacts?limit=101").await.status(),
        400
    );
}

#[tokio::test]
async fn records_are_created_updated_archived_and_listed_as_archived() {
    let p = portal(quiet()).await;
    let created = p
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "new@x.io", "firstname": "New"}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dup = p
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "new@x.io"}}),
        )
        .await;
    assert_eq!(dup.status(), 409);

    let patched = p
        .http
        .patch(p.url(&format!("/crm/v3/objects/contacts/{id}")))
        .bearer_auth(&p.token)
        .json(&json!({"properties": {"firstname": "Renamed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let got: Value = p
        .get(&format!(
            "/crm/v3/objects/contacts/{id}?properties=firstname,email"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["properties"]["firstname"], "Renamed");
    assert_eq!(got["properties"]["hs_object_id"], id);
    assert!(got["properties"]["lastmodifieddate"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let by_email: Value = p
        .get("/crm/v3/objects/contacts/new@x.io?idProperty=email")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_email["id"], id);

    let deleted = p
        .http
        .delete(p.url(&format!("/crm/v3/objects/contacts/{id}")))
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = p.get(&format!("/crm/v3/objects/contacts/{id}")).await;
    assert_eq!(gone.status(), 404);
    assert_eq!(
        gone.json::<Value>().await.unwrap()["category"],
        "OBJECT_NOT_FOUND"
    );
    let archived: Value = p
        .get("/crm/v3/objects/contacts?archived=true")
        .await
        .json()
        .await
        .unwrap();
    let row = &archived["results"][0];
    assert_eq!(row["id"], id);
    assert_eq!(row["archived"], true);
    assert!(row["archivedAt"].is_string());
}

#[tokio::test]
async fn batch_read_answers_207_when_some_ids_are_missing_and_upsert_creates_then_updates() {
    let p = portal(quiet()).await;
    let list: Value = p
        .get("/crm/v3/objects/contacts?limit=2")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let all = p
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": ids[0]}, {"id": ids[1]}], "properties": ["email"]}),
        )
        .await;
    assert_eq!(all.status(), 200);
    assert_eq!(
        all.json::<Value>().await.unwrap()["results"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let partial = p
        .post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": [{"id": ids[0]}, {"id": "999999"}], "properties": ["email"]}),
        )
        .await;
    assert_eq!(partial.status(), 207);
    let body: Value = partial.json().await.unwrap();
    assert_eq!(body["numErrors"], 1);
    assert_eq!(body["errors"][0]["context"]["ids"][0], "999999");
    let too_many: Vec<Value> = (0..101).map(|i| json!({"id": i.to_string()})).collect();
    assert_eq!(
        p.post(
            "/crm/v3/objects/contacts/batch/read",
            json!({"inputs": too_many})
        )
        .await
        .status(),
        400
    );

    let upsert = |name: &str| json!({"inputs": [{"id": "up@x.io", "idProperty": "email", "properties": {"firstname": name}}]});
    let first: Value = p
        .post("/crm/v3/objects/contacts/batch/upsert", upsert("One"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["results"][0]["new"], true);
    let second: Value = p
        .post("/crm/v3/objects/contacts/batch/upsert", upsert("Two"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["results"][0]["new"], false);
    assert_eq!(second["results"][0]["id"], first["results"][0]["id"]);
    assert_eq!(second["results"][0]["properties"]["firstname"], "Two");
}

#[tokio::test]
async fn search_filters_sorts_pages_and_refuses_to_page_past_10000() {
    let p = portal(Config {
        contacts: 10_150,
        ..quiet()
    })
    .await;
    let (status, first) = p
        .search("contacts", json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "HAS_PROPERTY"}]}], "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}], "limit": 200}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(first["total"], 10_150);
    assert_eq!(first["results"].as_array().unwrap().len(), 200);
    assert_eq!(first["paging"]["next"]["after"], "200");

    let (status, capped) = p
        .search("contacts", json!({"limit": 200, "after": "9900"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(capped["category"], "VALIDATION_ERROR");
    assert!(capped["message"].as_str().unwrap().contains("10000"));
    let (status, _) = p.search("contacts", json!({"limit": 201})).await;
    assert_eq!(status, 400);
    for after in ["10000", "18446744073709551615"] {
        let (status, past) = p
            .search("contacts", json!({"limit": 200, "after": after}))
            .await;
        assert_eq!(status, 400, "after {after}");
        assert_eq!(past["category"], "VALIDATION_ERROR");
    }
    let (status, last) = p
        .search("contacts", json!({"limit": 100, "after": "9900"}))
        .await;
    assert_eq!(status, 200, "a page ending at the cap is fine");
    assert_eq!(last["results"].as_array().unwrap().len(), 100);

    // Keyset on hs_object_id reaches every record despite the cap.
    let mut last = 0u64;
    let mut count = 0;
    loop {
        let (status, page) = p
            .search("contacts", json!({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "GT", "value": last.to_string()}]}], "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}], "limit": 200, "properties": ["email"]}))
            .await;
        assert_eq!(status, 200);
        let results = page["results"].as_array().unwrap();
        if results.is_empty() {
            break;
        }
        count += results.len();
        last = results.last().unwrap()["id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    }
    assert_eq!(count, 10_150);

    let three: Vec<String> = contact_ids(&p.hs, 3).iter().map(u64::to_string).collect();
    let (_, desc) = p
        .search("contacts", json!({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "IN", "values": three}]}, {"filters": [{"propertyName": "email", "operator": "EQ", "value": "nobody@nowhere"}]}], "sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}]}))
        .await;
    let ids: Vec<&str> = desc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [three[2].as_str(), three[1].as_str(), three[0].as_str()]
    );
}

#[tokio::test]
async fn search_lags_writes_by_the_index_lag() {
    // Long enough that the first search surely runs inside it, even on a busy machine.
    let lag = Duration::from_millis(1500);
    let p = portal(Config {
        index_lag: lag,
        ..Config::default()
    })
    .await;
    let written = std::time::Instant::now();
    // The server stamps writes in whole milliseconds of wall time.
    let margin = Duration::from_millis(50);
    let created: Value = p
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "late@x.io"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let query = json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "late@x.io"}]}]});
    let (_, now) = p.search("contacts", query.clone()).await;
    if written.elapsed() + margin < lag {
        assert_eq!(now["total"], 0, "a fresh write is not searchable yet");
    }
    assert_eq!(
        p.get(&format!(
            "/crm/v3/objects/contacts/{}",
            created["id"].as_str().unwrap()
        ))
        .await
        .status(),
        200,
        "but it can be read"
    );
    let mut found = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if p.search("contacts", query.clone()).await.1["total"] == 1 {
            found = true;
            break;
        }
    }
    assert!(found, "the write shows in search once indexed");
    assert!(written.elapsed() + margin >= lag, "and not before the lag");
}

#[tokio::test]
async fn a_merge_makes_a_new_id_and_both_old_ids_resolve_to_it() {
    let p = portal(quiet()).await;
    let list: Value = p
        .get("/crm/v3/objects/contacts?limit=2&associations=companies")
        .await
        .json()
        .await
        .unwrap();
    let a = list["results"][0]["id"].as_str().unwrap().to_owned();
    let b = list["results"][1]["id"].as_str().unwrap().to_owned();
    let company = list["results"][1]["associations"]["companies"]["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let merged = p
        .post(
            "/crm/v3/objects/contacts/merge",
            json!({"primaryObjectId": a, "objectIdToMerge": b}),
        )
        .await;
    assert_eq!(merged.status(), 200);
    let new_id = merged.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_id, a);
    assert_ne!(new_id, b);
    for old in [&a, &b] {
        let got: Value = p
            .get(&format!("/crm/v3/objects/contacts/{old}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            got["id"],
            new_id.as_str(),
            "GET on an old id answers the survivor"
        );
    }
    let links: Value = p
        .get(&format!(
            "/crm/v4/objects/contacts/{new_id}/associations/companies"
        ))
        .await
        .json()
        .await
        .unwrap();
    let linked: Vec<String> = links["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["toObjectId"].to_string())
        .collect();
    assert!(
        linked.contains(&company),
        "links follow the survivor: {links}"
    );
}

#[tokio::test]
async fn calls_are_created_with_associations_read_back_through_v4() {
    let p = portal(quiet()).await;
    let contact: Value = p
        .get("/crm/v3/objects/contacts?limit=1")
        .await
        .json()
        .await
        .unwrap();
    let contact_id = contact["results"][0]["id"].as_str().unwrap().to_owned();
    let call = p
        .post("/crm/v3/objects/calls", json!({
            "properties": {"hs_timestamp": "2024-05-01T10:00:00.000Z", "hs_call_title": "Intro", "hs_call_body": "Talked", "hs_call_duration": "65000", "hs_call_status": "COMPLETED", "hs_call_direction": "OUTBOUND", "hs_call_disposition": "f240bbac-87c9-4f6e-bf70-924b57d47db7"},
            "associations": [{"to": {"id": contact_id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}]}]
        }))
        .await;
    assert_eq!(call.status(), 201);
    let call_id = call.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let batch: Value = p
        .post(
            "/crm/v4/associations/contacts/calls/batch/read",
            json!({"inputs": [{"id": contact_id}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let to = &batch["results"][0]["to"][0];
    assert_eq!(to["toObjectId"].to_string(), call_id);
    assert_eq!(to["associationTypes"][0]["typeId"], 193);
    let from_call: Value = p
        .get(&format!(
            "/crm/v4/objects/calls/{call_id}/associations/contacts"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        from_call["results"][0]["associationTypes"][0]["typeId"],
        194
    );
    let bad = p.post("/crm/v3/objects/calls", json!({"properties": {}, "associations": [{"to": {"id": "1"}, "types": [{"associationTypeId": 194}]}]})).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn a_create_with_a_bad_association_is_refused_and_leaves_nothing() {
    let (r, _rx, url) = receiver(vec![]).await;
    let p = portal(Config {
        webhook_target: Some(url),
        ..quiet()
    })
    .await;
    let contact = contact_ids(&p.hs, 1)[0].to_string();
    let company =
        p.hs.snapshot("companies")
            .into_keys()
            .next()
            .unwrap()
            .to_string();
    let link = |id: &str, type_id: u64| json!({"to": {"id": id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]});
    let calls_before = p.hs.snapshot("calls").len();
    let contacts_before = p.hs.snapshot("contacts").len();
    for (ty, associations, why) in [
        (
            "calls",
            json!([link(&contact, 194), link("999999999", 194)]),
            "a missing target after a good one",
        ),
        ("calls", json!([link(&contact, 999)]), "an unknown type id"),
        (
            "calls",
            json!([link(&contact, 279)]),
            "a contact-to-company id on a call",
        ),
        (
            "contacts",
            json!([link(&contact, 194)]),
            "a call-to-contact id on a contact",
        ),
        (
            "contacts",
            json!([{"to": {"id": company}, "types": [{"associationTypeId": 279}, {"associationTypeId": 4}]}]),
            "types pointing two ways",
        ),
        (
            "calls",
            json!([{"to": {"id": contact}, "types": []}]),
            "no type",
        ),
    ] {
        let body = json!({"properties": {"hs_timestamp": "2024-05-01T10:00:00.000Z", "email": "refused@x.io"}, "associations": associations});
        let refused = p.post(&format!("/crm/v3/objects/{ty}"), body).await;
        assert_eq!(refused.status(), 400, "{why}");
        assert_eq!(
            refused.json::<Value>().await.unwrap()["category"],
            "VALIDATION_ERROR",
            "{why}"
        );
    }
    assert_eq!(
        p.hs.snapshot("calls").len(),
        calls_before,
        "no call was left behind"
    );
    assert_eq!(
        p.hs.snapshot("contacts").len(),
        contacts_before,
        "nor a contact"
    );

    // Both of a pair's ids are accepted: 1 is the primary contact-to-company type.
    let made = p
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "primary@x.io"}, "associations": [link(&company, 1)]}),
        )
        .await;
    assert_eq!(made.status(), 201);
    let id = made.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let links: Value = p
        .get(&format!(
            "/crm/v4/objects/contacts/{id}/associations/companies"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(links["results"][0]["toObjectId"].to_string(), company);
    assert_eq!(links["results"][0]["associationTypes"][0]["typeId"], 279);
    let from_company: Value = p
        .get(&format!(
            "/crm/v4/objects/companies/{company}/associations/contacts"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert!(from_company["results"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["toObjectId"].as_u64() == id.parse().ok()
            && l["associationTypes"][0]["typeId"] == 280));

    // Only the accepted create made webhook events: a refused one would have queued
    // its events before it.
    let got = wait_until(&r, |events| {
        events
            .iter()
            .any(|e| e["subscriptionType"] == "contact.creation")
    })
    .await;
    let created: Vec<&Value> = got
        .iter()
        .flat_map(|d| &d.events)
        .filter(|e| e["subscriptionType"] == "contact.creation")
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["objectId"].to_string(), id);
}

#[tokio::test]
async fn associating_a_pair_hubspot_does_not_define_is_refused() {
    let p = portal(quiet()).await;
    let call: Value = p
        .post(
            "/crm/v3/objects/calls",
            json!({"properties": {"hs_timestamp": "2024-05-01T10:00:00.000Z"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let note: Value = p
        .post(
            "/crm/v3/objects/notes",
            json!({"properties": {"hs_timestamp": "2024-05-01T10:00:00.000Z"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let refused = p
        .http
        .put(p.url(&format!(
            "/crm/v4/objects/calls/{}/associations/default/notes/{}",
            call["id"].as_str().unwrap(),
            note["id"].as_str().unwrap()
        )))
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let contact = contact_ids(&p.hs, 1)[0];
    let linked: Value = p
        .http
        .put(p.url(&format!(
            "/crm/v4/objects/calls/{}/associations/default/contacts/{contact}",
            call["id"].as_str().unwrap()
        )))
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        linked["results"][0]["associationSpec"]["associationTypeId"],
        194
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_hubspots_headers_and_body() {
    let p = portal(Config {
        per_ten_seconds: 5,
        ..quiet()
    })
    .await;
    for i in 0..5 {
        let r = p.get("/crm/v3/objects/contacts?limit=1").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-hubspot-ratelimit-max"], "5");
        assert_eq!(
            r.headers()["x-hubspot-ratelimit-remaining"],
            (4 - i).to_string().as_str()
        );
        assert_eq!(
            r.headers()["x-hubspot-ratelimit-interval-milliseconds"],
            "10000"
        );
        assert!(r.headers().contains_key("x-hubspot-ratelimit-secondly"));
        assert!(r
            .headers()
            .contains_key("x-hubspot-ratelimit-secondly-remaining"));
        assert!(
            !r.headers().contains_key("x-hubspot-ratelimit-daily")
                && !r
                    .headers()
                    .contains_key("x-hubspot-ratelimit-daily-remaining"),
            "OAuth calls have no daily cap"
        );
    }
    let limited = p.get("/crm/v3/objects/contacts?limit=1").await;
    assert_eq!(limited.status(), 429);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["errorType"], "RATE_LIMIT");
    assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");

    let daily = portal(Config {
        per_day: Some(2),
        ..quiet()
    })
    .await;
    let first = daily.get("/crm/v3/objects/contacts").await;
    assert_eq!(first.headers()["x-hubspot-ratelimit-daily"], "2");
    assert_eq!(first.headers()["x-hubspot-ratelimit-daily-remaining"], "1");
    daily.get("/crm/v3/objects/contacts").await;
    let body: Value = daily
        .get("/crm/v3/objects/contacts")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["policyName"], "DAILY");

    let search = portal(Config {
        search_per_second: 1,
        ..quiet()
    })
    .await;
    let q = json!({"limit": 1});
    assert_eq!(
        search
            .post("/crm/v3/objects/contacts/search", q.clone())
            .await
            .status(),
        200
    );
    let second = search.post("/crm/v3/objects/contacts/search", q).await;
    assert_eq!(second.status(), 429);
    assert_eq!(
        second.json::<Value>().await.unwrap()["policyName"],
        "SECONDLY"
    );
}

/// One webhook delivery as the receiver saw it.
#[derive(Clone, Debug)]
struct Delivery {
    headers: HeaderMap,
    events: Vec<Value>,
    body: Bytes,
    /// Path and query as received.
    target: String,
}

impl Delivery {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    /// Checks the v1, v2 and v3 signatures present against `url`, the URL rebuilt from
    /// what arrived; answers the versions checked.
    fn verify(&self, secret: &str, url: &str) -> Vec<&'static str> {
        let mut checked = Vec::new();
        if let Some(sig) = self.headers.get("x-hubspot-signature") {
            let version = self.header("x-hubspot-signature-version");
            let mut h = Sha256::new();
            h.update(secret.as_bytes());
            if version == "v2" {
                h.update(b"POST");
                h.update(url.as_bytes());
            } else {
                assert_eq!(version, "v1");
            }
            h.update(&self.body);
            assert_eq!(
                sig.to_str().unwrap(),
                hex::encode(h.finalize()),
                "{version}"
            );
            checked.push(if version == "v2" { "v2" } else { "v1" });
        }
        if self.headers.contains_key("x-hubspot-signature-v3") {
            let ts = self.header("x-hubspot-request-timestamp");
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(b"POST");
            mac.update(url.as_bytes());
            mac.update(&self.body);
            mac.update(ts.as_bytes());
            let expected =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            assert_eq!(self.header("x-hubspot-signature-v3"), expected);
            checked.push("v3");
        }
        checked
    }
}

/// A webhook receiver answering with the statuses in `plan`, then 200.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
    plan: Arc<Mutex<Vec<u16>>>,
}

async fn receive(
    State(r): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let events: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let target = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    r.got.lock().unwrap().push(Delivery {
        headers,
        events,
        body,
        target,
    });
    let next = r.plan.lock().unwrap().pop();
    StatusCode::from_u16(next.unwrap_or(200)).unwrap()
}

/// A receiver on `/hooks` and `/`; answers its base URL and the `/hooks` URL.
async fn receiver(plan: Vec<u16>) -> (Receiver, Running, String) {
    let r = Receiver {
        plan: Arc::new(Mutex::new(plan.into_iter().rev().collect())),
        ..Receiver::default()
    };
    let running = serve(
        Router::new()
            .route("/hooks", post(receive))
            .route("/", post(receive))
            .with_state(r.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let url = format!("{}/hooks", running.base_url);
    (r, running, url)
}

async fn wait_for(r: &Receiver, deliveries: usize) -> Vec<Delivery> {
    for _ in 0..200 {
        if r.got.lock().unwrap().len() >= deliveries {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    r.got.lock().unwrap().clone()
}

/// Waits (up to 5 s) until the events received so far satisfy `done`.
async fn wait_until(r: &Receiver, done: impl Fn(&[&Value]) -> bool) -> Vec<Delivery> {
    for _ in 0..200 {
        {
            let got = r.got.lock().unwrap();
            let events: Vec<&Value> = got.iter().flat_map(|d| &d.events).collect();
            if done(&events) {
                return got.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "the expected webhook events never came: {:?}",
        r.got.lock().unwrap()
    );
}

#[tokio::test]
async fn every_change_is_sent_as_a_batch_signed_with_v1_and_v3() {
    let (r, rx, url) = receiver(vec![]).await;
    let p = portal(Config {
        webhook_target: Some(url.clone()),
        ..quiet()
    })
    .await;
    let created: Value = p
        .post(
            "/crm/v3/objects/contacts",
            json!({"properties": {"email": "hook@x.io", "firstname": "Hook"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().parse::<u64>().unwrap();
    let got = wait_for(&r, 1).await;
    let delivery = &got[0];
    let events = &delivery.events;
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["subscriptionType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "contact.creation",
            "contact.propertyChange",
            "contact.propertyChange"
        ]
    );
    assert!(events
        .iter()
        .all(|e| e["objectId"] == id && e["portalId"] == 62515 && e["attemptNumber"] == 0));
    assert_eq!(events[0]["changeFlag"], "NEW");
    assert!(events[1].get("changeFlag").is_none());
    assert_eq!(
        events[1]["subscriptionId"], events[2]["subscriptionId"],
        "one subscription id per subscription type"
    );
    assert_ne!(events[0]["subscriptionId"], events[1]["subscriptionId"]);
    let change = events
        .iter()
        .find(|e| e["propertyName"] == "firstname")
        .unwrap();
    assert_eq!(change["propertyValue"], "Hook");

    assert_eq!(delivery.target, "/hooks");
    let rebuilt = format!("{}{}", rx.base_url, delivery.target);
    assert_eq!(rebuilt, url);
    assert_eq!(
        delivery.verify("hubspot-sandbox-secret", &rebuilt),
        ["v1", "v3"],
        "both the legacy signature and v3 arrive and verify"
    );

    p.hs.archive("contacts", id);
    let got = wait_until(&r, |events| {
        events
            .iter()
            .any(|e| e["subscriptionType"] == "contact.deletion")
    })
    .await;
    let deletion = got
        .iter()
        .flat_map(|d| &d.events)
        .find(|e| e["subscriptionType"] == "contact.deletion")
        .unwrap();
    assert_eq!(deletion["changeFlag"], "DELETED");
    assert_eq!(deletion["objectId"], id);
}

#[tokio::test]
async fn v2_deliveries_sign_the_url_as_sent_even_without_a_path() {
    let (r, rx, _) = receiver(vec![]).await;
    let bare = rx.base_url.clone();
    assert!(!bare.ends_with('/'));
    let p = portal(Config {
        webhook_target: Some(bare.clone()),
        webhook_signature: Signature::V2,
        ..quiet()
    })
    .await;
    p.hs.archive("contacts", contact_ids(&p.hs, 1)[0]);
    let got = wait_for(&r, 1).await;
    let delivery = &got[0];
    assert_eq!(delivery.target, "/");
    assert_eq!(delivery.header("x-hubspot-signature-version"), "v2");
    assert_eq!(
        delivery.verify("hubspot-sandbox-secret", &format!("{bare}/")),
        ["v2", "v3"]
    );
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_attempt_number_and_4xx_is_not() {
    let (r, _rx, url) = receiver(vec![500, 503]).await;
    let p = portal(Config {
        webhook_target: Some(url),
        webhook_retry_base: Duration::from_millis(20),
        ..quiet()
    })
    .await;
    p.hs.archive("contacts", contact_ids(&p.hs, 1)[0]);
    let got = wait_for(&r, 3).await;
    let attempts: Vec<u64> = got
        .iter()
        .map(|d| d.events[0]["attemptNumber"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [0, 1, 2]);
    assert_eq!(got[2].events[0]["subscriptionType"], "contact.deletion");

    let (r, _rx, url) = receiver(vec![400]).await;
    let p = portal(Config {
        webhook_target: Some(url),
        webhook_retry_base: Duration::from_millis(20),
        ..quiet()
    })
    .await;
    p.hs.archive("contacts", contact_ids(&p.hs, 1)[0]);
    wait_for(&r, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.got.lock().unwrap().len(), 1, "a 400 is not retried");
    assert_eq!(
        p.hs.webhooks
            .stats
            .abandoned_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn merges_and_restores_send_their_events_and_v1_can_be_chosen() {
    let (r, rx, url) = receiver(vec![]).await;
    let p = portal(Config {
        webhook_target: Some(url),
        webhook_signature: Signature::V1,
        ..quiet()
    })
    .await;
    let ids = contact_ids(&p.hs, 3);
    let companies: Vec<u64> = {
        let store = p.hs.store.lock().unwrap();
        [ids[0], ids[1]]
            .iter()
            .flat_map(|id| store.associated("contacts", *id, "companies"))
            .collect()
    };
    assert!(!companies.is_empty(), "seeded contacts have companies");
    let survivor = p.hs.merge("contacts", ids[0], ids[1]).unwrap()["id"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    p.hs.archive("contacts", ids[2]);
    p.hs.restore("contacts", ids[2]);
    let got = wait_until(&r, |events| {
        events
            .iter()
            .any(|e| e["subscriptionType"] == "contact.restore")
    })
    .await;
    let events: Vec<&Value> = got.iter().flat_map(|d| &d.events).collect();
    let merge = events
        .iter()
        .find(|e| e["subscriptionType"] == "contact.merge")
        .unwrap();
    assert_eq!(merge["primaryObjectId"], ids[0]);
    assert_eq!(merge["mergedObjectIds"], json!([ids[1]]));
    let moved: Vec<u64> = events
        .iter()
        .filter(|e| {
            e["subscriptionType"] == "contact.associationChange"
                && e["fromObjectId"] == survivor
                && e["associationType"] == "CONTACT_TO_COMPANY"
        })
        .map(|e| e["toObjectId"].as_u64().unwrap())
        .collect();
    for company in &companies {
        assert!(
            moved.contains(company),
            "the link to company {company} moved to the survivor: {moved:?}"
        );
    }
    let first = &got[0];
    assert_eq!(first.header("x-hubspot-signature-version"), "v1");
    assert_eq!(
        first.verify(
            "hubspot-sandbox-secret",
            &format!("{}{}", rx.base_url, first.target)
        ),
        ["v1", "v3"]
    );
}

#[tokio::test]
async fn injected_faults_fail_requests_and_drop_webhooks() {
    let (r, _rx, url) = receiver(vec![]).await;
    let faults: Faults = "errors=1,drop-webhooks=1".parse().unwrap();
    let p = portal(Config {
        faults,
        webhook_target: Some(url),
        ..quiet()
    })
    .await;
    let status = p.get("/crm/v3/objects/contacts").await.status();
    assert!(status == 500 || status == 502, "{status}");
    p.hs.archive("contacts", contact_ids(&p.hs, 1)[0]);
    let dropped = || {
        p.hs.webhooks
            .stats
            .dropped_batches
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dropped() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.got.lock().unwrap().is_empty());

    p.hs.faults().set("storm=10s/20s".parse().unwrap());
    let storm = p.get("/crm/v3/objects/contacts").await;
    assert_eq!(storm.status(), 429);
    assert_eq!(
        storm.json::<Value>().await.unwrap()["errorType"],
        "RATE_LIMIT"
    );
}

#[tokio::test]
async fn the_same_seed_gives_the_same_portal_and_the_driver_changes_it() {
    let a = HubSpotSandbox::new(Config { seed: 7, ..quiet() });
    let b = HubSpotSandbox::new(Config { seed: 7, ..quiet() });
    let c = HubSpotSandbox::new(Config { seed: 8, ..quiet() });
    for ty in ["contacts", "companies", "deals"] {
        assert_eq!(a.snapshot(ty), b.snapshot(ty));
    }
    assert_ne!(a.snapshot("contacts"), c.snapshot("contacts"));
    let before = a.snapshot("contacts");
    a.mutate(200);
    b.mutate(200);
    assert_ne!(a.snapshot("contacts"), before);
    let strip = |s: std::collections::BTreeMap<u64, std::collections::BTreeMap<String, String>>| {
        s.into_iter()
            .map(|(id, mut p)| {
                p.retain(|k, _| !k.contains("date"));
                (id, p)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        strip(a.snapshot("contacts")),
        strip(b.snapshot("contacts")),
        "the driver is deterministic too"
    );
}

#[tokio::test]
async fn a_hundred_thousand_contacts_generate() {
    let hs = HubSpotSandbox::new(Config {
        contacts: 100_000,
        companies: 1_000,
        deals: 5_000,
        ..quiet()
    });
    assert_eq!(hs.snapshot("contacts").len(), 100_000);
    assert_eq!(hs.snapshot("deals").len(), 5_000);
    // A driver step costs the same at this size: picking ids copies no records.
    let started = std::time::Instant::now();
    hs.mutate(2_000);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "2,000 changes took {took:?}"
    );
}
