//! `deliver`: SQS batches of webhook attempts, answered with a partial batch response.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use imgproc::lambda::{Adapters, app_with, handlers::deliver, setup_from_env, webhook_queue};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    imgproc::lambda::init_tracing();
    let (config, clients) = setup_from_env().await?;
    let adapters = Adapters::new(&config, &clients)?;
    let queue = webhook_queue(&config, &clients)?;
    let app = app_with(config, &adapters)?;
    let (app, queue) = (&app, &queue);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(deliver::handle(app, queue, event.payload).await)
    }))
    .await
}
