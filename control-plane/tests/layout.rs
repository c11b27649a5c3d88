//! The layout rules of docs/ARCHITECTURE.md, checked on the source: no two modules of
//! the control plane import each other, feature modules never import the HTTP edge or
//! the server, and no source file of the engine or the control plane passes 800 lines
//! unless its first line says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module of the control plane → the top-level modules its code names with
/// `crate::` (doc comments and comments left out).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let entry = deps.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for part in code.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    entry.insert(name);
                }
            }
        }
    }
    deps
}

#[test]
fn no_two_modules_import_each_other_and_features_stay_off_the_edges() {
    let deps = imports();
    assert!(deps.len() >= 15, "{deps:?}");
    let mut loops = Vec::new();
    for (a, uses) in &deps {
        for b in uses {
            if a < b && deps.get(b).is_some_and(|u| u.contains(a)) {
                loops.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(loops.is_empty(), "modules importing each other: {loops:?}");
    for feature in [
        "store", "auth", "calls", "notify", "schedule", "alerts", "audit", "metrics",
    ] {
        let uses = &deps[feature];
        assert!(
            !uses.contains("http") && !uses.contains("server"),
            "{feature} imports the edge: {uses:?}"
        );
    }
    assert!(
        deps.values().all(|u| !u.contains("server")),
        "only the binary and tests use server"
    );
}

#[test]
fn source_files_stay_under_800_lines_or_say_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["engine/src", "control-plane/src", "protocol/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines = text.lines().count();
            // A reason is a first line naming the limit ("… over 800 lines because …"),
            // not any word that happens to contain "lines" ("deadlines").
            let says_why = text.lines().next().is_some_and(|l| l.contains("800 lines"));
            (lines > 800 && !says_why).then(|| format!("{} ({lines})", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "files over 800 lines: {long:?}");
}
