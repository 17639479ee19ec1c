//! Connecting a HubSpot portal over OAuth, against the HubSpot emulator.

mod common;

use serde_json::Value;

use common::hubspot::{start, API_TOKEN};
use crmsync_adapters::Vault;
use crmsync_ingest::connections::{self, ConnectionError};
use crmsync_sandbox::hubspot::Config;

#[tokio::test]
async fn a_portal_connects_and_its_tokens_are_stored_encrypted() {
    let s = start(Config::default(), &[]).await;
    let callback = s.authorize("acme").await;
    assert!(
        callback.starts_with(&s.engine.url("/crm/hubspot/callback")),
        "{callback}"
    );
    let connected = s.no_redirects.get(&callback).send().await.unwrap();
    assert_eq!(connected.status(), 200);
    let body: Value = connected.json().await.unwrap();
    assert_eq!(body["account_id"], "62515");
    assert_eq!(body["workspace"], "acme");

    let secrets: Vec<u8> =
        sqlx::query_scalar("SELECT secrets FROM crm_connections WHERE workspace_id = 'acme'")
            .fetch_one(&s.engine.pool)
            .await
            .unwrap();
    let token = s.token("acme").await.unwrap();
    assert!(
        !secrets
            .windows(token.expose().len())
            .any(|w| w == token.expose().as_bytes()),
        "the token is stored in clear"
    );
    let listed = reqwest::Client::new()
        .get(format!(
            "{}/crm/v3/objects/contacts",
            s.engine.settings.hubspot_api_url
        ))
        .bearer_auth(token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200, "the stored token works");

    let again = s.no_redirects.get(&callback).send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains("already used"));

    let list: Value = reqwest::Client::new()
        .get(s.engine.url("/crm/connections?workspace=acme"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["connections"][0]["status"], "active");
    assert!(list.to_string().find(token.expose()).is_none());
}

#[tokio::test]
async fn forged_or_missing_states_and_tokens_are_refused() {
    let s = start(Config::default(), &[]).await;
    let start = s
        .no_redirects
        .get(s.engine.url("/crm/hubspot/start?workspace=acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 401, "the start needs the control API token");
    let callback = s.authorize("acme").await;
    let forged = callback.replace("state=", "state=x");
    let r = s.no_redirects.get(&forged).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let tampered_code = format!("{}0", callback);
    let r = s.no_redirects.get(&tampered_code).send().await.unwrap();
    assert_eq!(
        r.status(),
        400,
        "a wrong state signature is refused before any exchange"
    );
    let r = s
        .no_redirects
        .get(s.engine.url("/crm/hubspot/callback?code=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s
        .no_redirects
        .get(s.engine.url("/crm/hubspot/callback?error=access_denied"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(connections::get(&s.engine.pool, "acme", "hubspot")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn tokens_refresh_once_for_many_callers_and_a_revoked_grant_needs_reconnection() {
    let s = start(Config::default(), &[]).await;
    s.connect("acme").await;
    let before = s.token("acme").await.unwrap();

    sqlx::query("UPDATE crm_connections SET access_expires_at = now()")
        .execute(&s.engine.pool)
        .await
        .unwrap();
    let callers = (0..5).map(|_| s.token("acme"));
    let tokens: Vec<String> = futures::future::join_all(callers)
        .await
        .into_iter()
        .map(|t| t.unwrap().expose().clone())
        .collect();
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "one refresh served every caller"
    );
    assert_ne!(&tokens[0], before.expose());
    let expires: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT access_expires_at FROM crm_connections")
            .fetch_one(&s.engine.pool)
            .await
            .unwrap();
    assert!(expires > chrono::Utc::now() + chrono::Duration::minutes(20));

    s.hs.revoke_refresh_tokens();
    sqlx::query("UPDATE crm_connections SET access_expires_at = now()")
        .execute(&s.engine.pool)
        .await
        .unwrap();
    let err = s.token("acme").await.unwrap_err();
    assert!(
        matches!(err, ConnectionError::NeedsReconnect { .. }),
        "{err}"
    );
    let c = connections::get(&s.engine.pool, "acme", "hubspot")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, "needs_reconnect");
    assert!(c.last_error.unwrap().contains("BAD_REFRESH_TOKEN"));
}

#[tokio::test]
async fn disconnect_removes_the_connection_and_its_secrets() {
    let s = start(Config::default(), &[]).await;
    s.connect("acme").await;
    let http = reqwest::Client::new();
    let url = s.engine.url("/crm/hubspot/disconnect");
    let body = serde_json::json!({"workspace": "acme"});
    assert_eq!(
        http.post(&url).json(&body).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        http.post(&url)
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.post(&url)
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_connections")
        .fetch_one(&s.engine.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(
        http.post(&url)
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn rotate_key_reencrypts_every_secret_to_the_new_identity() {
    let s = start(Config::default(), &[]).await;
    s.connect("acme").await;
    let before = s.token("acme").await.unwrap();
    let (_, new_key) = Vault::generate();
    let both = Vault::parse(&format!("{new_key}\n{}", s.key)).unwrap();
    assert_eq!(connections::rotate(&s.engine.pool, &both).await.unwrap(), 1);
    assert_eq!(
        connections::rotate(&s.engine.pool, &both).await.unwrap(),
        0,
        "idempotent"
    );
    let secrets: Vec<u8> = sqlx::query_scalar("SELECT secrets FROM crm_connections")
        .fetch_one(&s.engine.pool)
        .await
        .unwrap();
    let new_only = Vault::parse(&new_key).unwrap();
    assert!(new_only
        .open(&secrets)
        .unwrap()
        .windows(before.expose().len())
        .any(|w| w == before.expose().as_bytes()));
    assert!(
        s.vault().open(&secrets).is_err(),
        "the old key alone no longer opens it"
    );
}

/// A state signed with the right key is still refused when it has expired (by its
/// own clock or the server's record), was issued for another provider, or was never
/// issued; none of them reaches the code exchange or stores a connection.
#[tokio::test]
async fn expired_misdirected_and_unissued_states_are_refused_before_any_exchange() {
    use crmsync_ingest::oauth::state::{self, Claims};

    let s = start(Config::default(), &[]).await;
    let key = s.vault().signing_key();
    let now = chrono::Utc::now().timestamp();
    let callback = |token: &str| {
        s.engine.url(&format!(
            "/crm/hubspot/callback?code=abc&state={}",
            common::url_escape(token)
        ))
    };
    let claims = |nonce: &str, provider: &str, expires: i64| Claims {
        nonce: nonce.into(),
        workspace: "acme".into(),
        provider: provider.into(),
        expires,
    };
    let cases = [
        (claims("n-expired", "hubspot", now - 1), "has expired"),
        (claims("n-zoho", "zoho", now + 600), "another provider"),
        (
            claims("n-never-issued", "hubspot", now + 600),
            "already used",
        ),
    ];
    for (claims, message) in &cases {
        let r = s
            .no_redirects
            .get(callback(&state::sign(&key, claims)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{message}");
        let body = r.text().await.unwrap();
        assert!(body.contains(message), "{message}: {body}");
    }

    // Issued, then past its time in the server's record (the token's own expiry
    // still ahead): refused, and it cannot be used afterwards either.
    let issued = s.authorize("acme").await;
    let moved = sqlx::query(
        "UPDATE crm_oauth_states SET expires_at = now() - interval '1 second'
         WHERE workspace_id = 'acme' AND provider = 'hubspot' AND used_at IS NULL",
    )
    .execute(&s.engine.pool)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1);
    for attempt in ["expired", "again"] {
        let r = s.no_redirects.get(&issued).send().await.unwrap();
        assert_eq!(r.status(), 400, "{attempt}");
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("start the connection again"));
    }

    assert!(connections::get(&s.engine.pool, "acme", "hubspot")
        .await
        .unwrap()
        .is_none());
}
