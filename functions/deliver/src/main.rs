//! `deliver`: SQS batches of webhook attempts, answered with a partial batch response.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use imgproc::aws::{Adapters, Clients, app_with, handlers::deliver, webhook_queue};
use imgproc::config::Config;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    imgproc::aws::init_tracing();
    let config = Config::from_env()?;
    let clients = Clients::new(&config).await;
    let adapters = Adapters::new(&config, &clients)?;
    let queue = webhook_queue(&config, &clients)?;
    let app = app_with(config, &adapters)?;
    let (app, queue) = (&app, &queue);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<SqsBatchResponse, Error>(deliver::handle(app, queue, event.payload).await)
    }))
    .await
}
