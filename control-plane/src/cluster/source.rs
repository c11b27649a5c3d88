//! Where the Redis to link to is: one address (`redis_url`), or whichever server the
//! Sentinels name master now (`sentinels` + `sentinel_master`).
//!
//! Owns finding the server. With Sentinel, every (re)link asks the Sentinels in turn
//! (`SENTINEL get-master-addr-by-name`), so after a failover — a replica promoted — the
//! node links to the new master; a link that fails is dropped and found again rather
//! than retried against the old address. Does not own the link itself ([`super`],
//! [`super::bus`]).

use std::time::Duration;

use redis::RedisResult;

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
}

impl Source {
    /// From `[cluster]` (already validated).
    pub(super) fn of(cfg: &super::ClusterConfig) -> RedisResult<Source> {
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

    /// A client for the server to link to now.
    pub(super) async fn client(&self) -> RedisResult<redis::Client> {
        let (sentinels, master, template) = match self {
            Source::Direct(c) => return Ok(c.clone()),
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
