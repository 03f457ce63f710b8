//! An async service: 200 order requests, each sent twice at once by an impatient client and
//! retried once more later, handled by Tokio tasks through `execute_async`. Every order is
//! created exactly once, a copy that arrives while its original runs is told to wait, every
//! later retry gets the first response replayed, and the durable answers share a few fsyncs.
//!
//! ```sh
//! cargo run --example async_service
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idemstore::{Claim, Execution, Key, Store};

/// The side effect: creating an order in some other system, counted so that the example can
/// check it ran once per request.
async fn create_order(claim: Claim, created: Arc<AtomicU64>) -> std::io::Result<Vec<u8>> {
    let n = created.fetch_add(1, Ordering::SeqCst);
    tokio::task::yield_now().await; // stands for a network call
    let request = String::from_utf8_lossy(claim.key().request());
    Ok(format!("order {n} for {request}").into_bytes())
}

/// Sends each of `requests` order requests `copies` times at once, as concurrent tasks, and
/// counts the answers: (ran, replayed, told to wait).
async fn send(
    store: &Store,
    requests: u64,
    copies: u64,
    created: &Arc<AtomicU64>,
) -> Result<(u64, u64, u64), Box<dyn std::error::Error>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..copies {
        for i in 0..requests {
            let (store, created) = (store.clone(), created.clone());
            tasks.spawn(async move {
                let key = Key::new("shop", format!("order-req-{i}"), "POST /v1/orders")?;
                let body = format!("{{\"item\": {i}}}");
                let run = |claim| create_order(claim, created);
                let answer = store.execute_async(&key, body.as_bytes(), run).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answer)
            });
        }
    }
    let (mut ran, mut replayed, mut busy) = (0, 0, 0);
    while let Some(done) = tasks.join_next().await {
        match done?.map_err(|e| e.to_string())? {
            Execution::Ran(_) => ran += 1,
            Execution::Replayed(_) => replayed += 1,
            // A copy that arrived while the first was still running: a real service answers
            // 409 and the client retries later.
            Execution::InProgress { .. } => busy += 1,
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
    }
    Ok((ran, replayed, busy))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let created = Arc::new(AtomicU64::new(0));
    let requests = 200;

    // Each request and an impatient copy of it, at once; then one more retry of each.
    let (ran, replayed, busy) = send(&store, requests, 2, &created).await?;
    println!("first wave: {ran} orders created, {replayed} copies replayed, {busy} told to wait");
    assert_eq!(ran, requests);
    assert_eq!(replayed + busy, requests);
    let (ran, replayed, _) = send(&store, requests, 1, &created).await?;
    println!("retries: {ran} orders created, {replayed} replayed");
    assert_eq!((ran, replayed), (0, requests));
    assert_eq!(
        created.load(Ordering::SeqCst),
        requests,
        "each order created once"
    );

    let stats = store.stats()?;
    println!(
        "{} durable records in {} fsyncs (group commit across the tasks)",
        stats.appended, stats.syncs
    );

    // The answers survive a restart: a retry after it replays, and nothing runs again.
    store.close()?;
    let store = Store::open(dir.path())?;
    let key = Key::new("shop", "order-req-7", "POST /v1/orders")?;
    let again = store.execute_async(&key, b"{\"item\": 7}", |_| async {
        Err::<Vec<u8>, _>(std::io::Error::other("must not run again"))
    });
    assert!(matches!(again.await?, Execution::Replayed(_)));
    println!("after a restart: order-req-7 replayed");
    Ok(())
}
