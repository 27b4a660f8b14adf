//! The layering of docs/architecture.md, enforced on the source: every module has a layer,
//! imports between files form no cycle, and none points up a layer unless the document lists
//! it as an exception with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

struct Layers {
    /// Bottom first.
    order: Vec<String>,
    /// Module prefix → layer.
    prefixes: BTreeMap<String, String>,
    exceptions: BTreeSet<(String, String)>,
}

fn between<'a>(doc: &'a str, start: &str, end: &str) -> &'a str {
    let from = doc.find(start).unwrap_or_else(|| panic!("docs/architecture.md lacks {start}")) + start.len();
    let to = doc[from..].find(end).unwrap_or_else(|| panic!("docs/architecture.md lacks {end}")) + from;
    &doc[from..to]
}

fn layers(doc: &str) -> Layers {
    let table = between(doc, "<!-- layers:", "<!-- end layers -->");
    let mut layers = Layers { order: Vec::new(), prefixes: BTreeMap::new(), exceptions: BTreeSet::new() };
    for row in table.lines().filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| layer")) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [layer, modules] = cells[..] else { panic!("a layer row has two cells: {row}") };
        layers.order.push(layer.to_owned());
        for m in modules.split_whitespace() {
            // The crate roots are the empty module path.
            let m = if m == "lib" || m == "main" { "" } else { m };
            let before = layers.prefixes.insert(m.to_owned(), layer.to_owned());
            assert!(before.is_none_or(|b| b == layer), "{m} is listed in two layers");
        }
    }
    for line in between(doc, "<!-- exceptions:", "<!-- end exceptions -->").lines().skip(1) {
        let Some((edge, reason)) = line.trim().trim_start_matches("- ").split_once(':') else { continue };
        let (from, to) = edge.split_once("->").expect("an exception reads `from -> to: reason`");
        assert!(!reason.trim().is_empty(), "the exception {edge} gives no reason");
        layers.exceptions.insert((from.trim().trim_matches('`').to_owned(), to.trim().trim_matches('`').to_owned()));
    }
    layers
}

impl Layers {
    fn of(&self, module: &str) -> Option<usize> {
        if module.ends_with("::routes") {
            return self.order.iter().position(|l| l == "http");
        }
        let parts: Vec<&str> = if module.is_empty() { Vec::new() } else { module.split("::").collect() };
        (0..=parts.len()).rev().find_map(|n| {
            let prefix = parts[..n].join("::");
            self.prefixes.get(&prefix).and_then(|layer| self.order.iter().position(|l| l == layer))
        })
    }
}

/// One file of `src/`: its module path (`store::sqlite::orders`) and its text without tests.
struct Source {
    module: String,
    text: String,
}

fn sources(root: &Path, dir: &Path, out: &mut Vec<Source>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(root, &path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let file = parts.last().cloned().unwrap_or_default();
        if matches!(file.as_str(), "mod" | "lib" | "main") {
            parts.pop();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Test modules sit at the end of their file and may reach anywhere.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("").to_owned();
        let text: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        out.push(Source { module: parts.join("::"), text });
    }
}

/// `a::{b, c::{d, self}}` → `a::b`, `a::c::d`, `a::c`.
fn expand(path: &str) -> Vec<String> {
    let path = path.trim();
    let Some(open) = path.find('{') else {
        return vec![path.split(" as ").next().unwrap_or(path).trim().to_owned()];
    };
    let prefix = path[..open].trim_end_matches("::");
    let inner = &path[open + 1..path.rfind('}').expect("braces close")];
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for ch in inner.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(ch);
    }
    parts.push(current);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .flat_map(|p| if p == "self" { vec![prefix.to_owned()] } else { expand(&format!("{prefix}::{p}")) })
        .collect()
}

/// The module of `src/` a path names, resolved from `from`: its longest prefix that is a file.
fn resolve(from: &Source, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
    let here: Vec<&str> = if from.module.is_empty() { Vec::new() } else { from.module.split("::").collect() };
    // `self` is the file's own module and `super` its parent, whether the file is `x.rs` or
    // `x/mod.rs`.
    let mut base: Vec<&str> = match segments.first().copied() {
        Some("crate") => Vec::new(),
        Some("self") => here.clone(),
        Some("super") => here[..here.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    segments.remove(0);
    while segments.first() == Some(&"super") {
        base.pop();
        segments.remove(0);
    }
    (0..=segments.len()).rev().find_map(|n| {
        let candidate: Vec<&str> = base.iter().copied().chain(segments[..n].iter().copied()).collect();
        let name = candidate.join("::");
        modules.contains(&name).then_some(name)
    })
}

/// What a file imports, and which of those it only re-exports from its own children (a facade:
/// `pub use self::child::Item`), which do not count toward cycles.
fn imports(from: &Source, modules: &BTreeSet<String>) -> (BTreeSet<String>, BTreeSet<String>) {
    // (module, whether this mention is a facade re-export)
    let mut found: Vec<(String, bool)> = Vec::new();
    let text = &from.text;
    let mut rest = text.as_str();
    while let Some(at) = rest.find("use ") {
        let before = &text[..text.len() - rest.len() + at];
        rest = &rest[at + 4..];
        if before.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        let statement = rest[..end].trim_start();
        let facade = statement.starts_with("self::") && before.trim_end().ends_with("pub");
        if ["crate::", "super::", "self::"].iter().any(|p| statement.starts_with(p)) {
            for path in expand(statement) {
                found.extend(resolve(from, &path, modules).map(|m| (m, facade)));
            }
        }
        rest = &rest[end..];
    }
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches(':');
        // A bare `crate::` opens a grouped `use`, read above.
        if path != "crate" && !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            found.extend(resolve(from, path, modules).map(|m| (m, false)));
        }
        rest = &tail[end.max(7)..];
    }
    found.retain(|(m, _)| *m != from.module);
    let all: BTreeSet<String> = found.iter().map(|(m, _)| m.clone()).collect();
    let used: BTreeSet<String> = found.iter().filter(|(_, facade)| !facade).map(|(m, _)| m.clone()).collect();
    (all.clone(), all.difference(&used).cloned().collect())
}

/// Every cycle's files, found as strongly connected components.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(lw));
                } else if self.stack.contains(&w.as_str()) {
                    let iw = self.index[w.as_str()];
                    self.low.entry(v).and_modify(|l| *l = (*l).min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn imports_point_down_the_documented_layers_and_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layers = layers(&std::fs::read_to_string(root.join("docs/architecture.md")).unwrap());
    assert!(layers.order.len() >= 5, "the document lists the layers: {:?}", layers.order);
    let mut files = Vec::new();
    sources(&root.join("src"), &root.join("src"), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| f.module.clone()).collect();
    let read: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> =
        files.iter().map(|f| (f.module.clone(), imports(f, &modules))).collect();
    let graph: BTreeMap<String, BTreeSet<String>> = read.iter().map(|(m, (all, _))| (m.clone(), all.clone())).collect();
    // Cycles are sought among real uses: a facade re-exporting its children is not one.
    let uses: BTreeMap<String, BTreeSet<String>> =
        read.iter().map(|(m, (all, facade))| (m.clone(), all.difference(facade).cloned().collect())).collect();

    // The reading itself: edges known to exist are found, so the checks below cannot pass empty.
    assert!(graph["http::auth"].contains("state"), "http::auth imports the state: {:?}", graph["http::auth"]);
    assert!(graph["store::sqlite::orders"].contains("store::sqlite"), "super:: paths resolve");
    assert!(graph["api"].contains("http::auth"), "inline and grouped paths resolve: {:?}", graph["api"]);
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    assert!(edges > 200, "only {edges} imports found");

    let unplaced: Vec<&String> = modules.iter().filter(|m| layers.of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules without a layer in docs/architecture.md: {unplaced:?}");

    let found = cycles(&uses);
    assert!(found.is_empty(), "import cycles between files: {found:?}");

    let mut upward = Vec::new();
    for (from, targets) in &graph {
        for to in targets {
            let (lf, lt) = (layers.of(from).unwrap(), layers.of(to).unwrap());
            if lt > lf && !layers.exceptions.contains(&(from.clone(), to.clone())) {
                upward.push(format!("{from} ({}) -> {to} ({})", layers.order[lf], layers.order[lt]));
            }
        }
    }
    assert!(upward.is_empty(), "imports pointing up a layer, not listed as exceptions: {upward:#?}");
    println!("{} files, {edges} imports between them, 0 cycles, 0 upward", modules.len());
}

#[test]
fn the_reader_sees_cycles_and_grouped_imports() {
    let g: BTreeMap<String, BTreeSet<String>> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")].iter().fold(BTreeMap::new(), |mut g, (f, t)| {
            g.entry(f.to_string()).or_insert_with(BTreeSet::new).insert(t.to_string());
            g
        });
    let found = cycles(&g);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].iter().collect::<BTreeSet<_>>(),
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect::<BTreeSet<_>>().iter().collect()
    );
    assert_eq!(expand("crate::{a::{b, self}, c as d}"), ["crate::a::b", "crate::a", "crate::c"]);
}
