//! Reading a finished script: fetch the sealed artifact from the export
//! service, open it with the key this browser holds, show the HTML in a
//! sandboxed frame and offer the other formats as downloads.
//!
//! Nothing is shown or saved unless every check passes: magic, ciphertext
//! hash, data-key unwrap and the AES-GCM tag over the exact AAD.

use js_sys::{Array, Reflect, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, BlobPropertyBag, HtmlAnchorElement, Request, RequestInit, Response};
use yew::platform::spawn_local;
use yew::prelude::*;

use crate::{api, dom, keystore, webcrypto};

struct Words {
    preview: &'static str,
    download: &'static str,
    fetching: &'static str,
    opening: &'static str,
    not_verified: &'static str,
    no_key: &'static str,
    network: &'static str,
    rename: &'static str,
    delete: &'static str,
    confirm_delete: &'static str,
}

static ES: Words = Words {
    preview: "Ver el guion",
    download: "Descargar",
    fetching: "Descargando",
    opening: "Abriendo con tu clave…",
    not_verified: "Este archivo no se pudo verificar: no se ha abierto ni guardado nada.",
    no_key: "Este navegador no tiene tu clave: sal y vuelve a entrar.",
    network: "No se pudo descargar el archivo. Inténtalo de nuevo.",
    rename: "Cambiar nombre",
    delete: "Borrar proyecto",
    confirm_delete: "¿Borrar este proyecto y su guion para siempre? No se puede deshacer.",
};

static EN: Words = Words {
    preview: "Read the script",
    download: "Download",
    fetching: "Downloading",
    opening: "Opening with your key…",
    not_verified: "This file could not be verified: nothing was opened or saved.",
    no_key: "This browser holds no key for you: sign out and in again.",
    network: "The file could not be downloaded. Try again.",
    rename: "Rename",
    delete: "Delete project",
    confirm_delete: "Delete this project and its script for good? This cannot be undone.",
};

fn words() -> &'static Words {
    if dom::lang() == "en" { &EN } else { &ES }
}

/// An artifact as the project page lists it.
#[derive(Clone, PartialEq)]
struct Item {
    id: String,
    kind: String,
    filename: String,
    content_type: String,
}

fn items() -> Vec<Item> {
    let Ok(list) = dom::document().query_selector_all("#artifacts li[data-artifact]") else {
        return Vec::new();
    };
    (0..list.length())
        .filter_map(|i| list.item(i)?.dyn_into::<web_sys::Element>().ok())
        .map(|el| Item {
            id: el.get_attribute("data-artifact").unwrap_or_default(),
            kind: el.get_attribute("data-kind").unwrap_or_default(),
            filename: el.get_attribute("data-filename").unwrap_or_default(),
            content_type: el.get_attribute("data-content-type").unwrap_or_default(),
        })
        .collect()
}

#[derive(Deserialize)]
struct Grant {
    url: String,
    token: String,
    artifact_id: String,
    kind: String,
    size: f64,
    dek_enc: String,
}

#[derive(Debug)]
pub(crate) enum ReadError {
    NotVerified,
    NoKey,
    Network,
}

impl ReadError {
    fn text(&self) -> &'static str {
        let w = words();
        match self {
            ReadError::NotVerified => w.not_verified,
            ReadError::NoKey => w.no_key,
            ReadError::Network => w.network,
        }
    }
}

/// Downloads `url` with the token into a JS buffer of the listed size,
/// reporting progress as a fraction. The bytes stay on the JS heap: a large
/// artifact is never copied into wasm memory.
async fn fetch_all(grant: &Grant, progress: &dyn Fn(f64)) -> Result<Uint8Array, ReadError> {
    // The listed size bounds the buffer; a body of any other length is not
    // the artifact the server listed.
    // It is capped too: no script comes near 1 GiB, and allocating what a
    // hostile server claims could abort the page instead of failing here.
    const MAX_SIZE: f64 = (1u32 << 30) as f64;
    if !(grant.size.is_finite() && grant.size >= 0.0 && grant.size <= MAX_SIZE) {
        return Err(ReadError::NotVerified);
    }
    let size = grant.size as u32;
    let init = RequestInit::new();
    init.set_method("GET");
    let req = Request::new_with_str_and_init(&grant.url, &init).map_err(|_| ReadError::Network)?;
    req.headers()
        .set("authorization", &format!("Bearer {}", grant.token))
        .map_err(|_| ReadError::Network)?;
    let window = web_sys::window().ok_or(ReadError::Network)?;
    let resp: Response = JsFuture::from(window.fetch_with_request(&req))
        .await
        .map_err(|_| ReadError::Network)?
        .unchecked_into();
    if !resp.ok() {
        return Err(ReadError::Network);
    }
    let body = resp.body().ok_or(ReadError::Network)?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let out = Uint8Array::new_with_length(size);
    let mut filled: u32 = 0;
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|_| ReadError::Network)?;
        if Reflect::get(&chunk, &"done".into())
            .ok()
            .and_then(|d| d.as_bool())
            == Some(true)
        {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(|_| ReadError::Network)?
            .dyn_into()
            .map_err(|_| ReadError::Network)?;
        let end = filled
            .checked_add(value.length())
            .filter(|end| *end <= size)
            .ok_or(ReadError::NotVerified)?;
        out.set(&value, filled);
        filled = end;
        if size > 0 {
            progress(f64::from(filled) / f64::from(size));
        }
    }
    if filled != size {
        return Err(ReadError::NotVerified);
    }
    Ok(out)
}

/// Opens a sealed artifact (CRYPTO.md §4) with the held private key:
/// checks the magic, unwraps the data key, and decrypts with the AAD of
/// this artifact id and kind. Returns the plaintext as a JS `ArrayBuffer`.
///
/// The GCM tag authenticates every byte of the ciphertext and the AAD, so
/// no separate hash is checked here: a changed, truncated or swapped object
/// fails the tag.
pub(crate) async fn open_sealed(
    key: &web_sys::CryptoKey,
    artifact_id: &str,
    kind: &str,
    dek_enc: &[u8],
    object: &Uint8Array,
) -> Result<js_sys::ArrayBuffer, ReadError> {
    use kiroku_crypto::envelope::{MAGIC, OVERHEAD};
    let len = object.length();
    if (len as usize) < OVERHEAD || object.subarray(0, 4).to_vec() != MAGIC[..] {
        return Err(ReadError::NotVerified);
    }
    let nonce = object.subarray(4, 16).to_vec();
    let dek = webcrypto::oaep_decrypt(key, dek_enc)
        .await
        .map_err(|_| ReadError::NotVerified)?;
    if dek.len() != 32 {
        return Err(ReadError::NotVerified);
    }
    let aad = kiroku_crypto::envelope::aad(artifact_id, kind);
    webcrypto::aes_gcm_open(&dek, &nonce, &aad, &object.subarray(16, len))
        .await
        .map_err(|_| ReadError::NotVerified)?
        .dyn_into()
        .map_err(|_| ReadError::NotVerified)
}

/// Fetches and opens one artifact; returns its plaintext as a Blob.
async fn open(item: &Item, progress: &dyn Fn(f64)) -> Result<Blob, ReadError> {
    let path = format!("/api/artifacts/{}/token", item.id);
    let grant: Grant = api::post(&path, &serde_json::json!({}))
        .await
        .map_err(|e| {
            if e.status == 0 {
                ReadError::Network
            } else {
                ReadError::NotVerified
            }
        })?;
    // The AAD binds the bytes to this artifact and kind, as the page listed
    // them: a grant for anything else is refused, and a swapped object
    // does not open.
    if grant.artifact_id != item.id || grant.kind != item.kind {
        return Err(ReadError::NotVerified);
    }
    let object = fetch_all(&grant, progress).await?;
    let key = keystore::get()
        .await
        .ok()
        .flatten()
        .ok_or(ReadError::NoKey)?;
    let dek_enc = kiroku_crypto::b64::decode(&grant.dek_enc).map_err(|_| ReadError::NotVerified)?;
    let plain = open_sealed(&key, &item.id, &item.kind, &dek_enc, &object).await?;
    let bag = BlobPropertyBag::new();
    bag.set_type(&item.content_type);
    Blob::new_with_buffer_source_sequence_and_options(&Array::of1(&plain), &bag)
        .map_err(|_| ReadError::NotVerified)
}

fn save(blob: &Blob, filename: &str) {
    let Ok(url) = web_sys::Url::create_object_url_with_blob(blob) else {
        return;
    };
    if let Ok(a) = dom::document().create_element("a")
        && let Ok(a) = a.dyn_into::<HtmlAnchorElement>()
    {
        a.set_href(&url);
        a.set_download(filename);
        a.click();
    }
    // Give the download a moment to start before the URL goes away.
    spawn_local(async move {
        dom::sleep(30_000).await;
        let _ = web_sys::Url::revoke_object_url(&url);
    });
}

async fn blob_text(blob: &Blob) -> Option<String> {
    JsFuture::from(blob.text()).await.ok()?.as_string()
}

#[derive(Clone, PartialEq)]
enum State {
    Idle,
    Fetching(String, f64),
    Opening(String),
    Failed(String),
}

#[function_component(Reader)]
pub fn reader() -> Html {
    let w = words();
    let list = use_memo((), |_| items());
    let state = use_state(|| State::Idle);
    let preview = use_state(|| None::<String>);

    let run = {
        let (state, preview) = (state.clone(), preview.clone());
        Callback::from(move |(item, show): (Item, bool)| {
            let (state, preview) = (state.clone(), preview.clone());
            spawn_local(async move {
                let s = state.clone();
                let id = item.id.clone();
                let progress = move |f: f64| s.set(State::Fetching(id.clone(), f));
                state.set(State::Fetching(item.id.clone(), 0.0));
                match open(&item, &progress).await {
                    Ok(blob) => {
                        state.set(State::Opening(item.id.clone()));
                        if show {
                            preview.set(blob_text(&blob).await);
                        } else {
                            save(&blob, &item.filename);
                        }
                        state.set(State::Idle);
                    }
                    Err(e) => state.set(State::Failed(e.text().to_owned())),
                }
            });
        })
    };

    // The HTML script opens by itself when the page loads.
    {
        let (run, list) = (run.clone(), list.clone());
        use_effect_with((), move |_| {
            if let Some(html) = list.iter().find(|i| i.kind == "html") {
                run.emit((html.clone(), true));
            }
        });
    }

    let status = match &*state {
        State::Idle => html! {},
        State::Fetching(_, f) => html! {
            <p class="status busy" id="read-status">
                { format!("{} {:.0} %", w.fetching, f * 100.0) }
                <progress id="read-progress" max="1" value={format!("{f:.3}")} />
            </p>
        },
        State::Opening(_) => html! { <p class="status busy" id="read-status">{ w.opening }</p> },
        State::Failed(m) => {
            html! { <p class="status error" id="read-status" role="alert">{ m.clone() }</p> }
        }
    };

    html! {
        <div class="reader">
            <div class="downloads">
                { for list.iter().map(|item| {
                    let run = run.clone();
                    let it = item.clone();
                    let show = item.kind == "html";
                    let label = if show { w.preview } else { w.download };
                    html! {
                        <button class="download" data-kind={item.kind.clone()}
                                onclick={Callback::from(move |_: MouseEvent| run.emit((it.clone(), show)))}>
                            { format!("{label} {}", item.kind.to_uppercase()) }
                        </button>
                    }
                }) }
                { for list.iter().filter(|i| i.kind == "html").map(|item| {
                    let run = run.clone();
                    let it = item.clone();
                    html! {
                        <button class="download" data-kind="html-file"
                                onclick={Callback::from(move |_: MouseEvent| run.emit((it.clone(), false)))}>
                            { format!("{} HTML", w.download) }
                        </button>
                    }
                }) }
            </div>
            { status }
            if let Some(doc) = &*preview {
                // No allow-scripts, no allow-same-origin: the script text is
                // shown, never run; the page's CSP also blocks outside loads.
                <iframe id="preview" class="preview" sandbox="" srcdoc={doc.clone()} title="script" />
            }
        </div>
    }
}

#[derive(Properties, PartialEq, Clone)]
pub struct ActionsProps {
    pub project: String,
    pub title: String,
}

/// Rename and delete, on the project page.
#[function_component(ProjectActions)]
pub fn project_actions(props: &ActionsProps) -> Html {
    let w = words();
    let input = use_node_ref();
    let error = use_state(|| None::<String>);
    let on_rename = {
        let (input, error, project) = (input.clone(), error.clone(), props.project.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            let title = input
                .cast::<web_sys::HtmlInputElement>()
                .map(|i| i.value())
                .unwrap_or_default();
            let (error, project) = (error.clone(), project.clone());
            spawn_local(async move {
                let body = serde_json::json!({ "project_id": project, "title": title });
                match api::post::<_, serde_json::Value>("/api/project/rename", &body).await {
                    Ok(v) => {
                        if let (Some(t), Ok(Some(h))) = (
                            v["title"].as_str(),
                            dom::document().query_selector("#project-title"),
                        ) {
                            h.set_text_content(Some(t));
                        }
                        error.set(None);
                    }
                    Err(e) => error.set(Some(e.message)),
                }
            });
        })
    };
    let on_delete = {
        let (error, project) = (error.clone(), props.project.clone());
        Callback::from(move |_: MouseEvent| {
            let sure = web_sys::window()
                .and_then(|win| win.confirm_with_message(words().confirm_delete).ok())
                .unwrap_or(false);
            if !sure {
                return;
            }
            let (error, project) = (error.clone(), project.clone());
            spawn_local(async move {
                let body = serde_json::json!({ "project_id": project });
                match api::post::<_, serde_json::Value>("/api/project/delete", &body).await {
                    Ok(_) => {
                        // Pieces of it still waiting in this browser go too.
                        crate::uploader::forget(&project).await;
                        dom::go("/projects");
                    }
                    Err(e) => error.set(Some(e.message)),
                }
            });
        })
    };
    html! {
        <div class="actions">
            <form id="rename-form" class="row" onsubmit={on_rename}>
                <input ref={input} id="rename" maxlength="200" value={props.title.clone()} />
                <button type="submit">{ w.rename }</button>
            </form>
            <button id="delete-project" class="danger" onclick={on_delete}>{ w.delete }</button>
            if let Some(m) = &*error { <p class="status error">{ m.clone() }</p> }
        </div>
    }
}
