//! Waiting on a condition with a timeout, never a fixed sleep: a condition polled (`until`,
//! `until_some`), a future (`within`), or what the API server shows through a watch
//! (`until_list`, `until_object`, `until_gone`).

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::Api;
use kube::Resource;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use serde::de::DeserializeOwned;

/// How long a test waits for the control plane to reach a state. Generous: a loaded 2-core CI
/// machine runs the controllers slowly, and a passing test never waits this long.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The longest any single wait on loopback (an answer, a byte, a close) may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits for `condition` to hold, checking every 10 ms; fails the test after `limit`.
pub async fn until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every 20 ms until it gives `Some`, and returns that; fails the test after
/// `limit`.
pub async fn until_some<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut`; fails the test with `what` if it takes longer than `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Watches the objects that `config` selects until `done` holds for the current set, and returns
/// that set. Panics after `TIMEOUT`, showing what was last seen.
pub async fn until_list<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &str,
    mut done: impl FnMut(&[Arc<K>]) -> bool,
) -> Vec<Arc<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let mut events = pin!(reflector(writer, watcher::watcher(api, config)).default_backoff());
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => panic!(
                "timed out after {TIMEOUT:?} waiting for {what}; last watch error: {last_error:?}; \
                 last seen: {:#?}",
                reader.state()
            ),
            Ok(None) => panic!("the watch ended while waiting for {what}"),
            Ok(Some(Err(error))) => last_error = Some(error),
            Ok(Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone))) => {
                let state = reader.state();
                if done(&state) {
                    return state;
                }
            }
            Ok(Some(Ok(Event::Init | Event::InitApply(_)))) => {}
        }
    }
}

/// Watches the named object until `done` holds for it, and returns it. Panics after `TIMEOUT`.
pub async fn until_object<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    mut done: impl FnMut(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let found = until_list(api, config, what, |objects| {
        objects.first().is_some_and(|o| done(o))
    })
    .await;
    K::clone(&found[0])
}

/// Watches until the named object is gone. Panics after `TIMEOUT`.
pub async fn until_gone<K>(api: Api<K>, name: &str, what: &str)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    until_list(api, config, what, |objects| objects.is_empty()).await;
}
