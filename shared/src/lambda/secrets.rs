//! Settings kept in AWS Secrets Manager rather than in the function's
//! environment, where anyone allowed to read the function's configuration
//! would see them.
//!
//! For each setting of [`SECRET_SETTINGS`], `<NAME>_SECRET_ARN` names the
//! secret holding it. At cold start every named secret is read once
//! (`GetSecretValue`, its `SecretString`) and [`Config::from_lookup`] sees it
//! as `<NAME>`, over the environment. Without the ARN variable the plain
//! `<NAME>` variable is read as before (the local runner, tests).
//!
//! A secret that cannot be read stops the function at start-up with a
//! [`ConfigError`] naming the ARN variable: a function that ran on without
//! its API tokens or signing keys would refuse every client or sign nothing.
//! Values only ever travel as [`Secret`], whose `Debug` hides them.

use std::collections::HashMap;
use std::fmt;

use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::DisplayErrorContext;

use crate::config::{Config, ConfigError, Secret};

/// Each setting that may come from a secret, with the variable naming that secret.
pub const SECRET_SETTINGS: [(&str, &str); 3] = [
    ("API_TOKENS", "API_TOKENS_SECRET_ARN"),
    ("WEBHOOK_SECRET", "WEBHOOK_SECRET_ARN"),
    ("REQUEST_ID_SECRET", "REQUEST_ID_SECRET_ARN"),
];

/// The settings read from Secrets Manager, by variable name.
#[derive(Clone, Default)]
pub struct SecretOverlay {
    values: HashMap<&'static str, Secret>,
}

impl fmt::Debug for SecretOverlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.values.keys().collect();
        names.sort();
        f.debug_struct("SecretOverlay")
            .field("settings", &names)
            .finish()
    }
}

impl SecretOverlay {
    /// Reads the secret of every `<NAME>_SECRET_ARN` that `lookup` has set
    /// (unset or blank: not read), one `GetSecretValue` each.
    pub async fn load(
        client: &Client,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut values = HashMap::new();
        for (name, arn_var) in SECRET_SETTINGS {
            let Some(arn) = lookup(arn_var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
            else {
                continue;
            };
            // The SDK's error names the operation, the secret and the
            // service's reason (not found, access denied); never a value.
            let out = client
                .get_secret_value()
                .secret_id(&arn)
                .send()
                .await
                .map_err(|e| ConfigError {
                    var: arn_var,
                    problem: format!(
                        "cannot read secret {arn} for {name}: {}",
                        DisplayErrorContext(&e)
                    ),
                })?;
            let value = out.secret_string().ok_or_else(|| ConfigError {
                var: arn_var,
                problem: format!(
                    "secret {arn} for {name} has no SecretString (binary secrets are not read)"
                ),
            })?;
            values.insert(name, Secret::new(value));
        }
        Ok(Self { values })
    }

    /// Names of the settings this overlay holds.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.values.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// `lookup`, with the settings read from secrets in place of the
    /// variables of the same name.
    pub fn over<'a>(
        &'a self,
        lookup: impl Fn(&str) -> Option<String> + 'a,
    ) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| match self.values.get(name) {
            Some(secret) => Some(secret.expose().to_owned()),
            None => lookup(name),
        }
    }
}

/// The configuration from `lookup`, with the secrets it names read first.
pub async fn config_from_lookup(
    client: &Client,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let overlay = SecretOverlay::load(client, &lookup).await?;
    if !overlay.values.is_empty() {
        tracing::info!(settings = ?overlay.names(), "settings read from Secrets Manager");
    }
    Config::from_lookup(overlay.over(lookup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_replaces_only_its_own_settings_and_hides_their_values() {
        let overlay = SecretOverlay {
            values: HashMap::from([("WEBHOOK_SECRET", Secret::new("from-the-secret"))]),
        };
        let env = |name: &str| match name {
            "WEBHOOK_SECRET" => Some("from-the-environment".to_owned()),
            "API_TOKENS" => Some("ci:plain".to_owned()),
            _ => None,
        };
        let lookup = overlay.over(env);
        assert_eq!(lookup("WEBHOOK_SECRET").as_deref(), Some("from-the-secret"));
        assert_eq!(lookup("API_TOKENS").as_deref(), Some("ci:plain"));
        assert_eq!(lookup("REQUEST_ID_SECRET"), None);
        let shown = format!("{overlay:?}");
        assert!(shown.contains("WEBHOOK_SECRET"), "{shown}");
        assert!(!shown.contains("from-the-secret"), "{shown}");
    }
}
