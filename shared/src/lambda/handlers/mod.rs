//! What each Lambda function does with its event, written against the
//! services; the binaries under `functions/` only wire these up.

pub mod batch;
pub mod deadletter;
pub mod deliver;
pub mod fanout;
pub mod ingest;
pub mod notify;
pub mod process;
