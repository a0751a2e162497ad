//! The Redis store against a real `redis-server` (Debian's), started on a
//! free port by each test and stopped when it ends: several gateways'
//! stores share single use, throttling, session counts and page sessions;
//! a restarted Redis starts a new epoch; an unreachable one fails within
//! the deadline and is used again, without reopening, once it is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmgate_gateway::config::StoreConfig;
use vmgate_gateway::metrics::Metrics;
use vmgate_gateway::store::pages::JoinError;
use vmgate_gateway::store::{Admit, Lease, Store, Use};
use vmgate_testkit::Redis;
use vmgate_ticket::{Claims, Mode};

const TIMEOUT_MS: u64 = 500;
const LEASE_SECS: u64 = 3;

fn now() -> u64 {
    vmgate_gateway::store::unix_ms() / 1000
}

async fn gateway(redis: &Redis, name: &str) -> Store {
    let cfg = StoreConfig {
        url: Some(redis.url()),
        timeout_ms: TIMEOUT_MS,
        lease_secs: LEASE_SECS,
        prefix: "test:".into(),
        ..StoreConfig::default()
    };
    Store::open(&cfg, name, Arc::new(Metrics::default()))
        .await
        .expect("store")
}

fn ticket(iat: u64) -> Claims {
    Claims::new("web1", ["vnc", "serial0"], Mode::Interactive, iat, 60, None)
}

#[tokio::test]
async fn a_ticket_is_used_once_across_gateways_and_a_restarted_redis_starts_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path()).unwrap();
    let (a, b) = (gateway(&redis, "a").await, gateway(&redis, "b").await);
    assert_eq!(a.epoch(), b.epoch(), "one epoch for the fleet");
    let t = ticket(a.epoch() + 1);
    let used_at = vmgate_gateway::store::unix_ms();
    assert_eq!(a.use_ticket(&t, 0).await.unwrap(), Use::First);
    assert_eq!(b.use_ticket(&t, 0).await.unwrap(), Use::Replayed);
    assert_eq!(a.use_ticket(&t, 0).await.unwrap(), Use::Replayed);
    // Raced from both gateways at once: exactly one use wins.
    let (a, b) = (Arc::new(a), Arc::new(b));
    let raced = ticket(a.epoch() + 1);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            let c = raced.clone();
            tokio::spawn(async move { s.use_ticket(&c, 0).await.unwrap() })
        })
        .collect();
    let mut first = 0;
    for t in tasks {
        if t.await.unwrap() == Use::First {
            first += 1;
        }
    }
    assert_eq!(first, 1, "one of 20 racing uses wins");
    // The key lives until the ticket's not_after, no longer.
    let ttl: i64 = redis
        .cli(&["PTTL", &format!("test:used:{}", t.id)])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let until = (t.not_after * 1000 - used_at) as i64;
    assert!(
        ttl > until - 5_000 && ttl <= until,
        "PTTL {ttl}, not_after in {until} ms"
    );

    // Redis restarts empty: its record of used tickets is gone, so every
    // ticket issued before its new epoch is refused, used or not.
    let unused = ticket(now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    redis.restart().unwrap();
    let mut outcome = Err(None);
    for _ in 0..2 {
        // The first call may find the old connection dead.
        match a.use_ticket(&t, 0).await {
            Ok(u) => {
                outcome = Ok(u);
                break;
            }
            Err(e) => outcome = Err(Some(e.to_string())),
        }
    }
    assert_eq!(outcome, Ok(Use::BeforeEpoch));
    assert!(a.epoch() > unused.iat, "a new epoch");
    let _ = b.use_ticket(&unused, 0).await;
    assert_eq!(b.use_ticket(&unused, 0).await.unwrap(), Use::BeforeEpoch);
    assert_eq!(b.epoch(), a.epoch());
    let fresh = ticket(a.epoch() + 1);
    assert_eq!(b.use_ticket(&fresh, 0).await.unwrap(), Use::First);
    assert_eq!(a.use_ticket(&fresh, 0).await.unwrap(), Use::Replayed);
    // Flushed keys (FLUSHALL) likewise start a new epoch.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    redis.cli(&["FLUSHALL"]).unwrap();
    assert_eq!(a.use_ticket(&fresh, 0).await.unwrap(), Use::BeforeEpoch);
}

#[tokio::test]
async fn throttling_and_session_limits_count_across_gateways_and_a_dead_gateways_leases_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path()).unwrap();
    let (a, b) = (gateway(&redis, "a").await, gateway(&redis, "b").await);
    let w = Duration::from_secs(60);
    let ip = "192.0.2.7".parse().unwrap();
    for _ in 0..3 {
        assert_eq!(b.throttled(ip, 3, w).await.unwrap(), None);
        a.ticket_failed(ip, 3, w).await.unwrap();
    }
    let wait = b
        .throttled(ip, 3, w)
        .await
        .unwrap()
        .expect("throttled at b");
    assert!(wait > Duration::from_secs(58) && wait <= w, "{wait:?}");
    assert_eq!(
        b.throttled("192.0.2.8".parse().unwrap(), 3, w)
            .await
            .unwrap(),
        None
    );

    // Session ids are unique in a fleet (each gateway counts from a
    // random start): a's are 1 to 9, b's from 11.
    let lease = |s: u64, g: &str| Lease {
        session: s,
        guest: g.into(),
    };
    assert_eq!(
        a.admit(&lease(1, "g"), 3, 2, "{}").await.unwrap(),
        Admit::Yes
    );
    assert_eq!(
        b.admit(&lease(11, "g"), 3, 2, "{}").await.unwrap(),
        Admit::Yes
    );
    assert_eq!(
        b.admit(&lease(12, "g"), 3, 2, "{}").await.unwrap(),
        Admit::GuestAtMax
    );
    assert_eq!(
        b.admit(&lease(12, "h"), 3, 2, "{}").await.unwrap(),
        Admit::Yes
    );
    assert_eq!(
        a.admit(&lease(2, "i"), 3, 2, "{}").await.unwrap(),
        Admit::AtMax
    );
    // Released at a: b may admit on g again (the release is sent in the
    // background, within the store's deadline).
    a.release(&lease(1, "g"), true);
    let start = Instant::now();
    while b.admit(&lease(13, "g"), 3, 2, "{}").await.unwrap() != Admit::Yes {
        assert!(
            start.elapsed() < Duration::from_millis(TIMEOUT_MS),
            "release not seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Leases are renewed: after two lease lengths b's sessions still count.
    tokio::time::sleep(Duration::from_secs(2 * LEASE_SECS)).await;
    assert_eq!(
        a.admit(&lease(4, "g"), 0, 2, "{}").await.unwrap(),
        Admit::GuestAtMax
    );
    // b dies (no release, no renewal): its leases run out within a lease.
    drop(b);
    let died = Instant::now();
    while a.admit(&lease(4, "g"), 0, 2, "{}").await.unwrap() != Admit::Yes {
        assert!(
            died.elapsed() < Duration::from_secs(LEASE_SECS + 1),
            "a dead gateway's sessions still count after {:?}",
            died.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        died.elapsed() >= Duration::from_secs(LEASE_SECS) / 3,
        "{:?}",
        died.elapsed()
    );
}

#[tokio::test]
async fn a_page_session_started_on_one_gateway_joins_on_another_once_per_channel() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path()).unwrap();
    let (a, b) = (gateway(&redis, "a").await, gateway(&redis, "b").await);
    let claims = Claims::new(
        "web1",
        ["vnc", "serial0"],
        Mode::ReadOnly,
        now(),
        60,
        Some(30),
    );
    let token = a.page_start(claims.clone()).await.unwrap().unwrap();
    assert_eq!(
        b.page_join(&token, "other", "vnc")
            .await
            .unwrap()
            .unwrap_err(),
        JoinError::WrongGuest
    );
    assert_eq!(
        b.page_join(&token, "web1", "test.echo")
            .await
            .unwrap()
            .unwrap_err(),
        JoinError::Channel("test.echo".into())
    );
    let g = b.page_join(&token, "web1", "vnc").await.unwrap().unwrap();
    assert_eq!(g.ticket, claims.id);
    assert_eq!(g.mode, Mode::ReadOnly);
    let left = g
        .until
        .expect("limited")
        .saturating_duration_since(std::time::Instant::now());
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    assert_eq!(
        a.page_join(&token, "web1", "vnc")
            .await
            .unwrap()
            .unwrap_err(),
        JoinError::Channel("vnc".into())
    );
    a.page_join(&token, "web1", "serial0")
        .await
        .unwrap()
        .unwrap();
    // Every channel opened: the token is gone.
    assert_eq!(
        b.page_join(&token, "web1", "serial0")
            .await
            .unwrap()
            .unwrap_err(),
        JoinError::Unknown
    );
    let keys = redis.cli(&["KEYS", "test:page:*"]).unwrap();
    assert!(keys.trim().is_empty(), "{keys}");
    assert_eq!(
        a.page_join("not-a-token", "web1", "vnc")
            .await
            .unwrap()
            .unwrap_err(),
        JoinError::Unknown
    );
}

#[tokio::test]
async fn an_unreachable_store_fails_within_its_deadline_and_is_used_again_once_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path()).unwrap();
    let a = gateway(&redis, "a").await;
    let lease = Lease {
        session: 1,
        guest: "g".into(),
    };
    assert_eq!(a.admit(&lease, 0, 0, "{}").await.unwrap(), Admit::Yes);
    redis.kill();
    for _ in 0..3 {
        let start = Instant::now();
        let r = a.use_ticket(&ticket(a.epoch() + 1), 0).await;
        assert!(r.is_err(), "{r:?}");
        assert!(
            start.elapsed() <= Duration::from_millis(3 * TIMEOUT_MS),
            "failed after {:?}",
            start.elapsed()
        );
        assert!(a.admit(&lease, 0, 0, "{}").await.is_err());
        assert!(a.page_start(ticket(now())).await.is_err());
    }
    redis.restart().unwrap();
    let back = Instant::now();
    // The first call after the restart reconnects: no reopening. (A
    // ticket issued after the restart, past the new epoch.)
    let fresh = ticket(now() + 2);
    assert_eq!(a.use_ticket(&fresh, 0).await.unwrap(), Use::First);
    assert_eq!(a.use_ticket(&fresh, 0).await.unwrap(), Use::Replayed);
    assert_eq!(a.admit(&lease, 0, 0, "{}").await.unwrap(), Admit::Yes);
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );
}

#[tokio::test]
async fn the_fleets_sessions_are_listed_and_one_ended_anywhere_is_asked_of_its_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path()).unwrap();
    let (a, b) = (gateway(&redis, "a").await, gateway(&redis, "b").await);
    let lease = |s: u64| Lease {
        session: s,
        guest: "g".into(),
    };
    let listing = |s: u64, gw: &str| format!(r#"{{"id":{s},"gateway":"{gw}"}}"#);
    assert_eq!(
        a.admit(&lease(101), 0, 0, &listing(101, "a"))
            .await
            .unwrap(),
        Admit::Yes
    );
    // An administrator's console: listed, not counted.
    b.register(&lease(202), &listing(202, "b")).await.unwrap();
    assert_eq!(
        a.admit(&lease(103), 0, 1, "{}").await.unwrap(),
        Admit::GuestAtMax
    );
    let mut ids: Vec<_> = b
        .fleet_sessions()
        .await
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_u64().unwrap(),
                v["gateway"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [(101, "a".to_string()), (202, "b".to_string())]);
    // Ended at b, run at a: a is asked, once.
    assert_eq!(b.end_elsewhere(101).await.unwrap().as_deref(), Some("a"));
    assert_eq!(a.take_ends().await.unwrap(), [101]);
    assert!(a.take_ends().await.unwrap().is_empty());
    assert!(b.take_ends().await.unwrap().is_empty());
    assert_eq!(a.end_elsewhere(999).await.unwrap(), None);
    // Released: gone from the list.
    a.release(&lease(101), true);
    let start = Instant::now();
    while b.fleet_sessions().await.unwrap().len() != 1 {
        assert!(
            start.elapsed() < Duration::from_millis(TIMEOUT_MS),
            "not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // b dies: its console leaves the list within a lease.
    drop(b);
    let died = Instant::now();
    while !a.fleet_sessions().await.unwrap().is_empty() {
        assert!(
            died.elapsed() < Duration::from_secs(LEASE_SECS + 1),
            "a dead gateway's session is still listed after {:?}",
            died.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
