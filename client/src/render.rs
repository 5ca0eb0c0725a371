//! Readable terminal output of the billing API's JSON answers: key/value
//! blocks, record tables and report tables. Pure functions over
//! `serde_json::Value` returning `String`s; touches nothing.

use serde_json::Value;

/// Widest cell of a table column before it is cut with `…`.
const CELL_CHARS_MAX: usize = 40;

/// A scalar as text: strings bare, null as `-`, others as JSON.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `key  value` lines; nested objects flatten to `outer.inner`; arrays of
/// scalars join with `, `; arrays of objects print their length only (the
/// caller renders them as tables).
pub fn key_values(v: &Value) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    flatten("", v, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, val) in rows {
        out.push_str(&format!("  {k:<width$}  {val}\n"));
    }
    out
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, val, rows);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            rows.push((prefix.to_string(), format!("[{} items]", items.len())));
        }
        Value::Array(items) => {
            let joined: Vec<String> = items.iter().map(scalar).collect();
            rows.push((prefix.to_string(), joined.join(", ")));
        }
        other => rows.push((prefix.to_string(), scalar(other))),
    }
}

/// A table of the given columns over an array of objects.
pub fn table(items: &[Value], columns: &[&str]) -> String {
    let cells: Vec<Vec<String>> = items
        .iter()
        .map(|it| {
            columns
                .iter()
                .map(|c| cut(&scalar(it.get(*c).unwrap_or(&Value::Null))))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |row: &[String]| -> String {
        let parts: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        format!("  {}\n", parts.join("  ").trim_end())
    };
    let header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let mut out = line(&header);
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

fn cut(s: &str) -> String {
    if s.chars().count() <= CELL_CHARS_MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(CELL_CHARS_MAX - 1).collect();
        t.push('…');
        t
    }
}

/// Columns of a record table (ledger rows).
pub const RECORD_COLUMNS: &[&str] = &[
    "record_id",
    "ts",
    "kind",
    "amount",
    "units",
    "balance_effect",
    "invoice_no",
    "card_seq",
    "operator_id",
    "channel",
];

/// A record list answer (`records`, `next_page_token`) as a table.
pub fn records(v: &Value) -> String {
    let items = v
        .get("records")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = format!(
        "account {}  ({} records)\n",
        scalar(v.get("account_id").unwrap_or(&Value::Null)),
        items.len()
    );
    out.push_str(&table(&items, RECORD_COLUMNS));
    if let Some(t) = v.get("next_page_token").and_then(Value::as_str) {
        out.push_str(&format!("  more: --page-token {t}\n"));
    }
    out
}

/// A customer statement: the account, opening balance, the period's
/// records with the balance after each, totals per kind, closing balance.
pub fn statement(v: &Value) -> String {
    let get = |k: &str| scalar(v.get(k).unwrap_or(&Value::Null));
    let lines = v
        .get("lines")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = format!(
        "statement of account {}  {}  {}\n  period {} to {}\n  opening balance {}\n",
        get("account_id"),
        get("name"),
        get("address"),
        get("from"),
        get("to"),
        get("opening_balance"),
    );
    out.push_str(&table(
        &lines,
        &[
            "ts",
            "record_id",
            "kind",
            "amount",
            "units",
            "balance_effect",
            "balance_after",
            "invoice_no",
            "reason",
        ],
    ));
    if let Some(kinds) = v.get("totals_by_kind").and_then(Value::as_object) {
        for (kind, t) in kinds {
            out.push_str(&format!(
                "  {kind}: {} records, amount {}, balance effect {}\n",
                scalar(t.get("count").unwrap_or(&Value::Null)),
                scalar(t.get("amount").unwrap_or(&Value::Null)),
                scalar(t.get("balance_effect").unwrap_or(&Value::Null)),
            ));
        }
    }
    out.push_str(&format!("  closing balance {}\n", get("closing_balance")));
    out
}

/// A card check: verdict first, then the account and the recent records.
pub fn card_check(v: &Value) -> String {
    let get = |k: &str| scalar(v.get(k).unwrap_or(&Value::Null));
    let mut out = format!("{}  {}\n", get("verdict"), get("message"));
    if let Some(a) = v.get("account").filter(|a| a.is_object()) {
        let ag = |k: &str| scalar(a.get(k).unwrap_or(&Value::Null));
        out.push_str(&format!(
            "  account {}  {}  {}  balance {}\n",
            ag("account_id"),
            ag("name"),
            ag("status"),
            ag("balance")
        ));
    }
    out.push_str(&format!("  expected card seq {}\n", get("expected_seq")));
    for k in ["current_card", "unloaded_record_id"] {
        if v.get(k).is_some_and(|x| !x.is_null()) {
            out.push_str(&format!("  {k} {}\n", get(k)));
        }
    }
    let recent = v
        .get("recent")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !recent.is_empty() {
        out.push_str("recent records (newest first)\n");
        out.push_str(&table(&recent, RECORD_COLUMNS));
    }
    out
}

/// A monthly or bank-daily report: its lines and the total.
/// The balance report: one line per group, then the total.
pub fn balances(v: &Value) -> String {
    let mut lines = v
        .get("lines")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(t) = v.get("total") {
        let mut t = t.clone();
        t["key"] = Value::from("TOTAL");
        lines.push(t);
    }
    let mut out = format!(
        "balances by {}\n",
        scalar(v.get("group_by").unwrap_or(&Value::Null))
    );
    out.push_str(&table(
        &lines,
        &["key", "accounts", "closed", "balance", "debit", "credit"],
    ));
    out
}

pub fn report(v: &Value) -> String {
    let lines = v
        .get("lines")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = format!(
        "report {}  ({} lines)\n",
        scalar(v.get("period").unwrap_or(&Value::Null)),
        lines.len()
    );
    out.push_str(&table(
        &lines,
        &["value", "kind", "count", "amount", "units"],
    ));
    if let Some(t) = v.get("total") {
        out.push_str(&format!(
            "  records: {}\n",
            scalar(t.get("count").unwrap_or(&Value::Null)),
        ));
    }
    // Totals per kind, never across kinds: a reissue delivers a sale's
    // credit again and a payment is not a sale.
    if let Some(kinds) = v.get("totals_by_kind").and_then(Value::as_object) {
        for (kind, t) in kinds {
            out.push_str(&format!(
                "  total {kind}: {} records, amount {}, units {}\n",
                scalar(t.get("count").unwrap_or(&Value::Null)),
                scalar(t.get("amount").unwrap_or(&Value::Null)),
                scalar(t.get("units").unwrap_or(&Value::Null)),
            ));
        }
    }
    if let Some(t) = v.get("sales") {
        out.push_str(&format!(
            "  sales (purchases, each counted once): {} sales, amount {}, units {}\n",
            scalar(t.get("count").unwrap_or(&Value::Null)),
            scalar(t.get("amount").unwrap_or(&Value::Null)),
            scalar(t.get("units").unwrap_or(&Value::Null)),
        ));
    }
    if v.get("truncated").and_then(Value::as_bool) == Some(true) {
        out.push_str("  (truncated: more lines than one report returns)\n");
    }
    if let Some(c) = v.pointer("/read/consistency") {
        out.push_str(&format!("  read: {}\n", scalar(c)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_values_flatten_nested_objects_and_align() {
        let s = key_values(
            &json!({"result": "record_posted", "record": {"seq": 3, "amount": "10.00"}, "warnings": []}),
        );
        assert!(s.contains("  record.seq     3\n"), "{s}");
        assert!(s.contains("  record.amount  10.00\n"), "{s}");
        assert!(s.contains("  result         record_posted\n"), "{s}");
    }

    #[test]
    fn tables_have_a_header_and_one_line_per_item() {
        let items = vec![
            json!({"value": "op-1", "kind": "purchase", "count": 2, "amount": "30.00", "units": "40.000"}),
            json!({"value": "op-2", "kind": "payment", "count": 1, "amount": "5.00", "units": "0"}),
        ];
        let t = table(&items, &["value", "kind", "count"]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].contains("value") && lines[0].contains("count"));
        assert!(lines[1].contains("op-1") && lines[1].contains("purchase"));
        assert!(lines[2].contains("op-2") && lines[2].ends_with('1'));
    }

    #[test]
    fn long_cells_are_cut() {
        let long = "x".repeat(100);
        let t = table(&[json!({"a": long})], &["a"]);
        assert!(t.contains('…'));
        assert!(t.lines().all(|l| l.chars().count() <= CELL_CHARS_MAX + 2));
    }

    #[test]
    fn report_prints_totals_per_kind_sales_once_and_truncation() {
        let r = report(&json!({
            "period": "2026-03", "truncated": true,
            "lines": [{"value": "op", "kind": "purchase", "count": 1, "amount": "1.00", "units": "2"}],
            "total": {"count": 2},
            "totals_by_kind": {"purchase": {"count": 1, "amount": "192.30", "units": "384.6"},
                               "reissue": {"count": 1, "amount": "0", "units": "384.6"}},
            "sales": {"count": 1, "amount": "192.30", "units": "384.6"},
            "read": {"consistency": "stale"}
        }));
        assert!(r.contains("records: 2"), "{r}");
        assert!(
            r.contains("total reissue: 1 records, amount 0, units 384.6"),
            "{r}"
        );
        assert!(
            r.contains("sales (purchases, each counted once): 1 sales, amount 192.30, units 384.6"),
            "{r}"
        );
        assert!(
            !r.contains("769.2"),
            "reissued units are not added to sold units: {r}"
        );
        assert!(r.contains("truncated"), "{r}");
        assert!(r.contains("read: stale"), "{r}");
    }

    #[test]
    fn card_check_shows_the_verdict_first() {
        let c = card_check(
            &json!({"verdict": "CARD_REPLACED", "message": "replaced on 2026-01-02",
            "current_card": "C2", "expected_seq": 4, "recent": []}),
        );
        assert!(
            c.starts_with("CARD_REPLACED  replaced on 2026-01-02"),
            "{c}"
        );
        assert!(c.contains("current_card C2"), "{c}");
    }
}
