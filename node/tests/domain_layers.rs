//! Keeps the layering of `node/src/domain/` true (issue 28): the shared
//! vocabulary sits on a ground floor, the dispatcher (`domain/mod.rs`) on
//! top, and imports run one way.
//!
//! Reads the source of `node/src/domain/*.rs`, finds each module's
//! references to its siblings (`use super::x`, `super::x::…`,
//! `use super::{…, x, …}`, `crate::domain::x`; comments, string literals and
//! inline `mod … { … }` blocks such as unit tests are left out) and checks:
//! (a) the ground-floor modules reference no sibling outside the ground
//! floor; (b) the sibling graph has no cycle; (c) no module names an item of
//! `mod.rs` (`super::Ctx`, `use super::{Op, …}`, `use super::*`): the
//! vocabulary comes from the ground-floor module paths, never from the
//! dispatcher. `mod.rs` (the dispatcher, on top) and `tests.rs` (its unit
//! tests, a child of `mod.rs` that may use all of it) are not checked as
//! modules, but a sibling that references them is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The ground floor: the storage view, key layouts, dates and the plain
/// vocabulary every operation shares. Each may use only the others.
const GROUND_FLOOR: &[&str] = &[
    "txn", "keys", "calendar", "model", "payloads", "ops", "context",
];

/// Files of `domain/` that are not checked as modules (see the top).
const EXEMPT: &[&str] = &["mod", "tests"];

struct Domain {
    /// Every module file stem (without `mod`).
    modules: BTreeSet<String>,
    /// module → the sibling modules it references.
    edges: BTreeMap<String, BTreeSet<String>>,
    /// module → the `mod.rs` items it names (`*` for a glob).
    parent_items: BTreeMap<String, BTreeSet<String>>,
}

fn domain_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/domain")
}

fn load() -> Domain {
    let mut sources = BTreeMap::new();
    for entry in std::fs::read_dir(domain_dir()).expect("read node/src/domain") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let src = std::fs::read_to_string(&path).expect("read a domain file");
            sources.insert(stem, src);
        }
    }
    assert!(
        sources.len() > 5,
        "found only {:?} in {:?}",
        sources.keys(),
        domain_dir()
    );
    let modules: BTreeSet<String> = sources.keys().filter(|s| *s != "mod").cloned().collect();
    let mut edges = BTreeMap::new();
    let mut parent_items = BTreeMap::new();
    for (stem, src) in &sources {
        if EXEMPT.contains(&stem.as_str()) {
            continue;
        }
        let code = drop_inline_mods(&code_only(src));
        let mut to = BTreeSet::new();
        let mut items = BTreeSet::new();
        for name in sibling_refs(&code) {
            if modules.contains(&name) {
                if name != *stem {
                    to.insert(name);
                }
            } else {
                items.insert(name);
            }
        }
        edges.insert(stem.clone(), to);
        parent_items.insert(stem.clone(), items);
    }
    Domain {
        modules,
        edges,
        parent_items,
    }
}

/// `src` with comments and the contents of string and char literals
/// blanked out (so `super::` in a doc comment or a message is not code).
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && !c.get(i.wrapping_sub(1)).is_some_and(|p| is_ident(*p))
        {
            // A raw string r"…" / r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `code` without inline module blocks (`mod tests { … }`): `super` there
/// is the file's own module, not `domain`.
fn drop_inline_mods(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < c.len() {
        let at_word = !c.get(i.wrapping_sub(1)).is_some_and(|p| is_ident(*p));
        if at_word && c[i..].starts_with(&['m', 'o', 'd']) && c.get(i + 3) == Some(&' ') {
            let mut j = i + 3;
            while j < c.len() && (c[j].is_whitespace() || is_ident(c[j])) {
                j += 1;
            }
            if c.get(j) == Some(&'{') {
                let mut depth = 0;
                while j < c.len() {
                    match c[j] {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
                i = j + 1;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// The first path segment after every `super::` and `crate::domain::` in
/// `code` (each entry of a `{…}` group; `*` for a glob).
fn sibling_refs(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["super::", "crate::domain::"] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(prefix) {
            let start = from + pos;
            from = start + prefix.len();
            let before = code[..start].chars().next_back();
            if before.is_some_and(|p| is_ident(p) || p == ':') {
                continue;
            }
            let rest = code[from..].trim_start();
            if let Some(group) = rest.strip_prefix('{') {
                out.extend(group_heads(group));
            } else if rest.starts_with('*') {
                out.push("*".to_string());
            } else {
                out.push(rest.chars().take_while(|c| is_ident(*c)).collect());
            }
        }
    }
    out
}

/// The first segment of each top-level entry of a `{…}` group (`group`
/// starts after its `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut entry = String::new();
    for ch in group.chars() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(std::mem::take(&mut entry));
                continue;
            }
            _ => {}
        }
        entry.push(ch);
    }
    heads.push(entry);
    heads
        .into_iter()
        .map(|e| {
            let e = e.trim();
            if e.starts_with('*') {
                "*".to_string()
            } else {
                e.chars().take_while(|c| is_ident(*c)).collect()
            }
        })
        .filter(|h| !h.is_empty())
        .collect()
}

#[test]
fn the_ground_floor_references_nothing_above_it() {
    let d = load();
    let mut wrong = Vec::new();
    for g in GROUND_FLOOR {
        let Some(to) = d.edges.get(*g) else {
            wrong.push(format!("{g}.rs: missing (a ground-floor module)"));
            continue;
        };
        for t in to {
            if !GROUND_FLOOR.contains(&t.as_str()) {
                wrong.push(format!(
                    "{g}.rs references {t}, which is above the ground floor"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "ground floor:\n  {}", wrong.join("\n  "));
}

#[test]
fn the_domain_modules_import_each_other_without_a_cycle() {
    let d = load();
    // Depth-first search; a back edge closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        d: &Domain,
        mark: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        mark.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for t in d.edges.get(m).into_iter().flatten() {
            match mark.get(t).copied().unwrap_or(Mark::New) {
                Mark::New => visit(t, d, mark, path, cycles),
                Mark::Open => {
                    let from = path.iter().position(|p| p == t).unwrap_or(0);
                    let mut c = path[from..].to_vec();
                    c.push(t.clone());
                    cycles.push(c.join(" -> "));
                }
                Mark::Done => {}
            }
        }
        path.pop();
        mark.insert(m.to_string(), Mark::Done);
    }
    let mut mark = BTreeMap::new();
    let mut cycles = Vec::new();
    for m in d.edges.keys() {
        if mark.get(m).copied().unwrap_or(Mark::New) == Mark::New {
            visit(m, &d, &mut mark, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "the domain modules import each other in cycles:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn no_module_imports_from_the_dispatcher() {
    let d = load();
    let mut wrong = Vec::new();
    for (m, items) in &d.parent_items {
        if !items.is_empty() {
            let names: Vec<&str> = items.iter().map(String::as_str).collect();
            wrong.push(format!("{m}.rs: super::{{{}}}", names.join(", ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "modules naming items of domain/mod.rs (take them from the ground floor: {:?}):\n  {}",
        GROUND_FLOOR,
        wrong.join("\n  ")
    );
    // The parser sees something: the sibling graph is not empty.
    let edges: usize = d.edges.values().map(BTreeSet::len).sum();
    assert!(
        edges > 10,
        "only {edges} sibling references found in {:?}",
        d.modules
    );
}
