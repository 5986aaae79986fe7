//! How an AWS SDK failure becomes a [`PortError`]: the services only need
//! to know whether trying again can help.

use std::error::Error as StdError;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::ports::PortError;

/// Error codes that say "not now" rather than "never", across DynamoDB, SQS and S3.
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionConflictException",
    "TransactionInProgressException",
    "InternalServerError",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "KMS.ThrottlingException",
];

/// Classifies `err` from the call named `what`.
pub(crate) fn port_error<E, R>(what: &str, err: SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let transient = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            TRANSIENT_CODES.contains(&code)
        }
        _ => false,
    };
    let message = format!("{what}: {}", DisplayErrorContext(&err));
    if transient {
        PortError::Transient(message)
    } else {
        PortError::Permanent(message)
    }
}

/// True when a service answered with this error code (e.g. a failed condition).
pub(crate) fn has_code<E, R>(err: &SdkError<E, R>, code: &str) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(err, SdkError::ServiceError(service) if service.err().code() == Some(code))
}
