//! The Yew components mounted on server-rendered pages.

use kiroku_crypto::kdf::KdfParams;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::Closure;
use web_sys::{Element, HtmlFormElement, HtmlInputElement};
use yew::platform::spawn_local;
use yew::prelude::*;

use crate::flows::{self, Step};
use crate::i18n::t;
use crate::{dom, keystore, strength};

/// What the status line under a form says.
#[derive(Clone, PartialEq)]
enum Status {
    Idle,
    Busy(Step),
    Error(String),
    Done(&'static str),
}

fn status_line(status: &Status) -> Html {
    let tr = t();
    let (class, text) = match status {
        Status::Idle => ("status", String::new()),
        Status::Busy(step) => ("status busy", step.text(tr).to_owned()),
        Status::Error(m) => ("status error", m.clone()),
        Status::Done(m) => ("status ok", (*m).to_owned()),
    };
    html! { <p class={class} id="status" role="status" aria-live="polite">{ text }</p> }
}

fn value(r: &NodeRef) -> String {
    r.cast::<HtmlInputElement>()
        .map(|i| i.value())
        .unwrap_or_default()
}

fn clear(r: &NodeRef) {
    if let Some(i) = r.cast::<HtmlInputElement>() {
        i.set_value("");
    }
}

/// The sign-in form. Being on it means no session: any key this browser
/// kept for an earlier one is wiped first.
#[function_component(Login)]
pub fn login() -> Html {
    let tr = t();
    let username = use_node_ref();
    let password = use_node_ref();
    let status = use_state(|| Status::Idle);
    use_effect_with((), |_| {
        spawn_local(async {
            let _ = keystore::wipe().await;
        });
    });
    let onsubmit = {
        let (username, password, status) = (username.clone(), password.clone(), status.clone());
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            if matches!(*status, Status::Busy(_)) {
                return;
            }
            let (user, pass) = (value(&username), value(&password));
            let status = status.clone();
            let password = password.clone();
            spawn_local(async move {
                let s = status.clone();
                match flows::login(user.trim(), &pass, move |step| s.set(Status::Busy(step))).await
                {
                    Ok(next) => {
                        status.set(Status::Done(t().done));
                        dom::go(next);
                    }
                    Err(err) => {
                        clear(&password);
                        status.set(Status::Error(err.message(t())));
                    }
                }
            });
        })
    };
    let busy = matches!(*status, Status::Busy(_));
    html! {
        <form id="login-form" onsubmit={onsubmit} autocomplete="on">
            <label>{ tr.username }
                <input ref={username} id="username" name="username" autocomplete="username"
                       autocapitalize="none" required=true maxlength="63" />
            </label>
            <label>{ tr.password }
                <input ref={password} id="password" name="password" type="password"
                       autocomplete="current-password" required=true />
            </label>
            <button type="submit" disabled={busy}>{ tr.sign_in }</button>
            { status_line(&status) }
        </form>
    }
}

/// A password field with its strength meter and hint.
fn strength_view(score: u8) -> Html {
    let tr = t();
    html! {
        <>
            <meter id="strength" min="0" max="4" low="2" high="3" optimum="4" value={score.to_string()} />
            <p class="hint" id="strength-hint">{ tr.strength[score as usize] }</p>
        </>
    }
}

#[derive(Properties, PartialEq, Clone)]
pub struct SetupProps {
    pub user_id: String,
    pub params: Option<KdfParams>,
}

/// Key setup: new password twice, then key pair, wrap and upload.
#[function_component(Setup)]
pub fn setup(props: &SetupProps) -> Html {
    let tr = t();
    let password = use_node_ref();
    let repeat = use_node_ref();
    let status = use_state(|| Status::Idle);
    let score = use_state(|| 0u8);
    let oninput = {
        let (password, score) = (password.clone(), score.clone());
        Callback::from(move |_: InputEvent| score.set(strength::score(&value(&password))))
    };
    let onsubmit = {
        let (password, repeat, status, props) = (
            password.clone(),
            repeat.clone(),
            status.clone(),
            props.clone(),
        );
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            if matches!(*status, Status::Busy(_)) {
                return;
            }
            let (pass, again) = (value(&password), value(&repeat));
            let (status, props) = (status.clone(), props.clone());
            spawn_local(async move {
                let Some(params) = props.params else {
                    status.set(Status::Error(t().downgrade.into()));
                    return;
                };
                let s = status.clone();
                let result = flows::setup(&props.user_id, params, &pass, &again, move |step| {
                    s.set(Status::Busy(step))
                })
                .await;
                match result {
                    Ok(next) => {
                        status.set(Status::Done(t().done));
                        dom::go(next);
                    }
                    Err(err) => status.set(Status::Error(err.message(t()))),
                }
            });
        })
    };
    let busy = matches!(*status, Status::Busy(_));
    html! {
        <form id="setup-form" onsubmit={onsubmit}>
            <label>{ tr.new_password }
                <input ref={password} id="password" name="password" type="password"
                       autocomplete="new-password" required=true oninput={oninput} />
            </label>
            { strength_view(*score) }
            <label>{ tr.repeat_password }
                <input ref={repeat} id="repeat" name="repeat" type="password"
                       autocomplete="new-password" required=true />
            </label>
            <button type="submit" disabled={busy}>{ tr.create_keys }</button>
            { status_line(&status) }
        </form>
    }
}

/// Password change: the same private key, re-wrapped.
#[function_component(PasswordChange)]
pub fn password_change() -> Html {
    let tr = t();
    let current = use_node_ref();
    let password = use_node_ref();
    let repeat = use_node_ref();
    let status = use_state(|| Status::Idle);
    let score = use_state(|| 0u8);
    let oninput = {
        let (password, score) = (password.clone(), score.clone());
        Callback::from(move |_: InputEvent| score.set(strength::score(&value(&password))))
    };
    let onsubmit = {
        let refs = (current.clone(), password.clone(), repeat.clone());
        let status = status.clone();
        Callback::from(move |e: SubmitEvent| {
            e.prevent_default();
            if matches!(*status, Status::Busy(_)) {
                return;
            }
            let (cur, pass, again) = (value(&refs.0), value(&refs.1), value(&refs.2));
            let refs = refs.clone();
            let status = status.clone();
            spawn_local(async move {
                let s = status.clone();
                let result = flows::change_password(&cur, &pass, &again, move |step| {
                    s.set(Status::Busy(step))
                })
                .await;
                match result {
                    Ok(()) => {
                        for r in [&refs.0, &refs.1, &refs.2] {
                            clear(r);
                        }
                        status.set(Status::Done(t().done));
                    }
                    Err(err) => status.set(Status::Error(err.message(t()))),
                }
            });
        })
    };
    let busy = matches!(*status, Status::Busy(_));
    html! {
        <form id="password-form" onsubmit={onsubmit}>
            <label>{ tr.current_password }
                <input ref={current} id="current" name="current" type="password"
                       autocomplete="current-password" required=true />
            </label>
            <label>{ tr.new_password }
                <input ref={password} id="password" name="password" type="password"
                       autocomplete="new-password" required=true oninput={oninput} />
            </label>
            { strength_view(*score) }
            <label>{ tr.repeat_password }
                <input ref={repeat} id="repeat" name="repeat" type="password"
                       autocomplete="new-password" required=true />
            </label>
            <button type="submit" disabled={busy}>{ tr.save }</button>
            { status_line(&status) }
        </form>
    }
}

/// Says whether this browser holds the session's key.
#[function_component(SessionKey)]
pub fn session_key() -> Html {
    let status = use_state(|| Status::Idle);
    {
        let status = status.clone();
        use_effect_with((), move |_| {
            spawn_local(async move {
                match keystore::get().await {
                    Ok(Some(_)) => status.set(Status::Done(t().key_ready)),
                    _ => status.set(Status::Error(t().no_key.into())),
                }
            });
        });
    }
    html! { <div class="key-state">{ status_line(&status) }</div> }
}

/// Sign-out: wipe the kept key, then let the form post.
pub struct Logout;

impl Logout {
    pub fn attach(el: Element) {
        let Ok(form) = el.dyn_into::<HtmlFormElement>() else {
            return;
        };
        let target = form.clone();
        let handler = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
            e.prevent_default();
            let form = target.clone();
            spawn_local(async move {
                let _ = keystore::wipe().await;
                let _ = form.submit();
            });
        });
        let _ = form.add_event_listener_with_callback("submit", handler.as_ref().unchecked_ref());
        handler.forget();
    }
}

/// Re-renders the component every `ms` milliseconds while it is mounted,
/// for what changes outside Yew's state (clocks, meters, upload counters).
#[hook]
pub fn use_repaint(ms: i32) {
    let tick = use_state(|| 0u32);
    use_effect_with(ms, move |&ms| {
        let cb = Closure::<dyn FnMut()>::new(move || tick.set(tick.wrapping_add(1)));
        let id = web_sys::window()
            .and_then(|w| {
                w.set_interval_with_callback_and_timeout_and_arguments_0(
                    cb.as_ref().unchecked_ref(),
                    ms,
                )
                .ok()
            })
            .unwrap_or(0);
        move || {
            if let Some(w) = web_sys::window() {
                w.clear_interval_with_handle(id);
            }
            drop(cb);
        }
    });
}
