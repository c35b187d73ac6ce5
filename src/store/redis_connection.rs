//! The one connection every `RedisStore` call goes through: a single Redis server (the connection
//! manager, which reconnects by itself) or a Redis Cluster (the cluster client, which follows slot
//! moves and failovers by itself). Both are multiplexed and cheap to clone.
//!
//! Everything the stores send is written so that it is valid on both: each Lua call, transaction
//! and pipeline touches the keys of one tenant only, and all of a tenant's keys share a hash slot
//! (`RedisKeys`). The few places that group several tenants (the effects of a consumer batch) ask
//! `is_cluster` and send one call per tenant there.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

/// A single server's connection or a cluster's.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// Prepares the connection without making it: Redis being down at start-up must not stop the
    /// API; both kinds connect on first use and reconnect after an outage. Each call is bounded by
    /// `timeout` and tried once more on a broken connection.
    pub fn prepare(settings: &RedisSettings, timeout: Duration) -> anyhow::Result<RedisConnection> {
        if settings.cluster {
            let client = cluster_client(settings)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .map_err(|error| anyhow::anyhow!("redis.url: {error}"))?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            return Ok(RedisConnection::Cluster(
                client.get_pending_async_connection_with_config(config),
            ));
        }
        let client = redis::Client::open(settings.url.expose_secret())
            .map_err(|error| anyhow::anyhow!("redis.url is not a valid Redis URL: {error}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| anyhow::anyhow!("preparing the Redis connection: {error}"))?;
        Ok(RedisConnection::Single(connection))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

/// The cluster client's builder for `redis.url`'s seed nodes (comma-separated URLs); the client
/// learns the other nodes and the slot map from whichever seed answers.
pub fn cluster_client(settings: &RedisSettings) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seed_urls(settings.url.expose_secret()))
}

/// The URLs of a comma-separated list, trimmed, empty items dropped.
pub fn seed_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, command: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_command(command),
            RedisConnection::Cluster(connection) => connection.req_packed_command(command),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_are_split_and_trimmed() {
        assert_eq!(
            seed_urls(" redis://a:7001 ,redis://b:7002,, "),
            ["redis://a:7001", "redis://b:7002"]
        );
        assert!(seed_urls(" , ").is_empty());
    }
}
