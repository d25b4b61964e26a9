//! Server-rendered pages. The island enhances the forms marked with
//! `data-island`; every page carries the session's CSRF token.

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tower_sessions::Session;

use super::AppState;
use crate::error::AppError;
use crate::i18n::{Lang, Texts};
use crate::session::{self, SessionUser};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/setup", get(setup))
        .route("/account/password", get(password))
        .route("/record", get(record))
        .route("/logout", post(logout))
        .route("/lang/{code}", get(set_lang))
}

/// What every page template needs.
pub struct Ctx {
    pub lang: Lang,
    pub t: &'static Texts,
    pub csrf: String,
    pub user: Option<SessionUser>,
}

pub(crate) async fn ctx(headers: &HeaderMap, session: &Session) -> Result<Ctx, AppError> {
    let lang = Lang::from_headers(headers);
    Ok(Ctx {
        lang,
        t: lang.t(),
        csrf: session::csrf_token(session).await?,
        user: session::user(session).await?,
    })
}

pub(crate) fn render(t: impl Template) -> Result<Response, AppError> {
    let html = t
        .render()
        .map_err(|e| AppError::Internal(format!("template: {e}")))?;
    let mut resp = Html(html).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn home(session: Session) -> Result<Redirect, AppError> {
    Ok(match session::user(&session).await? {
        Some(u) if u.setup_only => Redirect::to("/setup"),
        Some(_) => Redirect::to("/projects"),
        None => Redirect::to("/login"),
    })
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    ctx: Ctx,
}

async fn login(headers: HeaderMap, session: Session) -> Result<Response, AppError> {
    render(LoginPage {
        ctx: ctx(&headers, &session).await?,
    })
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    ctx: Ctx,
    user_id: String,
    m_kib: u32,
    t_cost: u32,
    p: u32,
}

async fn setup(
    State(s): State<AppState>,
    headers: HeaderMap,
    session: Session,
) -> Result<Response, AppError> {
    let ctx = ctx(&headers, &session).await?;
    let user_id = match &ctx.user {
        Some(u) if u.setup_only => u.id.to_string(),
        Some(_) => return Ok(Redirect::to("/projects").into_response()),
        None => return Ok(Redirect::to("/login").into_response()),
    };
    let k = s.config.kdf_default;
    render(SetupPage {
        ctx,
        user_id,
        m_kib: k.m_kib,
        t_cost: k.t,
        p: k.p,
    })
}

/// Signed-in, fully set-up user, or where to send the browser instead.
pub(crate) fn require_ready(ctx: &Ctx) -> Result<&SessionUser, Redirect> {
    match &ctx.user {
        Some(u) if u.setup_only => Err(Redirect::to("/setup")),
        Some(u) => Ok(u),
        None => Err(Redirect::to("/login")),
    }
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    ctx: Ctx,
}

async fn password(headers: HeaderMap, session: Session) -> Result<Response, AppError> {
    let ctx = ctx(&headers, &session).await?;
    if let Err(redirect) = require_ready(&ctx) {
        return Ok(redirect.into_response());
    }
    render(PasswordPage { ctx })
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// Ends the session. The login page it leads to tells the island to wipe
/// the key it kept for the session.
async fn logout(session: Session, Form(form): Form<CsrfForm>) -> Result<Redirect, AppError> {
    session::check_csrf(&session, Some(&form.csrf)).await?;
    if let Some(u) = session::user(&session).await? {
        tracing::info!(user_id = %u.id, "signed out");
    }
    session::sign_out(&session).await?;
    Ok(Redirect::to("/login"))
}

async fn set_lang(Path(code): Path<String>) -> Response {
    let lang = Lang::parse(&code).unwrap_or(Lang::Es);
    let cookie = format!(
        "lang={}; Path=/; Max-Age=31536000; SameSite=Lax",
        lang.code()
    );
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Template)]
#[template(path = "record.html")]
struct RecordPage {
    ctx: Ctx,
    /// The performer's recordings still open (a page that went away, or
    /// one still recording elsewhere), newest first.
    open: Vec<OpenRecording>,
}

struct OpenRecording {
    id: String,
    title: String,
    created: String,
}

async fn record(
    State(s): State<AppState>,
    headers: HeaderMap,
    session: Session,
) -> Result<Response, AppError> {
    let ctx = ctx(&headers, &session).await?;
    let user = match require_ready(&ctx) {
        Ok(u) => u.clone(),
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let rows: Vec<(uuid::Uuid, String, time::OffsetDateTime)> = sqlx::query_as(
        "SELECT id, title, created_at FROM projects
          WHERE user_id = $1 AND status = 'recording'
          ORDER BY created_at DESC LIMIT 20",
    )
    .bind(user.id)
    .fetch_all(&s.db)
    .await?;
    let open = rows
        .into_iter()
        .map(|(id, title, created)| OpenRecording {
            id: id.to_string(),
            title,
            created: created.date().to_string(),
        })
        .collect();
    render(RecordPage { ctx, open })
}
