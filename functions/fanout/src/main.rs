//! `fanout`: queues the image jobs of stored requests, resuming from their cursors.

use imgproc::lambda::handlers::fanout;
use imgproc::lambda::{BatchSource, run_batches};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(BatchSource::FanOut, fanout::handle).await
}
