//! The connection to Redis or to a Redis Cluster (two for a cluster, see [`Conn::Cluster`]), the same to the rest of the broker: commands
//! and pipelines go through [`redis::aio::ConnectionLike`], pub/sub messages arrive as RESP3
//! pushes on the channel given at connect, and the client library reconnects with backoff and
//! subscribes again by itself (`ConnectionManager` with automatic resubscription; the cluster
//! connection re-homes sharded subscriptions when slots move).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc::UnboundedSender;

/// Where the broker's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis (`broker.url`).
    Single(String),
    /// Seed nodes of a Redis Cluster (`broker.nodes`): sharded pub/sub.
    Cluster(Vec<String>),
}

impl Target {
    /// How operators named it, for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Single(u) => redact(u),
            Target::Cluster(n) => format!(
                "the Redis Cluster at {}",
                n.iter().map(|u| redact(u)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(s, r)| Some((s, r.split_once('@')?)))
    {
        Some((scheme, (_, host))) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

/// A connection to the broker's Redis; cheap to clone (clones share the connection).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    /// Commands and sharded subscriptions on connections of their own: when a slot moves, the
    /// masters tell subscribers with an `sunsubscribe` push that the client library takes for
    /// the reply of the oldest command in flight on that connection (measured: a publish got
    /// it as its answer, then every later reply was one command late). A connection that never
    /// subscribes never gets one.
    Cluster {
        commands: ClusterConnection,
        subs: ClusterConnection,
    },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster { .. } => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Connects (waiting at most `timeout`), with pub/sub pushes sent to `pushes`.
    pub async fn connect(
        target: &Target,
        timeout: Duration,
        pushes: UnboundedSender<PushInfo>,
    ) -> redis::RedisResult<Conn> {
        let connect = async {
            match target {
                Target::Single(url) => {
                    let info = url.as_str().into_connection_info()?;
                    let settings = info
                        .redis_settings()
                        .clone()
                        .set_protocol(ProtocolVersion::RESP3);
                    let client = redis::Client::open(info.set_redis_settings(settings))?;
                    let config = ConnectionManagerConfig::new()
                        .set_push_sender(pushes)
                        .set_automatic_resubscription()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout))
                        .set_min_delay(Duration::from_millis(50))
                        .set_max_delay(Duration::from_secs(2))
                        // The broker's own health check keeps asking, so the manager need not
                        // retry for long before it reports the outage.
                        .set_number_of_retries(2);
                    Ok(Conn::Single(
                        client.get_connection_manager_with_config(config).await?,
                    ))
                }
                Target::Cluster(nodes) => {
                    let client = |pushes: Option<UnboundedSender<PushInfo>>| {
                        let mut b = ClusterClientBuilder::new(nodes.clone())
                            .use_protocol(ProtocolVersion::RESP3)
                            .connection_timeout(timeout)
                            .response_timeout(timeout)
                            .retries(3)
                            .min_retry_wait(50)
                            .max_retry_wait(1000);
                        if let Some(p) = pushes {
                            b = b.push_sender(p);
                        }
                        b.build()
                    };
                    Ok(Conn::Cluster {
                        commands: client(None)?.get_async_connection().await?,
                        subs: client(Some(pushes))?.get_async_connection().await?,
                    })
                }
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))),
        }
    }

    /// Whether groups' channels are sharded (`SSUBSCRIBE`/`SPUBLISH`).
    pub fn is_sharded(&self) -> bool {
        matches!(self, Conn::Cluster { .. })
    }

    /// The command that publishes to a group's channel.
    pub fn publish_command(&self) -> &'static str {
        if self.is_sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Subscribes to `channels`, waiting for Redis to confirm.
    pub async fn subscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channels).await,
            // A SSUBSCRIBE names channels of one slot only.
            Conn::Cluster { subs, .. } => {
                for ch in channels {
                    subs.ssubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn unsubscribe(&mut self, channels: &[String]) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channels).await,
            Conn::Cluster { subs, .. } => {
                for ch in channels {
                    subs.sunsubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster { commands, .. } => commands.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster { commands, .. } => commands.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster { commands, .. } => commands.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://:s3cret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
