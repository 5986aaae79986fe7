//! `upload`: `POST /v1/requests` behind API Gateway — the shared router.

use imgproc::api;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    imgproc::aws::init_tracing();
    // Built once per cold start, reused by every warm invocation.
    let (app, _) = imgproc::aws::app_from_env().await?;
    lambda_http::run(api::router(app)).await
}
