//! Spanish and English. The language comes from the `lang` cookie when the
//! performer chose one, else from the browser's Accept-Language.

use axum::http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Es,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Es => "es",
            Lang::En => "en",
        }
    }

    pub fn other(self) -> Lang {
        match self {
            Lang::Es => Lang::En,
            Lang::En => Lang::Es,
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        match code {
            "es" => Some(Lang::Es),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    /// Cookie first, then the first supported Accept-Language entry by
    /// quality; Spanish when nothing matches.
    pub fn from_headers(headers: &HeaderMap) -> Lang {
        let cookie = headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix("lang="))
            .find_map(Lang::parse);
        if let Some(l) = cookie {
            return l;
        }
        let accept = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut best: Option<(f32, Lang)> = None;
        for part in accept.split(',') {
            let mut it = part.trim().split(';');
            let tag = it.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = it
                .find_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            if let Some(lang) = Lang::parse(primary)
                && best.is_none_or(|(bq, _)| q > bq)
            {
                best = Some((q, lang));
            }
        }
        best.map(|(_, l)| l).unwrap_or(Lang::Es)
    }

    pub fn t(self) -> &'static Texts {
        match self {
            Lang::Es => &ES,
            Lang::En => &EN,
        }
    }
}

impl Texts {
    /// A project status in words.
    pub fn status(&self, code: &str) -> &'static str {
        let es = std::ptr::eq(self, &ES);
        match (code, es) {
            ("recording", true) => "grabando",
            ("recording", false) => "recording",
            ("queued", true) => "en cola",
            ("queued", false) => "queued",
            ("processing", true) => "procesando",
            ("processing", false) => "processing",
            ("ready", true) => "listo",
            ("ready", false) => "ready",
            ("failed", true) => "falló",
            ("failed", false) => "failed",
            ("discarded", true) => "descartado",
            ("discarded", false) => "discarded",
            (_, true) => "borrando",
            (_, false) => "deleting",
        }
    }
}

/// Every string a page shows.
pub struct Texts {
    pub tagline: &'static str,
    pub switch_to: &'static str,
    pub login_title: &'static str,
    pub needs_island: &'static str,
    pub zero_knowledge: &'static str,
    pub new_recording: &'static str,
    pub open_recordings: &'static str,
    pub step_queued: &'static str,
    pub step_prepare: &'static str,
    pub step_transcribe: &'static str,
    pub step_finalize: &'static str,
    pub retry: &'static str,
    pub failed_because: &'static str,
    /// `{n}` photos kept as taken: the daily styling quota was used up.
    pub notice_quota: &'static str,
    /// `{n}` photos kept as taken: the styling engine failed.
    pub notice_style_failed: &'static str,
    pub notice_rewrite_failed: &'static str,
    pub notice_rewrite_refused: &'static str,
    pub col_duration: &'static str,
    pub col_photos: &'static str,
    pub participant: &'static str,
    pub created: &'static str,
    pub script: &'static str,
    pub no_artifacts: &'static str,
    pub rename: &'static str,
    pub delete: &'static str,
    pub back: &'static str,
    pub setup_title: &'static str,
    pub setup_intro: &'static str,
    pub projects_title: &'static str,
    pub no_projects: &'static str,
    pub col_title: &'static str,
    pub col_status: &'static str,
    pub col_date: &'static str,
    pub change_password: &'static str,
    pub sign_out: &'static str,
    pub password_intro: &'static str,
}

pub static ES: Texts = Texts {
    tagline: "De tu ensayo a tu guion.",
    switch_to: "English",
    login_title: "Entrar",
    needs_island: "Esta página necesita WebAssembly y JavaScript para proteger tus claves.",
    new_recording: "Nueva grabación",
    open_recordings: "Grabaciones que siguen abiertas: termínalas o descártalas desde su página.",
    step_queued: "En cola: empezará en cuanto haya un trabajador libre.",
    step_prepare: "Preparando el audio…",
    step_transcribe: "Transcribiendo {done} de {total}",
    step_finalize: "Escribiendo y sellando el guion…",
    retry: "Reintentar",
    failed_because: "No se pudo procesar:",
    notice_quota: "Fotos sin estilizar: {n}. Se alcanzó el límite diario de estilizado; aparecen tal como se tomaron.",
    notice_style_failed: "Fotos sin estilizar: {n}. El servicio de estilizado falló; aparecen tal como se tomaron.",
    notice_rewrite_failed: "El modelo que reescribe el guion no respondió; este es el guion sin reescribir.",
    notice_rewrite_refused: "La reescritura del guion no era fiel a la grabación y se descartó; este es el guion sin reescribir.",
    col_duration: "Duración",
    col_photos: "Fotos",
    participant: "Participante",
    created: "Creado",
    script: "Guion",
    no_artifacts: "El guion aparecerá aquí cuando termine el procesamiento.",
    rename: "Cambiar nombre",
    delete: "Borrar proyecto",
    back: "Volver a tus proyectos",
    zero_knowledge: "Tu contraseña nunca sale de este navegador: solo él puede abrir tus guiones.",
    setup_title: "Crea tu contraseña",
    setup_intro: "Tu contraseña protege la clave que abre tus guiones. Kiroku no la guarda ni la ve: si la olvidas, nadie podrá recuperar tus guiones, tampoco quien administra el servidor. Elige una que recuerdes y guárdala en un lugar seguro.",
    projects_title: "Tus proyectos",
    no_projects: "Aún no hay grabaciones.",
    col_title: "Título",
    col_status: "Estado",
    col_date: "Fecha",
    change_password: "Cambiar contraseña",
    sign_out: "Salir",
    password_intro: "Tus guiones seguirán abriéndose con la nueva contraseña; la anterior dejará de funcionar.",
};

pub static EN: Texts = Texts {
    tagline: "From your rehearsal to your script.",
    switch_to: "Español",
    login_title: "Sign in",
    needs_island: "This page needs WebAssembly and JavaScript to protect your keys.",
    new_recording: "New recording",
    open_recordings: "Recordings still open: finish or discard them from their page.",
    step_queued: "Queued: it starts as soon as a worker is free.",
    step_prepare: "Preparing the audio…",
    step_transcribe: "Transcribing {done} of {total}",
    step_finalize: "Writing and sealing the script…",
    retry: "Retry",
    failed_because: "Processing failed:",
    notice_quota: "Photos not stylized: {n}. The daily styling limit was reached; they appear as taken.",
    notice_style_failed: "Photos not stylized: {n}. The styling service failed; they appear as taken.",
    notice_rewrite_failed: "The model that rewrites the script did not answer; this is the script as transcribed.",
    notice_rewrite_refused: "The rewritten script was not faithful to the recording and was discarded; this is the script as transcribed.",
    col_duration: "Duration",
    col_photos: "Photos",
    participant: "Participant",
    created: "Created",
    script: "Script",
    no_artifacts: "The script will appear here when processing finishes.",
    rename: "Rename",
    delete: "Delete project",
    back: "Back to your projects",
    zero_knowledge: "Your password never leaves this browser: only it can open your scripts.",
    setup_title: "Choose your password",
    setup_intro: "Your password protects the key that opens your scripts. Kiroku never stores or sees it: if you forget it, nobody can recover your scripts, not even whoever runs the server. Choose one you will remember and keep it somewhere safe.",
    projects_title: "Your projects",
    no_projects: "No recordings yet.",
    col_title: "Title",
    col_status: "Status",
    col_date: "Date",
    change_password: "Change password",
    sign_out: "Sign out",
    password_intro: "Your scripts will open with the new password; the old one stops working.",
};

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cookie_beats_accept_language() {
        let h = headers(&[("cookie", "a=b; lang=en"), ("accept-language", "es-ES")]);
        assert_eq!(Lang::from_headers(&h), Lang::En);
    }

    #[test]
    fn accept_language_by_quality() {
        let h = headers(&[("accept-language", "fr;q=1, en-GB;q=0.8, es;q=0.5")]);
        assert_eq!(Lang::from_headers(&h), Lang::En);
        let h = headers(&[("accept-language", "de, es-MX;q=0.9, en;q=0.2")]);
        assert_eq!(Lang::from_headers(&h), Lang::Es);
    }

    #[test]
    fn garbage_falls_back_to_spanish() {
        let h = headers(&[("accept-language", ";;;q=x,,"), ("cookie", "lang=xx")]);
        assert_eq!(Lang::from_headers(&h), Lang::Es);
    }
}
