//! docker-compose.kafka.yml and docker-compose.cluster.yml cannot run here (no Docker engine), so keep
//! them honest by reading them: the services exist, ports agree, the cluster file has the cluster's
//! shape and the roles point at its nodes, and every AP_* variable is a configuration key the app
//! accepts.

use std::collections::BTreeMap;

use activity_pipeline::config::{Settings, Sources};
use secrecy::ExposeSecret as _;
use serde_yaml::Value;

fn compose() -> Value {
    compose_file("docker-compose.kafka.yml")
}

fn compose_file(name: &str) -> Value {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
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
                Value::Bool(flag) => flag.to_string(),
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

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        other => panic!("expected a string or a number, found {other:?}"),
    }
}

/// The cluster file: three KRaft nodes in one quorum with RF 3 and min.insync 2, six Redis
/// Cluster nodes all in the `--cluster create`, a three-member replica set, two instances of each
/// role, and the roles' brokers, seeds and hosts are exactly those services.
#[test]
fn the_cluster_compose_file_has_the_cluster_shape_and_the_roles_use_it() {
    let compose = compose_file("docker-compose.cluster.yml");
    let services = &compose["services"];
    let names: Vec<&str> = services
        .as_mapping()
        .unwrap()
        .keys()
        .map(|key| key.as_str().unwrap())
        .collect();
    let brokers = ["kafka-1", "kafka-2", "kafka-3"];
    let redis_nodes = [
        "redis-1", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6",
    ];
    let mongo_nodes = ["mongo-1", "mongo-2", "mongo-3"];
    for expected in brokers
        .iter()
        .chain(&redis_nodes)
        .chain(&mongo_nodes)
        .chain(&["redis-cluster", "mongo-replica-set", "topics"])
        .chain(&["produce-1", "produce-2", "consume-1", "consume-2"])
    {
        assert!(
            names.contains(expected),
            "service {expected} missing: {names:?}"
        );
    }

    // Kafka: one quorum of the three, each node a broker and a controller with its own id, one
    // storage id, replication 3 and min.insync 2 for every topic (internal ones too).
    let mut internal_listeners = Vec::new();
    for (index, broker) in brokers.iter().enumerate() {
        let environment = &services[*broker]["environment"];
        assert_eq!(
            text(&environment["KAFKA_PROCESS_ROLES"]),
            "broker,controller"
        );
        assert_eq!(text(&environment["KAFKA_NODE_ID"]), (index + 1).to_string());
        assert_eq!(
            text(&environment["KAFKA_CONTROLLER_QUORUM_VOTERS"]),
            "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        );
        assert_eq!(
            text(&environment["CLUSTER_ID"]),
            text(&services["kafka-1"]["environment"]["CLUSTER_ID"])
        );
        for (key, want) in [
            ("KAFKA_DEFAULT_REPLICATION_FACTOR", "3"),
            ("KAFKA_MIN_INSYNC_REPLICAS", "2"),
            ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3"),
            ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "3"),
            ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "2"),
        ] {
            assert_eq!(text(&environment[key]), want, "{broker}: {key}");
        }
        let advertised = text(&environment["KAFKA_ADVERTISED_LISTENERS"]);
        let internal = advertised
            .split(',')
            .find_map(|listener| listener.strip_prefix("INTERNAL://"))
            .unwrap_or_else(|| panic!("{broker}: no INTERNAL listener in {advertised}"));
        assert_eq!(internal, format!("{broker}:19092"));
        internal_listeners.push(internal.to_owned());
        let external = advertised
            .split(',')
            .find_map(|listener| listener.strip_prefix("EXTERNAL://localhost:"))
            .unwrap_or_else(|| panic!("{broker}: no EXTERNAL listener in {advertised}"));
        assert_eq!(
            ports(&services[*broker]),
            [format!("{external}:{external}")]
        );
    }

    // Redis: six cluster-enabled nodes, all six in the create command, one replica per master.
    let create = services["redis-cluster"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(create.contains("--cluster-replicas 1"), "{create}");
    let created: Vec<&str> = create
        .split_once("for node in ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(list, _)| list.split_whitespace().collect())
        .unwrap_or_else(|| panic!("no node list in the create command: {create}"));
    assert_eq!(created, redis_nodes, "the nodes put into the cluster");
    for node in redis_nodes {
        let command = services[node]["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{node} has no command"))
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            command.contains("--cluster-enabled yes"),
            "{node}: {command}"
        );
    }

    // MongoDB: three members of rs0, initiated with exactly those hosts.
    let initiate = services["mongo-replica-set"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(initiate.contains("_id: \"rs0\""), "{initiate}");
    for node in mongo_nodes {
        assert_eq!(
            services[node]["command"],
            serde_yaml::from_str::<Value>("[--replSet, rs0, --bind_ip_all]").unwrap(),
            "{node}"
        );
        assert!(
            initiate.contains(&format!("host: \"{node}:27017\"")),
            "{initiate}"
        );
    }

    // The roles: the configuration they load names the three brokers, the Redis Cluster's masters as
    // seeds, and the replica set with majority writes.
    let mut api_host_ports = Vec::new();
    for role in ["topics", "produce-1", "produce-2", "consume-1", "consume-2"] {
        let settings = settings_from(&environment(&services[role]));
        let mut configured: Vec<&str> = settings.kafka.brokers.split(',').collect();
        configured.sort_unstable();
        assert_eq!(configured, internal_listeners, "{role}: kafka.brokers");
        assert_eq!(settings.kafka.replication_factor, 3, "{role}");
        assert_eq!(settings.kafka.effective_min_insync_replicas(), 2, "{role}");
        assert!(settings.redis.cluster, "{role}: redis.cluster");
        let seeds = settings.redis.url.expose_secret().to_owned();
        assert_eq!(
            seeds, "redis://redis-1:6379,redis://redis-2:6379,redis://redis-3:6379",
            "{role}: redis.url"
        );
        let uri = settings.mongo.uri.expose_secret().to_owned();
        assert!(
            uri.starts_with("mongodb://mongo-1:27017,mongo-2:27017,mongo-3:27017/?")
                && uri.contains("replicaSet=rs0")
                && uri.contains("w=majority"),
            "{role}: mongo.uri {uri}"
        );
        assert_eq!(settings.mongo.database, "activity_pipeline");
        assert!(!settings.tenants.is_empty(), "{role} has the demo tenants");
        if role.starts_with("produce") {
            assert_eq!(services[role]["command"][0], "produce");
            let published = ports(&services[role]);
            assert_eq!(published.len(), 1, "{role}: {published:?}");
            let (host, container) = published[0].split_once(':').unwrap();
            assert_eq!(container, settings.http.listen.port().to_string(), "{role}");
            api_host_ports.push(host.to_owned());
        }
        if role.starts_with("consume") {
            assert_eq!(services[role]["command"][0], "consume");
        }
    }
    api_host_ports.dedup();
    assert_eq!(
        api_host_ports.len(),
        2,
        "each API instance has its own host port"
    );
}
