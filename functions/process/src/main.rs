//! `process`: SQS batches of image jobs, answered with a partial batch response.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use imgproc::aws::handlers::{batch::deadline_of, process};
use imgproc::aws::{app_from_env, init_tracing};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let (app, adapters) = app_from_env().await?;
    let (app, queue) = (&app, &adapters.queue);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = deadline_of(event.context.deadline);
        Ok::<SqsBatchResponse, Error>(process::handle(app, queue, event.payload, deadline).await)
    }))
    .await
}
