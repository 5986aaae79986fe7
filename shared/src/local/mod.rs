//! The local runtime: the in-process worker pool and notifier that stand
//! in for SQS triggers and DynamoDB streams, on the embedded adapters
//! (SQLite, the filesystem; see [`crate::adapters`]).

pub mod runtime;

pub use crate::adapters::fs::FsObjectStore;
pub use crate::adapters::memory::MemoryHostSlots;
pub use crate::adapters::sqlite::SqliteStore;
pub use runtime::{LocalRuntime, LocalRuntimeOptions};
