//! A drill's evidence: the JSON document (data, the SHA-256 of its
//! canonical form, the operator's Ed25519 signature of that hash), the
//! Markdown and the self-contained HTML renderings (inline SVG chart, no
//! external asset; the JSON embedded, so either file verifies).
//!
//! Canonical form: the data as JSON with every object's keys sorted, no
//! whitespace, numbers as serde_json writes them. `drill verify` recomputes
//! it, compares the hash and checks the signature with the public key the
//! auditor was given (not one carried by the report).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "billdb-drill-report/1";
/// The element of the HTML report that carries the JSON report.
const EMBED_ID: &str = "billdb-drill-report";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub data: Value,
    /// SHA-256 (hex) of the canonical data.
    pub sha256: String,
    /// Ed25519 signature (hex) of the 32 hash bytes.
    pub signature: String,
    /// The signer's public key (hex), for information: verify uses the one
    /// it is given.
    pub public_key: String,
}

/// `v` with every object's keys sorted, compact.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub fn data_sha256(data: &Value) -> [u8; 32] {
    Sha256::digest(canonical(data).as_bytes()).into()
}

impl Report {
    pub fn sign(data: Value, private_key: &Path) -> Result<Report> {
        let key = crate::backup::read_signing_key(private_key)?;
        let hash = data_sha256(&data);
        Ok(Report {
            sha256: hex::encode(hash),
            signature: hex::encode(key.sign(&hash).to_bytes()),
            public_key: hex::encode(key.verifying_key().to_bytes()),
            data,
        })
    }

    pub fn passed(&self) -> bool {
        self.data["result"].as_str() == Some("PASS")
    }

    /// Write `<stem>.json`, `.md`, `.html` into `dir`; their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!(
            "drill-{}-{}",
            self.data["scenario"].as_str().unwrap_or("x"),
            self.data["drill_id"].as_str().unwrap_or("x")
        );
        let json = serde_json::to_string_pretty(self)?;
        let mut out = Vec::new();
        for (ext, text) in [
            ("json", json.clone()),
            ("md", self.markdown()),
            ("html", self.html()),
        ] {
            let p = dir.join(format!("{stem}.{ext}"));
            let tmp = dir.join(format!(".{stem}.{ext}.tmp"));
            std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &p).with_context(|| format!("renaming to {}", p.display()))?;
            out.push(p);
        }
        Ok(out)
    }

    pub fn markdown(&self) -> String {
        let d = &self.data;
        if d["scenario"] == super::rehearsal::SCENARIO {
            return self.rehearsal_markdown();
        }
        let m = &d["measured"];
        let v = &d["verification"];
        let o = &d["objectives"];
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Failover drill: {} — {}\n",
            d["scenario"].as_str().unwrap_or("?"),
            d["result"].as_str().unwrap_or("?")
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        for (k, val) in [
            ("drill", d["drill_id"].to_string()),
            ("operator", d["operator"].to_string()),
            ("executor", d["executor"].to_string()),
            ("started (UTC)", d["started_utc"].to_string()),
            ("finished (UTC)", d["finished_utc"].to_string()),
            ("cluster version", d["cluster"]["version"].to_string()),
            (
                "members",
                d["cluster"]["members"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                format!("{} ({})", x["id"], x["http_addr"].as_str().unwrap_or(""))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
            ),
            ("leader before", d["cluster"]["leader_before"].to_string()),
        ] {
            let _ = writeln!(s, "| {k} | {} |", val.trim_matches('"'));
        }
        let _ = writeln!(
            s,
            "\n## Objectives\n\n| objective | target | measured | result |\n|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| RTO (write gap) | ≤ {} ms | {} ms | {} |",
            o["rto_write_gap_ms"],
            m["write_gap_ms"],
            pass(m["rto_pass"].as_bool())
        );
        let _ = writeln!(
            s,
            "| RPO (acknowledged writes lost) | ≤ {} | {} | {} |",
            o["rpo_lost_writes"],
            v["lost"],
            pass(m["rpo_pass"].as_bool())
        );
        let _ = writeln!(s, "\n## Measured\n\n| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| write gap (fault → first acknowledged write) | {} ms |",
            m["write_gap_ms"]
        );
        let _ = writeln!(
            s,
            "| read gap (fault → first answered read) | {} ms |",
            m["read_gap_ms"]
        );
        let _ = writeln!(s, "| every node ready after | {} ms |", m["health_ms"]);
        let w = &d["workload"];
        let _ = writeln!(
            s,
            "| writes sent / acknowledged / refused / unknown | {} / {} / {} / {} |",
            w["writes"], w["acknowledged"], w["refused"], w["unknown"]
        );
        let _ = writeln!(
            s,
            "| reads answered / failed | {} / {} |",
            w["reads_ok"], w["reads_failed"]
        );
        let _ = writeln!(s, "\n## Verified after heal\n\n| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| acknowledged writes re-read on every node | {} × {} nodes |",
            v["acknowledged_checked"], v["reads_per_write"]
        );
        let _ = writeln!(s, "| lost | {} |", v["lost"]);
        let _ = writeln!(s, "| duplicated | {} |", v["duplicated"]);
        let _ = writeln!(s, "| records from no sent request | {} |", v["phantom"]);
        let _ = writeln!(
            s,
            "| balances equal records and acknowledged writes | {} |",
            v["balances_ok"]
        );
        let _ = writeln!(
            s,
            "| state digests equal on all replicas | {} |",
            v["digests_equal"]
        );
        if let Some(l) = v["lost_requests"].as_array().filter(|l| !l.is_empty()) {
            let _ = writeln!(s, "\nLost acknowledged requests:\n");
            for x in l {
                let _ = writeln!(
                    s,
                    "- `{}` missing on nodes {}",
                    x["request_id"].as_str().unwrap_or("?"),
                    x["missing_on"]
                );
            }
        }
        if let Some(f) = d["failures"].as_array().filter(|f| !f.is_empty()) {
            let _ = writeln!(s, "\n## Failures\n");
            for x in f {
                let _ = writeln!(s, "- {}", x.as_str().unwrap_or("?"));
            }
        }
        let _ = writeln!(
            s,
            "\n## Actions\n\n| t (ms) | action | node |\n|---|---|---|"
        );
        for a in d["actions"].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(
                s,
                "| {} | {}{} | {} |",
                a["t_ms"],
                a["action"].as_str().unwrap_or(""),
                if a["fault"].as_bool() == Some(true) {
                    " (fault)"
                } else {
                    ""
                },
                a["node"]
            );
        }
        let _ = writeln!(
            s,
            "\n## Timeline\n\n| t (s) | writes/s | reads/s | errors | nodes (role term commit) |\n|---|---|---|---|---|"
        );
        for x in d["timeline"].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                x["t_s"],
                x["writes_ok"],
                x["reads_ok"],
                errors_text(&x["errors"]),
                nodes_text(&x["nodes"])
            );
        }
        let _ = writeln!(
            s,
            "\n## Signature\n\nSHA-256 of the canonical data: `{}`  \nEd25519 signature: `{}`  \nsigner's public key: `{}`\n\nCheck: `billdb drill verify <the .json or .html report> --public-key <the operator's .pub>`",
            self.sha256, self.signature, self.public_key
        );
        s
    }

    /// A restore rehearsal: the backup, the scratch cluster, the steps.
    fn rehearsal_markdown(&self) -> String {
        let d = &self.data;
        let b = &d["backup"];
        let m = &d["measured"];
        let o = &d["objectives"];
        let x = &d["scratch"];
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Restore rehearsal — {}\n",
            d["result"].as_str().unwrap_or("?")
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        for (k, val) in [
            ("drill", d["drill_id"].to_string()),
            ("operator", d["operator"].to_string()),
            ("started (UTC)", d["started_utc"].to_string()),
            ("finished (UTC)", d["finished_utc"].to_string()),
            ("tool version", d["tool_version"].to_string()),
            ("backup directory", b["dir"].to_string()),
            ("backup", b["backup_id"].to_string()),
            ("backup made (UTC)", b["created_at"].to_string()),
            ("source cluster", b["source_cluster_id"].to_string()),
            (
                "applied index in the backup",
                b["applied_index"].to_string(),
            ),
            (
                "production commit index now",
                d["cluster"]["committed_index"].to_string(),
            ),
            (
                "entries committed since the backup",
                b["entries_committed_since"].to_string(),
            ),
        ] {
            let _ = writeln!(s, "| {k} | {} |", val.trim_matches('"'));
        }
        let _ = writeln!(
            s,
            "\n## Objectives\n\n| objective | target | measured | result |\n|---|---|---|---|"
        );
        let _ = writeln!(
            s,
            "| RTO (start → the restored cluster's first acknowledged write) | ≤ {} ms | {} ms | {} |",
            o["rto_write_gap_ms"],
            m["write_gap_ms"],
            pass(m["rto_pass"].as_bool())
        );
        let _ = writeln!(
            s,
            "| RPO (age of the backup restored) | ≤ {} s | {} s | {} |",
            o["rpo_backup_age_s"],
            b["age_s"],
            pass(m["rpo_pass"].as_bool())
        );
        let _ = writeln!(s, "\n## Measured\n\n| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| backup verified (deep) after | {} ms |",
            m["verify_ms"]
        );
        let _ = writeln!(
            s,
            "| data directories restored after | {} ms |",
            m["restore_ms"]
        );
        let _ = writeln!(
            s,
            "| every scratch node ready after | {} ms |",
            m["health_ms"]
        );
        let _ = writeln!(
            s,
            "| first write acknowledged after | {} ms |",
            m["write_gap_ms"]
        );
        let _ = writeln!(s, "\n## Verified\n\n| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| files / bytes checked against the manifest | {} / {} |",
            b["files"], b["bytes"]
        );
        let _ = writeln!(s, "| manifest signature | {} |", b["signature_ok"]);
        let _ = writeln!(
            s,
            "| backup opened, digest and fingerprints recomputed | {} |",
            b["deep_verified"]
        );
        let _ = writeln!(
            s,
            "| scratch cluster | `{}`, {} nodes, base port {} |",
            x["cluster_id"].as_str().unwrap_or("-"),
            x["nodes"],
            x["base_port"]
        );
        let _ = writeln!(
            s,
            "| every node's state digest equals the backup's | {} |",
            x["digests_equal"]
        );
        let _ = writeln!(
            s,
            "| every node's business fingerprints equal the backup's, to the cent | {} |",
            x["fingerprints_equal"]
        );
        let _ = writeln!(
            s,
            "| a write taken and read back on every node | {} |",
            x["read_back"]
                .as_array()
                .map(|a| a.len().to_string() + " nodes")
                .unwrap_or_else(|| "no".into())
        );
        if let Some(f) = d["failures"].as_array().filter(|f| !f.is_empty()) {
            let _ = writeln!(s, "\n## Failures\n");
            for x in f {
                let _ = writeln!(s, "- {}", x.as_str().unwrap_or("?"));
            }
        }
        let _ = writeln!(s, "\n## Steps\n\n| t (ms) | step |\n|---|---|");
        for a in d["actions"].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(
                s,
                "| {} | {} |",
                a["t_ms"],
                a["action"].as_str().unwrap_or("")
            );
        }
        let _ = writeln!(
            s,
            "\n## Signature\n\nSHA-256 of the canonical data: `{}`  \nEd25519 signature: `{}`  \nsigner's public key: `{}`\n\nCheck: `billdb drill verify <the .json or .html report> --public-key <the operator's .pub>`",
            self.sha256, self.signature, self.public_key
        );
        s
    }

    pub fn html(&self) -> String {
        let d = &self.data;
        let md = self.markdown();
        let embedded = serde_json::to_string(self)
            .unwrap_or_default()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026");
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>billdb drill {} {}</title>\n<style>body{{font-family:system-ui,Arial,sans-serif;margin:1.5em;max-width:1100px}}table{{border-collapse:collapse;margin:.5em 0}}th,td{{border:1px solid #ccd;padding:.25em .5em;font-size:.9em;text-align:left}}.PASS{{color:#11691f}}.FAILED{{color:#b00020}}pre{{white-space:pre-wrap;font-size:.85em}}</style></head><body>",
            esc(d["scenario"].as_str().unwrap_or("")),
            esc(d["result"].as_str().unwrap_or(""))
        );
        let _ = writeln!(
            s,
            "<h1>Failover drill: {} — <span class=\"{r}\">{r}</span></h1>",
            esc(d["scenario"].as_str().unwrap_or("")),
            r = esc(d["result"].as_str().unwrap_or(""))
        );
        if d["scenario"] != super::rehearsal::SCENARIO {
            s.push_str(&chart(d));
        }
        // Every number of the report: the Markdown, rendered.
        s.push_str(&markdown_html(&md));
        let _ = writeln!(
            s,
            "<script type=\"application/json\" id=\"{EMBED_ID}\">{embedded}</script>\n</body></html>"
        );
        s
    }
}

/// The subset of Markdown [`Report::markdown`] writes (headings, tables,
/// lists, paragraphs, `code`) as HTML, every text escaped.
fn markdown_html(md: &str) -> String {
    fn inline(t: &str) -> String {
        let mut out = String::new();
        for (i, part) in esc(t.trim_end_matches("  ")).split('`').enumerate() {
            if i % 2 == 1 {
                let _ = write!(out, "<code>{part}</code>");
            } else {
                out.push_str(part);
            }
        }
        out
    }
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if l.starts_with('|') {
            out.push_str("<table>\n");
            let mut first = true;
            while i < lines.len() && lines[i].starts_with('|') {
                let row = lines[i].trim().trim_matches('|');
                if !row.chars().all(|c| matches!(c, '-' | '|' | ' ')) {
                    let tag = if first { "th" } else { "td" };
                    out.push_str("<tr>");
                    for cell in row.split('|') {
                        let _ = write!(out, "<{tag}>{}</{tag}>", inline(cell.trim()));
                    }
                    out.push_str("</tr>\n");
                }
                first = false;
                i += 1;
            }
            out.push_str("</table>\n");
            continue;
        }
        if let Some(h) = l.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
        } else if l.starts_with("# ") {
            // The page has its own title.
        } else if let Some(item) = l.strip_prefix("- ") {
            let _ = writeln!(out, "<ul><li>{}</li></ul>", inline(item));
        } else if !l.trim().is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(l));
        }
        i += 1;
    }
    out
}

fn pass(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "PASS",
        _ => "FAIL",
    }
}

fn errors_text(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn nodes_text(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(id, x)| match x.as_str() {
                    Some(s) => format!("{id}: {s}"),
                    None => format!(
                        "{id}: {} t{} c{}",
                        x["role"].as_str().unwrap_or("?"),
                        x["term"],
                        x["commit"]
                    ),
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Operations per second (writes and reads acknowledged), faults in red,
/// starts in green, every node ready in blue.
fn chart(d: &Value) -> String {
    let tl = d["timeline"].as_array().cloned().unwrap_or_default();
    let (w, h, pad) = (900.0f64, 260.0f64, 40.0f64);
    let last_s = tl
        .iter()
        .filter_map(|x| x["t_s"].as_u64())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let ops: Vec<(f64, f64)> = tl
        .iter()
        .map(|x| {
            (
                x["t_s"].as_u64().unwrap_or(0) as f64,
                (x["writes_ok"].as_u64().unwrap_or(0) + x["reads_ok"].as_u64().unwrap_or(0)) as f64,
            )
        })
        .collect();
    let max_ops = ops.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let x = |t: f64| pad + (w - 2.0 * pad) * t / last_s;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / max_ops;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"operations per second\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"#fff\" stroke=\"#ccd\"/>"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#333\"/>",
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    let _ = writeln!(
        s,
        "<text x=\"4\" y=\"{}\" font-size=\"11\">{max_ops:.0}</text><text x=\"4\" y=\"{}\" font-size=\"11\">0</text><text x=\"{}\" y=\"{}\" font-size=\"11\">{last_s:.0} s</text><text x=\"{pad}\" y=\"16\" font-size=\"12\">operations per second (acknowledged writes + answered reads)</text>",
        pad + 4.0,
        h - pad,
        w - pad - 20.0,
        h - pad + 16.0
    );
    let pts: Vec<String> = ops
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\" points=\"{}\"/>",
        pts.join(" ")
    );
    // Labels of marks close together are stacked, not drawn over each other.
    let mut k = 0u32;
    let mut mark = |t_ms: f64, color: &str, label: &str| {
        let xx = x(t_ms / 1000.0);
        let ly = pad + 10.0 + 11.0 * f64::from(k % 8);
        k += 1;
        let _ = writeln!(
            s,
            "<line x1=\"{xx:.1}\" y1=\"{pad}\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"{color}\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{ly:.1}\" font-size=\"10\" fill=\"{color}\">{}</text>",
            h - pad,
            xx + 2.0,
            esc(label)
        );
    };
    for a in d["actions"].as_array().cloned().unwrap_or_default() {
        let t = a["t_ms"].as_f64().unwrap_or(0.0);
        let fault = a["fault"].as_bool() == Some(true);
        let label = format!("{} {}", a["action"].as_str().unwrap_or(""), a["node"]);
        mark(t, if fault { "#b00020" } else { "#11691f" }, &label);
    }
    if let (Some(h_ms), Some(first)) = (
        d["measured"]["health_ms"].as_f64(),
        d["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["fault"].as_bool() == Some(true)))
            .and_then(|x| x["t_ms"].as_f64()),
    ) {
        mark(first + h_ms, "#1f5fbf", "all ready");
    }
    s.push_str("</svg>\n");
    s
}

/// Read a report (the JSON file, or the HTML one that embeds it).
pub fn read(path: &Path) -> Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json = if text.trim_start().starts_with('{') {
        text
    } else {
        let open = format!("id=\"{EMBED_ID}\">");
        let start = text
            .find(&open)
            .map(|i| i + open.len())
            .context("not a drill report: no embedded report data")?;
        let end = text[start..]
            .find("</script>")
            .map(|i| start + i)
            .context("not a drill report: the embedded data is not closed")?;
        text[start..end].to_string()
    };
    serde_json::from_str(&json).context("not a drill report: its JSON does not parse")
}

/// The report's data is what was signed, by the holder of `public_key`.
pub fn verify(r: &Report, public_key: &Path) -> Result<()> {
    let key = crate::backup::read_verifying_key(public_key)?;
    let hash = data_sha256(&r.data);
    if hex::encode(hash) != r.sha256 {
        bail!(
            "the report's data does not match its SHA-256: it was changed after signing \
             (recomputed {}, recorded {})",
            hex::encode(hash),
            r.sha256
        );
    }
    let sig = hex::decode(&r.signature).context("the signature is not hex")?;
    let sig = Signature::from_slice(&sig).context("the signature is not an Ed25519 signature")?;
    key.verify(&hash, &sig)
        .context("the signature does not verify with this public key")?;
    if r.data["format"].as_str() != Some(FORMAT) {
        bail!("unknown report format {}", r.data["format"]);
    }
    Ok(())
}

pub fn utc(ms: i64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let dd = doy - (153 * mp + 2) / 5 + 1;
    let mm = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mm <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{mm:02}-{dd:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let a = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": "s"}});
        assert_eq!(
            canonical(&a),
            r#"{"a":{"c":"s","z":[1,{"x":3,"y":2}]},"b":1}"#
        );
    }

    #[test]
    fn a_signed_report_verifies_and_any_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = crate::backup::keygen(&dir.path().join("k")).unwrap();
        let data = json!({"format": FORMAT, "scenario": "leader-kill", "result": "PASS",
                          "measured": {"write_gap_ms": 700}, "timeline": [], "actions": []});
        let r = Report::sign(data, &key).unwrap();
        verify(&r, &public).unwrap();
        // The files it writes verify too (the HTML embeds the JSON).
        for f in r.write(dir.path()).unwrap() {
            if f.extension().is_none_or(|e| e != "md") {
                verify(&read(&f).unwrap(), &public).unwrap();
            }
        }
        let mut changed = r.clone();
        changed.data["measured"]["write_gap_ms"] = json!(699);
        assert!(verify(&changed, &public).is_err());
        // Re-hashed by a forger but not re-signed: the signature fails.
        changed.sha256 = hex::encode(data_sha256(&changed.data));
        let e = format!("{:#}", verify(&changed, &public).unwrap_err());
        assert!(e.contains("signature"), "{e}");
        // Another key.
        let (_, other) = crate::backup::keygen(&dir.path().join("other")).unwrap();
        assert!(verify(&r, &other).is_err());
    }

    #[test]
    fn the_html_escapes_report_text() {
        let md = "## <b>x</b>\n| a | `<script>` |\n|---|---|\n| 1 | 2 |\n- <i>";
        let h = markdown_html(md);
        assert!(
            !h.contains("<script>") && !h.contains("<b>") && !h.contains("<i>"),
            "{h}"
        );
        assert!(
            h.contains("<code>&lt;script&gt;</code>") && h.contains("<table>"),
            "{h}"
        );
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_558_400_000), "2026-12-06T12:00:00Z");
    }
}
