//! Microphone, MediaRecorder, level meter, camera and wake lock.

use js_sys::{Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    AnalyserNode, AudioContext, Blob, HtmlCanvasElement, HtmlVideoElement, MediaRecorder,
    MediaRecorderOptions, MediaStream, MediaStreamConstraints,
};

fn window() -> Result<web_sys::Window, JsValue> {
    web_sys::window().ok_or_else(|| JsValue::from_str("no window"))
}

/// Asks for a media stream: `audio` for the microphone, `video` with a
/// `facingMode` for the camera.
pub async fn user_media(audio: bool, facing: Option<&str>) -> Result<MediaStream, JsValue> {
    let devices = window()?.navigator().media_devices()?;
    let c = MediaStreamConstraints::new();
    c.set_audio(&JsValue::from_bool(audio));
    match facing {
        Some(mode) => {
            let video = Object::new();
            Reflect::set(&video, &"facingMode".into(), &mode.into())?;
            Reflect::set(&video, &"width".into(), &JsValue::from(1920))?;
            c.set_video(&video);
        }
        None => c.set_video(&JsValue::FALSE),
    }
    let stream = JsFuture::from(devices.get_user_media_with_constraints(&c)?).await?;
    stream.dyn_into()
}

pub fn stop_tracks(stream: &MediaStream) {
    for t in stream.get_tracks().iter() {
        if let Ok(track) = t.dyn_into::<web_sys::MediaStreamTrack>() {
            track.stop();
        }
    }
}

/// The first container/codec this browser can record: WebM/Opus where
/// supported, MP4/AAC on Safari.
pub fn audio_type() -> &'static str {
    [
        "audio/webm;codecs=opus",
        "audio/webm",
        "audio/mp4",
        "audio/ogg;codecs=opus",
    ]
    .into_iter()
    .find(|t| MediaRecorder::is_type_supported(t))
    .unwrap_or("audio/webm")
}

pub fn recorder(stream: &MediaStream, mime: &str) -> Result<MediaRecorder, JsValue> {
    let opts = MediaRecorderOptions::new();
    opts.set_mime_type(mime);
    MediaRecorder::new_with_media_stream_and_media_recorder_options(stream, &opts)
}

pub async fn blob_bytes(blob: &Blob) -> Result<Vec<u8>, JsValue> {
    let buf = JsFuture::from(blob.array_buffer()).await?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// Input level, 0.0–1.0, from an analyser on the microphone stream.
pub struct LevelMeter {
    _ctx: AudioContext,
    analyser: AnalyserNode,
    buf: Vec<u8>,
}

impl LevelMeter {
    pub fn new(stream: &MediaStream) -> Result<LevelMeter, JsValue> {
        let ctx = AudioContext::new()?;
        let source = ctx.create_media_stream_source(stream)?;
        let analyser = ctx.create_analyser()?;
        analyser.set_fft_size(1024);
        source.connect_with_audio_node(&analyser)?;
        let buf = vec![128u8; analyser.fft_size() as usize];
        Ok(LevelMeter {
            _ctx: ctx,
            analyser,
            buf,
        })
    }

    /// Root-mean-square level, scaled so speech fills most of the bar.
    pub fn level(&mut self) -> f64 {
        self.analyser.get_byte_time_domain_data(&mut self.buf);
        let n = self.buf.len().max(1) as f64;
        let sum: f64 = self
            .buf
            .iter()
            .map(|b| ((*b as f64 - 128.0) / 128.0).powi(2))
            .sum();
        ((sum / n).sqrt() * 4.0).min(1.0)
    }
}

/// Shows `stream` in `video` and starts playback.
pub async fn preview(video: &HtmlVideoElement, stream: &MediaStream) -> Result<(), JsValue> {
    video.set_src_object(Some(stream));
    video.set_muted(true);
    JsFuture::from(video.play()?).await.map(drop)
}

/// A JPEG of the video's current frame.
pub async fn snapshot(video: &HtmlVideoElement) -> Result<Vec<u8>, JsValue> {
    let doc = crate::dom::document();
    let canvas: HtmlCanvasElement = doc.create_element("canvas")?.dyn_into()?;
    let (w, h) = (video.video_width().max(1), video.video_height().max(1));
    canvas.set_width(w);
    canvas.set_height(h);
    let ctx: web_sys::CanvasRenderingContext2d = canvas
        .get_context("2d")?
        .ok_or("no 2d context")?
        .dyn_into()?;
    ctx.draw_image_with_html_video_element(video, 0.0, 0.0)?;
    let promise = Promise::new(&mut |resolve, reject| {
        let cb = Closure::once_into_js(move |blob: JsValue| {
            if blob.is_null() {
                let _ = reject.call1(&JsValue::NULL, &"no image".into());
            } else {
                let _ = resolve.call1(&JsValue::NULL, &blob);
            }
        });
        let _ = canvas.to_blob_with_type_and_encoder_options(
            cb.unchecked_ref(),
            "image/jpeg",
            &JsValue::from_f64(0.9),
        );
    });
    let blob: Blob = JsFuture::from(promise).await?.dyn_into()?;
    blob_bytes(&blob).await
}

/// Keeps the screen on while recording, where the browser allows it.
/// Returns the sentinel to release later.
pub async fn wake_lock() -> Option<JsValue> {
    let nav = window().ok()?.navigator();
    let wl = Reflect::get(&nav, &"wakeLock".into())
        .ok()
        .filter(|v| !v.is_undefined())?;
    let request: js_sys::Function = Reflect::get(&wl, &"request".into()).ok()?.dyn_into().ok()?;
    let promise: Promise = request.call1(&wl, &"screen".into()).ok()?.dyn_into().ok()?;
    JsFuture::from(promise).await.ok()
}

pub fn release_wake_lock(sentinel: &JsValue) {
    if let Ok(f) =
        Reflect::get(sentinel, &"release".into()).and_then(|f| f.dyn_into::<js_sys::Function>())
    {
        let _ = f.call0(sentinel);
    }
}

/// An object URL showing `bytes` as an image (for thumbnails).
pub fn image_url(bytes: &[u8]) -> Option<String> {
    let arr = js_sys::Array::of1(&Uint8Array::from(bytes));
    let bag = web_sys::BlobPropertyBag::new();
    bag.set_type("image/jpeg");
    let blob = Blob::new_with_u8_array_sequence_and_options(&arr, &bag).ok()?;
    web_sys::Url::create_object_url_with_blob(&blob).ok()
}
