//! Settings read from Secrets Manager at cold start (`<NAME>_SECRET_ARN`),
//! on a moto server.
//!
//! Needs `--features aws` and `MOTO_ENDPOINT` (scripts/test-aws.sh sets both
//! up); without the endpoint every test says why and passes.
#![cfg(feature = "aws")]

use std::collections::HashMap;

use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::primitives::Blob;
use imgproc::lambda::secrets::{SecretOverlay, config_from_lookup};
use uuid::Uuid;

async fn moto() -> Option<Client> {
    let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") else {
        eprintln!("MOTO_ENDPOINT is not set: skipped (scripts/test-aws.sh runs it on moto)");
        return None;
    };
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await;
    Some(Client::new(&sdk))
}

async fn create_secret(client: &Client, value: &str) -> String {
    client
        .create_secret()
        .name(format!("imgproc-test-{}", Uuid::new_v4()))
        .secret_string(value)
        .send()
        .await
        .expect("create the secret on moto")
        .arn()
        .expect("moto returns the ARN")
        .to_owned()
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

#[tokio::test]
async fn a_secret_named_by_its_arn_variable_reaches_the_config() {
    let Some(client) = moto().await else { return };
    let webhook = create_secret(&client, "webhook-key-from-secrets-manager").await;
    let tokens = create_secret(&client, "ci:0123456789abcdef0123456789abcdef").await;
    let lookup = env(&[
        ("WEBHOOK_SECRET_ARN", webhook.as_str()),
        // Also set in the environment: the secret wins.
        ("WEBHOOK_SECRET", "stale-plain-value"),
        ("API_TOKENS_SECRET_ARN", tokens.as_str()),
    ]);

    let config = config_from_lookup(&client, &lookup).await.expect("config");
    assert_eq!(
        config.webhook_secret.as_ref().map(|s| s.expose()),
        Some("webhook-key-from-secrets-manager")
    );

    let overlay = SecretOverlay::load(&client, &lookup)
        .await
        .expect("overlay");
    assert_eq!(overlay.names(), ["API_TOKENS", "WEBHOOK_SECRET"]);
    let seen = overlay.over(&lookup);
    assert_eq!(
        seen("API_TOKENS").as_deref(),
        Some("ci:0123456789abcdef0123456789abcdef")
    );
    assert_eq!(seen("REQUEST_ID_SECRET"), None, "no ARN, no secret");
}

#[tokio::test]
async fn without_arn_variables_the_plain_variables_are_read_and_nothing_is_called() {
    // No server at all behind this client: any call would fail.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "testing", "testing", None, None, "none",
        ))
        .load()
        .await;
    let client = Client::new(&sdk);
    let config = config_from_lookup(
        &client,
        env(&[("WEBHOOK_SECRET", "plain"), ("WEBHOOK_SECRET_ARN", "  ")]),
    )
    .await
    .expect("config");
    assert_eq!(
        config.webhook_secret.as_ref().map(|s| s.expose()),
        Some("plain")
    );
}

#[tokio::test]
async fn a_missing_secret_stops_start_up_naming_the_variable() {
    let Some(client) = moto().await else { return };
    let missing =
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:imgproc-no-such-secret-AbCdEf";
    let err = config_from_lookup(&client, env(&[("REQUEST_ID_SECRET_ARN", missing)]))
        .await
        .expect_err("a missing secret is a start-up error");
    assert_eq!(err.var, "REQUEST_ID_SECRET_ARN");
    let shown = err.to_string();
    assert!(shown.contains("REQUEST_ID_SECRET_ARN"), "{shown}");
    assert!(shown.contains(missing), "names the secret: {shown}");
    assert!(
        shown.contains("ResourceNotFound"),
        "gives the service's reason: {shown}"
    );
}

#[tokio::test]
async fn a_binary_secret_is_refused_without_showing_its_bytes() {
    let Some(client) = moto().await else { return };
    let arn = client
        .create_secret()
        .name(format!("imgproc-test-{}", Uuid::new_v4()))
        .secret_binary(Blob::new("binary-secret-value"))
        .send()
        .await
        .expect("create the secret on moto")
        .arn()
        .expect("moto returns the ARN")
        .to_owned();
    let err = config_from_lookup(&client, env(&[("WEBHOOK_SECRET_ARN", arn.as_str())]))
        .await
        .expect_err("no SecretString");
    assert_eq!(err.var, "WEBHOOK_SECRET_ARN");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("no SecretString"), "{shown}");
    assert!(!shown.contains("binary-secret-value"), "{shown}");
}
