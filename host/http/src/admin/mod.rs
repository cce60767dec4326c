//! The admin API: operating projections by name over HTTP, under `/admin`.
//!
//! Why it exists: operators (and `wallex projections …`) deploy, reload, rebuild, pause, resume,
//! roll back and delete projections on a running service. Every route needs
//! `Authorization: Bearer <WALLEX_ADMIN_TOKEN>`; with no token configured the whole API is off
//! (404). Errors are RFC 9457 problems; every action is logged and recorded in `admin_actions`
//! with who did it (`X-Wallex-Actor`, default `admin`).
//!
//! Routes:
//! - `GET /admin/projections`, `GET /admin/projections/{name}`: status.
//! - `PUT /admin/projections/{name}` (`application/wasm`, optional `Content-Digest`): deploy;
//!   `POST /admin/projections`: deploy under the name the component declares;
//!   `GET /admin/deploys/{id}`: a deploy answered `202` (see [`deploys`]).
//! - `DELETE /admin/projections/{name}[?drop_tables=true]`: stop it everywhere.
//! - `POST /admin/projections/{name}/{reload|rebuild|pause|resume|rollback}`.
//! - `DELETE /admin/projections/{name}/rebuild`: cancel a rebuild.
//! - `GET /admin/projections/{name}/dead-letters[?all=true]`, `POST …/dead-letters/replay`.
//! - `POST /admin/dry-runs[?name=&keep=&max_events=]` (`application/wasm`): a dry run of a
//!   candidate over the live log; `GET /admin/dry-runs[/{id}]`; `DELETE /admin/dry-runs/{id}`
//!   cancels it or drops its kept shadow (see [`dry_runs`]).
//! - `GET /admin/outbox/stats`, `GET /admin/actions[?projection=&limit=]`.
//!
//! The deploys that outlive their request, the dry runs and the recovery routes are submodules:
//! they share this module's state, authorisation and upload checks.

pub mod deploys;
pub mod dry_runs;
pub mod recovery;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};
use wallex_runtime::guest_text::{clip, MAX_ERROR_BYTES};

use crate::problem::Problem;
use crate::wallets::read_body_within;
use crate::wire::{
    ActionAnswer, ActionList, DeadLetterList, DeleteAnswer, OutboxStatsBody, Outcome,
    ProjectionList, ProjectionStatusBody,
};
use wallex_control::{OperationError, Projections};
use wallex_runtime::config::ProjectionSettings;
use wallex_runtime::registry;
use wallex_runtime::schema::is_projection_name;

/// Media type of a component upload.
pub const WASM_CONTENT_TYPE: &str = "application/wasm";
/// Header naming who performs an admin action (recorded in the audit trail).
pub const ACTOR_HEADER: &str = "x-wallex-actor";
/// Longest accepted actor name.
pub const MAX_ACTOR_LEN: usize = 64;
/// Shortest accepted admin token: a guessable token is refused at start-up.
pub const MIN_TOKEN_LEN: usize = 16;
/// Most audit entries returned by one `GET /admin/actions`.
pub const MAX_ACTIONS_LISTED: i64 = 1_000;

/// Shared state of the admin routes.
#[derive(Clone)]
pub struct AdminState {
    /// The projections the admin routes operate on.
    pub projections: Projections,
    /// The recovery service (`/admin/recovery`), when this server runs one.
    pub recovery: Option<wallex_control::recovery::Recovery>,
    /// SHA-256 of the configured token (`None`: admin is off).
    token_digest: Option<[u8; 32]>,
    /// The deploys this instance ran recently (`GET /admin/deploys/{id}`).
    pub(crate) deploys: deploys::Deploys,
    /// The server's request timeout: a deploy request answers `202` before it.
    pub(crate) request_timeout: std::time::Duration,
}

impl AdminState {
    /// The admin state; `token` is the bearer token every `/admin` request must carry (`None`
    /// turns the admin API off: 404).
    pub fn new(
        projections: Projections,
        recovery: Option<wallex_control::recovery::Recovery>,
        token: Option<&str>,
    ) -> Self {
        Self {
            projections,
            recovery,
            token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            deploys: deploys::Deploys::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The state with the server's request timeout (a deploy request answers `202 Accepted`
    /// before it; see [`deploys`]).
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// The request timeout assumed until [`AdminState::with_request_timeout`] gives the server's.
const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The `/admin` routes.
pub fn router<S: Clone + Send + Sync + 'static>(state: AdminState) -> Router<S> {
    Router::new()
        .route("/admin/projections", get(list).post(deploy_unnamed))
        .route("/admin/deploys/{id}", get(deploys::status))
        .route(
            "/admin/projections/{name}",
            get(status).put(deploy).delete(delete),
        )
        .route(
            "/admin/projections/{name}/rebuild",
            post(rebuild).delete(cancel_rebuild),
        )
        .route("/admin/projections/{name}/{action}", post(action))
        .route("/admin/projections/{name}/dead-letters", get(dead_letters))
        .route(
            "/admin/projections/{name}/dead-letters/replay",
            post(replay_dead_letters),
        )
        .route("/admin/dry-runs", get(dry_runs::list).post(dry_runs::start))
        .route(
            "/admin/dry-runs/{id}",
            get(dry_runs::get).delete(dry_runs::discard),
        )
        .route("/admin/outbox/stats", get(outbox_stats))
        .route("/admin/actions", get(actions))
        .route("/admin/recovery", get(recovery::status))
        .route(
            "/admin/recovery/read-model-check",
            post(recovery::check_read_model),
        )
        .route("/admin/recovery/runs/{id}", get(recovery::run))
        .route("/admin/recovery/drift/{name}", post(recovery::drift))
        .route("/admin/recovery/repair/{name}", post(recovery::repair))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// Who is acting: `X-Wallex-Actor` if printable and short, else `admin`.
pub(crate) fn actor(headers: &HeaderMap) -> String {
    headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|a| {
            !a.is_empty()
                && a.len() <= MAX_ACTOR_LEN
                && a.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        })
        .map(|a| format!("admin:{a}"))
        .unwrap_or_else(|| "admin".to_owned())
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.token_digest else {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "admin-disabled",
            "Admin API disabled",
            "Set WALLEX_ADMIN_TOKEN to enable the admin API.",
        )
        .into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| -> [u8; 32] { Sha256::digest(token.trim().as_bytes()).into() });
    // Comparing fixed-size digests byte by byte without an early exit: no timing hint.
    let authorized = presented.is_some_and(|digest| {
        digest
            .iter()
            .zip(expected.iter())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    });
    if !authorized {
        tracing::warn!(
            method = %request.method(),
            path = %request.uri().path(),
            "admin request refused: missing or wrong token"
        );
        let mut response = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "A valid `Authorization: Bearer <WALLEX_ADMIN_TOKEN>` header is required.",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// Maps an operation's error onto the API's problems. The detail is clipped: an operation's error
/// can quote what a component declared.
pub(crate) fn problem(error: OperationError) -> Problem {
    let detail = || clip(&error.to_string(), MAX_ERROR_BYTES);
    match &error {
        OperationError::TooLarge { .. } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "component-too-large",
            "Component too large",
            detail(),
        ),
        e if e.is_invalid_component() => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-component",
            "Invalid component",
            detail(),
        ),
        OperationError::MemoryLimit { .. } => Problem::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "component-memory-exceeded",
            "Compiled components over their memory limit",
            detail(),
        ),
        OperationError::NotFound(_) => Problem::not_found(detail()),
        OperationError::Conflict(_) => Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "Conflicting operation",
            detail(),
        ),
        OperationError::Database(e) => Problem::from_sqlx(e),
        _ => Problem::internal(&error),
    }
}

fn bad_request(slug: &'static str, title: &'static str, detail: String) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, slug, title, detail)
}

pub(crate) fn check_name(name: &str) -> Result<(), Problem> {
    if is_projection_name(name) {
        Ok(())
    } else {
        Err(bad_request(
            "invalid-projection-name",
            "Invalid projection name",
            format!("{name:?} is not a projection name ([a-z][a-z0-9_-], at most 41 characters)"),
        ))
    }
}

async fn list(State(state): State<AdminState>) -> Result<Json<ProjectionList>, Problem> {
    let items = state.projections.admin_list().await.map_err(problem)?;
    Ok(Json(ProjectionList {
        projections: items.into_iter().map(Into::into).collect(),
    }))
}

async fn status(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<ProjectionStatusBody>, Problem> {
    check_name(&name)?;
    Ok(Json(
        state
            .projections
            .admin_status(&name)
            .await
            .map_err(problem)?
            .into(),
    ))
}

/// Records an admin action's outcome, logs it and answers with the projection's new status.
async fn done(
    state: &AdminState,
    actor: &str,
    action: &str,
    name: &str,
    result: Result<Outcome, OperationError>,
) -> Result<Response, Problem> {
    settle(state, actor, action, Some(name), result)
        .await
        .map(|answer| Json(answer).into_response())
}

/// [`done`] as a typed answer; `name` is `None` for a deploy whose component never said its
/// name.
pub(crate) async fn settle(
    state: &AdminState,
    actor: &str,
    action: &str,
    name: Option<&str>,
    result: Result<Outcome, OperationError>,
) -> Result<ActionAnswer, Problem> {
    match (result, name) {
        (Ok(outcome), Some(name)) => {
            tracing::info!(actor, action, projection = name, ?outcome, "admin action");
            let status = state
                .projections
                .admin_status(name)
                .await
                .map_err(problem)?;
            Ok(ActionAnswer {
                outcome,
                projection: status.into(),
            })
        }
        (Ok(_), None) => Err(Problem::internal(
            &"an admin action succeeded on no projection",
        )),
        (Err(error), name) => {
            tracing::warn!(actor, action, projection = name, %error, "admin action refused");
            let recorded = match state.projections.pool().acquire().await {
                Ok(mut conn) => {
                    registry::record_action(
                        &mut conn,
                        actor,
                        action,
                        name,
                        "refused",
                        &json!({ "error": clip(&error.to_string(), MAX_ERROR_BYTES) }),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "cannot record the refused admin action");
            }
            Err(problem(error))
        }
    }
}
async fn deploy(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    settings: Result<Query<ProjectionSettings>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    // The request's budget runs from here: reading a large body counts against it.
    let arrived = std::time::Instant::now();
    check_name(&name)?;
    let upload = upload(&state, Some(name), settings, &headers, body).await?;
    Ok(deploys::start(state, upload, &headers, arrived).await)
}

/// `POST /admin/projections`: a deploy under the name the component declares (so a client need
/// not run the component to learn it).
async fn deploy_unnamed(
    State(state): State<AdminState>,
    settings: Result<Query<ProjectionSettings>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let arrived = std::time::Instant::now();
    let upload = upload(&state, None, settings, &headers, body).await?;
    Ok(deploys::start(state, upload, &headers, arrived).await)
}

/// The cheap checks of a deploy request (settings, media type, size, digest), before anything
/// is compiled.
async fn upload(
    state: &AdminState,
    name: Option<String>,
    settings: Result<Query<ProjectionSettings>, QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<deploys::Upload, Problem> {
    let settings = settings
        .map_err(|rejection| {
            bad_request(
                "invalid-settings",
                "Invalid deploy settings",
                format!(
                    "{} (keys: on_poison=pause|skip, memory_mib, call_timeout_ms, fuel, max_mutations, max_batch_bytes, log_lines, log_bytes)",
                    rejection.body_text()
                ),
            )
        })?
        .0;
    let settings = (!settings.is_empty()).then_some(settings);
    let bytes = read_component(state, headers, body).await?;
    Ok(deploys::Upload {
        name,
        bytes,
        settings,
    })
}

/// A component upload's body, checked: media type, size, `Content-Digest`.
pub(crate) async fn read_component(
    state: &AdminState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !content_type.is_some_and(|t| t.eq_ignore_ascii_case(WASM_CONTENT_TYPE)) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            format!("A component upload must be sent as {WASM_CONTENT_TYPE}."),
        ));
    }
    let limit = state.projections.config().max_component_bytes;
    let bytes = read_body_within(headers, body, limit, || {
        problem(OperationError::TooLarge {
            size: limit.saturating_add(1),
            limit,
        })
    })
    .await?;
    if let Some(digest) = headers.get("content-digest") {
        verify_digest(digest, &bytes)?;
    }
    Ok(Vec::from(bytes))
}

/// Verifies an RFC 9530 `Content-Digest` (`sha-256` or `sha-512`; other algorithms are ignored,
/// but at least one known one must be present).
fn verify_digest(header_value: &HeaderValue, body: &[u8]) -> Result<(), Problem> {
    let invalid = |detail: String| bad_request("invalid-digest", "Invalid Content-Digest", detail);
    let text = header_value
        .to_str()
        .map_err(|_| invalid("Content-Digest is not ASCII".to_owned()))?;
    let mut checked = false;
    for member in text.split(',') {
        let Some((algorithm, value)) = member.trim().split_once('=') else {
            return Err(invalid(format!(
                "malformed Content-Digest member {member:?}"
            )));
        };
        let algorithm = algorithm.trim().to_ascii_lowercase();
        let computed: Vec<u8> = match algorithm.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let encoded = value
            .trim()
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .ok_or_else(|| invalid(format!("{algorithm} must be a byte sequence (:base64:)")))?;
        let expected = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| invalid(format!("{algorithm} is not valid base64")))?;
        if expected != computed {
            return Err(bad_request(
                "digest-mismatch",
                "Content-Digest mismatch",
                format!("the body's {algorithm} digest does not match Content-Digest"),
            ));
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(invalid(
            "Content-Digest has no sha-256 or sha-512 member".to_owned(),
        ))
    }
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    drop_tables: bool,
}

async fn delete(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    check_name(&name)?;
    let actor = actor(&headers);
    let result = state
        .projections
        .delete(&name, query.drop_tables, &actor)
        .await;
    match result {
        Ok(()) => {
            tracing::info!(actor, projection = %name, drop_tables = query.drop_tables, "projection deleted");
            Ok(Json(DeleteAnswer {
                outcome: "deleted".to_owned(),
                drop_tables: query.drop_tables,
            })
            .into_response())
        }
        Err(error) => done(&state, &actor, "delete", &name, Err(error)).await,
    }
}

async fn rebuild(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    check_name(&name)?;
    let actor = actor(&headers);
    let result = state
        .projections
        .rebuild(&name, &actor)
        .await
        .map(Outcome::from);
    done(&state, &actor, "rebuild", &name, result).await
}

async fn cancel_rebuild(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    check_name(&name)?;
    let actor = actor(&headers);
    let result = state
        .projections
        .cancel_rebuild(&name, &actor)
        .await
        .map(|()| Outcome::Done("rebuild-cancelled".to_owned()));
    done(&state, &actor, "cancel-rebuild", &name, result).await
}

async fn action(
    State(state): State<AdminState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    check_name(&name)?;
    let actor = actor(&headers);
    let projections = &state.projections;
    let result = match action.as_str() {
        "reload" => projections
            .reload(&name, &actor)
            .await
            .map(|()| Outcome::Done("reloaded".to_owned())),
        "pause" => projections
            .set_paused(&name, true, &actor)
            .await
            .map(|()| Outcome::Done("paused".to_owned())),
        "resume" => projections
            .set_paused(&name, false, &actor)
            .await
            .map(|()| Outcome::Done("resumed".to_owned())),
        "rollback" => projections.rollback(&name, &actor).await.map(Outcome::from),
        other => {
            return Err(Problem::not_found(format!(
                "no admin action {other:?} (reload, rebuild, pause, resume, rollback)"
            )))
        }
    };
    done(&state, &actor, &action, &name, result).await
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    #[serde(default)]
    all: bool,
}

async fn dead_letters(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<DeadLetterList>, Problem> {
    check_name(&name)?;
    let letters = state
        .projections
        .dead_letters(&name, query.all)
        .await
        .map_err(problem)?;
    Ok(Json(DeadLetterList {
        dead_letters: letters.into_iter().map(Into::into).collect(),
    }))
}

async fn replay_dead_letters(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    check_name(&name)?;
    let actor = actor(&headers);
    let result = state
        .projections
        .replay_dead_letters(&name, &actor)
        .await
        .map(|outcome| Outcome::Replay(outcome.into()));
    done(&state, &actor, "replay-dead-letters", &name, result).await
}

async fn outbox_stats(State(state): State<AdminState>) -> Result<Json<OutboxStatsBody>, Problem> {
    Ok(Json(
        state
            .projections
            .outbox_stats()
            .await
            .map_err(problem)?
            .into(),
    ))
}

#[derive(Debug, Deserialize)]
struct ActionsQuery {
    projection: Option<String>,
    limit: Option<i64>,
}

async fn actions(
    State(state): State<AdminState>,
    Query(query): Query<ActionsQuery>,
) -> Result<Json<ActionList>, Problem> {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_ACTIONS_LISTED);
    let actions =
        registry::recent_actions(state.projections.pool(), query.projection.as_deref(), limit)
            .await
            .map_err(|e| Problem::from_sqlx(&e))?;
    Ok(Json(ActionList {
        actions: actions.into_iter().map(Into::into).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_header(algorithm: &str, bytes: &[u8]) -> HeaderValue {
        let digest = match algorithm {
            "sha-256" => Sha256::digest(bytes).to_vec(),
            _ => Sha512::digest(bytes).to_vec(),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
        HeaderValue::from_str(&format!("{algorithm}=:{encoded}:")).expect("header")
    }

    #[test]
    fn content_digest_is_verified() {
        let body = b"component bytes";
        assert!(verify_digest(&digest_header("sha-256", body), body).is_ok());
        assert!(verify_digest(&digest_header("sha-512", body), body).is_ok());
        let mismatch = verify_digest(&digest_header("sha-256", b"other"), body).unwrap_err();
        assert_eq!(mismatch.slug, "digest-mismatch");
        let unknown = verify_digest(&HeaderValue::from_static("md5=:AAAA:"), body).unwrap_err();
        assert_eq!(unknown.slug, "invalid-digest");
        let malformed = verify_digest(&HeaderValue::from_static("sha-256=abc"), body).unwrap_err();
        assert_eq!(malformed.slug, "invalid-digest");
    }

    #[test]
    fn actor_is_sanitised() {
        let mut headers = HeaderMap::new();
        assert_eq!(actor(&headers), "admin");
        headers.insert(ACTOR_HEADER, HeaderValue::from_static("alice"));
        assert_eq!(actor(&headers), "admin:alice");
        headers.insert(ACTOR_HEADER, HeaderValue::from_static("x\ty"));
        assert_eq!(actor(&headers), "admin");
    }
}
