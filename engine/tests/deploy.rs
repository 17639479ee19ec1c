//! The deployment files, checked offline: docker-compose.yml and the Railway configs
//! parsed and held to the engine's own CLI, variables and routes; nats.conf checked by
//! nats-server itself; the Dockerfile's stages; `crmsync check`, the image's probe.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use common::TestEngine;
use crmsync_engine::config::VARIABLES;
use crmsync_engine::Role;

fn file(name: &str) -> String {
    let path = format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `crmsync ARGS --help`: clap refuses an unknown command or value first.
fn cli_accepts(args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_crmsync"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap()
        .status
        .success()
}

/// `crmsync serve --role R` from a command line; R checked by the CLI itself.
fn role_of(command: &[&str]) -> String {
    assert_eq!(command.first(), Some(&"crmsync"), "{command:?}");
    assert!(cli_accepts(&command[1..]), "the CLI refuses {command:?}");
    match command[1..] {
        ["serve", "--role", role] => role.to_owned(),
        _ => panic!("not a serve command: {command:?}"),
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn compose() -> Value {
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&file("docker-compose.yml")).expect("docker-compose.yml is YAML");
    yaml.apply_merge().expect("its merge keys resolve");
    serde_json::to_value(yaml).unwrap()
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{duration} is not whole seconds"))
}

#[test]
fn compose_runs_one_image_as_api_and_worker_with_known_variables_and_health_checks() {
    let compose = compose();
    let services = compose["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["api", "nats", "postgres", "worker"]));
    let known: BTreeSet<&str> = VARIABLES.iter().map(|v| v.name).collect();
    let volumes = compose["volumes"].as_object().unwrap();
    let shutdown = VARIABLES
        .iter()
        .find(|v| v.name == "CRM_SHUTDOWN_TIMEOUT_SECS")
        .unwrap();

    let mut roles = Vec::new();
    for name in ["api", "worker"] {
        let service = &services[name];
        assert_eq!(service["image"], services["api"]["image"], "one image");
        roles.push(role_of(&strings(&service["command"])));
        let env = service["environment"].as_object().unwrap();
        for key in env.keys() {
            assert!(
                known.contains(key.as_str()),
                "{name}: {key} is no crmsync variable"
            );
        }
        let host = |url: &str| {
            url.split('@')
                .next_back()
                .unwrap()
                .split([':', '/'])
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(host(env["DATABASE_URL"].as_str().unwrap()), "postgres");
        assert_eq!(
            host(
                env["NATS_URL"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("nats://")
            ),
            "nats"
        );
        for secret in ["CRM_API_TOKEN", "ENCRYPTION_KEY"] {
            assert!(
                env[secret].as_str().unwrap().contains(":?"),
                "{name}: {secret} must be required, not defaulted"
            );
        }
        let timeout = env["CRM_SHUTDOWN_TIMEOUT_SECS"]
            .as_str()
            .unwrap_or(shutdown.default);
        assert!(
            seconds(service["stop_grace_period"].as_str().unwrap()) > timeout.parse().unwrap(),
            "{name}: docker must wait longer than the shutdown timeout"
        );
        for dependency in ["nats", "postgres"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"], "service_healthy",
                "{name} waits for {dependency}"
            );
        }
        let probe = strings(&service["healthcheck"]["test"]);
        assert_eq!(probe[..3], ["CMD", "crmsync", "check"], "{name}");
        assert!(cli_accepts(&probe[2..]), "the CLI refuses {probe:?}");
    }
    assert_eq!(roles, ["api", "worker"]);
    assert!(
        services["api"]["build"].is_string(),
        "the api service builds the image"
    );

    // NATS runs nats.conf with its JetStream store on a volume; Postgres on a volume.
    let nats = &services["nats"];
    assert_eq!(strings(&nats["command"]), ["-c", "/etc/nats/nats.conf"]);
    let mounts = strings(&nats["volumes"]);
    assert!(mounts.contains(&"./nats.conf:/etc/nats/nats.conf:ro"));
    let store = file("nats.conf")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("store_dir:")
                .map(|s| s.trim().trim_matches('"').to_owned())
        })
        .expect("nats.conf names a store_dir");
    let data = mounts
        .iter()
        .find(|m| m.ends_with(&format!(":{store}")))
        .expect("the JetStream store is mounted");
    assert!(volumes.contains_key(data.split(':').next().unwrap()));
    let pg = strings(&services["postgres"]["volumes"]);
    assert!(volumes.contains_key(pg[0].split(':').next().unwrap()));
    for name in ["nats", "postgres"] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has a health check"
        );
    }
}

#[test]
fn nats_conf_is_valid_for_nats_server() {
    let bin = std::env::var("CRMSYNC_NATS_SERVER").expect(
        "CRMSYNC_NATS_SERVER names a nats-server 2.10+ executable (scripts/services.sh prints it)",
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats.conf");
    let out = Command::new(bin).args(["-c", path, "-t"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = file("nats.conf");
    assert!(text.contains("jetstream {"), "JetStream is on");
    assert!(
        text.contains("http_port: 8222"),
        "the monitoring port the compose health check asks"
    );
}

#[tokio::test]
async fn railway_starts_each_role_with_a_health_check_the_engine_answers() {
    let mut roles = Vec::new();
    for name in ["railway.toml", "railway.worker.toml"] {
        let config: toml::Table = file(name).parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            config["build"]["builder"].as_str(),
            Some("DOCKERFILE"),
            "{name}"
        );
        let dockerfile = config["build"]["dockerfilePath"].as_str().unwrap();
        file(dockerfile);
        let deploy = &config["deploy"];
        let command: Vec<&str> = deploy["startCommand"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .collect();
        let role = role_of(&command);
        let draining = deploy["drainingSeconds"]
            .as_integer()
            .expect("drainingSeconds is a number");
        assert!(
            draining > 30,
            "{name}: Railway must wait longer than the shutdown timeout"
        );
        let path = deploy["healthcheckPath"].as_str().unwrap();
        let engine = TestEngine::start_role(
            match role.as_str() {
                "api" => Role::Api,
                _ => Role::Worker,
            },
            &[],
        )
        .await;
        let status = engine
            .http
            .get(engine.url(path))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{name}: {path} as the {role}");
        engine.stop().await;
        roles.push(role);
    }
    assert_eq!(roles, ["api", "worker"]);
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_the_binary_as_a_non_root_user() {
    let text = file("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|i| lines[*i].starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let runtime = &lines[*stages.last().unwrap()..];
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage names its user");
    assert!(!["root", "0", "0:0"].contains(&user), "runs as {user}");
    assert!(
        text.contains("SQLX_OFFLINE=true"),
        "builds without a database"
    );
    assert!(text.contains("--locked"), "builds from Cargo.lock");
    assert!(runtime.iter().any(|l| l.starts_with("COPY --from=")));
    let cmd = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("CMD "))
        .unwrap();
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    role_of(&cmd);
    let health = text.split("HEALTHCHECK").nth(1).expect("a HEALTHCHECK");
    assert!(health.contains(r#"CMD ["crmsync", "check"]"#));
    let ignored = file(".dockerignore");
    for dir in ["target/", ".dev/", ".env"] {
        assert!(
            ignored.lines().any(|l| l == dir),
            ".dockerignore leaves out {dir}"
        );
    }
}

// The probe runs as a blocking child process while the engine serves on the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_zero_only_when_the_engine_is_ready() {
    let engine = TestEngine::start_role(Role::Api, &[]).await;
    let database = engine.settings.database_url.expose().clone();
    let run = |port: u16, path: &str| {
        Command::new(env!("CARGO_BIN_EXE_crmsync"))
            .args(["check", "--path", path])
            .env("PORT", port.to_string())
            .env("DATABASE_URL", &database)
            .output()
            .unwrap()
    };
    let port = engine.addr.port();
    let ok = run(port, "/readyz");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(&format!("127.0.0.1:{port}/readyz")));
    let missing = run(port, "/no-such-route");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let relative = run(port, "readyz");
    assert!(String::from_utf8_lossy(&relative.stderr).contains("must start with /"));
    engine.stop().await;
    let down = run(common::free_port(), "/readyz");
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("/readyz"));
}
