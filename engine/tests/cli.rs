//! The `crmsync` binary as a user runs it.

use std::process::Command;

fn crmsync() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmsync"));
    for (name, _) in std::env::vars() {
        if name.starts_with("CRM_") || name == "PORT" || name == "ENCRYPTION_KEY" {
            cmd.env_remove(name);
        }
    }
    cmd
}

#[test]
fn help_explains_every_command_and_every_variable() {
    let out = crmsync().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["serve", "migrate", "demo", "sandbox"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
    for v in crmsync_engine::config::VARIABLES {
        assert!(help.contains(v.name), "{} missing from:\n{help}", v.name);
    }
    let serve = crmsync().args(["serve", "--help"]).output().unwrap();
    let serve = String::from_utf8(serve.stdout).unwrap();
    assert!(serve.contains("--role"));
    assert!(serve.contains("DATABASE_URL"));
}

#[test]
fn a_malformed_variable_stops_start_up_with_one_line_naming_it() {
    let out = crmsync()
        .args(["migrate"])
        .env("DATABASE_URL", "mysql://admin:hunter2@db/crm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("DATABASE_URL must be a postgres or postgresql URL"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password was printed: {err}");

    let out = crmsync()
        .args(["serve"])
        .env("CRM_SYNC_PAGE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("CRM_SYNC_PAGE must be a number from 1 to 1000, got \"lots\""),
        "{err}"
    );
}

#[test]
fn an_unknown_role_is_refused_by_the_parser() {
    let out = crmsync()
        .args(["serve", "--role", "boss"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("possible values: api, worker, all"), "{err}");
}

#[tokio::test]
async fn migrate_creates_the_database_and_the_demo_prints_projected_rows() {
    let admin = crmsync_testkit::database_url();
    let url = {
        let mut u = url::Url::parse(&admin).unwrap();
        u.set_path(&format!("/{}", crmsync_testkit::unique_name()));
        u.to_string()
    };
    let out = crmsync()
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('contacts', 'projection_checkpoints')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 2);

    let out = crmsync()
        .args(["demo", "--exit"])
        .env("DATABASE_URL", &url)
        .env("NATS_URL", crmsync_testkit::nats_url())
        .env("CRM_NATS_PREFIX", crmsync_testkit::unique_name())
        .env("PORT", "0")
        .env("CRM_BIND", "127.0.0.1")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("-> 200 OK"), "{stdout}");
    assert!(stdout.contains("ada@example.com"), "{stdout}");
    assert!(stdout.contains("Mathematician"), "{stdout}");
    let deleted = stdout.lines().find(|l| l.starts_with("503")).unwrap();
    assert!(deleted.ends_with("true"), "{deleted}");
    // Then the three emulators: connected, read, and a call pushed to each.
    assert!(
        stdout.contains("Connected: hubspot, zoho, odoo."),
        "{stdout}"
    );
    assert!(stdout.contains("pushes/sent=3"), "{stdout}");
    assert!(
        stdout.contains("API token: demo-"),
        "a made-up token is shown: {stdout}"
    );
    assert!(
        stdout.contains("Call demo-call-1 is in all three CRMs."),
        "{stdout}"
    );
}

#[test]
fn the_readme_documents_every_variable() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for v in crmsync_engine::config::VARIABLES {
        assert!(
            readme.contains(&format!("| `{}` |", v.name)),
            "{} is not in the README",
            v.name
        );
    }
}

#[tokio::test]
async fn sandbox_prints_credentials_that_work_over_http_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let mut child = crmsync()
        .args([
            "sandbox",
            "--hubspot",
            "127.0.0.1:0",
            "--zoho",
            "127.0.0.1:0",
            "--odoo",
            "127.0.0.1:0",
            "--contacts",
            "7",
            "--seed",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut emulators = std::collections::HashMap::new();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        emulators.insert(v["provider"].as_str().unwrap().to_owned(), v);
    }
    let http = reqwest::Client::new();

    let hs = &emulators["hubspot"];
    let contacts: serde_json::Value = http
        .get(format!(
            "{}/crm/v3/objects/contacts?limit=100",
            hs["base_url"].as_str().unwrap()
        ))
        .bearer_auth(hs["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(contacts["results"].as_array().unwrap().len(), 7);

    let zoho = &emulators["zoho"];
    let records = http
        .get(format!(
            "{}/crm/v8/Contacts?fields=Email",
            zoho["api_domain"].as_str().unwrap()
        ))
        .header(
            "Authorization",
            format!("Zoho-oauthtoken {}", zoho["access_token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(records.status(), 200);
    let records: serde_json::Value = records.json().await.unwrap();
    assert_eq!(records["data"].as_array().unwrap().len(), 7);

    let odoo = &emulators["odoo"];
    let uid: serde_json::Value = http
        .post(format!("{}/jsonrpc", odoo["base_url"].as_str().unwrap()))
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "method": "call", "id": 1, "params": {
            "service": "common", "method": "authenticate",
            "args": [odoo["database"], odoo["login"], odoo["api_key"], {}]}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(uid["result"], odoo["uid"]);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

#[test]
fn sandbox_without_an_emulator_says_what_to_name() {
    let out = crmsync().arg("sandbox").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--hubspot ADDR"), "{err}");
}

#[test]
fn backfill_refuses_unknown_providers_and_objects_clearly() {
    let out = crmsync()
        .args(["backfill", "--provider", "salesforce", "--workspace", "w"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("--provider hubspot"));
    let out = crmsync()
        .args([
            "backfill",
            "--provider",
            "hubspot",
            "--workspace",
            "w",
            "--object",
            "tickets",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("--object must be contacts, companies or deals"));
    let out = crmsync()
        .args([
            "backfill",
            "--provider",
            "zoho",
            "--workspace",
            "w",
            "--object",
            "Leads",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("--object must be contacts, companies or deals"));
}

#[test]
fn bench_prints_one_json_object_per_scenario_with_every_figure() {
    let out = crmsync()
        .args(["bench", "--events", "300", "--json"])
        .env("DATABASE_URL", crmsync_testkit::database_url())
        .env("NATS_URL", crmsync_testkit::nats_url())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scenarios: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ingest", "project", "replay", "e2e", "e2e-10k", "outbound"]
    );
    for s in &scenarios {
        for key in [
            "events",
            "seconds",
            "rate",
            "ceiling_rate",
            "ratio",
            "p50_ms",
            "p99_ms",
            "peak_rss_mb",
        ] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        // Outbound pushes one outcome per 100 events, at least 10.
        let events = if s["scenario"] == "outbound" { 10 } else { 300 };
        assert_eq!(s["events"], events, "{s}");
        assert!(s["rate"].as_f64().unwrap() > 0.0);
    }
    for ceilinged in [0, 1, 2, 5] {
        assert!(scenarios[ceilinged]["ceiling_rate"].as_f64().unwrap() > 0.0);
    }
    // Project also says how fast the same messages are merely pulled and acked.
    assert!(scenarios[1]["consume_ceiling_rate"].as_f64().unwrap() > 0.0);
    for e2e in [3, 4] {
        assert!(
            scenarios[e2e]["p99_ms"].as_f64().unwrap()
                >= scenarios[e2e]["p50_ms"].as_f64().unwrap()
        );
    }
    // One bench at a time: a second one beside it says so and touches nothing.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let holder = runtime.block_on(async {
        use sqlx::Connection as _;
        let mut server = url::Url::parse(&crmsync_testkit::database_url()).unwrap();
        server.set_path("/postgres");
        let mut conn = sqlx::PgConnection::connect(server.as_str()).await.unwrap();
        let took: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(crmsync_engine::bench::LOCK_KEY)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(took);
        conn
    });
    let beside = crmsync()
        .args(["bench", "--scenario", "ingest", "--events", "10"])
        .env("DATABASE_URL", crmsync_testkit::database_url())
        .env("NATS_URL", crmsync_testkit::nats_url())
        .output()
        .unwrap();
    assert!(!beside.status.success());
    let said = String::from_utf8(beside.stderr).unwrap();
    assert!(
        said.contains("another `crmsync bench` is running"),
        "{said}"
    );
    runtime.block_on(sqlx::Connection::close(holder)).unwrap();
    let unknown = crmsync()
        .args(["bench", "--scenario", "warp"])
        .output()
        .unwrap();
    assert!(String::from_utf8(unknown.stderr)
        .unwrap()
        .contains("--scenario must be"));
}
