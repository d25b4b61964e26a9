//! The recording page: microphone to ten-second chunks, camera to
//! timestamped photos, both handed to the [`Uploader`].

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{
    BlobEvent, HtmlInputElement, HtmlSelectElement, HtmlVideoElement, MediaRecorder, MediaStream,
};
use yew::platform::spawn_local;
use yew::prelude::*;

use crate::media::{self, LevelMeter};
use crate::uploader::Uploader;
use crate::{api, dom};

struct Words {
    title: &'static str,
    participant: &'static str,
    language: &'static str,
    auto: &'static str,
    stylize: &'static str,
    record: &'static str,
    pause: &'static str,
    resume: &'static str,
    stop: &'static str,
    photo: &'static str,
    camera_on: &'static str,
    switch_camera: &'static str,
    timer: &'static str,
    no_timer: &'static str,
    finish: &'static str,
    discard: &'static str,
    keep: &'static str,
    stop_question: &'static str,
    sent: &'static str,
    stored: &'static str,
    catching_up: &'static str,
    reconnecting: &'static str,
    all_safe: &'static str,
    finishing: &'static str,
    need_title: &'static str,
    nothing_recorded: &'static str,
    mic_denied: &'static str,
    paused: &'static str,
}

static ES: Words = Words {
    title: "Título",
    participant: "Participante",
    language: "Idioma",
    auto: "Automático",
    stylize: "Fotos con estilo de libro mágico",
    record: "Grabar",
    pause: "Pausa",
    resume: "Seguir",
    stop: "Parar",
    photo: "Foto",
    camera_on: "Abrir cámara",
    switch_camera: "Cambiar cámara",
    timer: "Temporizador",
    no_timer: "Sin temporizador",
    finish: "Terminar y procesar",
    discard: "Descartar grabación",
    keep: "Seguir grabando",
    stop_question: "¿Qué hacemos con esta grabación?",
    sent: "enviados",
    stored: "guardados",
    catching_up: "Poniéndose al día…",
    reconnecting: "Sin conexión: reintentando…",
    all_safe: "Todo guardado en el servidor.",
    finishing: "Terminando: esperando a que todo llegue al servidor…",
    need_title: "Ponle un título a la grabación.",
    nothing_recorded: "No se grabó nada todavía.",
    mic_denied: "No se pudo usar el micrófono: revisa los permisos del navegador.",
    paused: "En pausa",
};

static EN: Words = Words {
    title: "Title",
    participant: "Participant",
    language: "Language",
    auto: "Automatic",
    stylize: "Magic-book style photos",
    record: "Record",
    pause: "Pause",
    resume: "Resume",
    stop: "Stop",
    photo: "Photo",
    camera_on: "Open camera",
    switch_camera: "Switch camera",
    timer: "Self-timer",
    no_timer: "No timer",
    finish: "Finish and process",
    discard: "Discard recording",
    keep: "Keep recording",
    stop_question: "What should happen to this recording?",
    sent: "sent",
    stored: "stored",
    catching_up: "Catching up…",
    reconnecting: "Offline: retrying…",
    all_safe: "Everything is stored on the server.",
    finishing: "Finishing: waiting for everything to reach the server…",
    need_title: "Give the recording a title.",
    nothing_recorded: "Nothing has been recorded yet.",
    mic_denied: "The microphone could not be used: check the browser's permissions.",
    paused: "Paused",
};

fn words() -> &'static Words {
    if dom::lang() == "en" { &EN } else { &ES }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Recording,
    Asking,
    Finishing,
}

/// The live recording: everything the browser objects need between events.
struct Live {
    project: String,
    uploader: Uploader,
    recorder: MediaRecorder,
    mic: MediaStream,
    meter: Option<LevelMeter>,
    next_seq: u32,
    chunks_in_flight: u32,
    recorder_stopped: bool,
    /// Recorded time before the current run (pauses excluded), ms.
    banked_ms: f64,
    /// `performance.now()` when the current run started; `None` if paused.
    run_started: Option<f64>,
    camera: Option<MediaStream>,
    facing_user: bool,
    thumbnails: Vec<String>,
    wake: Option<JsValue>,
}

fn now() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

impl Live {
    fn elapsed_ms(&self) -> i64 {
        let running = self.run_started.map(|s| now() - s).unwrap_or(0.0);
        (self.banked_ms + running).max(0.0) as i64
    }

    fn pause(&mut self) {
        if let Some(s) = self.run_started.take() {
            self.banked_ms += now() - s;
            let _ = self.recorder.pause();
        }
    }

    fn resume(&mut self) {
        if self.run_started.is_none() {
            let _ = self.recorder.resume();
            self.run_started = Some(now());
        }
    }
}

fn clock(ms: i64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}", s / 60, s % 60)
}

/// A random UUID (v4) for a photo, so retries are recognised.
fn photo_id() -> String {
    let mut b = kiroku_crypto::random_array::<16>().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

type Shared = Rc<RefCell<Option<Live>>>;

async fn begin(
    live: Shared,
    title: String,
    participant: String,
    language: String,
    stylize: bool,
) -> Result<(), String> {
    let w = words();
    let mic = media::user_media(true, None)
        .await
        .map_err(|_| w.mic_denied.to_owned())?;
    let mime = media::audio_type();
    let started: serde_json::Value = api::post(
        "/api/project/start",
        &serde_json::json!({
            "title": title, "participant": participant, "language": language,
            "stylize": stylize, "audio_type": mime,
        }),
    )
    .await
    .map_err(|e| e.message)?;
    let project = started["project_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let recorder = media::recorder(&mic, mime).map_err(|e| format!("{e:?}"))?;
    let uploader = Uploader::new(&project);

    let shared = live.clone();
    let ondata = Closure::<dyn FnMut(BlobEvent)>::new(move |e: BlobEvent| {
        let Some(blob) = e.data() else { return };
        if blob.size() == 0.0 {
            return;
        }
        // Numbered here, synchronously, so order is the recorder's order.
        let (seq, uploader) = {
            let mut guard = shared.borrow_mut();
            let Some(l) = guard.as_mut() else { return };
            let seq = l.next_seq;
            l.next_seq += 1;
            l.chunks_in_flight += 1;
            (seq, l.uploader.clone())
        };
        let shared = shared.clone();
        spawn_local(async move {
            if let Ok(bytes) = media::blob_bytes(&blob).await {
                uploader.push_chunk(seq, bytes);
            }
            if let Some(l) = shared.borrow_mut().as_mut() {
                l.chunks_in_flight -= 1;
            }
        });
    });
    let shared = live.clone();
    let onstop = Closure::<dyn FnMut()>::new(move || {
        if let Some(l) = shared.borrow_mut().as_mut() {
            l.recorder_stopped = true;
        }
    });
    recorder.set_ondataavailable(Some(ondata.as_ref().unchecked_ref()));
    recorder.set_onstop(Some(onstop.as_ref().unchecked_ref()));
    ondata.forget();
    onstop.forget();
    recorder
        .start_with_time_slice(10_000)
        .map_err(|e| format!("{e:?}"))?;
    let meter = LevelMeter::new(&mic).ok();
    *live.borrow_mut() = Some(Live {
        project,
        uploader,
        recorder,
        mic,
        meter,
        next_seq: 0,
        chunks_in_flight: 0,
        recorder_stopped: false,
        banked_ms: 0.0,
        run_started: Some(now()),
        camera: None,
        facing_user: false,
        thumbnails: Vec::new(),
        wake: None,
    });
    let wake = media::wake_lock().await;
    if let Some(l) = live.borrow_mut().as_mut() {
        l.wake = wake;
    }
    Ok(())
}

fn release(l: &mut Live) {
    media::stop_tracks(&l.mic);
    if let Some(c) = l.camera.take() {
        media::stop_tracks(&c);
    }
    if let Some(w) = l.wake.take() {
        media::release_wake_lock(&w);
    }
    l.uploader.finish();
}

/// Stops the recorder, waits until every chunk and photo is stored, then
/// asks the server to process; resends whatever it reports missing.
async fn finish(live: Shared) -> Result<(), String> {
    {
        let mut guard = live.borrow_mut();
        let l = guard.as_mut().ok_or("no recording")?;
        l.pause();
        let _ = l.recorder.stop();
    }
    loop {
        let done = {
            let guard = live.borrow();
            let l = guard.as_ref().ok_or("no recording")?;
            l.recorder_stopped && l.chunks_in_flight == 0 && !l.uploader.progress().catching_up()
        };
        if let Some(f) = live.borrow().as_ref().and_then(|l| l.uploader.fatal()) {
            return Err(f);
        }
        if done {
            break;
        }
        dom::sleep(250).await;
    }
    let (project, last, duration) = {
        let guard = live.borrow();
        let l = guard.as_ref().ok_or("no recording")?;
        (l.project.clone(), l.next_seq as i64 - 1, l.elapsed_ms())
    };
    if last < 0 {
        return Err(words().nothing_recorded.into());
    }
    loop {
        let body =
            serde_json::json!({ "project_id": project, "last_seq": last, "duration_ms": duration });
        match api::post::<_, serde_json::Value>("/api/project/stop", &body).await {
            Ok(_) => break,
            Err(e) if e.status == 409 && e.missing.is_some() => {
                if let Some(l) = live.borrow().as_ref() {
                    l.uploader.resend(e.missing.as_deref().unwrap_or_default());
                }
                dom::sleep(1000).await;
            }
            Err(e) if e.status == 0 || e.status >= 500 => dom::sleep(2000).await,
            Err(e) => return Err(e.message),
        }
    }
    if let Some(l) = live.borrow_mut().as_mut() {
        release(l);
    }
    Ok(())
}

async fn open_camera(live: Shared, video: HtmlVideoElement) -> Result<(), JsValue> {
    let facing = {
        let mut guard = live.borrow_mut();
        let l = guard.as_mut().ok_or("no recording")?;
        if let Some(old) = l.camera.take() {
            media::stop_tracks(&old);
            l.facing_user = !l.facing_user;
        }
        if l.facing_user { "user" } else { "environment" }
    };
    let stream = media::user_media(false, Some(facing)).await?;
    media::preview(&video, &stream).await?;
    if let Some(l) = live.borrow_mut().as_mut() {
        l.camera = Some(stream);
    }
    Ok(())
}

#[function_component(Recorder)]
pub fn recorder() -> Html {
    let w = words();
    let live: Shared = use_mut_ref(|| None).clone();
    let phase = use_state(|| Phase::Setup);
    let error = use_state(|| None::<String>);
    let countdown = use_state(|| None::<u32>);
    let (title, participant, language, stylize, timer, video) = (
        use_node_ref(),
        use_node_ref(),
        use_node_ref(),
        use_node_ref(),
        use_node_ref(),
        use_node_ref(),
    );

    // Re-render five times a second for the clock, meter and upload line.
    crate::components::use_repaint(200);

    let on_record = {
        let (live, phase, error) = (live.clone(), phase.clone(), error.clone());
        let refs = (
            title.clone(),
            participant.clone(),
            language.clone(),
            stylize.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let t = refs
                .0
                .cast::<HtmlInputElement>()
                .map(|i| i.value())
                .unwrap_or_default();
            if t.trim().is_empty() {
                error.set(Some(words().need_title.into()));
                return;
            }
            let p = refs
                .1
                .cast::<HtmlInputElement>()
                .map(|i| i.value())
                .unwrap_or_default();
            let lang = refs
                .2
                .cast::<HtmlSelectElement>()
                .map(|s| s.value())
                .unwrap_or_else(|| "auto".into());
            let sty = refs
                .3
                .cast::<HtmlInputElement>()
                .map(|i| i.checked())
                .unwrap_or(false);
            let (live, phase, error) = (live.clone(), phase.clone(), error.clone());
            spawn_local(async move {
                error.set(None);
                match begin(live, t, p, lang, sty).await {
                    Ok(()) => phase.set(Phase::Recording),
                    Err(m) => error.set(Some(m)),
                }
            });
        })
    };

    let on_pause = {
        let live = live.clone();
        Callback::from(move |_: MouseEvent| {
            if let Some(l) = live.borrow_mut().as_mut() {
                if l.run_started.is_some() {
                    l.pause()
                } else {
                    l.resume()
                }
            }
        })
    };

    let on_stop = {
        let (live, phase) = (live.clone(), phase.clone());
        Callback::from(move |_: MouseEvent| {
            if let Some(l) = live.borrow_mut().as_mut() {
                l.pause();
            }
            phase.set(Phase::Asking);
        })
    };

    let on_keep = {
        let (live, phase) = (live.clone(), phase.clone());
        Callback::from(move |_: MouseEvent| {
            if let Some(l) = live.borrow_mut().as_mut() {
                l.resume();
            }
            phase.set(Phase::Recording);
        })
    };

    let on_finish = {
        let (live, phase, error) = (live.clone(), phase.clone(), error.clone());
        Callback::from(move |_: MouseEvent| {
            phase.set(Phase::Finishing);
            let (live, phase, error) = (live.clone(), phase.clone(), error.clone());
            spawn_local(async move {
                match finish(live).await {
                    Ok(()) => dom::go("/projects"),
                    Err(m) => {
                        error.set(Some(m));
                        phase.set(Phase::Asking);
                    }
                }
            });
        })
    };

    let on_discard = {
        let live = live.clone();
        Callback::from(move |_: MouseEvent| {
            let live = live.clone();
            spawn_local(async move {
                let project = live.borrow_mut().as_mut().map(|l| {
                    let _ = l.recorder.stop();
                    release(l);
                    l.project.clone()
                });
                if let Some(p) = project {
                    let discarded: Result<serde_json::Value, _> = api::post(
                        "/api/project/discard",
                        &serde_json::json!({ "project_id": p }),
                    )
                    .await;
                    // Unsent pieces of a discarded recording go too; if the
                    // server did not hear it, they stay for the recording
                    // page to offer again.
                    if discarded.is_ok() {
                        crate::uploader::forget(&p).await;
                    }
                }
                dom::go("/projects");
            });
        })
    };

    let on_camera = {
        let (live, video, error) = (live.clone(), video.clone(), error.clone());
        Callback::from(move |_: MouseEvent| {
            let Some(v) = video.cast::<HtmlVideoElement>() else {
                return;
            };
            let (live, error) = (live.clone(), error.clone());
            spawn_local(async move {
                if let Err(e) = open_camera(live, v).await {
                    error.set(Some(e.as_string().unwrap_or_else(|| "camera".into())));
                }
            });
        })
    };

    let on_photo = {
        let (live, video, timer, countdown) = (
            live.clone(),
            video.clone(),
            timer.clone(),
            countdown.clone(),
        );
        Callback::from(move |_: MouseEvent| {
            let Some(v) = video.cast::<HtmlVideoElement>() else {
                return;
            };
            let secs: u32 = timer
                .cast::<HtmlSelectElement>()
                .and_then(|s| s.value().parse().ok())
                .unwrap_or(0);
            let (live, countdown) = (live.clone(), countdown.clone());
            spawn_local(async move {
                for left in (1..=secs).rev() {
                    countdown.set(Some(left));
                    dom::sleep(1000).await;
                }
                countdown.set(None);
                let offset = live.borrow().as_ref().map(|l| l.elapsed_ms()).unwrap_or(0);
                if let Ok(jpeg) = media::snapshot(&v).await {
                    let thumb = media::image_url(&jpeg);
                    if let Some(l) = live.borrow_mut().as_mut() {
                        l.uploader.push_photo(photo_id(), offset, jpeg);
                        l.thumbnails.extend(thumb);
                    }
                }
            });
        })
    };

    let error_line = match &*error {
        Some(m) => html! { <p class="status error" id="rec-error" role="alert">{ m.clone() }</p> },
        None => html! {},
    };

    if *phase == Phase::Setup {
        return html! {
            <form id="record-form" class="recorder" onsubmit={on_record}>
                <label>{ w.title }<input ref={title} id="title" maxlength="200" required=true /></label>
                <label>{ w.participant }<input ref={participant} id="participant" maxlength="200" /></label>
                <label>{ w.language }
                    <select ref={language} id="language">
                        <option value="auto">{ w.auto }</option>
                        <option value="es">{ "Español" }</option>
                        <option value="en">{ "English" }</option>
                    </select>
                </label>
                <label class="check"><input ref={stylize} id="stylize" type="checkbox" />{ w.stylize }</label>
                <button type="submit" id="record" class="big record">{ w.record }</button>
                { error_line }
            </form>
        };
    }

    // Recording, asking or finishing: read the live state for this frame.
    let mut guard = live.borrow_mut();
    let Some(l) = guard.as_mut() else {
        return html! {};
    };
    let elapsed = l.elapsed_ms();
    let level = l.meter.as_mut().map(|m| m.level()).unwrap_or(0.0);
    let progress = l.uploader.progress();
    let paused = l.run_started.is_none();
    let thumbs = l.thumbnails.clone();
    let camera_open = l.camera.is_some();
    drop(guard);

    let upload_line = {
        let state = if !progress.connected && progress.catching_up() {
            w.reconnecting
        } else if progress.acked + 1 < progress.produced
            || progress.photos_done < progress.photos_total
        {
            w.catching_up
        } else {
            w.all_safe
        };
        html! {
            <p class="upload" id="upload" data-produced={progress.produced.to_string()}
               data-acked={progress.acked.to_string()} data-photos={progress.photos_done.to_string()}>
                { format!("{} {} · {} {}", progress.produced, w.sent, progress.acked, w.stored) }
                <br/><span class="upload-state">{ state }</span>
            </p>
        }
    };

    html! {
        <div class="recorder live">
            <p class={classes!("clock", paused.then_some("paused"))} id="clock" data-ms={elapsed.to_string()}>
                { clock(elapsed) }{ if paused { format!(" · {}", w.paused) } else { String::new() } }
            </p>
            <meter id="level" min="0" max="1" low="0.1" high="0.8" optimum="0.5" value={format!("{level:.3}")} />
            { upload_line }
            <div class="controls">
                <button id="pause" class="big" onclick={on_pause} disabled={*phase != Phase::Recording}>
                    { if paused { w.resume } else { w.pause } }
                </button>
                <button id="stop" class="big stop" onclick={on_stop} disabled={*phase != Phase::Recording}>{ w.stop }</button>
            </div>
            <div class="camera">
                <video ref={video} id="camera" playsinline=true muted=true autoplay=true />
                <div class="camera-controls">
                    <button id="camera-open" onclick={on_camera}>
                        { if camera_open { w.switch_camera } else { w.camera_on } }
                    </button>
                    <select ref={timer} id="timer" aria-label={w.timer}>
                        <option value="0" selected=true>{ w.no_timer }</option>
                        <option value="3">{ "3 s" }</option>
                        <option value="10">{ "10 s" }</option>
                    </select>
                    <button id="photo" onclick={on_photo} disabled={!camera_open}>{ w.photo }</button>
                </div>
                if let Some(n) = *countdown { <p class="countdown" id="countdown">{ n }</p> }
                <div class="thumbs" id="thumbs">
                    { for thumbs.iter().map(|u| html! { <img src={u.clone()} alt="" /> }) }
                </div>
            </div>
            if *phase == Phase::Asking {
                <div class="dialog" role="dialog" aria-modal="true" id="stop-dialog">
                    <p>{ w.stop_question }</p>
                    <button id="finish" class="big" onclick={on_finish}>{ w.finish }</button>
                    <button id="discard" class="danger" onclick={on_discard}>{ w.discard }</button>
                    <button id="keep" onclick={on_keep}>{ w.keep }</button>
                </div>
            }
            if *phase == Phase::Finishing {
                <p class="status busy" id="finishing">{ w.finishing }</p>
            }
            { error_line }
        </div>
    }
}
