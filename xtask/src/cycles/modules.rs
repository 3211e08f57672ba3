//! One crate target's modules and the imports between them, read from
//! source with `syn` (no compiler, no rust-analyzer: the whole workspace is
//! read in about a second).
//!
//! A module depends on another when it names it or an item in it: in a
//! `use` (`crate::…`, `super::…`, `self::…`, a child module, a name it
//! imported) or as a path in code, macro arguments included where they
//! parse as expressions. A name a module re-exports (`pub use a::Item`) is
//! followed to the module that defines it, so using `crate::Error` from a
//! sibling of `error` is an edge to `error`, not to the crate root.
//! A re-export (`pub use`, any visibility) is namespace, not use: it binds
//! the name for the paths that go through it, and makes no edge itself, so
//! a parent that re-exports its child's items while the child uses the
//! parent's is no cycle.
//! `#[cfg(test)]` items are left out: `mod tests { use super::*; }` is how
//! unit tests are written, not a layering decision. Declaring a module
//! (`mod a;`) is ownership, not use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::punctuated::Punctuated;
use syn::visit::Visit;

use super::error::CyclesError;
use super::graph::Graph;

/// A module's path below the crate root (`[]` is the root).
pub type ModPath = Vec<String>;

/// `crate`, `crate::a::b`.
pub fn display(path: &[String]) -> String {
    std::iter::once("crate")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

#[derive(Debug, Default)]
struct Module {
    children: BTreeSet<String>,
    /// `use` bindings: the name in scope and the path as written.
    bindings: BTreeMap<String, Vec<String>>,
    /// `use path::*`.
    globs: Vec<Vec<String>>,
}

/// Where a module names another: the evidence printed with a cycle.
#[derive(Debug, Clone)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
    pub path: String,
}

#[derive(Debug)]
struct Reference {
    from: ModPath,
    segments: Vec<String>,
    site: Site,
}

/// A crate target's module tree and the references between its modules.
#[derive(Debug, Default)]
pub struct CrateModules {
    modules: BTreeMap<ModPath, Module>,
    references: Vec<Reference>,
    /// Declared modules whose file was not found (a cfg'd-out module may
    /// name a file that does not exist).
    pub missing: Vec<String>,
}

impl CrateModules {
    /// Reads the target whose root file is `root` and every module file
    /// it declares.
    pub fn read(root: &Path) -> Result<CrateModules, CyclesError> {
        let mut crate_modules = CrateModules::default();
        let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
        crate_modules.read_file(root, Vec::new(), dir)?;
        Ok(crate_modules)
    }

    fn read_file(&mut self, file: &Path, module: ModPath, dir: PathBuf) -> Result<(), CyclesError> {
        let text = std::fs::read_to_string(file).map_err(|source| CyclesError::Read {
            file: file.to_owned(),
            source,
        })?;
        let parsed = syn::parse_file(&text).map_err(|e| CyclesError::Parse {
            file: file.to_owned(),
            line: e.span().start().line,
            message: e.to_string(),
        })?;
        self.modules.entry(module.clone()).or_default();
        self.read_items(file, &module, &dir, &parsed.items)
    }

    fn read_items(
        &mut self,
        file: &Path,
        module: &ModPath,
        dir: &Path,
        items: &[syn::Item],
    ) -> Result<(), CyclesError> {
        for item in items {
            match item {
                syn::Item::Mod(m) if is_test_only(&m.attrs) => {}
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    let mut child = module.clone();
                    child.push(name.clone());
                    self.modules
                        .entry(module.clone())
                        .or_default()
                        .children
                        .insert(name.clone());
                    self.modules.entry(child.clone()).or_default();
                    match &m.content {
                        Some((_, inner)) => {
                            self.read_items(file, &child, &dir.join(&name), inner)?;
                        }
                        None => match module_file(dir, &name, &m.attrs) {
                            Some((child_file, child_dir)) => {
                                self.read_file(&child_file, child, child_dir)?;
                            }
                            None => self.missing.push(display(&child)),
                        },
                    }
                }
                other => {
                    let mut collector = Collector {
                        crate_modules: self,
                        module,
                        file,
                        re_export: false,
                    };
                    collector.visit_item(other);
                }
            }
        }
        Ok(())
    }

    /// Where `segments`, written in `from`, points, as a path from the
    /// crate root; `None` for another crate, std or a local name.
    fn absolute(&self, from: &[String], segments: &[String], depth: u8) -> Option<Vec<String>> {
        let (first, rest) = segments.split_first()?;
        match first.as_str() {
            "crate" => Some(rest.to_vec()),
            "self" => Some(from.iter().chain(rest).cloned().collect()),
            "super" => {
                let mut base = from.to_vec();
                base.pop()?;
                let mut rest = rest;
                while let Some(("super", tail)) = rest.split_first().map(|(h, t)| (h.as_str(), t)) {
                    base.pop()?;
                    rest = tail;
                }
                Some(base.into_iter().chain(rest.iter().cloned()).collect())
            }
            name => {
                let module = self.modules.get(from)?;
                if module.children.contains(name) {
                    Some(from.iter().chain(segments).cloned().collect())
                } else if let Some(bound) = module.bindings.get(name) {
                    if depth > 8 || bound.first() == Some(first) && bound.len() == 1 {
                        return None;
                    }
                    let mut target = self.absolute(from, bound, depth + 1)?;
                    target.extend(rest.iter().cloned());
                    Some(target)
                } else {
                    None
                }
            }
        }
    }

    /// The module that defines what the absolute path `segments` names,
    /// following re-exports; `None` when a re-export leads out of the
    /// crate (`pub use serde_json::Value`): no module of ours.
    fn defining_module(&self, segments: &[String], depth: u8) -> Option<ModPath> {
        let mut at: ModPath = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            let Some(module) = self.modules.get(&at) else {
                return Some(at);
            };
            if module.children.contains(segment) {
                at.push(segment.clone());
                continue;
            }
            if depth < 8 {
                if let Some(bound) = module.bindings.get(segment) {
                    let mut target = self.absolute(&at, bound, depth + 1)?;
                    target.extend(segments[i + 1..].iter().cloned());
                    return self.defining_module(&target, depth + 1);
                }
                for glob in &module.globs {
                    let Some(source) = self
                        .absolute(&at, glob, depth + 1)
                        .and_then(|base| self.defining_module(&base, depth + 1))
                    else {
                        continue;
                    };
                    let defines = self.modules.get(&source).is_some_and(|m| {
                        m.children.contains(segment) || m.bindings.contains_key(segment)
                    });
                    if defines && source != at {
                        let target: Vec<String> = source
                            .into_iter()
                            .chain(segments[i..].iter().cloned())
                            .collect();
                        return self.defining_module(&target, depth + 1);
                    }
                }
            }
            return Some(at);
        }
        Some(at)
    }

    /// The module dependency graph (nodes are `crate::…` names) and, per
    /// edge, where it is first written.
    pub fn graph(&self) -> (Graph, BTreeMap<(String, String), Site>) {
        let mut graph = Graph::default();
        let mut sites = BTreeMap::new();
        for reference in &self.references {
            let Some(absolute) = self.absolute(&reference.from, &reference.segments, 0) else {
                continue;
            };
            let Some(target) = self.defining_module(&absolute, 0) else {
                continue;
            };
            if target == reference.from {
                continue;
            }
            let (from, to) = (display(&reference.from), display(&target));
            graph.add(&from, &to);
            sites
                .entry((from, to))
                .or_insert_with(|| reference.site.clone());
        }
        (graph, sites)
    }
}

/// `#[cfg(test)]` (or `cfg(all(test, …))`).
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr.meta.require_list().is_ok_and(|list| {
                let tokens: String = list
                    .tokens
                    .to_string()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                tokens == "test" || tokens.starts_with("all(test,")
            })
    })
}

/// The file of `mod name;` declared in a module whose own files live in
/// `dir`, and the directory of that module's children.
fn module_file(dir: &Path, name: &str, attrs: &[syn::Attribute]) -> Option<(PathBuf, PathBuf)> {
    for attr in attrs {
        if attr.path().is_ident("path")
            && let syn::Meta::NameValue(nv) = &attr.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            let file = dir.join(s.value());
            let child_dir = file.parent().unwrap_or(dir).to_path_buf();
            return file.is_file().then_some((file, child_dir));
        }
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.is_file() {
        return Some((flat, dir.join(name)));
    }
    let nested = dir.join(name).join("mod.rs");
    nested.is_file().then(|| (nested, dir.join(name)))
}

/// Collects the paths one item names, and the `use` bindings it makes.
struct Collector<'a> {
    crate_modules: &'a mut CrateModules,
    module: &'a ModPath,
    file: &'a Path,
    /// Inside a re-export: bind names, record no reference.
    re_export: bool,
}

impl Collector<'_> {
    fn reference(&mut self, segments: Vec<String>, line: usize) {
        if self.re_export {
            return;
        }
        let path = segments.join("::");
        self.crate_modules.references.push(Reference {
            from: self.module.clone(),
            segments,
            site: Site {
                file: self.file.to_owned(),
                line,
                path,
            },
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree, line: usize) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree, line);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                let full = if name == "self" {
                    prefix.clone()
                } else {
                    prefix.iter().cloned().chain([name.clone()]).collect()
                };
                let bound = if name == "self" {
                    prefix.last().cloned().unwrap_or_default()
                } else {
                    name
                };
                self.bind(bound, full, line);
            }
            syn::UseTree::Rename(r) => {
                let name = r.ident.to_string();
                let full = if name == "self" {
                    prefix.clone()
                } else {
                    prefix.iter().cloned().chain([name]).collect()
                };
                self.bind(r.rename.to_string(), full, line);
            }
            syn::UseTree::Glob(_) => {
                self.crate_modules
                    .modules
                    .entry(self.module.clone())
                    .or_default()
                    .globs
                    .push(prefix.clone());
                self.reference(prefix.clone(), line);
            }
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree, line);
                }
            }
        }
    }

    fn bind(&mut self, name: String, full: Vec<String>, line: usize) {
        if name != "_" {
            self.crate_modules
                .modules
                .entry(self.module.clone())
                .or_default()
                .bindings
                .insert(name, full.clone());
        }
        self.reference(full, line);
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if is_test_only(&item.attrs) || item.leading_colon.is_some() {
            return;
        }
        let line = item.use_token.span.start().line;
        self.re_export = !matches!(item.vis, syn::Visibility::Inherited);
        self.use_tree(&mut Vec::new(), &item.tree, line);
        self.re_export = false;
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test_only(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if !is_test_only(&item.attrs) {
            syn::visit::visit_item_impl(self, item);
        }
    }

    // Modules are walked by `read_items`, one module at a time.
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            let line = path
                .segments
                .first()
                .map_or(0, |s| s.ident.span().start().line);
            self.reference(segments, line);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        syn::visit::visit_macro(self, mac);
        // format!, assert!, vec! and most others take expressions.
        let parser = Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated;
        if let Ok(args) = mac.parse_body_with(parser) {
            for expr in &args {
                self.visit_expr(expr);
            }
        }
    }
}
