//! `ingest`: S3 `ObjectCreated` on `incoming/*.csv` → a submission, or a `rejected/` report.

use aws_lambda_events::event::s3::S3Event;
use imgproc::lambda::{app_from_env, handlers::ingest};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    imgproc::lambda::init_tracing();
    let (app, adapters) = app_from_env().await?;
    app.config.require_request_id_secret()?;
    let (app, objects) = (&app, &adapters.objects);
    run(service_fn(move |event: LambdaEvent<S3Event>| async move {
        // A backend failure fails the invocation; S3 retries it, and the
        // derived request ID makes the retry find what was already stored.
        Ok::<_, Error>(ingest::handle(app, objects, event.payload).await?)
    }))
    .await
}
