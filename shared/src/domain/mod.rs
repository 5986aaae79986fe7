//! Plain types and pure rules: no I/O here.

pub mod csv_input;
pub mod model;
pub mod output_csv;
pub mod rows;

pub use model::*;
