//! TEST ONLY: the fault point that loses an acknowledged write
//! (`billdb_api::failpoints::ACK_WITHOUT_WRITE_FILE`), so a test proves the
//! drill verifier (`billdb drill run`) reports a lost write by its
//! request_id. It acts only when the node runs with `BILLDB_FAILPOINTS=1`
//! (read once, at the first write) AND the file exists in its data
//! directory; production nodes set neither. When it fires the node logs an
//! error line saying so.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::app::App;
use crate::domain::Op;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(billdb_api::failpoints::ENV).as_deref() == Ok("1"))
}

/// The fake answer to `request_id` when the fault point is armed for it
/// (and disarms it), else `None`.
pub fn ack_without_write(app: &App, request_id: &str, op: &Op) -> Option<Value> {
    if !enabled() {
        return None;
    }
    use billdb_api::failpoints::{ACK_WITHOUT_WRITE_FILE, ACK_WITHOUT_WRITE_FIRED_FILE};
    let armed = app.config.data_dir.join(ACK_WITHOUT_WRITE_FILE);
    let wanted = std::fs::read_to_string(&armed).ok()?;
    let suffix = wanted.trim();
    if suffix.is_empty() || !request_id.ends_with(suffix) {
        return None;
    }
    // One shot: only the caller that removes the file answers falsely.
    std::fs::remove_file(&armed).ok()?;
    let fired = app.config.data_dir.join(ACK_WITHOUT_WRITE_FIRED_FILE);
    let _ = std::fs::write(&fired, request_id);
    tracing::error!(
        request_id,
        "TEST FAULT POINT: acknowledging a write without writing it ({})",
        ACK_WITHOUT_WRITE_FILE
    );
    Some(match op {
        Op::Payment {
            account_id, amount, ..
        } => json!({"result": "payment_posted", "account_id": account_id, "seq": 0,
                    "amount": amount.to_string(), "balance": "0", "invoice_no": "",
                    "log_index": 0}),
        _ => json!({"result": "record_posted", "warnings": [], "log_index": 0}),
    })
}
