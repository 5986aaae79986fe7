//! `notify`: DynamoDB stream records → the webhook of each request that became terminal.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use imgproc::aws::{app_from_env, handlers::notify};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    imgproc::aws::init_tracing();
    let (app, _) = app_from_env().await?;
    let app = &app;
    run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<DynamoDbEventResponse, Error>(notify::handle(app, event.payload).await)
    }))
    .await
}
