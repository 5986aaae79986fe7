//! `deadletter`: image jobs whose every worker died fail as `worker_crashed`.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use imgproc::aws::handlers::{batch::deadline_of, deadletter};
use imgproc::aws::{SqsQueue, app_from_env, init_tracing, required};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let (app, adapters) = app_from_env().await?;
    let source = SqsQueue::new(
        adapters.queue.client().clone(),
        required(&app.config.dead_letter_queue_url, "DEAD_LETTER_QUEUE_URL")?,
    );
    let (app, source) = (&app, &source);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = deadline_of(event.context.deadline);
        Ok::<SqsBatchResponse, Error>(
            deadletter::handle(app, source, event.payload, deadline).await,
        )
    }))
    .await
}
