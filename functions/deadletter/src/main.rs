//! `deadletter`: image jobs whose every worker died fail as `worker_crashed`.

use imgproc::lambda::handlers::deadletter;
use imgproc::lambda::{BatchSource, run_batches};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    run_batches(BatchSource::DeadLetter, deadletter::handle).await
}
