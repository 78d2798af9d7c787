//! Only the homeserver may push events: `Authorization: Bearer <hs_token>`, or the deprecated
//! `access_token` query parameter that older homeservers still send.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::AppError;

pub async fn require_hs_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let token = bearer_token(&request)
        .or_else(|| query_token(&request))
        .ok_or(AppError::MissingToken)?;
    if !tokens_match(&token, state.hs_token.expose()) {
        tracing::warn!(path = request.uri().path(), "request with a wrong hs_token refused");
        return Err(AppError::Forbidden);
    }
    Ok(next.run(request).await)
}

fn bearer_token(request: &Request) -> Option<String> {
    let header = request.headers().get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn query_token(request: &Request) -> Option<String> {
    url::form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(key, _)| key == "access_token")
        .map(|(_, value)| value.into_owned())
}

/// Compares digests so that neither the contents nor the length of the token leak through timing.
pub fn tokens_match(given: &str, expected: &str) -> bool {
    Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(expected.as_bytes()))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_value() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("", "abc"));
    }

    #[test]
    fn both_token_places_are_read() {
        let request = Request::builder()
            .uri("/x?user_id=a&access_token=q%2Bt")
            .header("Authorization", "Bearer  h-t ")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(bearer_token(&request).as_deref(), Some("h-t"));
        assert_eq!(query_token(&request).as_deref(), Some("q+t"));
    }
}
