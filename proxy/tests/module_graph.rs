//! The crate's top-level modules depend on each other without a cycle, in
//! the layers docs/architecture.md draws. A `use crate::x` that closes a
//! cycle fails here with the files that make each edge of it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use regex::Regex;

/// Top-level modules of `src` (a file `x.rs` or a directory `x/`), the
/// crate roots aside.
fn modules(src: &Path) -> BTreeSet<String> {
    fs::read_dir(src)
        .expect("src is readable")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let module = name.strip_suffix(".rs").unwrap_or(&name).to_string();
            (module != "lib" && module != "main").then_some(module)
        })
        .collect()
}

fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in fs::read_dir(path).expect("readable directory").flatten() {
            files(&e.path(), out);
        }
    } else if path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Each module's dependencies on the others, with the files that make them.
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mods = modules(src);
    let comment = Regex::new(r"//[^\n]*").unwrap();
    // `crate::x` anywhere, and `x` at the head of a path inside
    // `use crate::{…}` groups (nested groups included).
    let path = Regex::new(r"crate::([a-z_][a-z0-9_]*)").unwrap();
    let group = Regex::new(r"(?s)crate::\{(.*?)\};").unwrap();
    let head = Regex::new(r"(?:^|[{,]\s*)([a-z_][a-z0-9_]*)\s*(?:::|,|\}|$)").unwrap();
    let mut g = BTreeMap::new();
    for m in &mods {
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut fs_ = Vec::new();
        let dir = src.join(m);
        let root = if dir.is_dir() {
            dir
        } else {
            src.join(format!("{m}.rs"))
        };
        files(&root, &mut fs_);
        for f in fs_ {
            let text = comment
                .replace_all(&fs::read_to_string(&f).expect("readable source"), "")
                .into_owned();
            let mut found: Vec<String> = path
                .captures_iter(&text)
                .map(|c| c[1].to_string())
                .collect();
            for c in group.captures_iter(&text) {
                for line in c[1].split('\n') {
                    found.extend(head.captures_iter(line.trim()).map(|h| h[1].to_string()));
                }
            }
            let rel = f.strip_prefix(src).unwrap().display().to_string();
            for d in found {
                if d != *m && mods.contains(&d) {
                    deps.entry(d).or_default().insert(rel.clone());
                }
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

/// A cycle through `start`, if there is one (depth-first search).
fn cycle_from(
    g: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    start: &str,
) -> Option<Vec<String>> {
    fn walk(
        g: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        at: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in g[at].keys() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(g, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 10, "modules found: {:?}", g.keys());
    for m in g.keys() {
        if let Some(cycle) = cycle_from(&g, m) {
            let mut edges = Vec::new();
            for (i, a) in cycle.iter().enumerate() {
                let b = &cycle[(i + 1) % cycle.len()];
                edges.push(format!("{a} -> {b} (in {:?})", g[a][b]));
            }
            panic!(
                "modules depend on each other in a cycle:\n  {}",
                edges.join("\n  ")
            );
        }
    }
}

#[test]
fn the_scan_sees_grouped_and_plain_paths() {
    // The scan itself must see both forms of a dependency, or the test
    // above would pass on anything.
    let dir = std::env::temp_dir().join(format!("tidepool-graph-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::write(
        dir.join("a/mod.rs"),
        "use crate::{\n    b::X,\n    c,\n};\n",
    )
    .unwrap();
    fs::write(
        dir.join("b.rs"),
        "fn f() { crate::a::g() }\n// crate::c in a comment\n",
    )
    .unwrap();
    fs::write(dir.join("c.rs"), "").unwrap();
    let g = graph(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(g["a"].keys().collect::<Vec<_>>(), ["b", "c"]);
    assert_eq!(g["b"].keys().collect::<Vec<_>>(), ["a"]);
    assert!(g["c"].is_empty());
    assert_eq!(
        cycle_from(&g, "a"),
        Some(vec!["a".to_string(), "b".to_string()])
    );
    assert_eq!(cycle_from(&g, "c"), None);
}

/// The table in docs/architecture.md ("a module → what it uses"), read
/// back: module → the modules it names.
fn documented(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let start = doc
        .find("Precisely (a module → what it uses)")
        .expect("docs/architecture.md has the module table");
    let word = Regex::new(r"^[a-z_]+").unwrap();
    let mut out = BTreeMap::new();
    for line in doc[start..].lines().skip(4) {
        let Some(row) = line.strip_prefix("| ") else {
            break;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let uses: BTreeSet<String> = cells[1]
            .trim_end_matches(" |")
            .split(", ")
            .filter_map(|u| word.find(u).map(|m| m.as_str().to_string()))
            .filter(|u| u != "nothing")
            .collect();
        for m in cells[0].split(", ") {
            out.insert(m.trim_matches('`').to_string(), uses.clone());
        }
    }
    out
}

#[test]
fn the_architecture_doc_shows_the_graph_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let g = graph(&root.join("src"));
    let doc = fs::read_to_string(root.join("../docs/architecture.md")).expect("the doc");
    let shown = documented(&doc);
    let actual: BTreeMap<String, BTreeSet<String>> = g
        .iter()
        .map(|(m, deps)| (m.clone(), deps.keys().cloned().collect()))
        .collect();
    assert_eq!(
        shown, actual,
        "docs/architecture.md's module table differs from the code's dependencies"
    );
}
