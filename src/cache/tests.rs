//! The cache's own rules: single-flight, generations after writes, absent entries, the L2 format.

use super::*;

fn slow_load(loads: &Arc<AtomicU64>, body: &'static str) -> impl Future<Output = StoreResult<Loaded>> + Send + 'static {
    let loads = loads.clone();
    async move {
        loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Loaded::Keep(Bytes::from_static(body.as_bytes())))
    }
}

#[tokio::test]
async fn concurrent_misses_on_one_key_share_one_load_with_or_without_l1() {
    for l1 in [true, false] {
        let cache = Arc::new(Cache::new(&CacheConfig { l1, ..CacheConfig::default() }).unwrap());
        let loads = Arc::new(AtomicU64::new(0));
        let all: Vec<_> = (0..32)
            .map(|_| {
                let (cache, load) = (cache.clone(), slow_load(&loads, "v1"));
                tokio::spawn(async move { cache.get_or_load(Family::Product, "shop:a", "A", load).await })
            })
            .collect();
        for r in futures::future::join_all(all).await {
            assert_eq!(&r.unwrap().unwrap().unwrap().body[..], b"v1");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "l1 = {l1}");
    }
}

#[tokio::test]
async fn a_bumped_scope_is_loaded_again_and_a_late_load_is_not_served_after_it() {
    let cache = Arc::new(Cache::new(&CacheConfig::default()).unwrap());
    let loads = Arc::new(AtomicU64::new(0));
    let first = cache.get_or_load(Family::Product, "shop:a", "A", slow_load(&loads, "old")).await.unwrap().unwrap();
    assert_eq!(first.source, Source::Miss);
    let hit = cache.get_or_load(Family::Product, "shop:a", "A", slow_load(&loads, "x")).await.unwrap().unwrap();
    assert_eq!((hit.source, &hit.body[..]), (Source::L1, &b"old"[..]));

    // A load that started before a write and ends after it must not be served afterwards.
    let late = {
        let cache = cache.clone();
        cache.bump_local("shop:a", None);
        let load = slow_load(&loads, "stale");
        tokio::spawn(async move { cache.get_or_load(Family::Product, "shop:a", "A", load).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    cache.bump_local("shop:a", None);
    late.await.unwrap().unwrap();
    let fresh = cache.get_or_load(Family::Product, "shop:a", "A", slow_load(&loads, "new")).await.unwrap().unwrap();
    assert_eq!((fresh.source, &fresh.body[..]), (Source::Miss, &b"new"[..]));
    // Other scopes keep their entries.
    cache.bump_local("shop:b", None);
    let kept = cache.get_or_load(Family::Product, "shop:a", "A", slow_load(&loads, "y")).await.unwrap().unwrap();
    assert_eq!(kept.source, Source::L1);
}

#[tokio::test]
async fn an_absent_thing_is_remembered_until_its_scope_changes() {
    let cache = Arc::new(Cache::new(&CacheConfig::default()).unwrap());
    let loads = Arc::new(AtomicU64::new(0));
    let absent = |loads: &Arc<AtomicU64>| {
        let loads = loads.clone();
        async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded::Absent)
        }
    };
    assert!(cache.get_or_load(Family::Product, "shop:a", "A", absent(&loads)).await.unwrap().is_none());
    assert!(cache.get_or_load(Family::Product, "shop:a", "A", absent(&loads)).await.unwrap().is_none());
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    cache.bump_local("shop:a", Some(1));
    let found = cache.get_or_load(Family::Product, "shop:a", "A", slow_load(&loads, "made")).await.unwrap();
    assert_eq!(&found.unwrap().body[..], b"made");
}

#[test]
fn l2_values_carry_their_expiry_and_whether_the_thing_exists() {
    let c = Cached {
        body: Bytes::from_static(b"{}"),
        etag: etag_of(b"{}").into(),
        source: Source::Miss,
        expires: Instant::now(),
        absent: false,
    };
    let back = decode(encode(&c, Duration::from_secs(30))).unwrap();
    assert_eq!((&back.body[..], back.absent, back.source), (&b"{}"[..], false, Source::L2));
    assert!(back.ttl_left() > Duration::from_secs(28));
    assert!(decode(encode(&c, Duration::ZERO)).is_none_or(|c| c.ttl_left().is_zero()));
    assert!(decode(vec![1, 2]).is_none());
}

#[test]
fn each_tier_and_outcome_counts_under_its_own_label() {
    use super::{OUTCOMES, TIERS};
    for (at, (tier, _)) in TIERS.iter().enumerate() {
        assert_eq!(*tier as usize, at, "the series of {} is at its place", TIERS[at].1);
    }
    for (at, (outcome, _)) in OUTCOMES.iter().enumerate() {
        assert_eq!(*outcome as usize, at, "the series of {} is at its place", OUTCOMES[at].1);
    }
}
