//! The crate's own imports, read from `src/` as text: which module (one
//! file each) imports which, and the circles they make. Used by the
//! module-cycle check and by the layer check of docs/architecture.md.
//!
//! What counts as an import of module B by module A: a `use` of a path into
//! B, or a path written out in A's code (`crate::b::x`, `super::b::x`, or
//! through a module a `use` brought into scope). A path into a folder's
//! `mod.rs` that names what that `mod.rs` re-exports (`pub use child::X`) is
//! an import of the child that defines it. A module's paths into its own
//! children are not counted: a parent names its parts (re-exports, field
//! types) and its children extend its types (`impl` blocks), as `worker/`
//! and `server/` do. Test code (`#[cfg(test)]` items and `tests` modules)
//! is not read: a test may reach anywhere. Comments and string literals are
//! blanked out first; a path a macro builds is not seen.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// A module's path from the crate root: `[]` is `lib.rs`, `["worker", "admit"]` is `worker/admit.rs`.
pub type ModPath = Vec<String>;

/// One module: its file and what its code (tests left out) says.
pub struct Module {
    /// Its file.
    pub file: PathBuf,
    code: String,
}

fn main_modules() -> BTreeMap<ModPath, Module> {
    let mut files = Vec::new();
    walk(Path::new(SRC), &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(SRC).expect("under src").with_extension("");
        let mut path: ModPath = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if path == ["main"] {
            continue; // the binary: it uses the library by its name, as any user does
        }
        if path.last().is_some_and(|s| s == "mod" || s == "lib") {
            path.pop();
        }
        if path.iter().any(|s| s == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        modules.insert(path, Module { code: without_tests(&blank_literals(&text)), file });
    }
    modules
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let p = entry.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `text` with comments, string and char literals replaced by spaces (newlines kept).
fn blank_literals(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
                out.push(' ');
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r' && (next == Some('"') || next == Some('#')) && !ident_char(c.get(i.wrapping_sub(1))) {
            // A raw string r"..." or r#"..."#.
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
            while j < c.len() && !(c[j] == '"' && (1..=hashes).all(|h| c.get(j + h) == Some(&'#'))) {
                j += 1;
            }
            let end = (j + 1 + hashes).min(c.len());
            for &ch in &c[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\''), not a lifetime ('a).
            let len = if next == Some('\\') {
                (i + 2..c.len()).find(|&j| c[j] == '\'').map(|j| j + 1 - i)
            } else if c.get(i + 2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(n) => {
                    out.extend(std::iter::repeat_n(' ', n));
                    i += n;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// `code` without the items under `#[cfg(test)]` (a `mod tests { .. }`, a
/// test-only `fn`, `use`, statement, struct field or field initializer).
/// An item ends after its closing brace, at a `;` or `,` outside brackets,
/// or just before the bracket that closes the scope around it.
fn without_tests(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let b = out.as_bytes();
        let mut i = at + "#[cfg(test)]".len();
        let mut depth = 0usize;
        while i < b.len() {
            match b[i] {
                b'{' | b'(' | b'[' => depth += 1,
                b'}' | b')' | b']' => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                    if depth == 0 && b[i] == b'}' {
                        i += 1;
                        break;
                    }
                }
                b';' | b',' if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        out.replace_range(at..i, "");
    }
    out
}

/// One `use` declaration: whether it re-exports (`pub use`), and the paths it names
/// (with the name each is known by here, `None` for a glob).
struct Use {
    public: bool,
    paths: Vec<(Vec<String>, Option<String>)>,
}

/// The `use` declarations of `code`, and `code` with them blanked out.
fn uses(code: &str) -> (Vec<Use>, String) {
    let mut found = Vec::new();
    let mut rest = code.to_owned();
    let mut from = 0;
    while let Some(off) = rest[from..].find("use ") {
        let at = from + off;
        let before = rest[..at].chars().next_back();
        if ident_char(before.as_ref()) {
            from = at + 4;
            continue;
        }
        let end = at + rest[at..].find(';').expect("a use ends with ;");
        let head = rest[..at].trim_end();
        let public = head.ends_with("pub") || head.ends_with("pub(crate)") || head.ends_with("pub(super)");
        let mut paths = Vec::new();
        expand(&rest[at + 4..end], Vec::new(), &mut paths);
        found.push(Use { public, paths });
        rest.replace_range(at..end, &" ".repeat(end - at));
        from = end;
    }
    (found, rest)
}

/// Expands a use tree (`a::{b, c::{self, d as e}, f::*}`) into its paths from `prefix`.
fn expand(tree: &str, prefix: Vec<String>, out: &mut Vec<(Vec<String>, Option<String>)>) {
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let tree = tree.trim().trim_start_matches("::");
    if let Some(open) = tree.find('{') {
        let mut p = prefix.clone();
        p.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').expect("a use tree's braces close")];
        for part in split_top(inner) {
            expand(part, p.clone(), out);
        }
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p.trim(), Some(a.trim().to_owned())),
        None => (tree, None),
    };
    let segs = segments(path);
    let mut full = prefix;
    let mut name = segs.last().cloned();
    for s in segs {
        if s == "*" {
            name = None;
        } else if s == "self" {
            name = full.last().cloned();
        } else {
            full.push(s);
        }
    }
    if alias.is_some() {
        name = alias;
    }
    out.push((full, name.filter(|n| n != "_")));
}

fn segments(path: &str) -> Vec<String> {
    path.split("::").map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// `a, b::{c, d}, e` split at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, ch) in s.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Every path written out in `code` (`a::b::C`), as its segments.
fn written_paths(code: &str) -> Vec<Vec<String>> {
    let b: Vec<char> = code.chars().collect();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if (b[i].is_alphabetic() || b[i] == '_') && !ident_char(i.checked_sub(1).map(|j| &b[j])) {
            let mut segs = Vec::new();
            let mut j = i;
            loop {
                let s = j;
                while j < b.len() && ident_char(Some(&b[j])) {
                    j += 1;
                }
                segs.push(b[s..j].iter().collect::<String>());
                // `::` then an identifier continues the path (turbofish `::<` ends it).
                let mut k = j;
                while k < b.len() && b[k].is_whitespace() {
                    k += 1;
                }
                if b.get(k) == Some(&':') && b.get(k + 1) == Some(&':') {
                    k += 2;
                    while k < b.len() && b[k].is_whitespace() {
                        k += 1;
                    }
                    if k < b.len() && (b[k].is_alphabetic() || b[k] == '_') {
                        j = k;
                        continue;
                    }
                }
                break;
            }
            if segs.len() > 1 {
                paths.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    paths
}

/// The crate's modules and who imports whom.
pub struct Graph {
    /// Every module of the library, by path.
    pub modules: BTreeMap<ModPath, Module>,
    /// Re-exports: (module, name) → the path it stands for.
    reexports: BTreeMap<(ModPath, String), Vec<String>>,
    /// (from, to) → the names `from` takes from `to`.
    pub edges: BTreeMap<(ModPath, ModPath), BTreeSet<String>>,
}

impl Graph {
    pub fn read() -> Graph {
        let modules = main_modules();
        let mut g = Graph { modules, reexports: BTreeMap::new(), edges: BTreeMap::new() };
        let mut parsed = Vec::new();
        for (path, m) in &g.modules {
            let (us, rest) = uses(&m.code);
            for u in &us {
                for (p, name) in &u.paths {
                    if let (true, Some(n)) = (u.public, name) {
                        let abs = g.absolute(path, p, &BTreeMap::new());
                        g.reexports.insert((path.clone(), n.clone()), abs);
                    }
                }
            }
            parsed.push((path.clone(), us, rest));
        }
        for (path, us, rest) in parsed {
            // Names a `use` brought into scope, for the paths written out below.
            let mut scope: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for u in &us {
                for (p, name) in &u.paths {
                    let abs = g.absolute(&path, p, &BTreeMap::new());
                    if let Some(n) = name {
                        scope.insert(n.clone(), abs.clone());
                    }
                    if !u.public {
                        g.import(&path, &abs);
                    }
                }
            }
            for p in written_paths(&rest) {
                let abs = g.absolute(&path, &p, &scope);
                g.import(&path, &abs);
            }
        }
        g
    }

    /// `p` as written in module `here`, from the crate root (`crate::`,
    /// `super::`, `self::`, a child module's name, or a name in `scope`).
    /// Paths into other crates come back empty.
    fn absolute(&self, here: &ModPath, p: &[String], scope: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        let Some(first) = p.first() else { return Vec::new() };
        let mut base: Vec<String>;
        let mut rest = &p[1..];
        match first.as_str() {
            "crate" => base = Vec::new(),
            "self" => base = here.clone(),
            "super" => {
                base = here.clone();
                base.pop();
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            name => {
                let mut child = here.clone();
                child.push(name.to_owned());
                if self.modules.contains_key(&child) {
                    base = child;
                } else if let Some(abs) = scope.get(name) {
                    base = abs.clone();
                } else {
                    return Vec::new();
                }
            }
        }
        base.extend(rest.iter().cloned());
        base
    }

    /// The module that defines what `abs` names, through re-exports.
    fn resolve(&self, abs: &[String]) -> Option<(ModPath, String)> {
        let mut abs = abs.to_vec();
        for _ in 0..8 {
            let n = (0..=abs.len()).rev().find(|&n| self.modules.contains_key(&abs[..n]))?;
            let module = abs[..n].to_vec();
            let Some(name) = abs.get(n).cloned() else {
                return Some((module, String::new()));
            };
            match self.reexports.get(&(module.clone(), name.clone())) {
                Some(target) if target.as_slice() != abs.as_slice() && !target.is_empty() => {
                    let mut next = target.clone();
                    next.extend(abs[n + 1..].iter().cloned());
                    abs = next;
                }
                _ => return Some((module, name)),
            }
        }
        None
    }

    fn import(&mut self, from: &ModPath, abs: &[String]) {
        if abs.is_empty() {
            return;
        }
        let Some((to, name)) = self.resolve(abs) else { return };
        // A module's own children, and itself, are not imports.
        if to.starts_with(from) {
            return;
        }
        self.edges.entry((from.clone(), to)).or_default().insert(name);
    }

    pub fn file(&self, m: &ModPath) -> String {
        let f = &self.modules[m].file;
        f.strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/")).unwrap_or(f).display().to_string()
    }

    /// The groups of two or more nodes that import each other in a circle
    /// (Tarjan), where `node` says which node a module is part of (`None`: left out).
    fn circles(&self, node: impl Fn(&ModPath) -> Option<ModPath>) -> Vec<Vec<ModPath>> {
        let nodes: Vec<ModPath> = self.modules.keys().filter_map(&node).collect::<BTreeSet<_>>().into_iter().collect();
        let index_of: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(i, m)| (m, i)).collect();
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (from, to) in self.edges.keys() {
            if let (Some(f), Some(t)) = (node(from), node(to)) {
                if f != t {
                    out[index_of[&f]].push(index_of[&t]);
                }
            }
        }
        let mut t = Tarjan { out, index: vec![None; nodes.len()], low: vec![0; nodes.len()], ..Tarjan::default() };
        for v in 0..nodes.len() {
            if t.index[v].is_none() {
                t.visit(v);
            }
        }
        t.groups
            .into_iter()
            .filter(|g| g.len() > 1)
            .map(|g| g.into_iter().map(|i| nodes[i].clone()).collect())
            .collect()
    }

    /// Every circle: of files, and of the parts of each folder (a sub-folder
    /// as one part, so `metrics/` ↔ `upstream/` is a circle even when no two
    /// of their files import each other).
    pub fn all_circles(&self) -> Vec<Vec<ModPath>> {
        let mut found: Vec<Vec<ModPath>> = self.circles(|m| Some(m.clone()));
        let folders: BTreeSet<ModPath> =
            self.modules.keys().filter(|m| !m.is_empty()).map(|m| m[..m.len() - 1].to_vec()).collect();
        for parent in folders {
            let part =
                |m: &ModPath| (m.len() > parent.len() && m.starts_with(&parent)).then(|| m[..=parent.len()].to_vec());
            for c in self.circles(part) {
                if !found.contains(&c) {
                    found.push(c);
                }
            }
        }
        found
    }

    /// How a node of a circle is named: its file, or its folder.
    pub fn name(&self, node: &ModPath) -> String {
        let folder = self.modules.keys().any(|m| m.len() > node.len() && m.starts_with(node));
        let file = self.file(node);
        match file.strip_suffix("/mod.rs") {
            Some(dir) if folder => format!("{dir}/"),
            _ if folder => format!("{}/", file.trim_end_matches(".rs")),
            _ => file,
        }
    }
}

#[derive(Default)]
struct Tarjan {
    out: Vec<Vec<usize>>,
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    stack: Vec<usize>,
    on_stack: BTreeSet<usize>,
    next: usize,
    groups: Vec<Vec<usize>>,
}

impl Tarjan {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack.insert(v);
        for w in self.out[v].clone() {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(i) if self.on_stack.contains(&w) => self.low[v] = self.low[v].min(i),
                _ => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut group = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack.remove(&w);
                group.push(w);
                if w == v {
                    break;
                }
            }
            group.sort();
            self.groups.push(group);
        }
    }
}
