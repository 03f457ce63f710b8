//! The closure helper, `Store::execute`: begin, run the operation once, store its outcome — or
//! release the claim when the operation fails, so that a retry runs it again.
//!
//! ```sh
//! cargo run --example execute
//! ```

use std::cell::Cell;
use std::fmt;

use idemstore::{Claim, ExecuteError, Execution, Key, Store};

/// The error of the side effect (here: a mail server that is down on the first try).
#[derive(Debug)]
struct MailError(&'static str);

impl fmt::Display for MailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mail server: {}", self.0)
    }
}

impl std::error::Error for MailError {}

/// Sends a welcome mail through `execute` and says what happened, as a service would log it.
fn send_welcome_mail(
    store: &Store,
    key: &Key,
    server_up: bool,
    sent: &Cell<u32>,
) -> Result<String, ExecuteError<MailError>> {
    let operation = |claim: &Claim| {
        if claim.attempt() > 1 {
            // An earlier claim lapsed without completing (its process died): the mail may have
            // gone out. A real service asks the mail provider before sending again.
            println!("  attempt {}: reconcile before resending", claim.attempt());
        }
        if !server_up {
            return Err(MailError("connection refused"));
        }
        sent.set(sent.get() + 1);
        Ok(format!("queued as msg-{}", claim.token()))
    };
    Ok(
        match store.execute(key, b"welcome alice@example.com", operation)? {
            Execution::Ran(outcome) => format!("ran: {}", String::from_utf8_lossy(outcome.data())),
            Execution::Replayed(outcome) => {
                format!("replayed: {}", String::from_utf8_lossy(outcome.data()))
            }
            Execution::InProgress { .. } => "409: another worker is sending it now".to_owned(),
            Execution::Mismatch { .. } => "422: key reused for another request".to_owned(),
        },
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let key = Key::new("signup-service", "user-1234-welcome", "send_mail")?;
    let sent = Cell::new(0);

    // 1. The operation fails: `execute` releases the claim and hands back the error.
    match send_welcome_mail(&store, &key, false, &sent) {
        Err(ExecuteError::Operation {
            error,
            release: None,
        }) => println!("first try:  failed ({error}); claim released, safe to retry"),
        Err(ExecuteError::Operation {
            error,
            release: Some(release),
        }) => {
            // The release failed too (an I/O error): the claim lapses with its lease instead,
            // and the next claim has `attempt() > 1`.
            println!("first try:  failed ({error}); release failed: {release}");
        }
        Err(ExecuteError::Store(e)) => return Err(e.into()),
        Ok(answer) => return Err(format!("expected a failure, got {answer}").into()),
    }
    // Released means absent: nothing is stored for the key.
    if store.get(&key)?.is_some() {
        return Err("a released key should be absent".into());
    }

    // 2. The retry runs it (attempt 1 again: a release is not a lapse).
    let second = send_welcome_mail(&store, &key, true, &sent)?;
    println!("retry:      {second}");

    // 3. Any later retry replays the stored outcome; the mail is not sent again.
    let third = send_welcome_mail(&store, &key, true, &sent)?;
    println!("again:      {third}");

    println!("mails sent: {}", sent.get());
    if sent.get() != 1 || !second.starts_with("ran") || !third.starts_with("replayed") {
        return Err("the mail was not sent exactly once".into());
    }
    store.close()?;
    Ok(())
}
