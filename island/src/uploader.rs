//! Getting chunks and photos to the server over a poor connection.
//!
//! Every chunk is written to IndexedDB before it is sent and removed only
//! when the server acknowledges it as stored; after a dropped connection the
//! socket reconnects with backoff and resends everything unacknowledged.
//! The server ignores duplicates, so resending is always safe. Photos are
//! kept the same way and POSTed with retries.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::Uint8Array;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};
use yew::platform::spawn_local;

use crate::idb::Store;

const PENDING: Store = Store {
    db: "kiroku-uploads",
    store: "pending",
};

/// What the upload line shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    pub produced: u32,
    pub acked: u32,
    pub connected: bool,
    pub photos_total: u32,
    pub photos_done: u32,
    pub reconnects: u32,
}

impl Progress {
    /// Something recorded is not yet safely on the server.
    pub fn catching_up(&self) -> bool {
        self.acked < self.produced || self.photos_done < self.photos_total
    }
}

struct Inner {
    project: String,
    pending: BTreeMap<u32, Vec<u8>>,
    progress: Progress,
    ws: Option<WebSocket>,
    attempts: u32,
    finished: bool,
    /// A refusal no retry can fix ("stopped", "too_long").
    fatal: Option<String>,
}

#[derive(Clone)]
pub struct Uploader {
    inner: Rc<RefCell<Inner>>,
}

fn socket_url(project: &str) -> String {
    let loc = web_sys::window().expect("window").location();
    let scheme = if loc.protocol().unwrap_or_default() == "https:" {
        "wss"
    } else {
        "ws"
    };
    format!(
        "{scheme}://{}/ws/audio?project={project}",
        loc.host().unwrap_or_default()
    )
}

fn frame(seq: u32, audio: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + audio.len());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(audio);
    v
}

fn later(ms: i32, f: impl FnOnce() + 'static) {
    if let Some(w) = web_sys::window() {
        let cb = Closure::once_into_js(f);
        let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(cb.unchecked_ref(), ms);
    }
}

impl Uploader {
    pub fn new(project: &str) -> Uploader {
        let up = Uploader {
            inner: Rc::new(RefCell::new(Inner {
                project: project.to_owned(),
                pending: BTreeMap::new(),
                progress: Progress::default(),
                ws: None,
                attempts: 0,
                finished: false,
                fatal: None,
            })),
        };
        up.connect();
        up
    }

    pub fn progress(&self) -> Progress {
        self.inner.borrow().progress
    }

    pub fn fatal(&self) -> Option<String> {
        self.inner.borrow().fatal.clone()
    }

    fn connect(&self) {
        let url = socket_url(&self.inner.borrow().project);
        let Ok(ws) = WebSocket::new(&url) else {
            self.retry_later();
            return;
        };
        ws.set_binary_type(BinaryType::Arraybuffer);

        let me = self.clone();
        let onopen = Closure::<dyn FnMut()>::new(move || {
            let mut inner = me.inner.borrow_mut();
            inner.attempts = 0;
            inner.progress.connected = true;
            // Resend, in order, everything not yet acknowledged.
            if let Some(ws) = inner.ws.clone() {
                for (seq, audio) in &inner.pending {
                    let _ = ws.send_with_u8_array(&frame(*seq, audio));
                }
            }
        });
        let me = self.clone();
        let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let Some(text) = e.data().as_string() else {
                return;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                return;
            };
            if let Some(seq) = v["ack"].as_u64() {
                me.acked(seq as u32);
            } else if let Some(err) = v["error"].as_str() {
                me.inner.borrow_mut().fatal = Some(err.to_owned());
            }
        });
        let me = self.clone();
        let onclose = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            let retry = {
                let mut inner = me.inner.borrow_mut();
                inner.progress.connected = false;
                inner.ws = None;
                // 1008 "policy" means the server refuses for good (stopped,
                // too long); anything else is worth another try.
                if e.code() == 1008 && inner.fatal.is_none() {
                    inner.fatal = Some(e.reason());
                }
                !inner.finished && inner.fatal.is_none()
            };
            if retry {
                me.retry_later();
            }
        });
        ws.set_onopen(Some(onopen.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
        ws.set_onclose(Some(onclose.as_ref().unchecked_ref()));
        // The socket owns its handlers for as long as it lives.
        onopen.forget();
        onmessage.forget();
        onclose.forget();
        self.inner.borrow_mut().ws = Some(ws);
    }

    fn retry_later(&self) {
        let delay = {
            let mut inner = self.inner.borrow_mut();
            inner.attempts += 1;
            inner.progress.reconnects += 1;
            (250 * 2i32.pow(inner.attempts.min(7))).min(15_000)
        };
        let me = self.clone();
        later(delay, move || {
            if !me.inner.borrow().finished {
                me.connect();
            }
        });
    }

    fn acked(&self, seq: u32) {
        let (project, removed) = {
            let mut inner = self.inner.borrow_mut();
            let removed = inner.pending.remove(&seq).is_some();
            if removed {
                inner.progress.acked += 1;
            }
            (inner.project.clone(), removed)
        };
        if removed {
            spawn_local(async move {
                let _ = PENDING.delete(&format!("chunk:{project}:{seq}")).await;
            });
        }
    }

    /// Queues chunk `seq`: kept in IndexedDB, sent now if connected.
    pub fn push_chunk(&self, seq: u32, audio: Vec<u8>) {
        let (project, ws) = {
            let mut inner = self.inner.borrow_mut();
            inner.progress.produced += 1;
            (
                inner.project.clone(),
                inner.ws.clone().filter(|_| inner.progress.connected),
            )
        };
        if let Some(ws) = ws {
            let _ = ws.send_with_u8_array(&frame(seq, &audio));
        }
        let copy = Uint8Array::from(audio.as_slice());
        self.inner.borrow_mut().pending.insert(seq, audio);
        spawn_local(async move {
            let _ = PENDING.put(&format!("chunk:{project}:{seq}"), &copy).await;
        });
    }

    /// Re-sends the chunks the server says are missing.
    pub fn resend(&self, missing: &[u32]) {
        let inner = self.inner.borrow();
        if let Some(ws) = inner.ws.clone().filter(|_| inner.progress.connected) {
            for seq in missing {
                if let Some(audio) = inner.pending.get(seq) {
                    let _ = ws.send_with_u8_array(&frame(*seq, audio));
                }
            }
        }
    }

    /// Queues a photo and uploads it with retries until it is stored or
    /// refused for good.
    pub fn push_photo(&self, id: String, offset_ms: i64, jpeg: Vec<u8>) {
        let project = {
            let mut inner = self.inner.borrow_mut();
            inner.progress.photos_total += 1;
            inner.project.clone()
        };
        let me = self.clone();
        spawn_local(async move {
            let key = format!("photo:{project}:{id}");
            let _ = PENDING.put(&key, &Uint8Array::from(jpeg.as_slice())).await;
            let path =
                format!("/api/photo?project_id={project}&photo_id={id}&offset_ms={offset_ms}");
            let mut attempt = 0u32;
            loop {
                match crate::api::post_bytes(&path, &jpeg).await {
                    Ok(()) => break,
                    Err(e)
                        if (400..500).contains(&e.status) && e.status != 408 && e.status != 429 =>
                    {
                        me.inner.borrow_mut().fatal = Some(e.message);
                        break;
                    }
                    Err(_) => {
                        attempt += 1;
                        let delay = (500 * 2i32.pow(attempt.min(5))).min(15_000);
                        crate::dom::sleep(delay).await;
                    }
                }
            }
            let _ = PENDING.delete(&key).await;
            me.inner.borrow_mut().progress.photos_done += 1;
        });
    }

    /// Stops reconnecting and closes the socket.
    pub fn finish(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.finished = true;
        if let Some(ws) = inner.ws.take() {
            let _ = ws.close();
        }
    }
}
