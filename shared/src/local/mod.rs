//! Embedded adapters: SQLite for state and the queue, the filesystem for
//! objects, and the in-process worker pool and notifier that stand in for
//! SQS triggers and DynamoDB streams.

pub mod fs_objects;
pub mod host_slots;
pub mod runtime;
pub mod sqlite;

pub use fs_objects::FsObjectStore;
pub use host_slots::MemoryHostSlots;
pub use runtime::{LocalRuntime, LocalRuntimeOptions};
pub use sqlite::SqliteStore;
