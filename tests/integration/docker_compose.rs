//! docker-compose.kafka.yml cannot run here (no Docker engine), so keep it honest by reading it: the
//! services exist, ports agree, and every AP_* variable is a configuration key the app accepts.

use std::collections::BTreeMap;

use activity_pipeline::config::{Settings, Sources};
use serde_yaml::Value;

fn compose() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker-compose.kafka.yml"
    ))
    .unwrap();
    let mut value: Value = serde_yaml::from_str(&text).expect("valid YAML");
    value.apply_merge().expect("merge keys resolve");
    value
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    if let Some(map) = service["environment"].as_mapping() {
        for (key, value) in map {
            let value = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                other => panic!("unexpected environment value {other:?}"),
            };
            found.insert(key.as_str().unwrap().to_owned(), value);
        }
    }
    found
}

fn ports(service: &Value) -> Vec<String> {
    service["ports"]
        .as_sequence()
        .map(|ports| {
            ports
                .iter()
                .map(|port| port.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Loads the app's settings exactly as the container would: AP_CONFIG files, then AP_SECTION__KEY.
fn settings_from(environment: &BTreeMap<String, String>) -> Settings {
    let overrides = environment
        .iter()
        .filter(|(name, _)| name.starts_with("AP_") && name.contains("__"))
        .map(|(name, value)| {
            format!(
                "{}={value}",
                name["AP_".len()..].to_lowercase().replace("__", ".")
            )
        })
        .collect();
    let files = environment
        .get("AP_CONFIG")
        .map(|path| {
            let relative = path
                .strip_prefix("/app/")
                .expect("config is copied to /app");
            vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/")).join(relative)]
        })
        .unwrap_or_default();
    Settings::load(&Sources {
        files,
        environment: false,
        overrides,
    })
    .expect("the compose environment is a valid configuration")
}

#[test]
fn compose_runs_the_stack_and_both_roles() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().map(|key| key.as_str().unwrap()).collect();
    for expected in ["kafka", "mongo", "redis", "topics", "produce", "consume"] {
        assert!(
            names.contains(&expected),
            "service {expected} missing: {names:?}"
        );
    }
    assert!(compose["services"]["mongo"]["image"]
        .as_str()
        .unwrap()
        .starts_with("mongo:7"));
    assert!(compose["services"]["redis"]["image"]
        .as_str()
        .unwrap()
        .starts_with("redis:7"));
    assert_eq!(
        compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"],
        "broker,controller"
    );
    assert_eq!(compose["services"]["produce"]["command"][0], "produce");
    assert_eq!(compose["services"]["consume"]["command"][0], "consume");
    assert_eq!(
        compose["services"]["topics"]["command"],
        serde_yaml::from_str::<Value>("[topics, create]").unwrap()
    );
}

#[test]
fn compose_ports_match_the_defaults() {
    let compose = compose();
    let defaults = Settings::from_files(&[]).unwrap();
    assert_eq!(ports(&compose["services"]["kafka"]), ["9092:9092"]);
    assert_eq!(ports(&compose["services"]["mongo"]), ["27017:27017"]);
    assert_eq!(ports(&compose["services"]["redis"]), ["6379:6379"]);
    assert_eq!(defaults.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(defaults.http.listen.port(), 8080);
    let produce = settings_from(&environment(&compose["services"]["produce"]));
    assert_eq!(
        ports(&compose["services"]["produce"]),
        [format!("8080:{}", produce.http.listen.port())]
    );
}

#[test]
fn compose_environment_is_valid_app_configuration() {
    let compose = compose();
    let advertised = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        .as_str()
        .unwrap()
        .to_owned();
    for role in ["topics", "produce", "consume"] {
        let environment = environment(&compose["services"][role]);
        assert!(
            environment.keys().any(|name| name.starts_with("AP_")),
            "{role} has no AP_* configuration"
        );
        let settings = settings_from(&environment);
        assert!(
            advertised.contains(&settings.kafka.brokers),
            "{role}: {} is not an advertised listener",
            settings.kafka.brokers
        );
        assert_eq!(settings.mongo.database, "activity_pipeline");
        assert!(!settings.tenants.is_empty(), "{role} has the demo tenants");
    }
}
