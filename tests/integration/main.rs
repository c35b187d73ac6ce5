//! Integration tests against the real stack (`make stack-up`): Kafka, FerretDB and Redis on 127.0.0.1.
//! One binary, so the compile happens once; every test gets its own topics, consumer group, MongoDB
//! database and Redis key prefix, so they run in parallel.

mod blackhole;
mod helpers;
mod services;
mod sse_client;

mod backpressure;
mod conflicts;
mod console;
mod console_browser;
mod console_index;
mod console_sessions;
mod console_volume;
mod consumer;
mod datacenters;
mod dc_conflicts;
mod deadlines;
mod docker_compose;
mod http_errors;
mod ingest;
mod intake;
mod kafka_pause;
mod operations;
mod ops;
mod pages;
mod read_budgets;
mod read_side;
mod redis_cluster;
mod spread;
mod sse;
mod topics;
