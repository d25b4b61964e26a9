//! A local stand-in for the paid services Kiroku can use (OpenAI's
//! transcription, image edit and chat completion endpoints, and Gemini's
//! `generateContent`), speaking their real wire format.
//!
//! Every request is checked the way the real service would read it: path,
//! method, key header, multipart field names and file types, JSON shape. A
//! request that would not work against the real service is answered 400
//! and recorded in [`StandIn::violations`], which every test asserts empty.
//! What each endpoint answers next is scripted with [`StandIn::push`]:
//! the documented success body, an error status with the service's error
//! body, a hang longer than the client's timeout, or a malformed body.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// The endpoints the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Transcriptions,
    ImageEdits,
    Chat,
    Gemini,
}

/// What an endpoint answers to its next request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The documented success body (see [`Answers`]).
    Ok,
    /// This status with the service's own error body.
    Status(u16),
    /// Nothing, for longer than any test's client timeout.
    Hang,
    /// 200 with a body that is not the documented format; it contains
    /// [`LEAK_MARKER`], which must never reach a log line.
    Malformed,
}

/// Appears only in malformed answers: a log that contains it has logged a
/// service's body.
pub const LEAK_MARKER: &str = "transcript-text-that-must-never-be-logged";

/// What the success bodies say.
#[derive(Debug, Clone)]
pub struct Answers {
    /// Transcription segments: start s, end s, text.
    pub segments: Vec<(f64, f64, String)>,
    /// The chat model's behaviour.
    pub chat: ChatMode,
    /// The image the image endpoints return (PNG).
    pub image_png: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum ChatMode {
    /// A faithful stage script: every line of the transcript prefixed with
    /// the performer's name, markers and placeholders kept.
    Faithful(String),
    /// The same, with the first photo placeholder lost.
    LosePlaceholder(String),
    /// Stops at the token limit (`finish_reason: length`).
    Truncated,
}

/// A request as the stand-in read it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub endpoint: Endpoint,
    /// Multipart text fields (name → value), or the JSON body's top level.
    pub fields: BTreeMap<String, String>,
    pub json: Option<Value>,
}

struct Shared {
    key: String,
    answers: Mutex<Answers>,
    replies: Mutex<HashMap<Endpoint, VecDeque<Reply>>>,
    seen: Mutex<Vec<Seen>>,
    violations: Mutex<Vec<String>>,
}

pub struct StandIn {
    /// `http://127.0.0.1:port`
    pub base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small PNG of one flat colour, for "styled" images.
pub fn flat_png(rgb: [u8; 3], w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

impl StandIn {
    /// Serves on a free loopback port, accepting `key` only.
    pub async fn start(key: &str, answers: Answers) -> StandIn {
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            answers: Mutex::new(answers),
            replies: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/audio/transcriptions", post(transcriptions))
            .route("/v1/images/edits", post(image_edits))
            .route("/v1/chat/completions", post(chat))
            .route("/v1beta/models/{action}", post(gemini))
            .fallback(|uri: axum::http::Uri| async move {
                (StatusCode::NOT_FOUND, format!("no such endpoint: {uri}"))
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        StandIn { base, shared, task }
    }

    /// The OpenAI-compatible base URL (`…/v1`).
    pub fn openai_url(&self) -> String {
        format!("{}/v1", self.base)
    }

    /// The Gemini base URL (`…/v1beta`).
    pub fn gemini_url(&self) -> String {
        format!("{}/v1beta", self.base)
    }

    /// Scripts the next answers of `endpoint`, in order; once they are used
    /// up the endpoint answers [`Reply::Ok`].
    pub fn push(&self, endpoint: Endpoint, replies: &[Reply]) {
        self.shared
            .replies
            .lock()
            .unwrap()
            .entry(endpoint)
            .or_default()
            .extend(replies.iter().cloned());
    }

    /// Forgets the scripted answers of `endpoint`.
    pub fn clear(&self, endpoint: Endpoint) {
        self.shared.replies.lock().unwrap().remove(&endpoint);
    }

    /// Answers every request of `endpoint` with `reply` (up to 1000).
    pub fn always(&self, endpoint: Endpoint, reply: Reply) {
        self.push(endpoint, &vec![reply; 1000]);
    }

    pub fn set_chat(&self, mode: ChatMode) {
        self.shared.answers.lock().unwrap().chat = mode;
    }

    pub fn seen(&self, endpoint: Endpoint) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.endpoint == endpoint)
            .cloned()
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }
}

type Checked<T> = Result<T, String>;

impl Shared {
    fn next(&self, endpoint: Endpoint) -> Reply {
        self.replies
            .lock()
            .unwrap()
            .get_mut(&endpoint)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Reply::Ok)
    }

    fn bearer(&self, headers: &HeaderMap) -> Checked<()> {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(v) if v.starts_with("Bearer ") => Ok(()),
            _ => Err("no Authorization: Bearer header".into()),
        }
    }

    /// A wrong key is the caller's mistake, not a format violation: the
    /// real services answer 401 (OpenAI) or 400 (Gemini).
    fn wrong_key(&self, endpoint: Endpoint, headers: &HeaderMap) -> Option<Response> {
        let given = if endpoint == Endpoint::Gemini {
            headers
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())?
                .to_owned()
        } else {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())?
                .strip_prefix("Bearer ")?
                .to_owned()
        };
        if given == self.key {
            return None;
        }
        let mut fields = BTreeMap::new();
        fields.insert("wrong_key".to_owned(), "true".to_owned());
        self.record(endpoint, fields, None);
        let (status, body) = if endpoint == Endpoint::Gemini {
            (
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}),
            )
        } else {
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            )
        };
        Some((status, axum::Json(body)).into_response())
    }

    /// Records a violation and answers as the real service would refuse.
    fn refuse(&self, endpoint: Endpoint, why: String) -> Response {
        self.violations
            .lock()
            .unwrap()
            .push(format!("{endpoint:?}: {why}"));
        let body = json!({"error": {"message": why, "type": "invalid_request_error", "param": null, "code": null}});
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    }

    fn record(&self, endpoint: Endpoint, fields: BTreeMap<String, String>, json: Option<Value>) {
        self.seen.lock().unwrap().push(Seen {
            endpoint,
            fields,
            json,
        });
    }
}

/// Answers `reply` unless it is [`Reply::Ok`], in which case `ok` does.
async fn scripted(endpoint: Endpoint, reply: Reply, ok: impl FnOnce() -> Response) -> Response {
    match reply {
        Reply::Ok => ok(),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Reply::Malformed => (
            StatusCode::OK,
            [("content-type", "application/json")],
            format!("{{\"unexpected\": \"{LEAK_MARKER}\", \"text\": [1,"),
        )
            .into_response(),
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            let body = if endpoint == Endpoint::Gemini {
                json!({"error": {"code": code, "message": "stand-in failure", "status": if code == 429 { "RESOURCE_EXHAUSTED" } else { "INTERNAL" }}})
            } else if code == 429 {
                json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
            } else {
                json!({"error": {"message": "The server had an error", "type": "server_error", "param": null, "code": null}})
            };
            (status, axum::Json(body)).into_response()
        }
    }
}

/// Reads a multipart body: text fields, and files as (name, file name,
/// content type, bytes).
async fn read_form(
    mut form: Multipart,
) -> Checked<(
    BTreeMap<String, String>,
    Vec<(String, String, String, Bytes)>,
)> {
    let mut fields = BTreeMap::new();
    let mut files = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_owned();
        match field.file_name().map(str::to_owned) {
            Some(file_name) => {
                let ty = field.content_type().unwrap_or_default().to_owned();
                let bytes = field.bytes().await.map_err(|e| e.to_string())?;
                files.push((name, file_name, ty, bytes));
            }
            None => {
                let text = field.text().await.map_err(|e| e.to_string())?;
                if fields.insert(name.clone(), text).is_some() {
                    return Err(format!("field {name} sent twice"));
                }
            }
        }
    }
    Ok((fields, files))
}

fn need<'a>(fields: &'a BTreeMap<String, String>, name: &str) -> Checked<&'a str> {
    fields
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("no {name} field"))
}

async fn transcriptions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Multipart,
) -> Response {
    let e = Endpoint::Transcriptions;
    if let Some(refused) = s.wrong_key(e, &headers) {
        return refused;
    }
    let checked = async {
        s.bearer(&headers)?;
        let (fields, files) = read_form(form).await?;
        let [(name, file_name, _, bytes)] = files.as_slice() else {
            return Err(format!("expected one file, got {}", files.len()));
        };
        if name != "file" {
            return Err(format!("the file field is called {name}, not file"));
        }
        if !file_name.ends_with(".wav") || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(format!("{file_name} is not a WAV file"));
        }
        if bytes.len() > 25 * 1024 * 1024 {
            return Err("over the 25 MB upload limit".into());
        }
        need(&fields, "model")?;
        let format = fields
            .get("response_format")
            .map(String::as_str)
            .unwrap_or("json");
        match format {
            "json" => {}
            "verbose_json" => {
                if fields.get("timestamp_granularities[]").map(String::as_str) != Some("segment") {
                    return Err(format!(
                        "verbose_json without timestamp_granularities[]=segment: {fields:?}"
                    ));
                }
            }
            other => return Err(format!("unexpected response_format {other}")),
        }
        if let Some(lang) = fields.get("language")
            && !matches!(lang.as_str(), "es" | "en")
        {
            return Err(format!("language {lang} is not ISO 639-1"));
        }
        let verbose = format == "verbose_json";
        Ok((fields, verbose))
    }
    .await;
    let (fields, verbose) = match checked {
        Ok(ok) => ok,
        Err(why) => return s.refuse(e, why),
    };
    s.record(e, fields.clone(), None);
    let answers = s.answers.lock().unwrap().clone();
    scripted(e, s.next(e), move || {
        let text: Vec<&str> = answers.segments.iter().map(|(_, _, t)| t.as_str()).collect();
        let body = if verbose {
            let segments: Vec<Value> = answers
                .segments
                .iter()
                .enumerate()
                .map(|(i, (start, end, text))| {
                    json!({"id": i, "seek": 0, "start": start, "end": end, "text": format!(" {text}"),
                           "tokens": [50364, 400, 401], "temperature": 0.0, "avg_logprob": -0.25,
                           "compression_ratio": 1.3, "no_speech_prob": 0.01})
                })
                .collect();
            json!({"task": "transcribe", "language": "spanish", "duration": 10.0,
                   "text": text.join(" "), "segments": segments,
                   "usage": {"type": "duration", "seconds": 10}})
        } else {
            json!({"text": text.join(" "), "usage": {"type": "duration", "seconds": 10}})
        };
        axum::Json(body).into_response()
    })
    .await
}

async fn image_edits(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    form: Multipart,
) -> Response {
    let e = Endpoint::ImageEdits;
    if let Some(refused) = s.wrong_key(e, &headers) {
        return refused;
    }
    let checked = async {
        s.bearer(&headers)?;
        let (fields, files) = read_form(form).await?;
        let [(name, _, ty, bytes)] = files.as_slice() else {
            return Err(format!("expected one image, got {}", files.len()));
        };
        if name != "image" && name != "image[]" {
            return Err(format!("the image field is called {name}"));
        }
        let jpeg = bytes.starts_with(&[0xFF, 0xD8, 0xFF]);
        let png = bytes.starts_with(b"\x89PNG");
        if !(jpeg || png) || !(ty.starts_with("image/") || ty.is_empty()) {
            return Err(format!("the image is not a JPEG or PNG ({ty})"));
        }
        need(&fields, "prompt")?;
        need(&fields, "model")?;
        Ok(fields)
    }
    .await;
    let fields = match checked {
        Ok(ok) => ok,
        Err(why) => return s.refuse(e, why),
    };
    s.record(e, fields, None);
    let png = s.answers.lock().unwrap().image_png.clone();
    scripted(e, s.next(e), move || {
        axum::Json(
            json!({"created": 1_764_800_000, "data": [{"b64_json": STANDARD.encode(png)}],
                          "usage": {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50}}),
        )
        .into_response()
    })
    .await
}

async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::Chat;
    if let Some(refused) = s.wrong_key(e, &headers) {
        return refused;
    }
    let checked = (|| {
        s.bearer(&headers)?;
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            return Err("not a JSON body".to_owned());
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let model = v["model"].as_str().ok_or("no model")?;
        let messages = v["messages"].as_array().ok_or("no messages array")?;
        if messages.is_empty() {
            return Err("no messages".into());
        }
        for m in messages {
            let role = m["role"].as_str().ok_or("a message without a role")?;
            if !matches!(role, "system" | "developer" | "user" | "assistant") {
                return Err(format!("unknown role {role}"));
            }
            m["content"]
                .as_str()
                .ok_or("a message without text content")?;
        }
        if v.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err("streaming was not asked for".into());
        }
        let user = messages.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned();
        Ok((model.to_owned(), user, v))
    })();
    let (model, user, v) = match checked {
        Ok(ok) => ok,
        Err(why) => return s.refuse(e, why),
    };
    let mut fields = BTreeMap::new();
    fields.insert("model".to_owned(), model.clone());
    s.record(e, fields, Some(v));
    let mode = s.answers.lock().unwrap().chat.clone();
    scripted(e, s.next(e), move || {
        let script = |name: &str, lose: bool| {
            let mut lost = false;
            user.lines()
                .filter(|l| {
                    let drop = lose && !lost && l.starts_with("[[");
                    lost |= drop;
                    !drop
                })
                .map(|l| {
                    if l.starts_with('[') {
                        l.to_owned()
                    } else {
                        format!("{name}: {l}")
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (content, finish) = match mode {
            ChatMode::Faithful(name) => (script(&name, false), "stop"),
            ChatMode::LosePlaceholder(name) => (script(&name, true), "stop"),
            ChatMode::Truncated => ("ANA: Buenas".to_owned(), "length"),
        };
        axum::Json(json!({
            "id": "chatcmpl-standin", "object": "chat.completion", "created": 1_764_800_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null},
                         "logprobs": null, "finish_reason": finish}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 100, "total_tokens": 200},
        }))
        .into_response()
    })
    .await
}

async fn gemini(
    State(s): State<Arc<Shared>>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let e = Endpoint::Gemini;
    if let Some(refused) = s.wrong_key(e, &headers) {
        return refused;
    }
    let checked = (|| {
        let Some(model) = action.strip_suffix(":generateContent") else {
            return Err(format!("unknown method {action}"));
        };
        if headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) != Some(s.key.as_str()) {
            return Err("wrong or missing x-goog-api-key".to_owned());
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let parts = v["contents"][0]["parts"]
            .as_array()
            .ok_or("no contents[0].parts")?;
        let text = parts
            .iter()
            .find_map(|p| p["text"].as_str())
            .ok_or("no text part")?;
        let image = parts
            .iter()
            .find_map(|p| p.get("inline_data").or_else(|| p.get("inlineData")))
            .ok_or("no inline image part")?;
        let mime = image
            .get("mime_type")
            .or_else(|| image.get("mimeType"))
            .and_then(Value::as_str)
            .ok_or("no mime type")?;
        let data = STANDARD
            .decode(image["data"].as_str().ok_or("no data")?)
            .map_err(|_| "image data is not base64")?;
        if mime != "image/jpeg" || !data.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return Err(format!(
                "the inline image is not the JPEG it claims ({mime})"
            ));
        }
        let modalities = &v["generationConfig"]["responseModalities"];
        if !modalities
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "IMAGE"))
        {
            return Err("responseModalities does not ask for an image".into());
        }
        Ok((model.to_owned(), text.to_owned(), v.clone()))
    })();
    let (model, prompt, v) = match checked {
        Ok(ok) => ok,
        Err(why) => return s.refuse(e, why),
    };
    let mut fields = BTreeMap::new();
    fields.insert("model".to_owned(), model);
    fields.insert("prompt".to_owned(), prompt);
    s.record(e, fields, Some(v));
    let png = s.answers.lock().unwrap().image_png.clone();
    scripted(e, s.next(e), move || {
        axum::Json(json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Here is the drawing."},
                    {"inlineData": {"mimeType": "image/png", "data": STANDARD.encode(png)}},
                ]},
                "finishReason": "STOP", "index": 0,
            }],
            "usageMetadata": {"promptTokenCount": 300, "candidatesTokenCount": 1290, "totalTokenCount": 1590},
            "modelVersion": "stand-in",
        }))
        .into_response()
    })
    .await
}
