//! Getting chunks and photos to the server over a poor connection.
//!
//! Every chunk is sent and written to IndexedDB as soon as the recorder hands
//! it over, and removed from IndexedDB only when the server acknowledges it
//! as stored; after a dropped connection the socket reconnects with backoff
//! and resends everything unacknowledged.
//! The server ignores duplicates, so resending is always safe. Photos are
//! kept the same way and POSTed with retries.
//!
//! What IndexedDB holds outlives the page: after a reload (or a phone that
//! dropped the tab) [`leftovers`] finds it and [`Uploader::resume`] sends
//! it, so a page going away loses only the audio the recorder had not yet
//! handed over (at most one ten-second timeslice).

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

fn chunk_key(project: &str, seq: u32) -> String {
    format!("chunk:{project}:{seq}")
}

/// A photo's key carries its offset, so a resumed upload can still say
/// when the photo was taken.
fn photo_key(project: &str, id: &str, offset_ms: i64) -> String {
    format!("photo:{project}:{id}:{offset_ms}")
}

/// One IndexedDB key, understood.
#[derive(Debug, PartialEq, Eq)]
enum Kept {
    Chunk {
        project: String,
        seq: u32,
    },
    Photo {
        project: String,
        id: String,
        offset_ms: i64,
    },
}

fn parse_key(key: &str) -> Option<Kept> {
    let mut parts = key.split(':');
    let kept = match (parts.next()?, parts.next()?) {
        ("chunk", project) => Kept::Chunk {
            project: project.to_owned(),
            seq: parts.next()?.parse().ok()?,
        },
        ("photo", project) => Kept::Photo {
            project: project.to_owned(),
            id: parts.next()?.to_owned(),
            offset_ms: parts.next()?.parse().ok()?,
        },
        _ => return None,
    };
    parts.next().is_none().then_some(kept)
}

impl Kept {
    fn project(&self) -> &str {
        match self {
            Kept::Chunk { project, .. } | Kept::Photo { project, .. } => project,
        }
    }
}

/// What a project has waiting in this browser.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftover {
    pub chunks: u32,
    pub photos: u32,
    /// The highest chunk number kept here.
    pub last_seq: Option<u32>,
}

/// Every project with chunks or photos still waiting in this browser.
pub async fn leftovers() -> BTreeMap<String, Leftover> {
    let mut found: BTreeMap<String, Leftover> = BTreeMap::new();
    for kept in PENDING
        .keys()
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|k| parse_key(k))
    {
        let entry = found.entry(kept.project().to_owned()).or_default();
        match kept {
            Kept::Chunk { seq, .. } => {
                entry.chunks += 1;
                entry.last_seq = entry.last_seq.max(Some(seq));
            }
            Kept::Photo { .. } => entry.photos += 1,
        }
    }
    found
}

/// Deletes what this browser keeps of `project` (once the server no longer
/// wants it: the recording was finished or discarded), whatever the shape
/// of the key after the project.
pub async fn forget(project: &str) {
    let (chunks, photos) = (format!("chunk:{project}:"), format!("photo:{project}:"));
    for key in PENDING.keys().await.unwrap_or_default() {
        if key.starts_with(&chunks) || key.starts_with(&photos) {
            let _ = PENDING.delete(&key).await;
        }
    }
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

    /// Picks up a recording whose page went away: reads every chunk and
    /// photo of `project` that this browser still keeps, then connects and
    /// sends them all.
    pub async fn resume(project: &str) -> Uploader {
        let mut chunks = BTreeMap::new();
        let mut photos = Vec::new();
        for key in PENDING.keys().await.unwrap_or_default() {
            let Some(kept) = parse_key(&key).filter(|k| k.project() == project) else {
                continue;
            };
            let Ok(value) = PENDING.get(&key).await else {
                continue;
            };
            if !value.is_instance_of::<Uint8Array>() {
                continue;
            }
            let bytes = Uint8Array::from(value).to_vec();
            match kept {
                Kept::Chunk { seq, .. } => {
                    chunks.insert(seq, bytes);
                }
                Kept::Photo { id, offset_ms, .. } => photos.push((id, offset_ms, bytes)),
            }
        }
        let up = Uploader {
            inner: Rc::new(RefCell::new(Inner {
                project: project.to_owned(),
                progress: Progress {
                    produced: chunks.len() as u32,
                    photos_total: photos.len() as u32,
                    ..Progress::default()
                },
                pending: chunks,
                ws: None,
                attempts: 0,
                finished: false,
                fatal: None,
            })),
        };
        // Opening the socket sends everything pending.
        if !up.inner.borrow().pending.is_empty() {
            up.connect();
        }
        for (id, offset_ms, bytes) in photos {
            spawn_local(up.clone().deliver_photo(id, offset_ms, bytes));
        }
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
                let _ = PENDING.delete(&chunk_key(&project, seq)).await;
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
            let _ = PENDING.put(&chunk_key(&project, seq), &copy).await;
        });
    }

    /// Whether every chunk in `seqs` is still held here.
    pub fn has_all(&self, seqs: &[u32]) -> bool {
        let inner = self.inner.borrow();
        seqs.iter().all(|s| inner.pending.contains_key(s))
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
            let key = photo_key(&project, &id, offset_ms);
            let _ = PENDING.put(&key, &Uint8Array::from(jpeg.as_slice())).await;
            me.deliver_photo(id, offset_ms, jpeg).await;
        });
    }

    /// POSTs a kept photo until it is stored or refused for good, then
    /// forgets it.
    async fn deliver_photo(self, id: String, offset_ms: i64, jpeg: Vec<u8>) {
        let project = self.inner.borrow().project.clone();
        let path = format!("/api/photo?project_id={project}&photo_id={id}&offset_ms={offset_ms}");
        let mut attempt = 0u32;
        loop {
            match crate::api::post_bytes(&path, &jpeg).await {
                Ok(()) => break,
                Err(e) if (400..500).contains(&e.status) && e.status != 408 && e.status != 429 => {
                    self.inner.borrow_mut().fatal = Some(e.message);
                    break;
                }
                Err(_) => {
                    attempt += 1;
                    let delay = (500 * 2i32.pow(attempt.min(5))).min(15_000);
                    crate::dom::sleep(delay).await;
                }
            }
        }
        let _ = PENDING.delete(&photo_key(&project, &id, offset_ms)).await;
        self.inner.borrow_mut().progress.photos_done += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_keys_are_read_back_and_strangers_ignored() {
        let p = "0b7d4c1e-8a51-4b2e-9f3a-1c2d3e4f5a6b";
        assert_eq!(
            parse_key(&chunk_key(p, 42)),
            Some(Kept::Chunk {
                project: p.into(),
                seq: 42
            })
        );
        assert_eq!(
            parse_key(&photo_key(p, "f00d", 61_250)),
            Some(Kept::Photo {
                project: p.into(),
                id: "f00d".into(),
                offset_ms: 61_250
            })
        );
        for bad in [
            "",
            "chunk",
            "chunk:p",
            "chunk:p:-1",
            "chunk:p:x",
            "chunk:p:1:2",
            "photo:p:id",
            "photo:p:id:soon",
            "key:p:1",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
