//! The checker on small crates written to a temporary directory: a cycle
//! is found and named, and none is invented.

use std::collections::BTreeSet;

use super::*;

/// Writes `files` (path, text) under a temporary directory and returns the
/// cycles of the crate rooted at `lib.rs`, as sorted module lists.
fn cycles_of(files: &[(&str, &str)]) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let (cycles, missing) =
        target_cycles("fixture (lib)", &dir.path().join("lib.rs"), &[]).unwrap();
    assert!(missing.is_empty(), "{missing:?}");
    cycles
        .into_iter()
        .map(|c| c.modules.into_iter().collect())
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn two_siblings_using_each_other_are_a_cycle() {
    let found = cycles_of(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b::Thing;\npub struct Other;\n"),
        (
            "b.rs",
            "pub struct Thing;\nfn f() -> super::a::Other { todo!() }\n",
        ),
    ]);
    assert_eq!(found, [names(&["crate::a", "crate::b"])]);
}

#[test]
fn a_cycle_through_three_modules_and_a_nested_directory_is_found() {
    let found = cycles_of(&[
        ("lib.rs", "mod a;\nmod c;\n"),
        ("a/mod.rs", "mod b;\nuse self::b::B;\n"),
        ("a/b.rs", "pub struct B(crate::c::C);\n"),
        (
            "c.rs",
            "pub struct C;\nfn f() { let _ = format!(\"{}\", crate::a::A); }\n",
        ),
    ]);
    assert_eq!(found, [names(&["crate::a", "crate::a::b", "crate::c"])]);
}

#[test]
fn an_import_used_as_a_path_prefix_counts() {
    let found = cycles_of(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b;\nfn f() { b::g(); }\npub fn h() {}\n"),
        ("b.rs", "pub fn g() { crate::a::h() }\n"),
    ]);
    assert_eq!(found, [names(&["crate::a", "crate::b"])]);
}

#[test]
fn one_way_imports_are_no_cycle() {
    let found = cycles_of(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\npub use a::A;\n"),
        (
            "a.rs",
            "use crate::b::B;\nuse super::c;\npub struct A(B, c::C);\n",
        ),
        ("b.rs", "use crate::c::C;\npub struct B(C);\n"),
        (
            "c.rs",
            "pub struct C;\nuse std::fmt::Debug;\nfn f(x: &dyn std::fmt::Debug) {}\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

/// `crate::Error` re-exported by the root is the error module's item, not
/// the root's: using it from a module the root re-exports from is no cycle.
#[test]
fn re_exports_are_followed_to_the_defining_module() {
    let found = cycles_of(&[
        (
            "lib.rs",
            "mod error;\nmod gate;\npub use error::Error;\npub use gate::*;\n",
        ),
        ("error.rs", "pub struct Error;\n"),
        (
            "gate.rs",
            "use crate::Error;\npub struct Gate;\nfn f() -> crate::Error { Error }\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

/// A facade: the parent's namespace holds its child's items, the child
/// uses the parent's error type. The parent's code does not use the child.
#[test]
fn a_parent_re_exporting_its_child_does_not_depend_on_it() {
    let found = cycles_of(&[
        (
            "lib.rs",
            "mod config;\npub use config::Config;\npub(crate) use config::*;\npub struct Error;\n",
        ),
        (
            "config.rs",
            "use crate::Error;\npub struct Config;\npub fn load() -> Result<Config, Error> { todo!() }\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
    // The same parent calling into the child is a cycle.
    let found = cycles_of(&[
        (
            "lib.rs",
            "mod config;\npub struct Error;\nfn start() { config::load(); }\n",
        ),
        (
            "config.rs",
            "use crate::Error;\npub fn load() -> Result<(), Error> { todo!() }\n",
        ),
    ]);
    assert_eq!(found, [names(&["crate", "crate::config"])]);
}

/// A name the root re-exports from another crate is not the root's.
#[test]
fn a_re_export_of_another_crate_is_no_module_of_ours() {
    let found = cycles_of(&[
        (
            "lib.rs",
            "mod a;\npub use std::collections::BTreeMap as Map;\nfn f() { a::g(); }\n",
        ),
        (
            "a.rs",
            "pub fn g() -> crate::Map<u8, u8> { crate::Map::new() }\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn unit_tests_using_their_parent_are_no_cycle() {
    let found = cycles_of(&[
        ("lib.rs", "mod a;\npub struct Root;\n"),
        (
            "a.rs",
            "#[cfg(test)]\nmod tests { use super::*; use crate::Root; }\n\
             #[cfg(test)]\nfn helper() -> crate::Root { crate::Root }\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn other_crates_and_local_names_are_not_modules() {
    // `b` is a local variable and `std::…`/`serde::…` are other crates,
    // even where a module of the same name exists elsewhere in the tree.
    let found = cycles_of(&[
        (
            "lib.rs",
            "mod a;\nmod inner { pub mod b { pub fn f() {} } }\n",
        ),
        (
            "a.rs",
            "fn f(b: u8) { let _ = serde::x::y(b); let _ = b::f; }\n",
        ),
    ]);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn inline_modules_take_part() {
    let found = cycles_of(&[(
        "lib.rs",
        "mod a { pub fn f() { super::b::g() } }\nmod b { pub fn g() { super::a::f() } }\n",
    )]);
    assert_eq!(found, [names(&["crate::a", "crate::b"])]);
}

#[test]
fn a_cycle_is_printed_with_the_lines_that_make_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(
        dir.path().join("a.rs"),
        "\n\nuse crate::b::B;\npub struct A;\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.rs"), "pub struct B;\nuse crate::a::A;\n").unwrap();
    let (cycles, _) = target_cycles("fixture (lib)", &dir.path().join("lib.rs"), &[]).unwrap();
    let steps = &cycles[0].steps;
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(steps[0].starts_with("crate::a -> crate::b"), "{steps:?}");
    assert!(steps[0].contains("a.rs:3 `crate::b::B`"), "{steps:?}");
    assert!(steps[1].contains("b.rs:2 `crate::a::A`"), "{steps:?}");
}

fn cycle(target: &str, modules: &[&str]) -> Cycle {
    Cycle {
        target: target.to_owned(),
        modules: modules
            .iter()
            .map(|m| (*m).to_owned())
            .collect::<BTreeSet<_>>(),
        steps: Vec::new(),
    }
}

#[test]
fn the_allow_list_matches_the_exact_set_and_stale_entries_are_reported() {
    let found = vec![
        cycle("p (lib)", &["crate::a", "crate::b"]),
        cycle("p (lib)", &["crate::c", "crate::d", "crate::e"]),
    ];
    let temporary = "# comment\np (lib): crate::a crate::b\n\np (lib): crate::c crate::d\nr (lib): crate::x crate::y # fixed\n";
    let verdict = judge(found, temporary).unwrap();
    assert_eq!(verdict.allowed_for_now.len(), 1);
    // The listed cycle grew by a module: it fails again.
    assert_eq!(verdict.forbidden.len(), 1);
    assert_eq!(verdict.forbidden[0].modules.len(), 3);
    assert_eq!(
        verdict.stale,
        ["p (lib): crate::c crate::d", "r (lib): crate::x crate::y"]
    );
}

#[test]
fn a_malformed_allow_list_line_is_an_error() {
    assert!(matches!(
        judge(Vec::new(), "crate::a crate::b\n"),
        Err(CyclesError::AllowList { line: 1, .. })
    ));
}

/// The shim's error module may import the modules that return it; a cycle
/// elsewhere in the same crate is still found.
#[test]
fn a_design_sink_breaks_only_the_cycles_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("lib.rs", "mod error;\nmod gate;\nmod a;\nmod b;\n"),
        (
            "error.rs",
            "use crate::gate::GateError;\npub struct Error(GateError);\n",
        ),
        (
            "gate.rs",
            "pub struct GateError;\nfn f() -> crate::error::Error { todo!() }\n",
        ),
        ("a.rs", "pub fn f() { crate::b::g() }\n"),
        ("b.rs", "pub fn g() { crate::a::f() }\n"),
    ];
    for (path, text) in files {
        std::fs::write(dir.path().join(path), text).unwrap();
    }
    let lib = dir.path().join("lib.rs");
    let (without, _) = target_cycles("f (lib)", &lib, &[]).unwrap();
    assert_eq!(without.len(), 2);
    let (with, _) = target_cycles("f (lib)", &lib, &["crate::error"]).unwrap();
    assert_eq!(with.len(), 1);
    assert_eq!(with[0].key(), "f (lib): crate::a crate::b");
}
