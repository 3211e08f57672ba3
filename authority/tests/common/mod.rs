//! The authority's integration-test fixtures live in the shared harness
//! (`mctc_tests::authority`, feature `fixtures`); this module only names
//! them for `use common::*`.

pub use mctc_tests::authority::*;
