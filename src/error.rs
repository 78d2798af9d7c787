//! The two error types: `AppError` for the HTTP side, where every failure becomes Matrix error
//! JSON built with ruma's error types so the shape is the spec's; `WorkError` for the background
//! workers (sync, relay, history import), which share their failures.

use axum::extract::FromRequestParts;
use axum::extract::rejection::PathRejection;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use ruma::api::{
    OutgoingResponseExt,
    error::{Error as RumaError, ErrorBody, ErrorKind, StandardErrorBody},
};

use crate::letta::LettaError;
use crate::matrix::MatrixError;
use crate::store::StoreError;
use crate::tools::{Refusal, ToolError};

/// What stops a piece of background work (a sync pass, a relay turn, a history import): the
/// worker logs it and tries again later, or tells the room.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("Letta: {0}")]
    Letta(#[from] LettaError),
    #[error("homeserver: {0}")]
    Matrix(#[from] MatrixError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("another worker took over this work")]
    LeaseLost,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no access token was given")]
    MissingToken,
    #[error("the access token is not the homeserver's token")]
    Forbidden,
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is JSON but not what this endpoint takes: {0}")]
    BadJson(String),
    #[error("the body is larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("the body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(std::time::Duration),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    NotFound(String),
    #[error("unrecognized request")]
    Unrecognized,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Credentials(#[from] Refusal),
    #[error(transparent)]
    Tool(#[from] ToolError),
}

impl AppError {
    fn status_and_kind(&self) -> (StatusCode, ErrorKind) {
        match self {
            Self::MissingToken => (StatusCode::UNAUTHORIZED, ErrorKind::MissingToken),
            Self::Forbidden => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
            Self::NotJson(_) => (StatusCode::BAD_REQUEST, ErrorKind::NotJson),
            Self::BadJson(_) => (StatusCode::BAD_REQUEST, ErrorKind::BadJson),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge),
            Self::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorKind::Unknown),
            Self::InvalidParam(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidParam),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
            Self::Unrecognized => (StatusCode::NOT_FOUND, ErrorKind::Unrecognized),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, ErrorKind::Unrecognized),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown),
            Self::Credentials(Refusal::WrongToken) => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
            Self::Credentials(_) => (StatusCode::UNAUTHORIZED, ErrorKind::MissingToken),
            Self::Tool(ToolError::Unknown(_)) => (StatusCode::NOT_FOUND, ErrorKind::Unrecognized),
            Self::Tool(ToolError::Invalid(_)) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidParam),
            Self::Tool(ToolError::Refused(_)) => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
            // The homeserver or the database failed: the caller may try again.
            Self::Tool(ToolError::Failed(_)) => (StatusCode::BAD_GATEWAY, ErrorKind::Unknown),
        }
    }
}

/// axum's `Path`, refusing an undecodable segment (`%FF`) with Matrix error JSON, not plain text.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct PathParam<T>(pub T);

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        Self::InvalidParam(rejection.body_text())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        let message = match &self {
            Self::Store(e) => {
                // The homeserver retries a failed transaction, so nothing is lost; the operator
                // needs the cause, the caller does not.
                tracing::error!(error = %e, "request failed on the database");
                "internal error; the request may be retried".to_owned()
            }
            other => other.to_string(),
        };
        let error = RumaError::new(status, ErrorBody::Standard(StandardErrorBody::new(kind, message)));
        match error.try_into_http_response::<Vec<u8>>() {
            Ok(response) => response.map(axum::body::Body::from).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise an error response");
                status.into_response()
            }
        }
    }
}
