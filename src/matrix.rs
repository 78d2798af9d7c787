//! Outbound client-server calls, as the appservice bot or as a ghost (identity assertion with
//! `?user_id=`). Requests and responses are ruma's types; reqwest only carries the bytes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use ruma::api::{
    AppserviceUserIdentity, IncomingResponseExt, OutgoingRequest, OutgoingRequestAppserviceExt, SupportedVersions,
    auth_scheme::{AuthScheme, SendAccessToken},
    client::{
        account::{
            register::{self, LoginType},
            whoami,
        },
        alias::get_alias,
        appservice::request_ping,
        discovery::{get_capabilities, get_supported_versions},
        membership::{invite_user, join_room_by_id_or_alias, joined_members, joined_rooms, leave_room},
        message::{get_message_events, send_message_event},
        profile::set_profile_field,
        receipt::create_receipt,
        room::create_room,
        state::{get_state_event_for_key, send_state_event},
        typing::create_typing_event::{
            self,
            v3::{Typing, TypingInfo},
        },
        uiaa::UiaaResponse,
    },
    error::{Error as RumaError, ErrorKind, FromHttpResponseError, IntoHttpError},
    path_builder::{PathBuilder, SinglePath, VersionHistory},
};
use ruma::events::{MessageLikeEventContent, StateEventContent, StateEventType};
use ruma::profile::ProfileFieldValue;
use ruma::{
    EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedRoomOrAliasId, OwnedTransactionId, RoomId, UserId,
};

use crate::config::Secret;
pub use crate::outbound::RetryPolicy;

/// Whether rooms of `version` privilege their creators (room version 12 on): creators then outrank
/// every power level and may not be listed in them. Versions newer than this build knows are taken to.
pub fn creators_outrank_levels(version: &ruma::RoomVersionId) -> bool {
    version
        .rules()
        .is_none_or(|rules| rules.authorization.explicitly_privilege_room_creators)
}

/// Every stable client-server endpoint we call exists since v1.1; claiming a version lets ruma
/// pick stable paths without a `/versions` round trip at start.
const ASSUMED_SPEC_VERSION: &str = "v1.11";

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("cannot reach the homeserver: {0}")]
    Transport(String),
    #[error("the homeserver refused: {0}")]
    Api(RumaError),
    #[error("the homeserver asked for interactive authentication, which appservices cannot do")]
    InteractiveAuth,
    #[error("the homeserver's response cannot be read: {0}")]
    Response(String),
    #[error("cannot build the request: {0}")]
    Request(#[from] IntoHttpError),
}

impl MatrixError {
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Api(error) => error.error_kind(),
            _ => None,
        }
    }

    /// The homeserver's refusal because the user is in (or invited to) the room already, which is
    /// what an invite wanted anyway.
    pub fn is_already_in_room(&self) -> bool {
        match self {
            Self::Api(error) => {
                matches!(error.error_kind(), Some(ErrorKind::Forbidden)) && error.to_string().contains(" already ")
            }
            _ => false,
        }
    }

    pub fn status(&self) -> Option<http::StatusCode> {
        match self {
            Self::Api(error) => Some(error.status_code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (the homeserver unreachable, failing or busy).
    pub fn is_transient(&self) -> bool {
        self.retry_delay().is_some()
    }

    /// How long to wait before trying again, or `None` when trying again cannot help.
    fn retry_delay(&self) -> Option<Option<Duration>> {
        match self {
            Self::Transport(_) => Some(None),
            Self::Api(error) => match error.error_kind() {
                Some(ErrorKind::LimitExceeded(data)) => Some(data.retry_after.as_ref().map(|after| match after {
                    ruma::api::error::RetryAfter::Delay(delay) => *delay,
                    ruma::api::error::RetryAfter::DateTime(at) => {
                        at.duration_since(std::time::SystemTime::now()).unwrap_or_default()
                    }
                })),
                _ if error.status_code.is_server_error() => Some(None),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Endpoint errors come in two shapes (plain, and the registration's UIAA one); both hold a
/// standard Matrix error when the homeserver refuses an appservice.
pub trait IntoMatrixError {
    fn into_matrix_error(self) -> MatrixError;
}

impl IntoMatrixError for RumaError {
    fn into_matrix_error(self) -> MatrixError {
        MatrixError::Api(self)
    }
}

impl IntoMatrixError for UiaaResponse {
    fn into_matrix_error(self) -> MatrixError {
        match self {
            UiaaResponse::MatrixError(error) => MatrixError::Api(error),
            _ => MatrixError::InteractiveAuth,
        }
    }
}

/// Gives each kind of endpoint path the input it needs to choose its URL.
pub trait PathInput: PathBuilder {
    fn input(versions: &SupportedVersions) -> Self::Input<'_>;
}

impl PathInput for VersionHistory {
    fn input(versions: &SupportedVersions) -> Self::Input<'_> {
        Cow::Borrowed(versions)
    }
}

impl PathInput for SinglePath {
    fn input(_: &SupportedVersions) -> Self::Input<'_> {}
}

#[derive(Debug, Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    homeserver: String,
    as_token: Secret,
    versions: SupportedVersions,
    retry: RetryPolicy,
}

impl MatrixClient {
    pub fn new(homeserver_url: &url::Url, as_token: Secret) -> Self {
        let http = crate::outbound::http_client(Duration::from_secs(60));
        let versions = SupportedVersions::from_parts(&[ASSUMED_SPEC_VERSION.to_owned()], &BTreeMap::new());
        Self {
            http,
            homeserver: homeserver_url.as_str().trim_end_matches('/').to_owned(),
            as_token,
            versions,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sends `request` as `as_user` (the bot when `None`), retrying transport failures, 5xx and
    /// rate limits. Callers make retries safe: every event send carries a caller-chosen txn id.
    pub async fn send<R>(&self, request: R, as_user: Option<&UserId>) -> Result<R::IncomingResponse, MatrixError>
    where
        R: OutgoingRequest,
        R::EndpointError: IntoMatrixError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let mut attempt = 0;
        loop {
            let error = match self.send_once(request.clone(), as_user).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            attempt += 1;
            let Some(delay) = error.retry_delay().filter(|_| attempt < self.retry.attempts) else {
                return Err(error);
            };
            let delay = delay
                .unwrap_or_else(|| self.retry.delay(attempt))
                .min(self.retry.max_delay * 6);
            tracing::warn!(%error, attempt, delay_ms = delay.as_millis() as u64, endpoint = R::PATH_BUILDER.select_path(R::PathBuilder::input(&self.versions)).unwrap_or("?"), "homeserver call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_once<R>(&self, request: R, as_user: Option<&UserId>) -> Result<R::IncomingResponse, MatrixError>
    where
        R: OutgoingRequest,
        R::EndpointError: IntoMatrixError,
        R::PathBuilder: PathInput,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let identity = as_user.map(AppserviceUserIdentity::new).unwrap_or_default();
        let http_request = request.try_into_http_request_with_identity::<Vec<u8>>(
            &self.homeserver,
            SendAccessToken::Appservice(self.as_token.expose()),
            identity,
            R::PathBuilder::input(&self.versions),
        )?;
        let request = reqwest::Request::try_from(http_request).map_err(|e| MatrixError::Transport(e.to_string()))?;
        metrics::counter!("letta_matrix_homeserver_requests_total").increment(1);
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| MatrixError::Transport(without_url(e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| MatrixError::Transport(without_url(e)))?;
        let mut http_response = http::Response::builder().status(status);
        if let Some(all) = http_response.headers_mut() {
            *all = headers;
        }
        let http_response = http_response
            .body(body.as_ref())
            .map_err(|e| MatrixError::Response(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(http_response).map_err(|error| match error {
            FromHttpResponseError::Server(error) => error.into_matrix_error(),
            other => MatrixError::Response(other.to_string()),
        })
    }

    /// Registers a ghost; one that exists already is what we wanted.
    pub async fn register_ghost(&self, localpart: &str) -> Result<(), MatrixError> {
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.to_owned());
        request.inhibit_login = true;
        request.login_type = Some(LoginType::ApplicationService);
        match self.send(request, None).await {
            Ok(_) => Ok(()),
            Err(error) if matches!(error.kind(), Some(ErrorKind::UserInUse)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub async fn join(&self, room: OwnedRoomOrAliasId, as_user: &UserId) -> Result<OwnedRoomId, MatrixError> {
        let response = self
            .send(join_room_by_id_or_alias::v3::Request::new(room), Some(as_user))
            .await?;
        Ok(response.room_id)
    }

    /// Invites `user_id`; one who is in (or invited to) the room already counts as invited.
    pub async fn ensure_invited(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        as_user: Option<&UserId>,
    ) -> Result<(), MatrixError> {
        match self.invite(room_id, user_id, as_user).await {
            Err(error) if !error.is_already_in_room() => Err(error),
            _ => Ok(()),
        }
    }

    pub async fn invite(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        as_user: Option<&UserId>,
    ) -> Result<(), MatrixError> {
        let request = invite_user::v3::Request::new(
            room_id.to_owned(),
            invite_user::v3::InvitationRecipient::UserId(invite_user::v3::InviteUserId::new(user_id.to_owned())),
        );
        self.send(request, as_user).await.map(drop)
    }

    pub async fn create_room(
        &self,
        request: create_room::v3::Request,
        as_user: Option<&UserId>,
    ) -> Result<OwnedRoomId, MatrixError> {
        Ok(self.send(request, as_user).await?.room_id)
    }

    /// Sends a message event under a txn id the caller derives from its cause, so a retry (ours or
    /// after a crash) is deduplicated by the homeserver.
    pub async fn send_message<C>(
        &self,
        room_id: &RoomId,
        txn_id: OwnedTransactionId,
        content: &C,
        as_user: Option<&UserId>,
    ) -> Result<OwnedEventId, MatrixError>
    where
        C: MessageLikeEventContent,
    {
        let request = send_message_event::v3::Request::new(room_id.to_owned(), txn_id, content)
            .map_err(|e| MatrixError::Request(IntoHttpError::Json(e)))?;
        Ok(self.send(request, as_user).await?.event_id)
    }

    /// Sends an `m.room.message` whose content is any JSON (our own keys beside the spec's), at
    /// `timestamp` when given (appservice timestamp massaging, for imported history).
    pub async fn send_raw_message(
        &self,
        room_id: &RoomId,
        txn_id: OwnedTransactionId,
        content: &serde_json::Value,
        as_user: &UserId,
        timestamp: Option<ruma::MilliSecondsSinceUnixEpoch>,
    ) -> Result<OwnedEventId, MatrixError> {
        let body = ruma::serde::Raw::from_json(
            serde_json::value::to_raw_value(content).map_err(|e| MatrixError::Request(IntoHttpError::Json(e)))?,
        );
        let mut request = send_message_event::v3::Request::new_raw(
            room_id.to_owned(),
            txn_id,
            ruma::events::MessageLikeEventType::RoomMessage,
            body,
        );
        request.timestamp = timestamp;
        Ok(self.send(request, Some(as_user)).await?.event_id)
    }

    pub async fn send_state<C, K>(
        &self,
        room_id: &RoomId,
        state_key: &K,
        content: &C,
        as_user: Option<&UserId>,
    ) -> Result<OwnedEventId, MatrixError>
    where
        C: StateEventContent,
        C::StateKey: std::borrow::Borrow<K>,
        K: AsRef<str> + ?Sized,
    {
        let request = send_state_event::v3::Request::new(room_id.to_owned(), state_key, content)
            .map_err(|e| MatrixError::Request(IntoHttpError::Json(e)))?;
        Ok(self.send(request, as_user).await?.event_id)
    }

    /// Sends a state event whose content is JSON read from the room, changed and sent back (e.g.
    /// power levels, whose typed form depends on the room version).
    pub async fn send_raw_state(
        &self,
        room_id: &RoomId,
        event_type: StateEventType,
        state_key: &str,
        content: &serde_json::Value,
        as_user: &UserId,
    ) -> Result<OwnedEventId, MatrixError> {
        let body = ruma::serde::Raw::from_json(
            serde_json::value::to_raw_value(content).map_err(|e| MatrixError::Request(IntoHttpError::Json(e)))?,
        );
        let request =
            send_state_event::v3::Request::new_raw(room_id.to_owned(), event_type, state_key.to_owned(), body);
        Ok(self.send(request, Some(as_user)).await?.event_id)
    }

    pub async fn set_display_name(&self, user_id: &UserId, name: &str) -> Result<(), MatrixError> {
        let request =
            set_profile_field::v3::Request::new(user_id.to_owned(), ProfileFieldValue::DisplayName(name.to_owned()));
        self.send(request, Some(user_id)).await.map(drop)
    }

    /// The room an alias points at, or `None` when the alias does not exist.
    pub async fn resolve_alias(&self, alias: &OwnedRoomAliasId) -> Result<Option<OwnedRoomId>, MatrixError> {
        match self.send(get_alias::v3::Request::new(alias.clone()), None).await {
            Ok(response) => Ok(Some(response.room_id)),
            Err(error) if matches!(error.kind(), Some(ErrorKind::NotFound)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Leaves a room; not being in it (any more) is the same outcome.
    pub async fn leave(&self, room_id: &RoomId, as_user: &UserId) -> Result<(), MatrixError> {
        match self
            .send(leave_room::v3::Request::new(room_id.to_owned()), Some(as_user))
            .await
        {
            Ok(_) => Ok(()),
            Err(error)
                if error.status() == Some(http::StatusCode::FORBIDDEN)
                    || matches!(error.kind(), Some(ErrorKind::NotFound)) =>
            {
                tracing::debug!(%error, %room_id, user = %as_user, "leave: not in the room");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Shows `user` typing for `timeout`, or stops showing it with `None`.
    pub async fn typing(&self, room_id: &RoomId, user: &UserId, timeout: Option<Duration>) -> Result<(), MatrixError> {
        let state = match timeout {
            Some(timeout) => Typing::Yes(TypingInfo::new(timeout)),
            None => Typing::No,
        };
        let request = create_typing_event::v3::Request::new(user.to_owned(), room_id.to_owned(), state);
        self.send(request, Some(user)).await.map(drop)
    }

    pub async fn read_receipt(&self, room_id: &RoomId, event_id: &EventId, user: &UserId) -> Result<(), MatrixError> {
        let request = create_receipt::v3::Request::new(
            room_id.to_owned(),
            create_receipt::v3::ReceiptType::Read,
            event_id.to_owned(),
        );
        self.send(request, Some(user)).await.map(drop)
    }

    /// A member's display name in a room, read as `as_user` (who must be in the room).
    pub async fn display_name(
        &self,
        room_id: &RoomId,
        member: &UserId,
        as_user: &UserId,
    ) -> Result<Option<String>, MatrixError> {
        let request = get_state_event_for_key::v3::Request::new(
            room_id.to_owned(),
            StateEventType::RoomMember,
            member.as_str().to_owned(),
        );
        let response = self.send(request, Some(as_user)).await?;
        let content: serde_json::Value =
            serde_json::from_str(response.event_or_content.get()).map_err(|e| MatrixError::Response(e.to_string()))?;
        Ok(content["displayname"].as_str().map(str::to_owned))
    }

    /// A state event's content as JSON, or `None` when the room has no such state.
    pub async fn state_content(
        &self,
        room_id: &RoomId,
        event_type: StateEventType,
        state_key: &str,
        as_user: &UserId,
    ) -> Result<Option<serde_json::Value>, MatrixError> {
        let request = get_state_event_for_key::v3::Request::new(room_id.to_owned(), event_type, state_key.to_owned());
        match self.send(request, Some(as_user)).await {
            Ok(response) => serde_json::from_str(response.event_or_content.get())
                .map(Some)
                .map_err(|e| MatrixError::Response(e.to_string())),
            Err(error) if matches!(error.kind(), Some(ErrorKind::NotFound)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The room version the homeserver gives rooms created without one.
    pub async fn default_room_version(&self) -> Result<ruma::RoomVersionId, MatrixError> {
        let response = self.send(get_capabilities::v3::Request::new(), None).await?;
        Ok(response.capabilities.room_versions.default)
    }

    pub async fn joined_rooms(&self, as_user: &UserId) -> Result<Vec<OwnedRoomId>, MatrixError> {
        Ok(self
            .send(joined_rooms::v3::Request::new(), Some(as_user))
            .await?
            .joined_rooms)
    }

    pub async fn joined_member_count(&self, room_id: &RoomId, as_user: &UserId) -> Result<usize, MatrixError> {
        let request = joined_members::v3::Request::new(room_id.to_owned());
        Ok(self.send(request, Some(as_user)).await?.joined.len())
    }

    /// The room's latest events, newest first, as JSON.
    pub async fn recent_events(
        &self,
        room_id: &RoomId,
        limit: u32,
        as_user: &UserId,
    ) -> Result<Vec<serde_json::Value>, MatrixError> {
        let mut request = get_message_events::v3::Request::backward(room_id.to_owned());
        request.limit = limit.into();
        let response = self.send(request, Some(as_user)).await?;
        Ok(response
            .chunk
            .iter()
            .filter_map(|event| serde_json::from_str(event.json().get()).ok())
            .collect())
    }

    /// Asks the homeserver to call our `/ping`, proving the link works both ways.
    pub async fn ping(&self, appservice_id: &str) -> Result<Duration, MatrixError> {
        let mut request = request_ping::v1::Request::new(appservice_id.to_owned());
        request.transaction_id = Some(OwnedTransactionId::from(format!("check-{}", crate::store::now_ms())));
        Ok(self.send(request, None).await?.duration)
    }

    pub async fn versions(&self) -> Result<Vec<String>, MatrixError> {
        Ok(self.send(get_supported_versions::Request::new(), None).await?.versions)
    }

    /// The user the `as_token` acts as: proves the homeserver knows our registration.
    pub async fn whoami(&self) -> Result<ruma::OwnedUserId, MatrixError> {
        Ok(self.send(whoami::v3::Request::new(), None).await?.user_id)
    }
}

/// reqwest puts the full URL in its errors; the query may hold `user_id`, never a token, but a
/// short message reads better in logs.
fn without_url(error: reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "connection failed"
    } else if error.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    let mut message = kind.to_owned();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
