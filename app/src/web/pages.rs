//! Server-rendered pages.

use askama::Template;
use axum::Router;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;
use crate::error::AppError;
use crate::i18n::{Lang, Texts};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/login") }))
        .route("/login", get(login))
}

pub(crate) fn render(t: impl Template) -> Result<Response, AppError> {
    let html = t.render().map_err(|e| AppError::Internal(format!("template: {e}")))?;
    Ok(Html(html).into_response())
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    lang: Lang,
    t: &'static Texts,
}

async fn login(headers: HeaderMap) -> Result<Response, AppError> {
    let lang = Lang::from_headers(&headers);
    render(LoginPage { lang, t: lang.t() })
}
