//! Recordings whose page went away before everything reached the server: a
//! reload, a closed tab, a phone that dropped the page to save memory.
//!
//! The recording page lists them ([`Interrupted`]); on a recording's own
//! page, [`Resume`] sends what this browser still keeps and then finishes the
//! recording with what exists, or discards it. The audio recorded after the
//! last ten-second chunk was handed over is gone with the page that held it.

use std::cell::Cell;
use std::rc::Rc;

use serde::Deserialize;
use yew::platform::spawn_local;
use yew::prelude::*;

use crate::uploader::{self, Leftover, Uploader};
use crate::{api, dom};

struct Words {
    interrupted: &'static str,
    open: &'static str,
    kept: &'static str,
    resume_intro: &'static str,
    on_device: &'static str,
    uploading: &'static str,
    all_safe: &'static str,
    finish: &'static str,
    discard: &'static str,
    finishing: &'static str,
    lost: &'static str,
    maybe_live: &'static str,
    confirm_discard: &'static str,
}

static ES: Words = Words {
    interrupted: "Una grabación se interrumpió antes de llegar entera al servidor.",
    open: "Abrirla",
    kept: "fragmentos guardados en este dispositivo",
    resume_intro: "Esta grabación no se está grabando en esta página. Si se interrumpió, termínala con lo que llegó al servidor y lo que guarda este dispositivo, o descártala.",
    on_device: "fragmentos por enviar desde este dispositivo",
    uploading: "Enviando lo que quedó en este dispositivo…",
    all_safe: "Todo lo que había en este dispositivo está en el servidor.",
    finish: "Terminar y procesar",
    discard: "Descartar grabación",
    finishing: "Terminando…",
    lost: "Faltan fragmentos que no están ni en el servidor ni en este dispositivo",
    maybe_live: "Llegó audio de esta grabación hace menos de un minuto: quizá se sigue grabando en otro dispositivo o pestaña.",
    confirm_discard: "¿Descartar esta grabación para siempre?",
};

static EN: Words = Words {
    interrupted: "A recording was interrupted before all of it reached the server.",
    open: "Open it",
    kept: "pieces kept on this device",
    resume_intro: "This recording is not being recorded on this page. If it was interrupted, finish it with what reached the server and what this device keeps, or discard it.",
    on_device: "pieces still to send from this device",
    uploading: "Sending what this device kept…",
    all_safe: "Everything this device kept is on the server.",
    finish: "Finish and process",
    discard: "Discard recording",
    finishing: "Finishing…",
    lost: "Pieces are missing that are neither on the server nor on this device",
    maybe_live: "Audio of this recording arrived less than a minute ago: it may still be recording on another device or tab.",
    confirm_discard: "Discard this recording for good?",
};

fn words() -> &'static Words {
    if dom::lang() == "en" { &EN } else { &ES }
}

/// `GET /api/project/{id}/recording`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
struct ServerSide {
    status: String,
    last_stored_seq: Option<u32>,
    quiet_secs: Option<i64>,
}

async fn server_side(project: &str) -> Result<ServerSide, api::ApiError> {
    api::get(&format!("/api/project/{project}/recording")).await
}

/// On the recording page: the signed-in performer's recordings that this
/// browser still holds pieces of. Pieces of their recordings the server no
/// longer wants (finished or discarded) are forgotten here.
#[function_component(Interrupted)]
pub fn interrupted() -> Html {
    let w = words();
    let found = use_state(Vec::<(String, Leftover)>::new);
    {
        let found = found.clone();
        use_effect_with((), move |_| {
            spawn_local(async move {
                let mut open = Vec::new();
                for (project, left) in uploader::leftovers().await {
                    match server_side(&project).await {
                        Ok(s) if s.status == "recording" => open.push((project, left)),
                        Ok(_) => uploader::forget(&project).await,
                        // LIMITATION: a missing project may be another
                        // account's on a shared browser (the server answers
                        // both alike), so its pieces are left alone, and the
                        // pieces of a recording deleted from elsewhere stay
                        // until the browser's storage is cleared.
                        // Offline or a server error: keep everything, say nothing.
                        Err(_) => {}
                    }
                }
                found.set(open);
            });
        });
    }
    if found.is_empty() {
        return html! {};
    }
    html! {
        <div class="notice" id="interrupted" role="status">
            <p>{ w.interrupted }</p>
            <ul>
                { for found.iter().map(|(project, left)| html! {
                    <li>
                        <a class="button" href={format!("/projects/{project}")}
                           data-project={project.clone()}>{ w.open }</a>
                        { format!(" {} {}", left.chunks + left.photos, w.kept) }
                    </li>
                }) }
            </ul>
        </div>
    }
}

#[derive(Properties, PartialEq)]
pub struct ResumeProps {
    pub project: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Loading,
    Ready,
    Finishing,
}

/// On the page of a project still in `recording`: sends what this browser
/// kept, then finishes or discards the recording.
#[function_component(Resume)]
pub fn resume(props: &ResumeProps) -> Html {
    let w = words();
    let uploader = use_state(|| None::<Uploader>);
    let server = use_state(|| None::<ServerSide>);
    let device_last = use_state(|| None::<u32>);
    let phase = use_state(|| Phase::Loading);
    let error = use_state(|| None::<String>);
    // Why the server could not be asked, if it could not (kept apart from
    // `error`, which a later poll must not wipe).
    let unreachable = use_state(|| None::<String>);
    // Set once Finish or Discard is under way: the page then moves on by
    // itself, and the status poll must not reload it first.
    let leaving = use_memo((), |_| Cell::new(false));

    {
        let (uploader, server, device_last, phase, unreachable, leaving) = (
            uploader.clone(),
            server.clone(),
            device_last.clone(),
            phase.clone(),
            unreachable.clone(),
            leaving.clone(),
        );
        let project = props.project.clone();
        use_effect_with((), move |_| {
            let alive = Rc::new(Cell::new(true));
            let still = alive.clone();
            spawn_local(async move {
                let left = uploader::leftovers()
                    .await
                    .remove(&project)
                    .unwrap_or_default();
                device_last.set(left.last_seq);
                if left.chunks + left.photos > 0 {
                    uploader.set(Some(Uploader::resume(&project).await));
                }
                phase.set(Phase::Ready);
                // Where the server stands, now and every few seconds: an
                // offline start catches up, and a recording finished or
                // discarded elsewhere is let go of.
                while still.get() {
                    match server_side(&project).await {
                        Ok(s) if s.status != "recording" => {
                            if !leaving.get() {
                                uploader::forget(&project).await;
                                dom::reload();
                            }
                            return;
                        }
                        Ok(s) => {
                            unreachable.set(None);
                            server.set(Some(s));
                        }
                        Err(e) => unreachable.set(Some(e.message)),
                    }
                    dom::sleep(5_000).await;
                }
            });
            move || alive.set(false)
        });
    }
    // Re-render twice a second for the upload line.
    crate::components::use_repaint(500);

    let progress = (*uploader)
        .as_ref()
        .map(|u| u.progress())
        .unwrap_or_default();
    let fatal = (*uploader).as_ref().and_then(|u| u.fatal());
    let busy = progress.catching_up();
    let on_finish = {
        let (uploader, server, device_last, phase, error, leaving) = (
            uploader.clone(),
            server.clone(),
            device_last.clone(),
            phase.clone(),
            error.clone(),
            leaving.clone(),
        );
        let project = props.project.clone();
        Callback::from(move |_: MouseEvent| {
            let Some(s) = (*server).clone() else { return };
            let last = s.last_stored_seq.max(*device_last);
            let Some(last) = last else {
                error.set(Some(w.lost.into()));
                return;
            };
            phase.set(Phase::Finishing);
            leaving.set(true);
            let (uploader, phase, error, project, leaving) = (
                uploader.clone(),
                phase.clone(),
                error.clone(),
                project.clone(),
                leaving.clone(),
            );
            spawn_local(async move {
                match finish(&project, (*uploader).clone(), last).await {
                    Ok(()) => {
                        uploader::forget(&project).await;
                        dom::reload();
                    }
                    Err(m) => {
                        leaving.set(false);
                        error.set(Some(m));
                        phase.set(Phase::Ready);
                    }
                }
            });
        })
    };
    let on_discard = {
        let (uploader, phase, error, leaving) = (
            uploader.clone(),
            phase.clone(),
            error.clone(),
            leaving.clone(),
        );
        let project = props.project.clone();
        Callback::from(move |_: MouseEvent| {
            if !dom::confirm(w.confirm_discard) {
                return;
            }
            phase.set(Phase::Finishing);
            leaving.set(true);
            let (uploader, phase, error, project, leaving) = (
                uploader.clone(),
                phase.clone(),
                error.clone(),
                project.clone(),
                leaving.clone(),
            );
            spawn_local(async move {
                let body = serde_json::json!({ "project_id": project });
                match api::post::<_, serde_json::Value>("/api/project/discard", &body).await {
                    Ok(_) => {
                        if let Some(u) = (*uploader).as_ref() {
                            u.finish();
                        }
                        uploader::forget(&project).await;
                        dom::go("/projects");
                    }
                    Err(e) => {
                        leaving.set(false);
                        error.set(Some(e.message));
                        phase.set(Phase::Ready);
                    }
                }
            });
        })
    };

    if *phase == Phase::Loading {
        return html! {};
    }
    let state = if uploader.is_none() {
        None
    } else if busy {
        Some(w.uploading)
    } else {
        Some(w.all_safe)
    };
    html! {
        <div class="resume" id="resume">
            <p>{ w.resume_intro }</p>
            if server.as_ref().and_then(|s| s.quiet_secs).is_some_and(|q| q < 60) {
                <p class="status error" id="maybe-live">{ w.maybe_live }</p>
            }
            if uploader.is_some() {
                <p class="upload" id="resume-upload" data-produced={progress.produced.to_string()}
                   data-acked={progress.acked.to_string()}
                   data-photos-total={progress.photos_total.to_string()}
                   data-photos={progress.photos_done.to_string()}>
                    { format!("{} {}",
                        (progress.produced - progress.acked) + (progress.photos_total - progress.photos_done),
                        w.on_device) }
                    <br/><span class="upload-state">{ state.unwrap_or_default() }</span>
                </p>
            }
            <div class="controls">
                <button id="resume-finish" class="big" onclick={on_finish}
                        disabled={*phase != Phase::Ready || busy || server.is_none()}>{ w.finish }</button>
                <button id="resume-discard" class="danger" onclick={on_discard}
                        disabled={*phase != Phase::Ready}>{ w.discard }</button>
            </div>
            if *phase == Phase::Finishing {
                <p class="status busy">{ w.finishing }</p>
            }
            if let Some(m) = fatal.or_else(|| (*error).clone()).or_else(|| (*unreachable).clone()) {
                <p class="status error" id="resume-error" role="alert">{ m }</p>
            }
        </div>
    }
}

/// Asks the server to process the recording up to chunk `last`, resending
/// whatever it reports missing that this browser still has.
async fn finish(project: &str, uploader: Option<Uploader>, last: u32) -> Result<(), String> {
    // The browser's clock went with the page; the worker measures the
    // decoded audio and replaces this estimate.
    let duration_ms = i64::from(last) * 10_000;
    loop {
        let body = serde_json::json!({ "project_id": project, "last_seq": last, "duration_ms": duration_ms });
        match api::post::<_, serde_json::Value>("/api/project/stop", &body).await {
            Ok(_) => break,
            Err(e) if e.status == 409 && e.missing.is_some() => {
                let missing = e.missing.unwrap_or_default();
                let Some(u) = uploader.as_ref().filter(|u| u.has_all(&missing)) else {
                    let list: Vec<String> = missing.iter().map(u32::to_string).collect();
                    return Err(format!("{}: {}", words().lost, list.join(", ")));
                };
                u.resend(&missing);
                dom::sleep(1000).await;
            }
            Err(e) if e.status == 0 || e.status >= 500 => dom::sleep(2000).await,
            Err(e) => return Err(e.message),
        }
    }
    if let Some(u) = uploader {
        u.finish();
    }
    Ok(())
}
