//! `notify`: DynamoDB stream records → the first webhook attempt of each
//! request that became terminal, queued for the `deliver` function.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use imgproc::aws::{Clients, handlers::notify, webhook_queue};
use imgproc::config::Config;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    imgproc::aws::init_tracing();
    let config = Config::from_env()?;
    let clients = Clients::new(&config).await;
    let queue = webhook_queue(&config, &clients)?;
    let queue = &queue;
    run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<DynamoDbEventResponse, Error>(notify::handle(queue, event.payload).await)
    }))
    .await
}
