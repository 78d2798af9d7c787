//! The routes the homeserver calls (`/_matrix/app/v1/...`), authenticated by the `hs_token`.

mod auth;
mod queries;
mod transactions;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};

use crate::app::AppState;
use crate::error::AppError;

pub use auth::{authorization, bearer_token, tokens_match};
pub use transactions::classify;
pub(crate) use transactions::read_limited;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/_matrix/app/v1/transactions/{txn_id}", put(transactions::push_events))
        .route("/_matrix/app/v1/users/{user_id}", get(queries::query_user))
        .route("/_matrix/app/v1/rooms/{room_alias}", get(queries::query_room_alias))
        .route("/_matrix/app/v1/ping", post(queries::ping))
        .route_layer(from_fn_with_state(state, auth::require_hs_token))
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
}
