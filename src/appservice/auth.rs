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
    let token = bearer_token(request.headers())
        .map(str::to_owned)
        .or_else(|| query_token(&request))
        .ok_or(AppError::MissingToken)?;
    if !tokens_match(&token, state.hs_token.expose()) {
        tracing::warn!(path = request.uri().path(), "request with a wrong hs_token refused");
        return Err(AppError::Forbidden);
    }
    Ok(next.run(request).await)
}

/// The `Authorization` header's value, if it is text.
pub fn authorization(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(http::header::AUTHORIZATION)?.to_str().ok()
}

/// The token of `Authorization: Bearer <token>`, the one reading of that header for every route.
/// Schemes are case-insensitive (RFC 9110), so `bearer` counts too.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let (scheme, token) = authorization(headers)?.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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
        assert_eq!(bearer_token(request.headers()), Some("h-t"));
        assert_eq!(query_token(&request).as_deref(), Some("q+t"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t", "bearer t", "BEARER t", "bEaReR   t "] {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, header.parse().unwrap());
            assert_eq!(bearer_token(&headers), Some("t"), "{header}");
        }
        let mut basic = http::HeaderMap::new();
        basic.insert(http::header::AUTHORIZATION, "Basic t".parse().unwrap());
        assert_eq!(bearer_token(&basic), None);
    }
}
