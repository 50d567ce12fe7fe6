//! Layout guards: the two rules of the crates' layout, checked on their
//! source so that CI fails when one is broken.
//!
//! - No import circle: in `schemas`, `plumbing`, `ingest`, `venues` and `processors`,
//!   no two module files import each other, directly or round a longer
//!   loop. Every `use` path and every path in code (macro arguments
//!   included) that starts with `crate::`, `super::`, `self::` or, from a
//!   binary, the crate's own name is an import of the deepest module file
//!   it names (a path into an item resolves to the item's file). `mod x;`
//!   declarations are not imports, nor is a parent's path to its child
//!   written without `self::` (a `mod.rs` may dispatch to the files beside
//!   it).
//! - rdkafka stays at the edge: in `processors`, only files under
//!   `src/kafka/` and `src/ops/` use it (a `use rdkafka` or an `rdkafka::`
//!   path; comments and strings that mention librdkafka are fine).
//!
//! They parse the source with `syn`, so comments, doc comments and string
//! literals are never mistaken for code. Each detector is tested here on a
//! small synthetic crate, so a guard cannot pass because it found nothing.
//!
//! These tests start no process; they live in the end-to-end binary because
//! they check the workspace as a whole (as `monitoring` checks `deploy/`),
//! and one more test binary would be one more link on the CI machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use syn::visit::Visit;

/// The crates whose module files must not import each other.
const CRATES_WITHOUT_CIRCLES: &[&str] = &["schemas", "plumbing", "ingest", "venues"];

/// Where `processors` may use rdkafka.
const RDKAFKA_ALLOWED_UNDER: &[&str] = &["src/kafka/", "src/ops/"];

#[test]
fn schemas_plumbing_ingest_and_venues_have_no_import_circle() {
    let mut report = String::new();
    for name in CRATES_WITHOUT_CIRCLES {
        report.push_str(&circles_report(&Package::read(name)));
    }
    assert!(report.is_empty(), "import circles:\n{report}");
}

#[test]
fn processors_has_no_import_circle() {
    let report = circles_report(&Package::read("processors"));
    assert!(report.is_empty(), "import circles:\n{report}");
}

#[test]
fn rdkafka_is_used_only_under_processors_kafka_and_ops() {
    let found = rdkafka_uses(&Package::read("processors"), RDKAFKA_ALLOWED_UNDER);
    assert!(
        found.is_empty(),
        "rdkafka used outside {RDKAFKA_ALLOWED_UNDER:?} in processors:\n{}",
        found.join("\n")
    );
}

/// One crate's source: its name as code spells it and every `.rs` file
/// under `src/`, by path relative to the crate's folder.
struct Package {
    /// The crate's name in paths (`-` as `_`).
    name: String,
    /// `src/...rs` -> the file's text.
    files: BTreeMap<String, String>,
}

impl Package {
    /// Reads the workspace member in the folder `dir`.
    fn read(dir: &str) -> Package {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
        let manifest = std::fs::read_to_string(root.join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \""))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{dir}/Cargo.toml names no package"))
            .replace('-', "_");
        let mut files = BTreeMap::new();
        let mut folders = vec![root.join("src")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(&root).unwrap();
                    let rel = rel.to_str().unwrap().replace('\\', "/");
                    files.insert(rel, std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        assert!(files.contains_key("src/lib.rs") || files.contains_key("src/main.rs"));
        Package { name, files }
    }

    /// Builds a package from `(path, text)` pairs (the detectors' tests).
    #[cfg(test)]
    fn synthetic(name: &str, files: &[(&str, &str)]) -> Package {
        Package {
            name: name.into(),
            files: files
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        }
    }
}

/// A module path from its crate root, e.g. `["signature", "config"]`.
type ModPath = Vec<String>;

/// One crate root's module tree (the library or one binary).
struct Tree {
    /// `src/lib.rs`, `src/main.rs`, `src/bin/x.rs`, ...
    root: String,
    /// Every module, inline ones included, -> the file it is written in.
    modules: BTreeMap<ModPath, String>,
    /// The modules that are a file of their own, with that file.
    files: Vec<(ModPath, String)>,
}

/// The package's crate roots and their module trees; the library first.
fn trees(pkg: &Package, parsed: &BTreeMap<String, syn::File>) -> Vec<Tree> {
    let mut roots: Vec<String> = ["src/lib.rs", "src/main.rs"]
        .into_iter()
        .map(String::from)
        .filter(|r| pkg.files.contains_key(r))
        .collect();
    roots.extend(
        pkg.files
            .keys()
            .filter(|p| {
                p.strip_prefix("src/bin/").is_some_and(|rest| {
                    !rest.contains('/') || rest.split('/').nth(1) == Some("main.rs")
                })
            })
            .cloned(),
    );
    roots
        .into_iter()
        .map(|root| {
            let mut tree = Tree {
                root: root.clone(),
                modules: BTreeMap::new(),
                files: Vec::new(),
            };
            let dir = root.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap();
            tree.modules.insert(Vec::new(), root.clone());
            tree.files.push((Vec::new(), root.clone()));
            walk_mods(
                pkg,
                parsed,
                &mut tree,
                &[],
                &root,
                &parsed[&root].items,
                &dir,
            );
            tree
        })
        .collect()
}

/// Records the modules declared in `items` (of `file`, at module `at`), and
/// follows each `mod x;` to its file in `dir` (`x.rs` or `x/mod.rs`).
fn walk_mods(
    pkg: &Package,
    parsed: &BTreeMap<String, syn::File>,
    tree: &mut Tree,
    at: &[String],
    file: &str,
    items: &[syn::Item],
    dir: &str,
) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        if test_only(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        assert!(
            !m.attrs.iter().any(|a| a.path().is_ident("path")),
            "{file}: `#[path]` on mod {name} is not understood by the layout guard"
        );
        let mut here = at.to_vec();
        here.push(name.clone());
        let sub = format!("{dir}/{name}");
        match &m.content {
            Some((_, inner)) => {
                tree.modules.insert(here.clone(), file.to_string());
                walk_mods(pkg, parsed, tree, &here, file, inner, &sub);
            }
            None => {
                let flat = format!("{dir}/{name}.rs");
                let nested = format!("{sub}/mod.rs");
                let child = [flat, nested]
                    .into_iter()
                    .find(|c| pkg.files.contains_key(c))
                    .unwrap_or_else(|| panic!("{file}: no file for `mod {name};`"));
                tree.modules.insert(here.clone(), child.clone());
                tree.files.push((here.clone(), child.clone()));
                walk_mods(
                    pkg,
                    parsed,
                    tree,
                    &here,
                    &child,
                    &parsed[&child].items,
                    &sub,
                );
            }
        }
    }
}

/// A path as written somewhere in a file: the module it was written in and
/// its segments (`::` for a leading `::`).
#[derive(Debug, Clone)]
struct Written {
    here: ModPath,
    path: Vec<String>,
}

/// Collects every path of a file: `use` trees, `extern crate`, paths in
/// code, and `a::b` runs in macro arguments (whose tokens syn leaves
/// unparsed). Comments are not tokens; string literals are not paths.
struct Paths {
    here: ModPath,
    found: Vec<Written>,
}

impl Paths {
    fn push(&mut self, path: Vec<String>) {
        self.found.push(Written {
            here: self.here.clone(),
            path,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.use_leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.use_leaf(prefix, &r.ident),
            syn::UseTree::Glob(_) => self.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident) {
        let mut path = prefix.to_vec();
        if ident != "self" || path.is_empty() {
            path.push(ident.to_string());
        }
        self.push(path);
    }

    /// `a::b::c` runs in a macro's tokens.
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        use proc_macro2::{Spacing, TokenTree};
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let is_colons = |i: usize| {
            matches!((trees.get(i), trees.get(i + 1)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                    if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':')
        };
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(first) if is_colons(i + 1) => {
                    let preceded_by_colons = i >= 2 && is_colons(i - 2);
                    if !preceded_by_colons {
                        let mut path = vec![first.to_string()];
                        let mut j = i + 1;
                        while is_colons(j) {
                            match trees.get(j + 2) {
                                Some(TokenTree::Ident(next)) => {
                                    path.push(next.to_string());
                                    j += 3;
                                }
                                _ => break,
                            }
                        }
                        self.push(path);
                        i = j;
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// Whether an item is compiled only for tests (`#[cfg(test)]`): what a
/// unit test imports is not a dependency of the module it tests.
fn test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if let Some((_, items)) = &m.content {
            self.here.push(m.ident.to_string());
            for item in items {
                self.visit_item(item);
            }
            self.here.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        if u.leading_colon.is_some() {
            prefix.push("::".to_string());
        }
        self.use_tree(&mut prefix, &u.tree);
    }

    fn visit_item_extern_crate(&mut self, e: &'ast syn::ItemExternCrate) {
        self.push(vec!["::".into(), e.ident.to_string()]);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let mut path = Vec::new();
        if p.leading_colon.is_some() {
            path.push("::".to_string());
        }
        path.extend(p.segments.iter().map(|s| s.ident.to_string()));
        if path.len() > 1 {
            self.push(path);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_vis_restricted(&mut self, _: &'ast syn::VisRestricted) {
        // `pub(in crate::x)` says who may see an item, not what it uses.
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        syn::visit::visit_macro(self, m);
        self.tokens(m.tokens.clone());
    }
}

/// Every file of the package parsed.
fn parse_all(pkg: &Package) -> BTreeMap<String, syn::File> {
    pkg.files
        .iter()
        .map(|(path, text)| {
            let file = syn::parse_file(text).unwrap_or_else(|e| panic!("{path}: {e}"));
            (path.clone(), file)
        })
        .collect()
}

/// Every path written in every file reachable from a crate root, with the
/// tree the file was reached from (index into `trees`).
fn written_paths(
    trees: &[Tree],
    parsed: &BTreeMap<String, syn::File>,
) -> Vec<(usize, String, Written)> {
    let mut out = Vec::new();
    for (t, tree) in trees.iter().enumerate() {
        for (at, file) in &tree.files {
            let mut v = Paths {
                here: at.clone(),
                found: Vec::new(),
            };
            v.visit_file(&parsed[file]);
            out.extend(v.found.into_iter().map(|w| (t, file.clone(), w)));
        }
    }
    out
}

/// The file a crate-relative path names: the deepest module it walks
/// through, in the tree it starts in. `None` for paths into other crates.
fn resolve(pkg: &Package, trees: &[Tree], from: usize, w: &Written) -> Option<String> {
    let p = &w.path;
    let first = p.first()?.as_str();
    let lib = trees.iter().position(|t| t.root == "src/lib.rs");
    let (tree, mut at, rest): (usize, ModPath, &[String]) = match first {
        "crate" => (from, Vec::new(), &p[1..]),
        "self" => (from, w.here.clone(), &p[1..]),
        "super" => {
            let ups = p.iter().take_while(|s| *s == "super").count();
            let keep = w.here.len().checked_sub(ups)?;
            (from, w.here[..keep].to_vec(), &p[ups..])
        }
        "::" if p.get(1) == Some(&pkg.name) => (lib?, Vec::new(), &p[2..]),
        name if name == pkg.name && from != lib? => (lib?, Vec::new(), &p[1..]),
        _ => return None,
    };
    let modules = &trees[tree].modules;
    for seg in rest {
        at.push(seg.clone());
        if !modules.contains_key(&at) {
            at.pop();
            break;
        }
    }
    modules.get(&at).cloned()
}

/// The import graph of a package's files: `from -> to -> the paths`.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn import_graph(pkg: &Package) -> Graph {
    let parsed = parse_all(pkg);
    let trees = trees(pkg, &parsed);
    let mut graph = Graph::new();
    for (t, file, w) in written_paths(&trees, &parsed) {
        if let Some(to) = resolve(pkg, &trees, t, &w)
            && to != file
        {
            graph
                .entry(file)
                .or_default()
                .entry(to)
                .or_default()
                .insert(w.path.join("::").replace("::::", "::"));
        }
    }
    graph
}

/// Strongly connected components of more than one file (Tarjan).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn connect<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            connect(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// Every import circle of a package, each with the files in it and the
/// paths that tie them; empty when there is none.
fn circles_report(pkg: &Package) -> String {
    let graph = import_graph(pkg);
    let mut report = String::new();
    for component in circles(&graph) {
        report.push_str(&format!(
            "{}: circle between {}\n",
            pkg.name,
            component.join(", ")
        ));
        for from in &component {
            for (to, names) in &graph[from] {
                if component.contains(to) {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    report.push_str(&format!("  {from} -> {to}: {}\n", names.join(", ")));
                }
            }
        }
    }
    report
}

/// `file: path` for every use of rdkafka outside the allowed folders.
fn rdkafka_uses(pkg: &Package, allowed_under: &[&str]) -> Vec<String> {
    let parsed = parse_all(pkg);
    let trees = trees(pkg, &parsed);
    let mut found = BTreeSet::new();
    for (_, file, w) in written_paths(&trees, &parsed) {
        let path: Vec<&str> = w
            .path
            .iter()
            .map(String::as_str)
            .skip_while(|s| *s == "::")
            .collect();
        if path.first() == Some(&"rdkafka") && !allowed_under.iter().any(|a| file.starts_with(a)) {
            found.insert(format!("{file}: {}", path.join("::")));
        }
    }
    found.into_iter().collect()
}

#[test]
fn the_circle_detector_finds_a_two_file_circle_and_names_its_ties() {
    let pkg = Package::synthetic(
        "demo",
        &[
            ("src/lib.rs", "pub mod a;\npub mod b;\npub mod leaf;\n"),
            ("src/a.rs", "use crate::b::B;\npub struct A(pub B);\n"),
            (
                "src/b.rs",
                "pub struct B;\npub fn f(_: crate::a::A) -> crate::leaf::L { crate::leaf::L }\n",
            ),
            ("src/leaf.rs", "pub struct L;\n"),
        ],
    );
    let report = circles_report(&pkg);
    assert_eq!(
        report,
        "demo: circle between src/a.rs, src/b.rs\n  src/a.rs -> src/b.rs: crate::b::B\n  src/b.rs -> src/a.rs: crate::a::A\n"
    );
}

#[test]
fn the_circle_detector_follows_super_self_macros_and_the_binary() {
    // A three-file loop through `super::`, a `self::` path, a macro
    // argument and a folder module; a binary naming the crate; a parent
    // dispatching to its child without `self::` and a test module using
    // `super::*` (neither is an import circle).
    let pkg = Package::synthetic(
        "demo",
        &[
            ("src/lib.rs", "pub mod config;\npub mod sink;\n"),
            (
                "src/main.rs",
                "mod cli;\nfn main() { demo::sink::run(); cli::go(); }\n",
            ),
            (
                "src/cli.rs",
                "pub fn go() { crate::main_helper(); let _ = demo::config::C; }\n",
            ),
            (
                "src/config.rs",
                "pub struct C;\npub fn f() { println!(\"{:?}\", crate::sink::crm::X); }\n#[cfg(test)]\nmod tests { use super::*; }\n",
            ),
            (
                "src/sink/mod.rs",
                "pub mod crm;\npub fn run() { crm::start(); }\npub struct Outcome;\n",
            ),
            (
                "src/sink/crm.rs",
                "use super::Outcome;\npub struct X;\npub fn start() -> Outcome { let _ = self::inner::Y; Outcome }\nmod inner { pub struct Y; pub fn c() -> crate::config::C { crate::config::C } }\n",
            ),
        ],
    );
    let graph = import_graph(&pkg);
    assert!(
        graph["src/main.rs"].contains_key("src/sink/mod.rs"),
        "{graph:?}"
    );
    assert!(
        graph["src/cli.rs"].contains_key("src/config.rs"),
        "{graph:?}"
    );
    let report = circles_report(&pkg);
    assert_eq!(
        report,
        "demo: circle between src/config.rs, src/sink/crm.rs\n  src/config.rs -> src/sink/crm.rs: crate::sink::crm::X\n  src/sink/crm.rs -> src/config.rs: crate::config::C\n"
    );
}

#[test]
fn imports_of_test_only_code_are_not_module_dependencies() {
    // A unit test may use the composed config its module sits under; that
    // is no dependency of the module (it is not even compiled in a build).
    let pkg = Package::synthetic(
        "demo",
        &[
            (
                "src/lib.rs",
                "pub mod config;\npub mod route;\n#[cfg(test)]\nmod tests;\n",
            ),
            (
                "src/config.rs",
                "pub struct Config(pub crate::route::Rule);\n",
            ),
            (
                "src/route.rs",
                "pub struct Rule;\n#[cfg(test)]\nmod tests { use crate::config::Config; }\n#[cfg(test)]\nfn helper() -> crate::config::Config { todo!() }\n",
            ),
            ("src/tests.rs", "use crate::config::Config;\n"),
        ],
    );
    assert_eq!(circles_report(&pkg), "");
    let graph = import_graph(&pkg);
    assert!(
        !graph
            .get("src/route.rs")
            .is_some_and(|to| to.contains_key("src/config.rs")),
        "{graph:?}"
    );
    // The same import outside a test is a circle.
    let pkg = Package::synthetic(
        "demo",
        &[
            ("src/lib.rs", "pub mod config;\npub mod route;\n"),
            (
                "src/config.rs",
                "pub struct Config(pub crate::route::Rule);\n",
            ),
            (
                "src/route.rs",
                "pub struct Rule;\npub fn f(_: crate::config::Config) {}\n",
            ),
        ],
    );
    assert!(circles_report(&pkg).contains("circle between src/config.rs, src/route.rs"));
}

#[test]
fn the_circle_detector_passes_a_tree_without_circles() {
    let pkg = Package::synthetic(
        "demo",
        &[
            (
                "src/lib.rs",
                "pub mod a;\npub mod b;\n// crate::a and crate::b meet only in comments\n",
            ),
            ("src/a.rs", "use crate::b::B;\npub struct A(B);\n"),
            (
                "src/b.rs",
                "/// See [`crate::a::A`].\npub struct B;\nconst S: &str = \"crate::a::A\";\n",
            ),
        ],
    );
    assert_eq!(circles_report(&pkg), "");
}

#[test]
fn the_rdkafka_detector_flags_code_not_comments() {
    let pkg = Package::synthetic(
        "demo",
        &[
            (
                "src/lib.rs",
                "pub mod kafka;\npub mod stage;\npub mod quiet;\npub mod edge;\n",
            ),
            ("src/kafka/mod.rs", "use rdkafka::ClientConfig;\n"),
            (
                "src/quiet.rs",
                "// librdkafka batches; rdkafka::producer is not used here.\n/// Unlike `rdkafka::Offset`, ...\npub const S: &str = \"rdkafka::config\";\n",
            ),
            ("src/stage.rs", "pub fn f(_: rdkafka::Offset) {}\n"),
            (
                "src/edge.rs",
                "use ::rdkafka as kafka;\npub fn g() { println!(\"{}\", rdkafka::util::get_rdkafka_version().1); }\n",
            ),
        ],
    );
    assert_eq!(
        rdkafka_uses(&pkg, &["src/kafka/"]),
        [
            "src/edge.rs: rdkafka",
            "src/edge.rs: rdkafka::util::get_rdkafka_version",
            "src/stage.rs: rdkafka::Offset",
        ]
    );
}
