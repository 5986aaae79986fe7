//! `upload`: `POST /v1/requests` behind API Gateway — the shared router.

use imgproc::api;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    imgproc::lambda::init_tracing();
    // Built once per cold start, reused by every warm invocation.
    let (app, _) = imgproc::lambda::app_from_env().await?;
    // An internet-facing API starts only with tokens, or open on purpose.
    app.config.require_api_auth()?;
    app.config.require_request_id_secret()?;
    lambda_http::run(api::router(app)).await
}
