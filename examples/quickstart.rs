//! The README's example as a program: claim a key, run the side effect once, complete it, and
//! replay the stored outcome to a retry.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use idemstore::{Begin, Key, Store};

/// The side effect that must run at most once (here it only builds a response).
fn charge_card(request: &[u8]) -> Vec<u8> {
    format!(
        "charge ch_1 created for {}",
        String::from_utf8_lossy(request)
    )
    .into_bytes()
}

/// Handles one request the way a service would: run it, or replay what it answered before.
fn handle(store: &Store, key: &Key, request: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let response = match store.begin(key, request)? {
        Begin::Claimed(claim) => {
            let response = charge_card(request); // the side effect, run once
            store.complete(&claim, &response)?.into_data() // durable before it returns
        }
        Begin::Completed(outcome) => outcome.into_data(), // a retry: replay, don't re-run
        Begin::InProgress { .. } => return Err("409: being processed, retry later".into()),
        Begin::Mismatch { .. } => return Err("422: key reused with another request".into()),
    };
    Ok(response)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?; // creates the directory if missing

    // Who asks, the idempotency key they sent, and what it acts on.
    let key = Key::new("client-42", "9f1c-idempotency-key", "POST /v1/charges")?;
    let request = br#"{"amount": 1000, "currency": "EUR"}"#;

    let first = handle(&store, &key, request)?;
    println!("first call:  {}", String::from_utf8_lossy(&first));

    // The client timed out and retries with the same key: the stored response is replayed.
    let retry = handle(&store, &key, request)?;
    println!(
        "retry:       {} (replayed)",
        String::from_utf8_lossy(&retry)
    );

    // A buggy client reuses the key for a different request: refused, nothing runs.
    let reused = handle(&store, &key, br#"{"amount": 5000, "currency": "EUR"}"#);
    println!(
        "key reused:  {}",
        reused
            .as_ref()
            .err()
            .map_or_else(String::new, ToString::to_string)
    );

    if retry != first || reused.is_ok() {
        return Err("the store did not replay or refuse as documented".into());
    }
    store.close()?;
    Ok(())
}
