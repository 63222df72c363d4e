//! The collector's stages are layered: each module may use only its own
//! stage and the stages below it, and no two files import each other in a
//! loop. Read from the sources (`crate::` paths), so a wrong import fails
//! here before review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The stages, bottom first. Stages of one rank may not use each other.
const LAYERS: &[(&str, u32)] = &[
    ("host", 0),
    ("kernel", 1),
    ("python", 2),
    ("symbolize", 2),
    ("budget", 3),
    ("enrich", 3),
    ("reuse", 3),
    ("report", 4),
    ("session", 5),
    ("cli", 5),
    ("agent", 6),
];

fn rank(stage: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(s, _)| *s == stage)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("tracer/src/{stage}: a stage missing from LAYERS"))
}

/// Every source file of the library, by module path (`host::spaces`).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            // The binary and the crate root stand above every stage.
            if matches!(parts.as_slice(), [p] if p == "main" || p == "lib") {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The modules a file names: through `crate::` paths (the longest known
/// module prefix of each path), and, for a module with children, through
/// its children's own names (`pub use build::finding`, `wrappers::find(..)`),
/// which make a parent and a child that names it a loop. Test code is left
/// out: `#[cfg(test)] mod tests;` and everything after an inline one.
fn uses(module: &str, text: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let text = text.replace("#[cfg(test)]\nmod tests;", "");
    let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        if let Some(module) = (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| known.contains_key(m))
        {
            out.insert(module);
        }
    }
    let prefix = format!("{module}::");
    let children = known
        .keys()
        .filter_map(|m| m.strip_prefix(&prefix))
        .filter(|child| !child.contains("::"));
    for child in children {
        let named = code.match_indices(&format!("{child}::")).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        });
        if named {
            out.insert(format!("{prefix}{child}"));
        }
    }
    out
}

#[test]
fn stages_use_only_lower_stages_and_files_do_not_import_in_loops() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (module, path) in &known {
        let stage = module.split("::").next().unwrap();
        let used = uses(module, &std::fs::read_to_string(path).unwrap(), &known);
        for target in &used {
            let to = target.split("::").next().unwrap();
            if to != stage && rank(to) >= rank(stage) {
                wrong.push(format!("{module} uses {target}"));
            }
        }
        graph.insert(
            module.clone(),
            used.into_iter().filter(|t| t != module).collect(),
        );
    }
    assert!(wrong.is_empty(), "uses of a stage not below: {wrong:#?}");

    // No loops: a depth-first search finds no back edge.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) {
        match state.get(m) {
            Some(true) => return,
            Some(false) => panic!("modules import each other in a loop: {path:?} -> {m}"),
            None => {}
        }
        state.insert(m, false);
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, state, path);
        }
        path.pop();
        state.insert(m, true);
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        visit(m, &graph, &mut state, &mut Vec::new());
    }
}

#[test]
fn the_check_sees_a_wrong_import() {
    let known: BTreeMap<String, PathBuf> = ["host::spaces", "kernel::load"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    let used = uses(
        "host",
        "use crate::kernel::load::Probes;\nfn f() {}",
        &known,
    );
    assert_eq!(used, BTreeSet::from(["kernel::load".to_string()]));
    // A parent naming its child (a re-export) is a use of the child.
    let used = uses(
        "host",
        "mod spaces;\n#[cfg(test)]\nmod tests;\npub use spaces::Spaces;",
        &known,
    );
    assert_eq!(used, BTreeSet::from(["host::spaces".to_string()]));
    assert!(rank("kernel") >= rank("host"));
}
