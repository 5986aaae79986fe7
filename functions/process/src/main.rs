//! `process`: SQS batches of image jobs, answered with a partial batch response.

use imgproc::lambda::handlers::process;
use imgproc::lambda::{BatchSource, run_batches};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(BatchSource::Jobs, process::handle).await
}
