//! `notify`: DynamoDB stream records → the first webhook attempt of each
//! request that became terminal, queued for the `deliver` function.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use imgproc::lambda::{handlers::notify, setup_from_env, webhook_queue};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    imgproc::lambda::init_tracing();
    let (config, clients) = setup_from_env().await?;
    let queue = webhook_queue(&config, &clients)?;
    let queue = &queue;
    run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<DynamoDbEventResponse, Error>(notify::handle(queue, event.payload).await)
    }))
    .await
}
