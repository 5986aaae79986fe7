//! `process`: SQS batches of image jobs, answered with a partial batch response.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use imgproc::aws::{app_from_env, handlers::process};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    imgproc::aws::init_tracing();
    let (app, adapters) = app_from_env().await?;
    let (app, queue) = (&app, &adapters.queue);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(process::handle(app, queue, event.payload).await)
    }))
    .await
}
