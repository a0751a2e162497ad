//! The fleet's store: a Redis (or Valkey) every gateway of the fleet
//! shares (`[store] url`). Keys, all under the configured prefix:
//!
//! | key | what | lifetime |
//! | --- | --- | --- |
//! | `epoch`, `epoch-run` | unix seconds the record of used tickets began; the Redis process (`run_id`) it began in | none |
//! | `used:{id}` | a used ticket | until its `not_after` (`SET NX PX`) |
//! | `throttle:{source}` | failed tickets from a source in its window | the window (`PEXPIRE` at the first failure) |
//! | `sessions`, `sessions:{guest}` | sorted sets of session ids (unique in the fleet) counted against the limits, scored by lease end (ms) | leases renewed every third of `lease_secs` |
//! | `registry`, `registry:leases` | every session of the fleet (a hash: id -> what `GET /v1/sessions` shows, with its gateway), and its lease | the same |
//! | `end:{gateway}` | ids of sessions an administrator ended at another gateway, for this one to end | a minute |
//! | `page:{token}` | a web page session: guest, claims, redemption time, the channels not opened yet | [`JOIN_WINDOW`] |
//!
//! Each decision is one script, so it is atomic in Redis: single use is
//! `SET NX PX` after the epoch check; admission trims expired leases,
//! counts and adds in one step; a page stream's channel is taken with
//! `HDEL`, which only one caller can win. Redis needs `maxmemory-policy
//! noeviction` (an evicted `used:` key would let a ticket work twice);
//! docs/fleet.md.
//!
//! Every call has a deadline (`timeout_ms`). A failed call drops the
//! connection, and the next call opens a new one, reading the epoch first:
//! a Redis that restarted (a new `run_id`) starts a new epoch, so whatever
//! it forgot cannot be replayed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};
use vmgate_ticket::Claims;

use super::pages::{JoinError, PageGrant, JOIN_WINDOW};
use super::{unix_ms, Admit, Lease, StoreError, Use};
use crate::config::StoreConfig;
use crate::metrics::Metrics;

/// Sets a new epoch if this Redis process has none yet: KEYS epoch,
/// epoch-run; ARGV this process's `run_id`, the gateway's unix seconds.
/// The epoch is the later of Redis's clock and the gateway's.
const EPOCH: &str = r#"
local now = math.max(tonumber(redis.call('TIME')[1]), tonumber(ARGV[2]))
local e = redis.call('GET', KEYS[1])
if redis.call('GET', KEYS[2]) ~= ARGV[1] or not e then
  redis.call('SET', KEYS[1], now)
  redis.call('SET', KEYS[2], ARGV[1])
  return now
end
return tonumber(e)
"#;

/// Uses a ticket up: KEYS used:{id}, epoch; ARGV iat, skew, lifetime in
/// ms, the gateway's unix seconds. Returns {outcome, epoch}: 1 first use,
/// 0 replayed, -1 issued at or before the epoch plus the margin. A missing
/// epoch (the keys were flushed) starts a new one and refuses.
const USE: &str = r#"
local e = redis.call('GET', KEYS[2])
if not e then
  e = math.max(tonumber(redis.call('TIME')[1]), tonumber(ARGV[4]))
  redis.call('SET', KEYS[2], e)
  return {-1, e}
end
e = tonumber(e)
if tonumber(ARGV[1]) <= e + tonumber(ARGV[2]) then return {-1, e} end
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then return {1, e} end
return {0, e}
"#;

/// Counts a failure: KEYS throttle:{source}; ARGV the window in ms.
const FAIL: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

/// Admits a session: KEYS sessions, sessions:{guest}, registry,
/// registry:leases; ARGV id, lease ms, max, max per guest, its listing.
/// 0 admitted (counted and listed), 1 at max, 2 guest at max.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local max = tonumber(ARGV[3])
if max > 0 and redis.call('ZCARD', KEYS[1]) >= max then return 1 end
local per = tonumber(ARGV[4])
if per > 0 and redis.call('ZCARD', KEYS[2]) >= per then return 2 end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[2], 2 * lease)
redis.call('HSET', KEYS[3], ARGV[1], ARGV[5])
redis.call('ZADD', KEYS[4], now + lease, ARGV[1])
return 0
"#;

/// Lists a session that is not counted (an administrator's console): KEYS
/// registry, registry:leases; ARGV id, lease ms, its listing.
const REGISTER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
return 0
"#;

/// Renews leases: KEYS sessions, registry:leases, then each session's
/// guest set; ARGV lease ms, then for each session its id and 1 if it is
/// counted (in the same order as the guest keys).
const RENEW: &str = r#"
local t = redis.call('TIME')
local lease = tonumber(ARGV[1])
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + lease
for i = 3, #KEYS do
  local id = ARGV[2 * (i - 2)]
  if ARGV[2 * (i - 2) + 1] == '1' then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    redis.call('ZADD', KEYS[i], 'XX', deadline, id)
    redis.call('PEXPIRE', KEYS[i], 2 * lease)
  end
  redis.call('ZADD', KEYS[2], 'XX', deadline, id)
end
return #KEYS - 2
"#;

/// The fleet's sessions: KEYS registry, registry:leases. Sessions whose
/// lease ran out (their gateway died) are dropped first.
const LIST: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(dead) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('HVALS', KEYS[1])
"#;

/// Joins a page session: KEYS page:{token}; ARGV guest, channel. Returns
/// {0} unknown, {2} another guest, {3} channel not there or already open,
/// {1, claims, redeemed ms} joined (the key goes with its last channel).
const JOIN: &str = r#"
local g = redis.call('HGET', KEYS[1], 'guest')
if not g then return {0} end
if g ~= ARGV[1] then return {2} end
if redis.call('HDEL', KEYS[1], 'ch:' .. ARGV[2]) == 0 then return {3} end
local c = redis.call('HMGET', KEYS[1], 'claims', 'redeemed')
if redis.call('HLEN', KEYS[1]) <= 3 then redis.call('DEL', KEYS[1]) end
return {1, c[1], c[2]}
"#;

struct Scripts {
    epoch: Script,
    use_: Script,
    fail: Script,
    admit: Script,
    register: Script,
    renew: Script,
    list: Script,
    join: Script,
}

struct Inner {
    client: Client,
    /// The open connection (multiplexed: clones share it); `None` after a
    /// failure, and the next call reconnects.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
    lease: Duration,
    prefix: String,
    /// This gateway's name: its queue of sessions to end, and what the
    /// fleet's list says its sessions run on.
    name: String,
    epoch: AtomicU64,
    scripts: Scripts,
    /// This gateway's sessions (id -> guest, counted against the limits),
    /// whose leases it renews.
    mine: Mutex<HashMap<u64, (String, bool)>>,
    /// Whether the last call reached Redis, so the log says when it went
    /// away and when it came back, once each.
    up: AtomicBool,
    metrics: Arc<Metrics>,
    where_: String,
}

/// The Redis store; cheap to share (one connection, multiplexed).
pub struct RedisStore {
    inner: Arc<Inner>,
}

fn rerr(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

impl RedisStore {
    /// Connects to `url`, reads (or starts) the epoch, and starts renewing
    /// this gateway's leases. A Redis that cannot be reached fails the
    /// start: a fleet member must not come up unable to check tickets.
    pub async fn open(
        url: &str,
        cfg: &StoreConfig,
        name: &str,
        metrics: Arc<Metrics>,
    ) -> Result<RedisStore, StoreError> {
        let client = match &cfg.ca {
            Some(ca) => {
                let root_cert = std::fs::read(ca).map_err(|e| {
                    StoreError::Redis(format!("cannot read store.ca {}: {e}", ca.display()))
                })?;
                Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
            None => Client::open(url),
        }
        .map_err(rerr)?;
        let info = client.get_connection_info();
        let where_ = format!("{}", info.addr);
        let inner = Arc::new(Inner {
            client,
            conn: tokio::sync::Mutex::new(None),
            timeout: Duration::from_millis(cfg.timeout_ms),
            lease: Duration::from_secs(cfg.lease_secs),
            prefix: cfg.prefix.clone(),
            name: name.to_string(),
            epoch: AtomicU64::new(0),
            scripts: Scripts {
                epoch: Script::new(EPOCH),
                use_: Script::new(USE),
                fail: Script::new(FAIL),
                admit: Script::new(ADMIT),
                register: Script::new(REGISTER),
                renew: Script::new(RENEW),
                list: Script::new(LIST),
                join: Script::new(JOIN),
            },
            mine: Mutex::default(),
            up: AtomicBool::new(true),
            metrics,
            where_,
        });
        inner.conn().await?;
        tokio::spawn(renew_leases(Arc::downgrade(&inner)));
        Ok(RedisStore { inner })
    }

    pub fn describe(&self) -> String {
        self.inner.where_.clone()
    }

    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    pub async fn use_ticket(&self, claims: &Claims, skew: u64) -> Result<Use, StoreError> {
        let i = &self.inner;
        let now = unix_ms();
        let ttl_ms = claims
            .not_after
            .saturating_mul(1000)
            .saturating_sub(now)
            .max(1);
        let (outcome, epoch): (i64, u64) = i
            .call("use_ticket", |mut c| async move {
                i.scripts
                    .use_
                    .key(i.key(&format!("used:{}", claims.id)))
                    .key(i.key("epoch"))
                    .arg(claims.iat)
                    .arg(skew)
                    .arg(ttl_ms)
                    .arg(now / 1000)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        i.epoch.store(epoch, Ordering::Relaxed);
        match outcome {
            1 => Ok(Use::First),
            0 => Ok(Use::Replayed),
            -1 => Ok(Use::BeforeEpoch),
            n => Err(StoreError::Answer(format!("use_ticket answered {n}"))),
        }
    }

    pub async fn throttled(&self, src: u128, max: u32) -> Result<Option<Duration>, StoreError> {
        let i = &self.inner;
        let key = i.key(&format!("throttle:{src:032x}"));
        let (n, pttl): (Option<u32>, i64) = i
            .call("throttled", |mut c| async move {
                redis::pipe().get(&key).pttl(&key).query_async(&mut c).await
            })
            .await?;
        Ok((n.unwrap_or(0) >= max && pttl > 0).then(|| Duration::from_millis(pttl as u64)))
    }

    pub async fn ticket_failed(&self, src: u128, window: Duration) -> Result<(), StoreError> {
        let i = &self.inner;
        let key = i.key(&format!("throttle:{src:032x}"));
        let _: u64 = i
            .call("ticket_failed", |mut c| async move {
                i.scripts
                    .fail
                    .key(&key)
                    .arg(window.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    pub async fn admit(
        &self,
        lease: &Lease,
        max: usize,
        per_guest: usize,
        listing: &str,
    ) -> Result<Admit, StoreError> {
        let i = &self.inner;
        let n: i64 = i
            .call("admit", |mut c| async move {
                i.scripts
                    .admit
                    .key(i.key("sessions"))
                    .key(i.key(&format!("sessions:{}", lease.guest)))
                    .key(i.key("registry"))
                    .key(i.key("registry:leases"))
                    .arg(lease.session)
                    .arg(i.lease.as_millis() as u64)
                    .arg(max)
                    .arg(per_guest)
                    .arg(listing)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match n {
            0 => {
                i.mine
                    .lock()
                    .expect("leases lock")
                    .insert(lease.session, (lease.guest.clone(), true));
                Ok(Admit::Yes)
            }
            1 => Ok(Admit::AtMax),
            2 => Ok(Admit::GuestAtMax),
            n => Err(StoreError::Answer(format!("admit answered {n}"))),
        }
    }

    pub async fn register(&self, lease: &Lease, listing: &str) -> Result<(), StoreError> {
        let i = &self.inner;
        let _: i64 = i
            .call("register", |mut c| async move {
                i.scripts
                    .register
                    .key(i.key("registry"))
                    .key(i.key("registry:leases"))
                    .arg(lease.session)
                    .arg(i.lease.as_millis() as u64)
                    .arg(listing)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        i.mine
            .lock()
            .expect("leases lock")
            .insert(lease.session, (lease.guest.clone(), false));
        Ok(())
    }

    pub fn release(&self, lease: &Lease) {
        let i = self.inner.clone();
        i.mine.lock().expect("leases lock").remove(&lease.session);
        let lease = lease.clone();
        tokio::spawn(async move {
            let r: Result<(), _> = i
                .call("release", |mut c| {
                    let mut p = redis::pipe();
                    p.zrem(i.key("sessions"), lease.session)
                        .ignore()
                        .zrem(i.key(&format!("sessions:{}", lease.guest)), lease.session)
                        .ignore()
                        .hdel(i.key("registry"), lease.session)
                        .ignore()
                        .zrem(i.key("registry:leases"), lease.session)
                        .ignore();
                    async move { p.query_async(&mut c).await }
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(session = lease.session, error = %e,
                    "could not release a session's lease in the store: it runs out by itself");
            }
        });
    }

    /// Every session of the fleet, as each gateway listed it.
    pub async fn fleet_sessions(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let i = &self.inner;
        let raw: Vec<String> = i
            .call("list", |mut c| async move {
                i.scripts
                    .list
                    .key(i.key("registry"))
                    .key(i.key("registry:leases"))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(raw
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// Asks the gateway running session `id` to end it; which gateway
    /// that is (`None`: no such session in the fleet).
    pub async fn end_elsewhere(&self, id: u64) -> Result<Option<String>, StoreError> {
        let i = &self.inner;
        let listing: Option<String> = i
            .call("end_lookup", |mut c| async move {
                redis::cmd("HGET")
                    .arg(i.key("registry"))
                    .arg(id)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let Some(gateway) = listing
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| v["gateway"].as_str().map(str::to_string))
        else {
            return Ok(None);
        };
        let queue = i.key(&format!("end:{gateway}"));
        let () = i
            .call("end", |mut c| async move {
                redis::pipe()
                    .rpush(&queue, id)
                    .ignore()
                    .pexpire(&queue, 60_000)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(Some(gateway))
    }

    /// Sessions of this gateway that an administrator ended at another.
    pub async fn take_ends(&self) -> Result<Vec<u64>, StoreError> {
        let i = &self.inner;
        let queue = i.key(&format!("end:{}", i.name));
        let ids: Option<Vec<u64>> = i
            .call("take_ends", |mut c| async move {
                redis::cmd("LPOP")
                    .arg(&queue)
                    .arg(100)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(ids.unwrap_or_default())
    }

    pub async fn page_start(
        &self,
        claims: Claims,
    ) -> Result<Result<String, JoinError>, StoreError> {
        let i = &self.inner;
        let token = super::page_token();
        let key = i.key(&format!("page:{token}"));
        let json = serde_json::to_string(&claims)
            .map_err(|e| StoreError::Answer(format!("claims: {e}")))?;
        let mut p = redis::pipe();
        p.atomic()
            .hset(&key, "guest", &claims.guest)
            .ignore()
            .hset(&key, "claims", json)
            .ignore()
            .hset(&key, "redeemed", unix_ms())
            .ignore();
        for ch in &claims.channels {
            p.hset(&key, format!("ch:{ch}"), 1).ignore();
        }
        p.pexpire(&key, JOIN_WINDOW.as_millis() as i64).ignore();
        let () = i
            .call(
                "page_start",
                |mut c| async move { p.query_async(&mut c).await },
            )
            .await?;
        Ok(Ok(token))
    }

    pub async fn page_join(
        &self,
        token: &str,
        guest: &str,
        channel: &str,
    ) -> Result<Result<PageGrant, JoinError>, StoreError> {
        let i = &self.inner;
        // Not a hex token: no need to ask.
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Err(JoinError::Unknown));
        }
        let key = i.key(&format!("page:{token}"));
        let v: Vec<redis::Value> = i
            .call("page_join", |mut c| async move {
                i.scripts
                    .join
                    .key(&key)
                    .arg(guest)
                    .arg(channel)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let n: i64 = match v.first() {
            Some(x) => redis::from_redis_value(x).map_err(rerr)?,
            None => return Err(StoreError::Answer("page_join answered nothing".into())),
        };
        match n {
            0 => Ok(Err(JoinError::Unknown)),
            2 => Ok(Err(JoinError::WrongGuest)),
            3 => Ok(Err(JoinError::Channel(channel.into()))),
            1 if v.len() == 3 => {
                let claims: String = redis::from_redis_value(&v[1]).map_err(rerr)?;
                let redeemed: u64 = redis::from_redis_value(&v[2]).map_err(rerr)?;
                let claims: Claims = serde_json::from_str(&claims)
                    .map_err(|e| StoreError::Answer(format!("page claims: {e}")))?;
                // The redemption on the wall clock, as this gateway's Instant.
                let ago = Duration::from_millis(unix_ms().saturating_sub(redeemed));
                let redeemed = std::time::Instant::now()
                    .checked_sub(ago)
                    .unwrap_or_else(std::time::Instant::now);
                Ok(Ok(PageGrant::of(&claims, redeemed)))
            }
            n => Err(StoreError::Answer(format!("page_join answered {n}"))),
        }
    }
}

impl Inner {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// The open connection, or a new one (with the epoch read first).
    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout);
        let connect = async {
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(rerr)?;
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut c)
                .await
                .map_err(rerr)?;
            let run_id = info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| StoreError::Answer("INFO server has no run_id".into()))?
                .to_string();
            let epoch: u64 = self
                .scripts
                .epoch
                .key(self.key("epoch"))
                .key(self.key("epoch-run"))
                .arg(run_id)
                .arg(unix_ms() / 1000)
                .invoke_async(&mut c)
                .await
                .map_err(rerr)?;
            Ok::<_, StoreError>((c, epoch))
        };
        let (c, epoch) = tokio::time::timeout(self.timeout * 2, connect)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout * 2))??;
        let old = self.epoch.swap(epoch, Ordering::Relaxed);
        if old != epoch {
            tracing::info!(store = %self.where_, epoch, "store connected; tickets issued at or before its epoch are refused");
        }
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs one call with the deadline; on any failure the connection is
    /// dropped (the next call reconnects), and the failure logged on the
    /// first of a run and counted.
    async fn call<'a, T, F, Fut>(&'a self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut + 'a,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + 'a,
    {
        let r = match self.conn().await {
            Ok(c) => match tokio::time::timeout(self.timeout, f(c)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(rerr(e)),
                Err(_) => Err(StoreError::Timeout(self.timeout)),
            },
            Err(e) => Err(e),
        };
        match &r {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %self.where_, "the store answers again");
                }
            }
            Err(e) => {
                *self.conn.lock().await = None;
                self.metrics.store_error(op);
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::error!(store = %self.where_, op, error = %e,
                        "the store does not answer: new sessions are refused until it does; open sessions go on");
                } else {
                    tracing::debug!(op, error = %e, "store call failed");
                }
            }
        }
        r
    }
}

/// Renews this gateway's leases every third of the lease, in batches,
/// until the store is dropped. A renewal that fails is counted and tried
/// again at the next tick; the sessions themselves go on.
async fn renew_leases(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => i.lease / 3,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(i) = inner.upgrade() else { return };
        let mine: Vec<(u64, String, bool)> = i
            .mine
            .lock()
            .expect("leases lock")
            .iter()
            .map(|(s, (g, counted))| (*s, g.clone(), *counted))
            .collect();
        for batch in mine.chunks(500) {
            let r: Result<u64, _> = i
                .call("renew", |mut c| {
                    let mut inv = i.scripts.renew.key(i.key("sessions"));
                    inv.key(i.key("registry:leases"));
                    inv.arg(i.lease.as_millis() as u64);
                    for (s, g, counted) in batch {
                        inv.key(i.key(&format!("sessions:{g}")));
                        inv.arg(*s).arg(if *counted { "1" } else { "0" });
                    }
                    async move { inv.invoke_async(&mut c).await }
                })
                .await;
            if r.is_err() {
                break;
            }
        }
    }
}
