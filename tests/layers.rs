//! The module structure stays as docs/architecture.md "Layout" draws it: no import cycle
//! between files, and every import between top-level modules points to the same row of
//! that table or a row above it (foundations at the top).
//!
//! Imports are read from the source: `crate::` paths (with nested `use` groups) and
//! `super::` paths, outside comments and `#[cfg(test)]` modules.
//!
//! The foundations (`crates/mvm-base`) and the privileged part (`crates/mvm-privileged`)
//! sit above every row: Cargo keeps them from importing the library, and this keeps each
//! free of cycles too. The helper's crate stays small: nothing of the resolver, the
//! terminal UI, the diffs or the command line reaches it (checked in `Cargo.lock`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The rows of the layout, top (imported by all) to bottom.
const ROWS: &[&[&str]] = &[
    &["spec", "log_cap", "failpoint", "output"],
    &["host"],
    &["config", "contract"],
    &["runtime", "state", "image"],
    &["dns", "boot", "vmm", "agent", "project_env", "changes", "privileged"],
    &["supervisor"],
    &["vm", "setup", "view"],
    &["commands", "cli", "generate"],
    &["guest"],
];

/// Every module of the library under `crate_dir` (`a::b` for `src/a/b.rs` or
/// `src/a/b/mod.rs`) and its source without comments and test modules.
fn modules(crate_dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let src = crate_dir.join("src");
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                if path != src.join("bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path == src.join("main.rs") {
                continue; // the binary's crate, not the library's
            }
            let relative = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            if parts.last().is_some_and(|last| last == "tests") || path.extension().is_none_or(|e| e != "rs")
            {
                continue;
            }
            found.insert(parts.join("::"), code_of(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    found
}

/// `source` without line comments and without its `#[cfg(test)] mod …` (which comes last).
fn code_of(source: &str) -> String {
    let code = source.split("#[cfg(test)]\nmod ").next().unwrap();
    code.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The paths a `use` tree names: `a::{b, c::{d}}` is `a::b` and `a::c::d`.
fn expand(prefix: &str, tree: &str) -> Vec<String> {
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in tree.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            items.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    items.push(current);
    let join = |head: &str| if prefix.is_empty() { head.to_string() } else { format!("{prefix}::{head}") };
    let mut paths = Vec::new();
    for item in items.iter().map(|item| item.trim()).filter(|item| !item.is_empty()) {
        match (item.find('{'), item.rfind('}')) {
            (Some(open), Some(close)) => {
                paths.extend(expand(&join(item[..open].trim_end_matches(':')), &item[open + 1..close]))
            }
            _ => paths.push(join(item.split(" as ").next().unwrap().trim())),
        }
    }
    paths
}

/// The longest module `path` starts with.
fn module_of<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| modules.get_key_value(&parts[..n].join("::")).map(|(k, _)| k.as_str()))
}

/// The modules `module` (whose source is `code`) imports.
fn imports(module: &str, code: &str, modules: &BTreeMap<String, String>) -> BTreeSet<String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut paths = Vec::new();
    for (start, _) in code.match_indices("use crate::") {
        let end = code[start..].find(';').map_or(code.len(), |end| start + end);
        paths.extend(expand("", &code[start + "use crate::".len()..end]));
    }
    for (start, _) in code.match_indices("crate::") {
        paths.push(code[start + "crate::".len()..].chars().take_while(|c| word(*c)).collect());
    }
    let parent: Vec<&str> = module.split("::").collect();
    let parent = parent[..parent.len().saturating_sub(1)].join("::");
    for (start, _) in code.match_indices("super::") {
        if code[..start].ends_with(|c: char| word(c)) {
            continue;
        }
        let rest: String = code[start + "super::".len()..].chars().take_while(|c| word(*c)).collect();
        paths.push(if parent.is_empty() { rest } else { format!("{parent}::{rest}") });
    }
    paths
        .iter()
        .filter_map(|path| module_of(path.trim_end_matches(':'), modules))
        .filter(|target| *target != module && !module.starts_with(&format!("{target}::")))
        .map(str::to_string)
        .collect()
}

fn row(module: &str) -> usize {
    let top = module.split("::").next().unwrap();
    ROWS.iter().position(|row| row.contains(&top)).unwrap_or_else(|| panic!("{top} is in no row of ROWS"))
}

/// Each module of `modules` and the modules it imports.
fn graph(modules: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<String>> {
    modules.iter().map(|(module, code)| (module.as_str(), imports(module, code, modules))).collect()
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn imports_run_down_the_layout_and_never_in_a_circle() {
    let modules = modules(workspace());
    assert!(modules.len() > 100, "only {} modules found", modules.len());
    let graph = graph(&modules);
    let mut upward = Vec::new();
    for (module, targets) in &graph {
        for target in targets.iter().filter(|target| !module.is_empty() && row(target) > row(module)) {
            upward.push(format!("{module} -> {target}"));
        }
    }
    assert!(upward.is_empty(), "imports up the layout:\n{}", upward.join("\n"));
    assert_no_cycle(&graph);
}

#[test]
fn the_crates_below_the_library_have_no_import_cycle() {
    for name in ["mvm-base", "mvm-privileged"] {
        let modules = modules(&workspace().join("crates").join(name));
        assert!(modules.len() > 5, "{name}: only {} modules found", modules.len());
        assert_no_cycle(&graph(&modules));
    }
}

/// What the helper's crate may never depend on: the resolver, the terminal UI, the diff
/// crates, the command line, the async runtime, or the library itself.
const NOT_FOR_THE_HELPER: &[&str] =
    &["mvm", "hickory-proto", "clap", "comfy-table", "indicatif", "similar", "tokio", "seccompiler"];

/// The packages `package` depends on, directly or not, as `Cargo.lock` records them.
fn dependencies_of(lock: &toml::Value, package: &str) -> BTreeSet<String> {
    let packages = lock["package"].as_array().unwrap();
    let depends = |name: &str| -> Vec<String> {
        let entry = packages.iter().find(|p| p["name"].as_str() == Some(name));
        let entry = entry.unwrap_or_else(|| panic!("{name} is not in Cargo.lock"));
        let list = entry.get("dependencies").and_then(|d| d.as_array()).cloned().unwrap_or_default();
        // An entry is "NAME" or "NAME VERSION" when two versions are locked.
        list.iter().map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_string()).collect()
    };
    let (mut found, mut todo) = (BTreeSet::new(), vec![package.to_string()]);
    while let Some(next) = todo.pop() {
        for dependency in depends(&next) {
            if found.insert(dependency.clone()) {
                todo.push(dependency);
            }
        }
    }
    found
}

#[test]
fn the_helper_depends_on_nothing_it_does_not_need() {
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap()).unwrap();
    let helper = dependencies_of(&lock, "mvm-privileged");
    assert!(helper.contains("mvm-base") && helper.contains("nix"), "{helper:?}");
    let unwanted: Vec<&&str> = NOT_FOR_THE_HELPER.iter().filter(|name| helper.contains(**name)).collect();
    assert!(unwanted.is_empty(), "the helper's crate depends on {unwanted:?}");
    // The check sees what the library pulls in.
    let library = dependencies_of(&lock, "mvm");
    assert!(NOT_FOR_THE_HELPER[1..]
        .iter()
        .filter(|name| **name != "tokio")
        .all(|name| library.contains(*name)));
}

/// Panics on the first cycle in `graph`.
fn assert_no_cycle(graph: &BTreeMap<&str, BTreeSet<String>>) {
    // Depth-first, with the path so far: a target already on it closes a cycle.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(module) {
            return;
        }
        if let Some(at) = path.iter().position(|on| *on == module) {
            panic!("an import cycle: {} -> {module}", path[at..].join(" -> "));
        }
        path.push(module);
        for target in graph.get(module).into_iter().flatten() {
            visit(target, graph, path, done);
        }
        path.pop();
        done.insert(module);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, graph, &mut Vec::new(), &mut done);
    }
}

/// The guard reads imports as the compiler would: nested groups, renames, `super::`.
#[test]
fn use_trees_expand_to_paths() {
    assert_eq!(expand("", "a::{b, c::{d, e as f}}"), ["a::b", "a::c::d", "a::c::e"]);
    let modules: BTreeMap<String, String> =
        ["dns", "dns::tcp", "dns::framing", "net"].map(|m| (m.to_string(), String::new())).into();
    let code = "use super::framing::{read_message};\nuse crate::net;\nfn f() { crate::dns::tcp::x(); }";
    let found = imports("dns::answer", code, &modules);
    assert_eq!(found, ["dns::framing", "dns::tcp", "net"].map(String::from).into());
}
