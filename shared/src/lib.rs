//! imgproc: bulk image compression from a CSV of products.
//!
//! Everything that is not an entry point lives here, so the Lambda
//! functions and the local runner are thin shells around the same code.

pub mod adapters;
pub mod api;
pub mod compress;
pub mod config;
pub mod domain;
#[cfg(feature = "aws")]
pub mod lambda;
#[cfg(feature = "local")]
pub mod local;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod ports;
pub mod services;
