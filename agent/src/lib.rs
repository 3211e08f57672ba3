//! mctc-agent as a library: the daemon's parts, so that the binary, the
//! end-to-end tests and the fuzz targets call the same code.
#![forbid(unsafe_code)]

pub mod lineage;
