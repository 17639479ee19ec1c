//! No secret and no personal data in the logs: the demo's whole run (three CRMs
//! connected by OAuth and API key, signed webhooks, polls, a call pushed to each) at
//! `RUST_LOG=debug`, every dependency included, then its log searched for every
//! secret it used and for every email it synced.

use std::process::Command;

use crmsync_adapters::Vault;

/// Every sealed secret of the demo's connections, opened with its key.
async fn sealed_secrets(pool: &sqlx::PgPool, vault: &Vault) -> Vec<String> {
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT provider, secrets FROM crm_connections ORDER BY provider")
            .fetch_all(pool)
            .await
            .unwrap();
    let providers: Vec<&str> = rows.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(providers, ["hubspot", "odoo", "zoho"]);
    let mut secrets = vec![];
    for (provider, sealed) in rows {
        assert!(
            !String::from_utf8_lossy(&sealed).contains("access_token"),
            "{provider}'s secrets are stored in the clear"
        );
        let opened: serde_json::Value =
            serde_json::from_slice(&vault.open(&sealed).unwrap()).unwrap();
        for name in ["access_token", "refresh_token", "channel_token"] {
            if let Some(s) = opened[name].as_str() {
                secrets.push(s.to_owned());
            }
        }
    }
    secrets
}

#[tokio::test]
async fn a_full_run_logs_none_of_the_secrets_it_used_nor_the_emails_it_synced() {
    let admin = crmsync_testkit::database_url();
    let name = crmsync_testkit::unique_name();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    let (_, key) = Vault::generate();
    let api_token = format!("api-token-{}", uuid::Uuid::new_v4().simple());

    // Bounded: a demo that never finishes fails the test rather than hanging it.
    let mut cmd = Command::new("timeout");
    cmd.args(["--signal=KILL", "180", env!("CARGO_BIN_EXE_crmsync")]);
    for (var, _) in std::env::vars() {
        if var.starts_with("CRM_") || var == "PORT" || var == "ENCRYPTION_KEY" {
            cmd.env_remove(var);
        }
    }
    let out = cmd
        .args(["demo", "--exit"])
        .env("DATABASE_URL", url.as_str())
        .env("NATS_URL", crmsync_testkit::nats_url())
        .env("CRM_NATS_PREFIX", &name)
        .env("PORT", "0")
        .env("CRM_API_TOKEN", &api_token)
        .env("ENCRYPTION_KEY", &key)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{log}");
    // Debug logging was on, from crmsync and from its dependencies.
    for target in ["crmsync_engine", "crmsync_ingest", "reqwest", "hyper"] {
        assert!(log.contains(target), "no {target} debug lines in the log");
    }

    let mut demo = url.clone();
    demo.set_path(&format!("/{name}_demo"));
    let pool = sqlx::PgPool::connect(demo.as_str()).await.unwrap();
    let vault = Vault::parse(&key).unwrap();
    let mut secrets = sealed_secrets(&pool, &vault).await;
    assert!(secrets.len() >= 5, "{} secrets", secrets.len());
    secrets.extend([
        api_token.clone(),
        key.clone(),
        "hubspot-sandbox-secret".to_owned(),
        "zoho-sandbox-secret".to_owned(),
        crmsync_sandbox::odoo::Config::default().api_key,
    ]);
    for secret in &secrets {
        assert!(secret.len() >= 12, "too short to search for: {secret:?}");
        for (what, text) in [("log", &log), ("output", &stdout)] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret ({}…) is in the {what}",
                &secret[..6]
            );
        }
    }

    let emails: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT email FROM contacts WHERE email LIKE '%@%'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(emails.len() >= 10, "{} emails synced", emails.len());
    for email in &emails {
        assert!(!log.contains(email.as_str()), "{email} is in the log");
    }
    pool.close().await;
    eprintln!(
        "{} log lines searched for {} secrets and {} emails",
        log.lines().count(),
        secrets.len(),
        emails.len()
    );
}
