//! Where the Redis to link to is: one address (`redis_url`), whichever server the
//! Sentinels name master now (`sentinels` + `sentinel_master`), or a Redis Cluster
//! (`redis_cluster`: some of its nodes; the rest are found from them).
//!
//! Owns finding the server. With Sentinel, every (re)link asks the Sentinels in turn
//! (`SENTINEL get-master-addr-by-name`), so after a failover — a replica promoted — the
//! node links to the new master; a link that fails is dropped and found again rather
//! than retried against the old address. Does not own the link itself ([`super`],
//! [`super::bus`]).

use std::time::Duration;

use redis::RedisResult;

use super::conn::{Link, Subscriber};

/// How to find the Redis server.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// One server.
    Direct(redis::Client),
    /// The master the Sentinels name.
    Sentinel {
        /// `redis://host:port` of each Sentinel.
        sentinels: Vec<redis::Client>,
        /// The master's name in the Sentinels' configuration.
        master: String,
        /// `redis_url` without host and port: password and database for the master
        /// (`redis://:password@/db`), or empty.
        template: redis::ConnectionInfo,
    },
    /// A Redis Cluster.
    Cluster {
        /// `redis://[:password@]host:port` of each node given.
        nodes: Vec<String>,
    },
}

impl Source {
    /// From `[cluster]` (already validated).
    pub(super) fn of(cfg: &super::ClusterConfig) -> RedisResult<Source> {
        if !cfg.redis_cluster.is_empty() {
            // The password (if any) comes from redis_url, as with Sentinel.
            let auth = cfg
                .redis_url
                .strip_prefix("redis://")
                .and_then(|r| r.split_once('@'))
                .map(|(a, _)| format!("{a}@"))
                .unwrap_or_default();
            let nodes = cfg
                .redis_cluster
                .iter()
                .map(|n| format!("redis://{auth}{n}"))
                .collect();
            return Ok(Source::Cluster { nodes });
        }
        if cfg.sentinels.is_empty() {
            return Ok(Source::Direct(redis::Client::open(cfg.redis_url.as_str())?));
        }
        let sentinels = cfg
            .sentinels
            .iter()
            .map(|s| redis::Client::open(format!("redis://{s}")))
            .collect::<RedisResult<Vec<_>>>()?;
        let template = if cfg.redis_url.is_empty() {
            redis::IntoConnectionInfo::into_connection_info("redis://127.0.0.1")?
        } else {
            redis::IntoConnectionInfo::into_connection_info(cfg.redis_url.as_str())?
        };
        Ok(Source::Sentinel {
            sentinels,
            master: cfg.sentinel_master.clone(),
            template,
        })
    }

    /// A connection for commands to the server (or cluster) to link to now.
    pub(super) async fn link(&self) -> RedisResult<Link> {
        if let Source::Cluster { nodes } = self {
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(2))
                .build()?;
            return Ok(Link::Cluster(client.get_async_connection().await?));
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let client = self.client().await?;
        Ok(Link::Single(
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?,
        ))
    }

    /// A pub/sub connection to the server (or cluster) to link to now.
    pub(super) async fn subscriber(&self) -> RedisResult<Subscriber> {
        if let Source::Cluster { nodes } = self {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(Duration::from_secs(1))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .build()?;
            return Ok(Subscriber::Cluster(
                client.get_async_connection().await?,
                rx,
            ));
        }
        let (sink, stream) = self.client().await?.get_async_pubsub().await?.split();
        Ok(Subscriber::Single(sink, stream))
    }

    /// A client for the server to link to now (one server, not a cluster).
    pub(super) async fn client(&self) -> RedisResult<redis::Client> {
        let (sentinels, master, template) = match self {
            Source::Direct(c) => return Ok(c.clone()),
            Source::Cluster { .. } => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a Redis Cluster has no one server",
                )))
            }
            Source::Sentinel {
                sentinels,
                master,
                template,
            } => (sentinels, master, template),
        };
        let mut last = None;
        for s in sentinels {
            let asked = async {
                let mut conn = s.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(Duration::from_secs(1), asked).await {
                Ok(Ok(Some((host, port)))) => {
                    let addr = redis::ConnectionAddr::Tcp(host, port);
                    let info = template.clone().set_addr(addr);
                    return redis::Client::open(info);
                }
                Ok(Ok(None)) => {
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the Sentinel does not know the master",
                        master.clone(),
                    )))
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "the Sentinel did not answer in time",
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Io, "no Sentinel configured"))
        }))
    }
}
