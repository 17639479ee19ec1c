//! The Zoho CRM emulator over real HTTP: OAuth per data centre, the v8 records API,
//! COQL, notifications, limits and seeding, checked the way a client sees them.

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{FixedOffset, Utc};
use crmsync_sandbox::faults::Faults;
use crmsync_sandbox::server::{serve, Running};
use crmsync_sandbox::zoho::{Config, DataCentre, ZohoSandbox};
use reqwest::header::LOCATION;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn Error>>;

/// A started org and a client holding its ready token.
struct Org {
    sb: Arc<ZohoSandbox>,
    running: Running,
    http: Client,
    api: String,
    token: String,
}

async fn org(config: Config) -> Result<Org, Box<dyn Error>> {
    let (sb, running) = ZohoSandbox::start(config, "127.0.0.1:0".parse()?).await?;
    let creds = sb.credentials(&running.base_url);
    Ok(Org {
        api: creds["api_domain"].as_str().ok_or("api_domain")?.to_owned(),
        token: creds["access_token"]
            .as_str()
            .ok_or("access_token")?
            .to_owned(),
        http: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        sb,
        running,
    })
}

fn small() -> Config {
    Config::default()
}

async fn answer(resp: reqwest::Response) -> Result<(u16, Value), Box<dyn Error>> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, body))
}

impl Org {
    fn base(&self) -> &str {
        &self.running.base_url
    }

    fn url(&self, path: &str) -> String {
        format!("{}/crm/v8/{path}", self.api)
    }

    async fn call_with(
        &self,
        token: &str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<(u16, Value), Box<dyn Error>> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("Authorization", format!("Zoho-oauthtoken {token}"))
            .query(query);
        if let Some(body) = body {
            req = req.json(&body);
        }
        answer(req.send().await?).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<(u16, Value), Box<dyn Error>> {
        self.call_with(&self.token, method, path, query, body).await
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<(u16, Value), Box<dyn Error>> {
        self.call(Method::GET, path, query, None).await
    }

    async fn coql(&self, query: &str) -> Result<(u16, Value), Box<dyn Error>> {
        self.call(
            Method::POST,
            "coql",
            &[],
            Some(json!({ "select_query": query })),
        )
        .await
    }

    /// Consent on `accounts`, answering the redirect's parameters.
    async fn consent(
        &self,
        dc: &str,
        scope: &str,
    ) -> Result<HashMap<String, String>, Box<dyn Error>> {
        let resp = self
            .http
            .get(format!("{}/{dc}/accounts/oauth/v2/auth", self.base()))
            .query(&[
                ("scope", scope),
                ("client_id", "zoho-sandbox-client"),
                ("response_type", "code"),
                ("access_type", "offline"),
                ("redirect_uri", "http://localhost:9/oauth/callback"),
                ("state", "st-42"),
            ])
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = reqwest::Url::parse(resp.headers()[LOCATION].to_str()?)?;
        assert!(location
            .as_str()
            .starts_with("http://localhost:9/oauth/callback?"));
        Ok(location.query_pairs().into_owned().collect())
    }

    async fn token_grant(
        &self,
        accounts: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, Value), Box<dyn Error>> {
        let resp = self
            .http
            .post(format!("{accounts}/oauth/v2/token"))
            .form(form)
            .send()
            .await?;
        answer(resp).await
    }
}

fn code_form(code: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "authorization_code"),
        ("client_id", "zoho-sandbox-client"),
        ("client_secret", "zoho-sandbox-secret"),
        ("redirect_uri", "http://localhost:9/oauth/callback"),
        ("code", code),
    ]
}

fn refresh_form(refresh: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "refresh_token"),
        ("client_id", "zoho-sandbox-client"),
        ("client_secret", "zoho-sandbox-secret"),
        ("refresh_token", refresh),
    ]
}

fn ist(t: chrono::DateTime<Utc>) -> String {
    let offset = FixedOffset::east_opt(5 * 3600 + 1800).expect("offset");
    t.with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn invalid_token_body() -> Value {
    json!({"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token", "status": "error"})
}

#[tokio::test]
async fn oauth_code_and_refresh_grants_issue_working_tokens_and_codes_are_single_use() -> TestResult
{
    let o = org(small()).await?;
    let consent = o
        .consent("com", "ZohoCRM.modules.ALL,ZohoCRM.coql.READ")
        .await?;
    assert_eq!(consent["state"], "st-42");
    assert_eq!(consent["location"], "us");
    let accounts = consent["accounts-server"].clone();
    assert_eq!(accounts, format!("{}/com/accounts", o.base()));

    let (status, grant) = o
        .token_grant(&accounts, &code_form(&consent["code"]))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(grant["api_domain"], format!("{}/com/api", o.base()));
    assert_eq!(grant["token_type"], "Bearer");
    assert_eq!(grant["expires_in"], 3600);
    let access = grant["access_token"].as_str().ok_or("access_token")?;
    let refresh = grant["refresh_token"].as_str().ok_or("refresh_token")?;
    let (status, body) = o
        .call_with(
            access,
            Method::GET,
            "Contacts",
            &[("fields", "Last_Name")],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["info"]["count"], 50);

    let (status, again) = o
        .token_grant(&accounts, &code_form(&consent["code"]))
        .await?;
    assert_eq!((status, again), (200, json!({"error": "invalid_code"})));

    let (status, refreshed) = o.token_grant(&accounts, &refresh_form(refresh)).await?;
    assert_eq!(status, 200);
    assert!(refreshed.get("refresh_token").is_none());
    let renewed = refreshed["access_token"].as_str().ok_or("access_token")?;
    assert_ne!(renewed, access);
    let (status, _) = o
        .call_with(
            renewed,
            Method::GET,
            "Deals",
            &[("fields", "Deal_Name")],
            None,
        )
        .await?;
    assert_eq!(status, 200);

    let mut bad_secret = refresh_form(refresh);
    bad_secret[2].1 = "wrong";
    assert_eq!(
        o.token_grant(&accounts, &bad_secret).await?.1,
        json!({"error": "invalid_client_secret"})
    );
    let mut bad_client = refresh_form(refresh);
    bad_client[1].1 = "someone-else";
    assert_eq!(
        o.token_grant(&accounts, &bad_client).await?.1,
        json!({"error": "invalid_client"})
    );
    assert_eq!(
        o.token_grant(&accounts, &refresh_form("1000.nope.nope"))
            .await?
            .1,
        json!({"error": "invalid_code"})
    );
    Ok(())
}

#[tokio::test]
async fn an_org_in_the_eu_is_reached_only_through_the_eu_accounts_server_and_api_domain(
) -> TestResult {
    let o = org(small()).await?;
    o.sb.set_data_centre(DataCentre::Eu);
    let consent = o.consent("com", "ZohoCRM.modules.ALL").await?;
    assert_eq!(consent["location"], "eu");
    let eu_accounts = format!("{}/eu/accounts", o.base());
    assert_eq!(consent["accounts-server"], eu_accounts);

    let com_accounts = format!("{}/com/accounts", o.base());
    let (_, wrong_dc) = o
        .token_grant(&com_accounts, &code_form(&consent["code"]))
        .await?;
    assert_eq!(wrong_dc, json!({"error": "invalid_code"}));
    let (_, grant) = o
        .token_grant(&eu_accounts, &code_form(&consent["code"]))
        .await?;
    assert_eq!(grant["api_domain"], format!("{}/eu/api", o.base()));
    let token = grant["access_token"].as_str().ok_or("access_token")?;

    let on_eu = o
        .http
        .get(format!("{}/eu/api/crm/v8/Contacts", o.base()))
        .query(&[("fields", "Email")])
        .header("Authorization", format!("Zoho-oauthtoken {token}"))
        .send()
        .await?;
    assert_eq!(on_eu.status(), 200);
    let (status, body) = o
        .call_with(token, Method::GET, "Contacts", &[("fields", "Email")], None)
        .await?;
    assert_eq!((status, body), (401, invalid_token_body()));
    Ok(())
}

#[tokio::test]
async fn a_token_on_another_data_centre_or_scheme_is_an_invalid_token() -> TestResult {
    let o = org(small()).await?;
    let other_dc = o
        .http
        .get(format!("{}/in/api/crm/v8/Contacts", o.base()))
        .query(&[("fields", "Email")])
        .header("Authorization", format!("Zoho-oauthtoken {}", o.token))
        .send()
        .await?;
    assert_eq!(answer(other_dc).await?, (401, invalid_token_body()));

    let bearer = o
        .http
        .get(o.url("Contacts"))
        .query(&[("fields", "Email")])
        .bearer_auth(&o.token)
        .send()
        .await?;
    assert_eq!(answer(bearer).await?, (401, invalid_token_body()));

    let anonymous = o
        .http
        .get(o.url("Contacts"))
        .query(&[("fields", "Email")])
        .send()
        .await?;
    let (status, body) = answer(anonymous).await?;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "AUTHENTICATION_FAILURE");
    assert_eq!(body["status"], "error");
    Ok(())
}

#[tokio::test]
async fn an_expired_access_token_is_refused_until_it_is_refreshed() -> TestResult {
    let o = org(small()).await?;
    let creds = o.sb.credentials(o.base());
    o.sb.expire_access_tokens();
    let (status, body) = o.get("Contacts", &[("fields", "Email")]).await?;
    assert_eq!((status, body), (401, invalid_token_body()));

    let accounts = creds["accounts_url"].as_str().ok_or("accounts_url")?;
    let refresh = creds["refresh_token"].as_str().ok_or("refresh_token")?;
    let (_, grant) = o.token_grant(accounts, &refresh_form(refresh)).await?;
    let token = grant["access_token"].as_str().ok_or("access_token")?;
    let (status, _) = o
        .call_with(token, Method::GET, "Contacts", &[("fields", "Email")], None)
        .await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn a_narrow_scope_reads_contacts_but_may_not_write_or_query() -> TestResult {
    let o = org(small()).await?;
    let consent = o.consent("com", "ZohoCRM.modules.contacts.READ").await?;
    let accounts = &consent["accounts-server"];
    let (_, grant) = o
        .token_grant(accounts, &code_form(&consent["code"]))
        .await?;
    let token = grant["access_token"].as_str().ok_or("access_token")?;
    let (status, _) = o
        .call_with(token, Method::GET, "Contacts", &[("fields", "Email")], None)
        .await?;
    assert_eq!(status, 200);
    let insert = json!({"data": [{"Last_Name": "Scoped"}]});
    let (status, body) = o
        .call_with(token, Method::POST, "Contacts", &[], Some(insert))
        .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (401, json!("OAUTH_SCOPE_MISMATCH"))
    );
    let coql = json!({"select_query": "select Email from Contacts"});
    let (status, body) = o
        .call_with(token, Method::POST, "coql", &[], Some(coql))
        .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (401, json!("OAUTH_SCOPE_MISMATCH"))
    );
    Ok(())
}

#[tokio::test]
async fn lists_page_through_2000_records_then_continue_with_page_tokens() -> TestResult {
    let o = org(Config {
        contacts: 2_500,
        ..small()
    })
    .await?;
    let mut seen = Vec::new();
    let mut token = None;
    for page in 1..=10 {
        let page = page.to_string();
        let (status, body) = o
            .get(
                "Contacts",
                &[
                    ("fields", "Last_Name,Email"),
                    ("per_page", "200"),
                    ("page", &page),
                ],
            )
            .await?;
        assert_eq!(status, 200);
        assert_eq!(body["info"]["count"], 200);
        assert_eq!(body["info"]["more_records"], true);
        assert_eq!(body["info"]["sort_by"], "id");
        assert_eq!(body["info"]["sort_order"], "desc");
        assert!(body["data"][0]["Email"].is_string());
        seen.extend(ids(&body));
        token = body["info"]["next_page_token"].as_str().map(str::to_owned);
    }
    let (status, body) = o
        .get(
            "Contacts",
            &[("fields", "Last_Name"), ("per_page", "200"), ("page", "11")],
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "DISCRETE_PAGINATION_LIMIT_EXCEEDED");
    assert_eq!(body["details"]["limit"], 2000);

    let mut pages = 0;
    while let Some(t) = token.take() {
        let (status, body) = o
            .get(
                "Contacts",
                &[
                    ("fields", "Last_Name,Email"),
                    ("per_page", "200"),
                    ("page_token", &t),
                ],
            )
            .await?;
        assert_eq!(status, 200);
        seen.extend(ids(&body));
        pages += 1;
        token = body["info"]["next_page_token"].as_str().map(str::to_owned);
        assert_eq!(body["info"]["more_records"], token.is_some());
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 2_500);
    let numeric: Vec<u64> = seen.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    assert!(
        numeric.windows(2).all(|w| w[0] > w[1]),
        "ids descend without repeats"
    );
    assert!(seen.iter().all(|id| id.len() == 19));
    Ok(())
}

#[tokio::test]
async fn lists_require_fields_and_refuse_bad_page_tokens() -> TestResult {
    let o = org(small()).await?;
    let (status, body) = o.get("Contacts", &[]).await?;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"code": "REQUIRED_PARAM_MISSING", "details": {"param_name": "fields"}, "message": "required param is missing", "status": "error"})
    );
    let too_many = vec!["Email"; 51].join(",");
    let (status, body) = o.get("Contacts", &[("fields", &too_many)]).await?;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("LIMIT_EXCEEDED"))
    );
    let (status, body) = o
        .get("Contacts", &[("fields", "Email"), ("sort_by", "Last_Name")])
        .await?;
    assert_eq!((status, body["code"].clone()), (400, json!("INVALID_DATA")));
    let (status, body) = o.get("Widgets", &[("fields", "Email")]).await?;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("INVALID_MODULE"))
    );

    let (_, first) = o
        .get("Contacts", &[("fields", "Email"), ("per_page", "10")])
        .await?;
    let token = first["info"]["next_page_token"]
        .as_str()
        .ok_or("next_page_token")?;
    let (status, body) = o
        .get(
            "Contacts",
            &[("fields", "Email"), ("page_token", token), ("page", "2")],
        )
        .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("AMBIGUITY_DURING_PROCESSING"))
    );
    let (status, body) = o
        .get(
            "Contacts",
            &[
                ("fields", "Email"),
                ("page_token", token),
                ("sort_by", "Modified_Time"),
            ],
        )
        .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("TOKEN_BOUND_DATA_MISMATCH"))
    );
    o.sb.expire_page_tokens();
    let (status, body) = o
        .get("Contacts", &[("fields", "Email"), ("page_token", token)])
        .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("EXPIRED_VALUE"))
    );

    let (status, body) = o.call(Method::PUT, "Contacts/search", &[], None).await?;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("INVALID_REQUEST_METHOD"))
    );
    let unknown = o
        .http
        .get(format!("{}/com/api/crm/v2/Contacts", o.base()))
        .send()
        .await?;
    let (status, body) = answer(unknown).await?;
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!("INVALID_URL_PATTERN"))
    );
    Ok(())
}

#[tokio::test]
async fn if_modified_since_lists_only_later_changes_and_204_when_there_are_none() -> TestResult {
    let o = org(small()).await?;
    let (_, all) = o
        .get("Contacts", &[("fields", "Title"), ("per_page", "5")])
        .await?;
    let changed = ids(&all)[..2].to_vec();
    let before = ist(Utc::now() - chrono::Duration::seconds(60));
    let update = json!({"data": [
        {"id": changed[0], "Title": "VP Sales"},
        {"id": changed[1], "Title": "CFO"},
    ]});
    let (status, written) = o.call(Method::PUT, "Contacts", &[], Some(update)).await?;
    assert_eq!(status, 200);
    assert_eq!(written["data"][0]["code"], "SUCCESS");
    assert_eq!(written["data"][0]["message"], "record updated");

    let resp = o
        .http
        .get(o.url("Contacts"))
        .query(&[
            ("fields", "Title,Modified_Time"),
            ("sort_by", "Modified_Time"),
            ("sort_order", "asc"),
        ])
        .header("Authorization", format!("Zoho-oauthtoken {}", o.token))
        .header("If-Modified-Since", &before)
        .send()
        .await?;
    let (status, delta) = answer(resp).await?;
    assert_eq!(status, 200);
    let mut got = ids(&delta);
    got.sort();
    let mut want = changed.clone();
    want.sort();
    assert_eq!(got, want);
    let modified = delta["data"][0]["Modified_Time"]
        .as_str()
        .ok_or("Modified_Time")?;
    assert!(modified.ends_with("+05:30"), "{modified}");

    let after = ist(Utc::now() + chrono::Duration::seconds(5));
    let resp = o
        .http
        .get(o.url("Contacts"))
        .query(&[("fields", "Title")])
        .header("Authorization", format!("Zoho-oauthtoken {}", o.token))
        .header("If-Modified-Since", &after)
        .send()
        .await?;
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn deleted_records_go_to_the_recycle_bin_and_the_deleted_api_lists_them() -> TestResult {
    let o = org(small()).await?;
    let (_, page) = o
        .get("Contacts", &[("fields", "Full_Name"), ("per_page", "2")])
        .await?;
    let doomed = ids(&page);
    let names: Vec<Value> = page["data"]
        .as_array()
        .ok_or("data")?
        .iter()
        .map(|r| r["Full_Name"].clone())
        .collect();
    let list = format!("{},{},123", doomed[0], doomed[1]);
    let (status, body) = o
        .call(Method::DELETE, "Contacts", &[("ids", &list)], None)
        .await?;
    assert_eq!(status, 207);
    assert_eq!(body["data"][0]["message"], "record deleted");
    assert_eq!(body["data"][2]["code"], "INVALID_DATA");
    assert_eq!(o.sb.record_count("Contacts"), 48);
    let (status, _) = o.get(&format!("Contacts/{}", doomed[0]), &[]).await?;
    assert_eq!(status, 204);

    let (status, recycle) = o.get("Contacts/deleted", &[("type", "recycle")]).await?;
    assert_eq!(status, 200);
    assert_eq!(recycle["info"]["count"], 2);
    let mut listed = ids(&recycle);
    listed.sort();
    let mut want = doomed.clone();
    want.sort();
    assert_eq!(listed, want);
    for row in recycle["data"].as_array().ok_or("data")? {
        assert_eq!(row["type"], "recycle");
        assert_eq!(row["deleted_by"]["name"], "Patricia Boyle");
        assert!(names.contains(&row["display_name"]));
        assert!(row["deleted_time"].is_string());
    }
    let (status, _) = o.get("Contacts/deleted", &[("type", "permanent")]).await?;
    assert_eq!(status, 204);

    o.sb.empty_recycle_bin();
    let (_, permanent) = o.get("Contacts/deleted", &[("type", "permanent")]).await?;
    assert_eq!(permanent["info"]["count"], 2);
    assert_eq!(permanent["data"][0]["display_name"], Value::Null);
    assert_eq!(permanent["data"][0]["deleted_by"], Value::Null);
    let (_, all) = o.get("Contacts/deleted", &[]).await?;
    assert_eq!(all["info"]["count"], 2);
    Ok(())
}

#[tokio::test]
async fn inserts_updates_and_upserts_round_trip_lookups_multi_select_and_dates() -> TestResult {
    let o = org(small()).await?;
    let (status, created) = o
        .call(
            Method::POST,
            "Accounts",
            &[],
            Some(json!({"data": [{"Account_Name": "Zylker Corp", "Industry": "Retail"}]})),
        )
        .await?;
    assert_eq!(status, 201);
    assert_eq!(created["data"][0]["message"], "record added");
    let account = created["data"][0]["details"]["id"]
        .as_str()
        .ok_or("id")?
        .to_owned();

    let contact = json!({"data": [{
        "First_Name": "Grace", "Last_Name": "Hopper", "Email": "grace@zylker.example",
        "Account_Name": {"id": account}, "Interests": ["Mobile", "Security"],
        "Date_of_Birth": "1906-12-09", "Lead_Source": "Trade Show"
    }]});
    let (status, created) = o.call(Method::POST, "Contacts", &[], Some(contact)).await?;
    assert_eq!(status, 201);
    let details = &created["data"][0]["details"];
    assert_eq!(details["Created_By"]["name"], "Patricia Boyle");
    let id = details["id"].as_str().ok_or("id")?.to_owned();

    let (_, got) = o.get(&format!("Contacts/{id}"), &[]).await?;
    let record = &got["data"][0];
    assert_eq!(
        record["Account_Name"],
        json!({"name": "Zylker Corp", "id": account})
    );
    assert_eq!(record["Interests"], json!(["Mobile", "Security"]));
    assert_eq!(record["Date_of_Birth"], "1906-12-09");
    assert_eq!(record["Full_Name"], "Grace Hopper");
    assert_eq!(
        record["Owner"]["email"],
        "patricia.boyle@zoho-sandbox.example.com"
    );

    let (status, _) = o
        .call(
            Method::PUT,
            &format!("Contacts/{id}"),
            &[],
            Some(json!({"data": [{"Interests": ["Support"], "Title": "Rear Admiral"}]})),
        )
        .await?;
    assert_eq!(status, 200);
    let (_, got) = o
        .get(&format!("Contacts/{id}"), &[("fields", "Interests,Title")])
        .await?;
    assert_eq!(got["data"][0]["Interests"], json!(["Support"]));
    assert_eq!(got["data"][0]["Title"], "Rear Admiral");

    let upsert = json!({"data": [
        {"Last_Name": "Hopper", "Email": "GRACE@zylker.example", "Mobile": "+1 555 0100"},
        {"Last_Name": "Lovelace", "Email": "ada@zylker.example"},
    ], "duplicate_check_fields": ["Email"]});
    let (status, up) = o
        .call(Method::POST, "Contacts/upsert", &[], Some(upsert))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(up["data"][0]["action"], "update");
    assert_eq!(up["data"][0]["duplicate_field"], "Email");
    assert_eq!(up["data"][0]["details"]["id"], id.as_str());
    assert_eq!(up["data"][1]["action"], "insert");
    assert_eq!(o.sb.record_count("Contacts"), 52);

    let deal = json!({"data": [{
        "Deal_Name": "Zylker renewal", "Stage": "Negotiation/Review", "Closing_Date": "2025-03-31",
        "Amount": 12500.5, "Account_Name": {"id": account}, "Contact_Name": {"id": id}
    }]});
    let (_, created) = o.call(Method::POST, "Deals", &[], Some(deal)).await?;
    let deal_id = created["data"][0]["details"]["id"]
        .as_str()
        .ok_or("id")?
        .to_owned();
    let (_, got) = o.get(&format!("Deals/{deal_id}"), &[]).await?;
    assert_eq!(got["data"][0]["Probability"], 90);
    assert_eq!(got["data"][0]["Amount"], 12500.5);
    assert_eq!(got["data"][0]["Contact_Name"]["name"], "Grace Hopper");

    let call = json!({"data": [{
        "Subject": "Renewal call", "Call_Type": "Outbound", "Call_Start_Time": "2025-01-15T10:00:00+01:00",
        "Call_Duration": "05:30", "Description": "Talked terms",
        "Who_Id": {"id": id}, "What_Id": {"id": deal_id}, "$se_module": "Deals"
    }]});
    let (status, created) = o.call(Method::POST, "Calls", &[], Some(call)).await?;
    assert_eq!(status, 201);
    let call_id = created["data"][0]["details"]["id"]
        .as_str()
        .ok_or("id")?
        .to_owned();
    let (_, got) = o.get(&format!("Calls/{call_id}"), &[]).await?;
    let c = &got["data"][0];
    assert_eq!(c["Call_Start_Time"], "2025-01-15T14:30:00+05:30");
    assert_eq!(c["Call_Duration_in_seconds"], 330);
    assert_eq!(
        c["What_Id"],
        json!({"name": "Zylker renewal", "id": deal_id})
    );
    assert_eq!(c["$se_module"], "Deals");
    assert_eq!(c["Who_Id"]["id"], id.as_str());
    Ok(())
}

#[tokio::test]
async fn bad_records_fail_one_by_one_with_zohos_codes() -> TestResult {
    let o = org(small()).await?;
    let body = json!({"data": [
        {"Last_Name": "Fine"},
        {"First_Name": "No last name"},
        {"Last_Name": "X", "Interests": "Mobile"},
        {"Last_Name": "Y", "Account_Name": {"id": "1"}},
        {"Last_Name": "Z", "Shoe_Size": 44},
    ]});
    let (status, answer) = o.call(Method::POST, "Contacts", &[], Some(body)).await?;
    assert_eq!(status, 207);
    let rows = answer["data"].as_array().ok_or("data")?;
    assert_eq!(rows[0]["status"], "success");
    assert_eq!(
        rows[1],
        json!({"code": "MANDATORY_NOT_FOUND", "details": {"api_name": "Last_Name", "json_path": "$.data[1].Last_Name"}, "message": "required field not found", "status": "error"})
    );
    assert_eq!(rows[2]["details"]["expected_data_type"], "jsonarray");
    assert_eq!(rows[3]["code"], "INVALID_DATA");
    assert_eq!(rows[3]["details"]["api_name"], "Account_Name");
    assert_eq!(rows[4]["details"]["api_name"], "Shoe_Size");

    let (status, answer) = o
        .call(
            Method::POST,
            "Deals",
            &[],
            Some(json!({"data": [{"Deal_Name": "No stage"}]})),
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(answer["data"][0]["code"], "MANDATORY_NOT_FOUND");
    let many: Vec<Value> = (0..101)
        .map(|i| json!({"Last_Name": format!("N{i}")}))
        .collect();
    let (status, answer) = o
        .call(Method::POST, "Contacts", &[], Some(json!({"data": many})))
        .await?;
    assert_eq!(
        (status, answer["code"].clone()),
        (400, json!("LIMIT_EXCEEDED"))
    );
    let (status, answer) = o
        .call(
            Method::PUT,
            "Contacts",
            &[],
            Some(json!({"data": [{"id": "42", "Title": "x"}]})),
        )
        .await?;
    assert_eq!(
        (status, answer["data"][0]["code"].clone()),
        (400, json!("INVALID_DATA"))
    );
    Ok(())
}

#[tokio::test]
async fn search_finds_records_by_criteria_email_and_word() -> TestResult {
    let o = org(small()).await?;
    let (_, page) = o
        .get(
            "Contacts",
            &[("fields", "Email,Last_Name"), ("per_page", "1")],
        )
        .await?;
    let email = page["data"][0]["Email"].as_str().ok_or("Email")?.to_owned();
    let last = page["data"][0]["Last_Name"]
        .as_str()
        .ok_or("Last_Name")?
        .to_owned();

    let (status, found) = o
        .get("Contacts/search", &[("email", &email.to_uppercase())])
        .await?;
    assert_eq!(status, 200);
    assert_eq!(found["data"][0]["Email"], email.as_str());

    let criteria = format!(
        "((Last_Name:equals:{last})and(Email:starts_with:{}))",
        &email[..3]
    );
    let (status, found) = o
        .get(
            "Contacts/search",
            &[("criteria", &criteria), ("fields", "Last_Name")],
        )
        .await?;
    assert_eq!(status, 200);
    for row in found["data"].as_array().ok_or("data")? {
        assert_eq!(row["Last_Name"], last.as_str());
    }
    let (status, found) = o.get("Contacts/search", &[("word", &last)]).await?;
    assert_eq!(status, 200);
    assert!(found["info"]["count"].as_u64().ok_or("count")? >= 1);

    let (status, _) = o
        .get("Contacts/search", &[("email", "nobody@nowhere.example")])
        .await?;
    assert_eq!(status, 204);
    let (status, body) = o
        .get(
            "Contacts/search",
            &[("criteria", "(Last_Name:sounds_like:x)")],
        )
        .await?;
    assert_eq!(
        (status, body["code"].clone()),
        (400, json!("INVALID_QUERY"))
    );
    Ok(())
}

#[tokio::test]
async fn coql_selects_filters_orders_and_pages_the_supported_subset() -> TestResult {
    let o = org(small()).await?;
    let (status, all) = o.coql("select Last_Name, Email, Account_Name, Account_Name.Account_Name from Contacts order by id asc limit 2000").await?;
    assert_eq!(status, 200);
    assert_eq!(all["info"], json!({"count": 50, "more_records": false}));
    let rows = all["data"].as_array().ok_or("data")?;
    let numeric: Vec<u64> = ids(&all)
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    assert!(numeric.windows(2).all(|w| w[0] < w[1]));
    let linked = rows
        .iter()
        .find(|r| r["Account_Name"].is_object())
        .ok_or("a contact at an account")?;
    assert_eq!(
        linked["Account_Name"].as_object().ok_or("lookup")?.len(),
        1,
        "COQL lookups carry only the id"
    );
    assert!(linked["Account_Name.Account_Name"].is_string());

    let last = rows[0]["Last_Name"].as_str().ok_or("Last_Name")?;
    let prefix = &last[..3];
    let q = format!(
        "select Last_Name from Contacts where (Last_Name like '{prefix}%' and Modified_Time >= '2024-01-01T00:00:00+00:00') order by Last_Name desc limit 0, 5"
    );
    let (status, some) = o.coql(&q).await?;
    assert_eq!(status, 200);
    for row in some["data"].as_array().ok_or("data")? {
        assert!(row["Last_Name"]
            .as_str()
            .ok_or("Last_Name")?
            .starts_with(prefix));
    }
    let (_, paged) = o
        .coql("select Email from Contacts order by id asc limit 10 offset 45")
        .await?;
    assert_eq!(paged["info"], json!({"count": 5, "more_records": false}));
    assert_eq!(ids(&paged), ids(&all)[45..].to_vec());
    let (_, first) = o
        .coql("select Email from Contacts order by id asc limit 10")
        .await?;
    assert_eq!(first["info"]["more_records"], true);

    let (status, _) = o
        .coql("select Email from Contacts where Email = 'nobody@nowhere.example'")
        .await?;
    assert_eq!(status, 204);
    for (q, code) in [
        ("select Email from Contacts limit 2001", "LIMIT_EXCEEDED"),
        (
            "select Email from Contacts limit 100001, 10",
            "LIMIT_EXCEEDED",
        ),
        ("select Email from Contacts where", "SYNTAX_ERROR"),
        (
            "select Email from Contacts where Email = 'a' and Email = 'b' or Email = 'c'",
            "SYNTAX_ERROR",
        ),
        ("select Nope from Contacts", "INVALID_QUERY"),
    ] {
        let (status, body) = o.coql(q).await?;
        assert_eq!((status, body["code"].clone()), (400, json!(code)), "{q}");
        assert_eq!(body["status"], "error");
    }
    Ok(())
}

/// A tiny HTTP receiver for notification callbacks.
async fn receiver(
) -> Result<(String, mpsc::UnboundedReceiver<(String, Value)>, Running), Box<dyn Error>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/zoho/notify",
        post(move |RawQuery(q): RawQuery, Json(body): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((q.unwrap_or_default(), body));
                StatusCode::OK
            }
        }),
    );
    let running = serve(app, "127.0.0.1:0".parse()?).await?;
    Ok((format!("{}/zoho/notify", running.base_url), rx, running))
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(String, Value)>,
) -> Result<(String, Value), Box<dyn Error>> {
    Ok(tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await?
        .ok_or("receiver closed")?)
}

fn watch(channel: u64, url: &str, events: &[&str]) -> Value {
    json!({"watch": [{
        "channel_id": channel,
        "events": events,
        "notify_url": url,
        "token": "per-channel-secret",
        "channel_expiry": ist(Utc::now() + chrono::Duration::hours(2)),
        "return_affected_field_values": true,
    }]})
}

#[tokio::test]
async fn watched_changes_are_posted_to_the_notify_url_in_batches() -> TestResult {
    let o = org(small()).await?;
    let (url, mut rx, _receiver) = receiver().await?;
    let (status, body) = o
        .call(
            Method::POST,
            "actions/watch",
            &[],
            Some(watch(
                1000000068001,
                &format!("{url}?src=zoho"),
                &["Contacts.all", "Deals.edit"],
            )),
        )
        .await?;
    assert_eq!(status, 201);
    assert_eq!(body["watch"][0]["code"], "SUCCESS");
    assert_eq!(
        body["watch"][0]["details"]["events"]
            .as_array()
            .ok_or("events")?
            .len(),
        2
    );
    let (_, listed) = o.get("actions/watch", &[("module", "Contacts")]).await?;
    assert_eq!(
        listed["watch"][0]["events"],
        json!(["Contacts.create", "Contacts.edit", "Contacts.delete"])
    );

    let insert = json!({"data": [{"Last_Name": "One"}, {"Last_Name": "Two"}]});
    let (_, created) = o.call(Method::POST, "Contacts", &[], Some(insert)).await?;
    let new_ids: Vec<Value> = created["data"]
        .as_array()
        .ok_or("data")?
        .iter()
        .map(|r| r["details"]["id"].clone())
        .collect();
    let (query, callback) = next(&mut rx).await?;
    assert_eq!(query, "src=zoho");
    assert_eq!(callback["operation"], "insert");
    assert_eq!(callback["module"], "Contacts");
    assert_eq!(callback["ids"], json!(new_ids));
    assert_eq!(callback["token"], "per-channel-secret");
    assert_eq!(callback["channel_id"], 1000000068001u64);
    assert_eq!(callback["query_params"], json!({"src": "zoho"}));
    assert_eq!(callback["resource_uri"], o.url("Contacts"));
    assert_eq!(callback["affected_fields"], json!([]));
    assert!(callback["server_time"].is_i64());
    let named: Vec<&str> = new_ids.iter().filter_map(Value::as_str).collect();
    let (status, fetched) = o
        .get(
            "Contacts",
            &[("fields", "Last_Name"), ("ids", &named.join(","))],
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(fetched["info"]["count"], 2);

    let id = new_ids[0].as_str().ok_or("id")?;
    let update = json!({"data": [{"id": id, "Title": "Engineer", "Last_Name": "One"}]});
    o.call(Method::PUT, "Contacts", &[], Some(update)).await?;
    let (_, callback) = next(&mut rx).await?;
    assert_eq!(callback["operation"], "update");
    assert_eq!(callback["affected_fields"], json!([{ id: ["Title"] }]));
    assert_eq!(
        callback["affected_values"][0]["values"],
        json!({"Title": "Engineer"})
    );

    o.sb.mutate(40);
    let (_, callback) = next(&mut rx).await?;
    assert!(["Contacts", "Deals"].contains(&callback["module"].as_str().ok_or("module")?));
    assert!(!callback["ids"].as_array().ok_or("ids")?.is_empty());
    Ok(())
}

#[tokio::test]
async fn expired_channels_and_dropped_deliveries_send_nothing() -> TestResult {
    let o = org(small()).await?;
    let (url, mut rx, _receiver) = receiver().await?;
    let old = watch(1, &format!("{url}?ch=old"), &["Contacts.create"]);
    let (status, _) = o
        .call(Method::POST, "actions/watch", &[], Some(old))
        .await?;
    assert_eq!(status, 201);
    o.sb.expire_watch_channels();
    let (status, _) = o.get("actions/watch", &[]).await?;
    assert_eq!(status, 204);
    let new = watch(2, &format!("{url}?ch=new"), &["Contacts.create"]);
    o.call(Method::POST, "actions/watch", &[], Some(new))
        .await?;
    let one = json!({"data": [{"Last_Name": "After expiry"}]});
    o.call(Method::POST, "Contacts", &[], Some(one)).await?;
    assert_eq!(o.sb.callbacks_sent(), 1, "only the live channel is called");
    let (query, _) = next(&mut rx).await?;
    assert_eq!(query, "ch=new");

    o.sb.faults().set("drop-webhooks=1".parse::<Faults>()?);
    let lost = json!({"data": [{"Last_Name": "Lost"}]});
    o.call(Method::POST, "Contacts", &[], Some(lost)).await?;
    assert_eq!((o.sb.callbacks_sent(), o.sb.callbacks_dropped()), (1, 1));
    o.sb.faults().set(Faults::default());
    let kept = json!({"data": [{"Last_Name": "Kept"}]});
    let (_, kept) = o.call(Method::POST, "Contacts", &[], Some(kept)).await?;
    assert_eq!((o.sb.callbacks_sent(), o.sb.callbacks_dropped()), (2, 1));
    let (_, callback) = next(&mut rx).await?;
    assert_eq!(callback["ids"], json!([kept["data"][0]["details"]["id"]]));

    let (status, body) = o
        .call(
            Method::DELETE,
            "actions/watch",
            &[("channel_ids", "2")],
            None,
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["watch"][0]["details"]["channel_id"], "2");
    let far = json!({"watch": [{"channel_id": 3, "events": ["Deals.all"], "notify_url": url,
        "channel_expiry": ist(Utc::now() + chrono::Duration::days(8))}]});
    let (status, body) = o
        .call(Method::POST, "actions/watch", &[], Some(far))
        .await?;
    assert_eq!(status, 400);
    assert_eq!(body["watch"][0]["details"]["api_name"], "channel_expiry");
    let long_token = json!({"watch": [{"channel_id": 4, "events": ["Deals.all"], "notify_url": url, "token": "x".repeat(51)}]});
    let (status, body) = o
        .call(Method::POST, "actions/watch", &[], Some(long_token))
        .await?;
    assert_eq!(
        (status, body["watch"][0]["details"]["api_name"].clone()),
        (400, json!("token"))
    );
    Ok(())
}

fn too_many(body: &Value) -> bool {
    body["code"] == "TOO_MANY_REQUESTS"
        && body["status"] == "error"
        && body["details"] == json!({})
        && body["message"].is_string()
}

#[tokio::test]
async fn spending_the_days_credits_answers_429_too_many_requests() -> TestResult {
    let o = org(Config {
        credits_per_day: 5,
        ..small()
    })
    .await?;
    for _ in 0..5 {
        let (status, _) = o
            .get("Contacts", &[("fields", "Email"), ("per_page", "1")])
            .await?;
        assert_eq!(status, 200);
    }
    assert_eq!(o.sb.credits_remaining(), 0);
    let (status, body) = o
        .get("Contacts", &[("fields", "Email"), ("per_page", "1")])
        .await?;
    assert_eq!(status, 429);
    assert!(too_many(&body), "{body}");
    Ok(())
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_answer_429_too_many_requests() -> TestResult {
    let o = org(Config {
        concurrency: 2,
        ..small()
    })
    .await?;
    o.sb.hold_requests(true);
    let mut running = Vec::new();
    for _ in 0..2 {
        let req = o
            .http
            .get(o.url("Contacts"))
            .query(&[("fields", "Email")])
            .header("Authorization", format!("Zoho-oauthtoken {}", o.token));
        running.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while o.sb.requests_in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let (status, body) = o.get("Contacts", &[("fields", "Email")]).await?;
    assert_eq!(status, 429);
    assert!(too_many(&body), "{body}");
    o.sb.hold_requests(false);
    for r in running {
        assert_eq!(r.await??, 200);
    }
    let (status, _) = o.get("Contacts", &[("fields", "Email")]).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn a_429_storm_answers_in_zohos_shape() -> TestResult {
    let o = org(Config {
        faults: "storm=60s/60s".parse()?,
        ..small()
    })
    .await?;
    let (status, body) = o.get("Contacts", &[("fields", "Email")]).await?;
    assert_eq!(status, 429);
    assert!(too_many(&body), "{body}");
    Ok(())
}

async fn everything(o: &Org, module: &str, fields: &str) -> Result<Vec<Value>, Box<dyn Error>> {
    let mut rows = Vec::new();
    let mut page = 1;
    loop {
        let p = page.to_string();
        let (status, body) = o.get(module, &[("fields", fields), ("page", &p)]).await?;
        if status == 204 {
            break;
        }
        rows.extend(body["data"].as_array().ok_or("data")?.iter().cloned());
        if body["info"]["more_records"] != true {
            break;
        }
        page += 1;
    }
    Ok(rows)
}

#[tokio::test]
async fn the_same_seed_gives_the_same_org() -> TestResult {
    let config = Config {
        seed: 7,
        contacts: 300,
        ..small()
    };
    let a = org(config.clone()).await?;
    let b = org(config.clone()).await?;
    let c = org(Config { seed: 8, ..config }).await?;
    let fields =
        "First_Name,Last_Name,Email,Phone,Account_Name,Interests,Created_Time,Modified_Time";
    let from_a = everything(&a, "Contacts", fields).await?;
    assert_eq!(from_a.len(), 300);
    assert_eq!(from_a, everything(&b, "Contacts", fields).await?);
    assert_ne!(from_a, everything(&c, "Contacts", fields).await?);
    let deal_fields = "Deal_Name,Stage,Amount,Closing_Date,Contact_Name";
    assert_eq!(
        everything(&a, "Deals", deal_fields).await?,
        everything(&b, "Deals", deal_fields).await?
    );

    a.sb.mutate(25);
    b.sb.mutate(25);
    let changed = "Title,Phone,Lead_Source,Interests";
    assert_eq!(
        everything(&a, "Contacts", changed).await?,
        everything(&b, "Contacts", changed).await?
    );
    assert_eq!(a.sb.record_count("Deals"), b.sb.record_count("Deals"));
    Ok(())
}

#[tokio::test]
async fn a_hundred_thousand_contacts_are_generated() -> TestResult {
    let o = org(Config {
        contacts: 100_000,
        ..small()
    })
    .await?;
    assert_eq!(o.sb.record_count("Contacts"), 100_000);
    let (status, body) = o
        .get("Contacts", &[("fields", "Email"), ("per_page", "1")])
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["info"]["more_records"], true);
    Ok(())
}
