//! Kiroku's browser island.
//!
//! Server-rendered pages mark the places the island owns with
//! `data-island="…"`; [`start`] mounts the matching Yew component there.
//! Every secret the product has is handled here and only here: the
//! password, the keys derived from it and the user's private key.

mod api;
mod bench;
mod components;
mod dom;
mod flows;
mod i18n;
mod idb;
mod keystore;
mod media;
mod reader;
mod recorder;
mod resume;
mod strength;
mod uploader;
mod webcrypto;

use wasm_bindgen::prelude::*;
use web_sys::Element;

use crate::components::{Login, Logout, PasswordChange, SessionKey, Setup, SetupProps};

/// Entry point, run by `static/boot.js` once the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
        return;
    };
    let Ok(nodes) = doc.query_selector_all("[data-island]") else {
        return;
    };
    for i in 0..nodes.length() {
        let Some(el) = nodes.item(i).and_then(|n| n.dyn_into::<Element>().ok()) else {
            continue;
        };
        mount(el);
    }
    dom::mark_ready();
}

fn mount(el: Element) {
    match el.get_attribute("data-island").as_deref() {
        Some("login") => {
            yew::Renderer::<Login>::with_root(el).render();
        }
        Some("setup") => {
            let props = SetupProps {
                user_id: el.get_attribute("data-user-id").unwrap_or_default(),
                params: dom::params_from(&el),
            };
            yew::Renderer::<Setup>::with_root_and_props(el, props).render();
        }
        Some("password") => {
            yew::Renderer::<PasswordChange>::with_root(el).render();
        }
        Some("session") => {
            yew::Renderer::<SessionKey>::with_root(el).render();
        }
        Some("recorder") => {
            yew::Renderer::<recorder::Recorder>::with_root(el).render();
        }
        Some("interrupted") => {
            yew::Renderer::<resume::Interrupted>::with_root(el).render();
        }
        Some("resume") => {
            let props = resume::ResumeProps {
                project: el.get_attribute("data-project").unwrap_or_default(),
            };
            yew::Renderer::<resume::Resume>::with_root_and_props(el, props).render();
        }
        Some("reader") => {
            yew::Renderer::<reader::Reader>::with_root(el).render();
        }
        Some("project-actions") => {
            let props = reader::ActionsProps {
                project: el.get_attribute("data-project").unwrap_or_default(),
                title: el.get_attribute("data-title").unwrap_or_default(),
            };
            yew::Renderer::<reader::ProjectActions>::with_root_and_props(el, props).render();
        }
        Some("logout") => Logout::attach(el),
        _ => {}
    }
}
