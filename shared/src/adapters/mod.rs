//! The ports' implementations. On AWS (the `aws` feature): DynamoDB for
//! requests, images, counters and leases, SQS for the queues, S3 for
//! objects and stored rows. Embedded (the `local` feature): SQLite for
//! state and the job queue, the filesystem for objects, and download slots
//! in memory. The conformance suite (shared/tests/ports_conformance.rs)
//! holds both to the same assertions.

#[cfg(feature = "aws")]
mod aws_error;
#[cfg(feature = "aws")]
pub mod dynamo;
#[cfg(feature = "local")]
pub mod fs;
#[cfg(feature = "local")]
pub mod memory;
#[cfg(feature = "aws")]
pub mod s3;
#[cfg(feature = "local")]
pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs;

#[cfg(feature = "aws")]
pub(crate) use aws_error::port_error;
