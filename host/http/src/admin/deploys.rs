//! Deploys that outlive their request: `PUT /admin/projections/{name}`, `POST
//! /admin/projections` and `GET /admin/deploys/{id}`.
//!
//! Why it exists: compiling a large component (a 20 MiB Python one) takes Cranelift seconds,
//! longer than a request may take. A deploy therefore runs as a background task from the moment
//! its bytes have passed the cheap checks (name, media type, size, digest, preamble): the request
//! waits for it for a short while (`Prefer: wait=N`, RFC 7240, default [`DEFAULT_DEPLOY_WAIT`],
//! never past the request timeout) and answers as before when it is done — or `202 Accepted`
//! with `Location: /admin/deploys/{id}` when it is not, and the compile and activation go on.
//! `Prefer: respond-async` alone answers `202` at once.
//!
//! The deploys of this instance are kept in memory (at most [`MAX_DEPLOYS_KEPT`], each for
//! [`DEPLOY_KEPT_FOR`] after it ended); what a deploy did is also in the audit trail
//! (`GET /admin/actions`), which every instance shares. A deploy cut short by a stopped process
//! changed nothing: activation is one transaction.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;
use wallex_control::outcome::UPLOAD_SOURCE;
use wallex_runtime::config::ProjectionSettings;
use wallex_runtime::registry;

use super::{actor, settle, AdminState};
use crate::problem::Problem;
use crate::wire::{ActionAnswer, DeployJobBody, Outcome};

/// How long a deploy request waits for its compile and activation before it answers `202`,
/// unless `Prefer: wait=N` says otherwise: long enough for a small component (tens of
/// milliseconds), short enough that a client is never left waiting on a large one.
pub const DEFAULT_DEPLOY_WAIT: Duration = Duration::from_millis(800);
/// What a deploy request keeps of the request timeout for answering after its wait.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);
/// Deploys of this instance kept for `GET /admin/deploys/{id}`.
pub const MAX_DEPLOYS_KEPT: usize = 256;
/// How long an ended deploy stays visible.
pub const DEPLOY_KEPT_FOR: Duration = Duration::from_secs(3_600);
/// `Retry-After` of a `202`: how soon polling the deploy is worth it.
const POLL_AFTER_SECS: u64 = 1;

/// What a deploy request carries once its cheap checks have passed.
pub(crate) struct Upload {
    /// The name in the URL (`None`: the name the component declares).
    pub name: Option<String>,
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// Limits and poison policy given with the deploy.
    pub settings: Option<ProjectionSettings>,
}

/// The deploys this instance ran recently.
#[derive(Clone, Default)]
pub struct Deploys {
    jobs: Arc<Mutex<VecDeque<Arc<Job>>>>,
}

struct Job {
    id: Uuid,
    name: Option<String>,
    sha256: String,
    size_bytes: u64,
    started_at: DateTime<Utc>,
    state: watch::Sender<Option<Finished>>,
}

#[derive(Clone)]
struct Finished {
    at: DateTime<Utc>,
    result: Result<ActionAnswer, Problem>,
}

impl Deploys {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Job>>> {
        match self.jobs.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn add(&self, job: Arc<Job>) {
        let mut jobs = self.lock();
        let now = Utc::now();
        let kept_for = chrono::Duration::from_std(DEPLOY_KEPT_FOR).unwrap_or(chrono::Duration::MAX);
        jobs.retain(|j| {
            j.state
                .borrow()
                .as_ref()
                .is_none_or(|finished| now - finished.at < kept_for)
        });
        while jobs.len() >= MAX_DEPLOYS_KEPT {
            // The oldest ended deploy goes first; running ones are never dropped.
            match jobs.iter().position(|j| j.state.borrow().is_some()) {
                Some(index) => {
                    jobs.remove(index);
                }
                None => break,
            }
        }
        jobs.push_back(job);
    }

    fn get(&self, id: Uuid) -> Option<Arc<Job>> {
        self.lock().iter().find(|j| j.id == id).cloned()
    }
}

impl Job {
    fn body(&self) -> DeployJobBody {
        let finished = self.state.borrow().clone();
        let (status, result, problem, finished_at, name) = match finished {
            None => ("running", None, None, None, self.name.clone()),
            Some(Finished {
                at,
                result: Ok(answer),
            }) => {
                let name = Some(answer.projection.name.clone());
                ("succeeded", Some(answer), None, Some(at), name)
            }
            Some(Finished {
                at,
                result: Err(problem),
            }) => {
                let body = serde_json::from_slice(&problem.body_bytes()).ok();
                ("failed", None, body, Some(at), self.name.clone())
            }
        };
        DeployJobBody {
            id: self.id.to_string(),
            status: status.to_owned(),
            projection: name,
            sha256: self.sha256.clone(),
            size_bytes: self.size_bytes,
            started_at: self.started_at,
            finished_at,
            result,
            problem,
        }
    }
}

/// Starts a deploy in the background and answers it: as a synchronous deploy would once it ends
/// within the wait, else `202 Accepted` with its `Location`.
/// `arrived`: when the handler started, so that the time spent reading the upload counts against
/// the request's timeout too.
pub(crate) async fn start(
    state: AdminState,
    upload: Upload,
    headers: &HeaderMap,
    arrived: std::time::Instant,
) -> Response {
    let wait = requested_wait(headers)
        .unwrap_or(DEFAULT_DEPLOY_WAIT)
        .min(state.max_deploy_wait().saturating_sub(arrived.elapsed()));
    let (sender, mut finished) = watch::channel(None);
    let job = Arc::new(Job {
        id: Uuid::new_v4(),
        name: upload.name.clone(),
        sha256: registry::sha256_hex(&upload.bytes),
        size_bytes: upload.bytes.len() as u64,
        started_at: Utc::now(),
        state: sender,
    });
    state.deploys.add(Arc::clone(&job));
    let actor = actor(headers);
    let running = Arc::clone(&job);
    let task_state = state.clone();
    tokio::spawn(async move {
        let result = run(&task_state, &actor, upload).await;
        running.state.send_replace(Some(Finished {
            at: Utc::now(),
            result,
        }));
    });
    let ended = tokio::time::timeout(wait, async {
        finished
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|state| state.as_ref().map(|f| f.result.clone()))
    })
    .await;
    match ended {
        Ok(Some(Ok(answer))) => Json(answer).into_response(),
        Ok(Some(Err(problem))) => problem.into_response(),
        _ => accepted(&job),
    }
}

fn accepted(job: &Job) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(job.body())).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/deploys/{}", job.id)) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER_SECS));
    headers.insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    response
}

/// Validates and activates; records a refusal in the audit trail (as every admin action does).
async fn run(state: &AdminState, actor: &str, upload: Upload) -> Result<ActionAnswer, Problem> {
    let projections = &state.projections;
    let origin = format!("upload:{}", upload.name.as_deref().unwrap_or("unnamed"));
    let mut name = upload.name.clone();
    let result = match projections.validate(upload.bytes, &origin).await {
        Ok(candidate) => {
            name = Some(candidate.schema.name.clone());
            projections
                .activate_with(
                    candidate,
                    UPLOAD_SOURCE,
                    actor,
                    upload.name.as_deref(),
                    upload.settings.as_ref(),
                )
                .await
                .map(Outcome::from)
        }
        Err(error) => Err(error),
    };
    settle(state, actor, "deploy", name.as_deref(), result).await
}

/// The wait a request asks for with `Prefer` (RFC 7240): `respond-async` alone is no wait,
/// `wait=N` is N seconds.
pub(crate) fn requested_wait(headers: &HeaderMap) -> Option<Duration> {
    let mut respond_async = false;
    let mut wait = None;
    for value in headers.get_all("prefer") {
        let Ok(text) = value.to_str() else { continue };
        for preference in text.split(',') {
            let preference = preference.trim();
            let (token, value) = match preference.split_once('=') {
                Some((token, value)) => (token.trim(), Some(value.trim().trim_matches('"'))),
                None => (preference, None),
            };
            if token.eq_ignore_ascii_case("respond-async") {
                respond_async = true;
            } else if token.eq_ignore_ascii_case("wait") {
                wait = value
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
            }
        }
    }
    match (wait, respond_async) {
        (Some(wait), _) => Some(wait),
        (None, true) => Some(Duration::ZERO),
        (None, false) => None,
    }
}

impl AdminState {
    /// Longest a deploy request may wait before it answers `202`: the request timeout less a
    /// margin for the answer.
    pub(crate) fn max_deploy_wait(&self) -> Duration {
        self.request_timeout.saturating_sub(ANSWER_MARGIN)
    }
}

/// `GET /admin/deploys/{id}`: a deploy of this instance, running or ended.
pub(crate) async fn status(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeployJobBody>, Problem> {
    let unknown = || {
        Problem::not_found(format!(
            "no deploy {id} on this instance (deploys are kept by the instance that received them, for {} s after they end; GET /admin/actions has every deploy's outcome)",
            DEPLOY_KEPT_FOR.as_secs()
        ))
    };
    let id = Uuid::parse_str(&id).map_err(|_| unknown())?;
    let job = state.deploys.get(id).ok_or_else(unknown)?;
    Ok(Json(job.body()))
}
