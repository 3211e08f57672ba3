//! mctc-console: the fleet's web proof surfaces.
//!
//! It reads the fleet the way the CLI does: the authority's and the
//! collector's own store types, opened read-only ([`stores`]), plus the
//! retained device status and collector alert topics heard with the
//! monitor identity ([`live`]). Every page is a typed view ([`views`])
//! rendered twice at the edge: HTML that works without JavaScript
//! ([`render`], through the one escaping writer in [`html`]) and its JSON
//! twin under `/api/v1/…`. [`server`] is the router and the TLS listener
//! (rustls; client certificates optional at the TLS layer, required for
//! operator pages). `console/README.md` documents the configuration, the
//! routes and the JSON schemas.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod html;
pub mod live;
pub mod render;
pub mod server;
pub mod shutdown;
pub mod stores;
pub mod views;

pub use config::Config;
pub use error::{ConsoleError, PageError};
