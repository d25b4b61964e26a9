//! The optional script rewrite: an OpenAI-compatible chat model turns the
//! composed transcript into a stage script (`NAME: line` dialogue, stage
//! directions in parentheses, inner-life blocks kept in order).
//!
//! The model sees the document as plain lines: paragraphs, inner-life
//! blocks between `[VIDA INTERNA]` and `[/VIDA INTERNA]` (`[INNER LIFE]` in
//! English), and each photo as a placeholder line `[[FOTO n]]` (`[[PHOTO
//! n]]`). Its answer is read back the same way and accepted only when every
//! placeholder comes back exactly once, alone on its line and in order,
//! with no placeholder invented, the blocks well formed, and about as many
//! words as went in. Anything else is refused and the caller keeps the
//! deterministic script ([`super::script`]).

use kiroku_runtime::{ConfigError, Env};
use serde::Deserialize;

use super::compose::{DocLang, Document, Item, Paragraph};
use crate::remote::{self, RemoteConfig, RemoteError};

const SERVICE: &str = "script model";

#[derive(Debug, Clone)]
pub struct RewriteConfig {
    pub base_url: String,
    pub api_key: remote::ApiKey,
    pub model: String,
}

impl RewriteConfig {
    /// `None` unless `KIROKU_REWRITE=openai`: the rewrite is off by default.
    pub fn from_env(env: &Env) -> Result<Option<RewriteConfig>, ConfigError> {
        match env.or("KIROKU_REWRITE", "off").as_str() {
            "off" => Ok(None),
            "openai" => Ok(Some(RewriteConfig {
                base_url: crate::speech::openai::openai_base_url(env),
                api_key: remote::ApiKey::new(env.required("KIROKU_OPENAI_API_KEY")?),
                model: env.or("KIROKU_OPENAI_CHAT_MODEL", "gpt-4o-mini"),
            })),
            _ => Err(ConfigError::invalid(
                "KIROKU_REWRITE",
                "must be off or openai",
            )),
        }
    }
}

/// Why a rewrite was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("the script model's answer was refused: {0}")]
    Refused(&'static str),
}

pub struct Rewriter {
    client: async_openai::Client<async_openai::config::OpenAIConfig>,
    model: String,
    remote: RemoteConfig,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

struct Words {
    photo: &'static str,
    open: &'static str,
    close: &'static str,
}

fn words(lang: DocLang) -> Words {
    match lang {
        DocLang::Es => Words {
            photo: "FOTO",
            open: "[VIDA INTERNA]",
            close: "[/VIDA INTERNA]",
        },
        DocLang::En => Words {
            photo: "PHOTO",
            open: "[INNER LIFE]",
            close: "[/INNER LIFE]",
        },
    }
}

/// The instructions, in the script's language.
pub fn system_prompt(doc: &Document) -> String {
    let w = words(doc.meta.lang);
    let name = doc.meta.participant.trim();
    let name = if name.is_empty() {
        match doc.meta.lang {
            DocLang::Es => "ARTISTA",
            DocLang::En => "PERFORMER",
        }
    } else {
        name
    };
    let spectator = match doc.meta.lang {
        DocLang::Es => "ESPECTADOR",
        DocLang::En => "SPECTATOR",
    };
    format!(
        "You turn the transcript of a magician's or performer's rehearsal into a stage script, \
         in the transcript's own language. Rules:\n\
         - One element per line. Spoken lines as `NAME: text`; the performer speaking (\"I\") is \
         `{name}`; anyone else is `{spectator}` or a name the transcript gives.\n\
         - Stage directions, only where the transcript describes an action, in parentheses on \
         their own line.\n\
         - Lines between `{open}` and `{close}` are the performer's inner life (their secret \
         method, what the audience must not see): keep each such block, in order, with both \
         marker lines. Mark as inner life also any passage where the performer explains the \
         method instead of talking to the audience.\n\
         - Every line `[[{photo} n]]` is a photo: copy it exactly, alone on its line, at the same \
         place. Never add, remove, renumber or merge one.\n\
         - Keep every sentence the performer said, in order, with its meaning and wording; fix \
         only obvious transcription errors and punctuation. Invent nothing; drop nothing.\n\
         - Answer with the script only: no title, no comments, no Markdown.",
        open = w.open,
        close = w.close,
        photo = w.photo,
    )
}

/// The document as the lines the model reads; photos numbered from 1 in
/// the order they appear.
pub fn transcript_lines(doc: &Document) -> String {
    let w = words(doc.meta.lang);
    let mut out = Vec::new();
    let mut inner = false;
    let mut photo = 0;
    for p in &doc.paragraphs {
        if p.inner != inner {
            out.push(if p.inner { w.open } else { w.close }.to_owned());
            inner = p.inner;
        }
        let mut text: Vec<&str> = Vec::new();
        for item in &p.items {
            match item {
                Item::Text(t) => text.push(t),
                Item::Photo(_) => {
                    if !text.is_empty() {
                        out.push(text.join(" "));
                        text.clear();
                    }
                    photo += 1;
                    out.push(format!("[[{} {photo}]]", w.photo));
                }
            }
        }
        if !text.is_empty() {
            out.push(text.join(" "));
        }
    }
    if inner {
        out.push(w.close.to_owned());
    }
    out.join("\n")
}

fn word_count(text: &str) -> usize {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count()
}

/// Reads the model's answer back into paragraphs, or refuses it.
/// `photo_items` maps placeholder `n` (from 1) to its photo index.
pub fn parse_answer(
    doc: &Document,
    answer: &str,
    photo_items: &[usize],
) -> Result<Vec<Paragraph>, RewriteError> {
    let mut paragraphs = Vec::new();
    let mut inner = false;
    let mut next_photo = 0;
    let mut words_out = 0;
    for raw in answer.lines() {
        let line = raw.trim();
        // A model may wrap its answer in a code fence despite the rules.
        if line.is_empty() || line.starts_with("```") {
            continue;
        }
        let upper = line.to_uppercase();
        if upper == "[VIDA INTERNA]" || upper == "[INNER LIFE]" {
            if inner {
                return Err(RewriteError::Refused("an inner-life block opens twice"));
            }
            inner = true;
            continue;
        }
        if upper == "[/VIDA INTERNA]" || upper == "[/INNER LIFE]" {
            if !inner {
                return Err(RewriteError::Refused(
                    "an inner-life block closes without opening",
                ));
            }
            inner = false;
            continue;
        }
        if let Some(n) = placeholder(line) {
            if n != next_photo + 1 || n > photo_items.len() {
                return Err(RewriteError::Refused(
                    "a photo placeholder is missing, repeated, out of order or invented",
                ));
            }
            paragraphs.push(Paragraph {
                items: vec![Item::Photo(photo_items[next_photo])],
                inner,
            });
            next_photo += 1;
            continue;
        }
        if line.contains("[[") || line.contains("]]") {
            return Err(RewriteError::Refused(
                "a photo placeholder is not alone on its line",
            ));
        }
        words_out += word_count(line);
        paragraphs.push(Paragraph {
            items: vec![Item::Text(line.to_owned())],
            inner,
        });
    }
    if next_photo != photo_items.len() {
        return Err(RewriteError::Refused("a photo placeholder is missing"));
    }
    let words_in: usize = doc
        .paragraphs
        .iter()
        .flat_map(|p| &p.items)
        .map(|i| match i {
            Item::Text(t) => word_count(t),
            Item::Photo(_) => 0,
        })
        .sum();
    // Speaker names and directions add words; dropping half the script or
    // padding it out to more than twice its length is not a rewrite.
    if words_out * 2 < words_in || words_out > words_in * 2 + 40 {
        return Err(RewriteError::Refused(
            "its length is too far from the transcript's",
        ));
    }
    Ok(paragraphs)
}

/// `[[FOTO n]]` or `[[PHOTO n]]` alone on a line.
fn placeholder(line: &str) -> Option<usize> {
    let inner = line.strip_prefix("[[")?.strip_suffix("]]")?.trim();
    let (word, number) = inner.split_once(' ')?;
    if !matches!(word.to_uppercase().as_str(), "FOTO" | "PHOTO") {
        return None;
    }
    number.trim().parse().ok()
}

#[derive(Deserialize)]
struct ChatAnswer {
    #[serde(default)]
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<String>,
}

impl Rewriter {
    pub fn new(config: RewriteConfig, remote: RemoteConfig) -> anyhow::Result<Rewriter> {
        Ok(Rewriter {
            client: remote::openai_client(&remote, &config.base_url, &config.api_key)?,
            model: config.model,
            remote,
        })
    }

    /// The rewritten paragraphs of `doc`, or why there are none.
    pub async fn rewrite(&self, doc: &Document) -> Result<Vec<Paragraph>, RewriteError> {
        if doc.has_no_text() {
            return Err(RewriteError::Refused("there is nothing to rewrite"));
        }
        let photo_items: Vec<usize> = doc
            .paragraphs
            .iter()
            .flat_map(|p| &p.items)
            .filter_map(|i| match i {
                Item::Photo(n) => Some(*n),
                Item::Text(_) => None,
            })
            .collect();
        let request = serde_json::json!({
            "model": self.model,
            "temperature": 0.2,
            "messages": [
                { "role": "system", "content": system_prompt(doc) },
                { "role": "user", "content": transcript_lines(doc) },
            ],
        });
        let answer: ChatAnswer = remote::with_retries(&self.remote, SERVICE, || async {
            self.client
                .chat()
                .create_byot(request.clone())
                .await
                .map_err(|e| RemoteError::from_openai(SERVICE, &e))
        })
        .await?;
        let choice = answer
            .choices
            .into_iter()
            .next()
            .ok_or(RewriteError::Refused("it has no choices"))?;
        if choice.finish_reason.as_deref() == Some("length") {
            return Err(RewriteError::Refused("it was cut off"));
        }
        let text = choice
            .message
            .content
            .ok_or(RewriteError::Refused("it is empty"))?;
        parse_answer(doc, &text, &photo_items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::compose::{Meta, Photo};

    fn doc() -> Document {
        let p = |items: Vec<Item>, inner| Paragraph { items, inner };
        let t = |s: &str| Item::Text(s.to_owned());
        Document {
            meta: Meta {
                title: "La carta".into(),
                participant: "Ana".into(),
                date: "2026-12-04".into(),
                duration_ms: 60_000,
                lang: DocLang::Es,
            },
            paragraphs: vec![
                p(
                    vec![t("Buenas noches, elija una carta."), Item::Photo(0)],
                    false,
                ),
                p(vec![t("Sé que es el siete de picas.")], true),
                p(vec![t("¿Es su carta?"), Item::Photo(1)], false),
            ],
            photos: (0..2)
                .map(|i| Photo {
                    offset_ms: i * 1000,
                    jpeg: vec![],
                    width: 1,
                    height: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn the_model_reads_paragraphs_blocks_and_numbered_placeholders() {
        assert_eq!(
            transcript_lines(&doc()),
            "Buenas noches, elija una carta.\n[[FOTO 1]]\n[VIDA INTERNA]\nSé que es el siete de \
             picas.\n[/VIDA INTERNA]\n¿Es su carta?\n[[FOTO 2]]"
        );
        let prompt = system_prompt(&doc());
        assert!(prompt.contains("`Ana`") && prompt.contains("[[FOTO n]]"));
    }

    #[test]
    fn a_faithful_answer_becomes_the_script() {
        let answer = "```\nANA: Buenas noches, elija una carta.\n(Extiende la baraja.)\n[[FOTO 1]]\n\
                      [VIDA INTERNA]\nSé que es el siete de picas.\n[/VIDA INTERNA]\n\
                      ANA: ¿Es su carta?\n[[FOTO 2]]\n```";
        let paragraphs = parse_answer(&doc(), answer, &[0, 1]).unwrap();
        let shape: Vec<(String, bool)> = paragraphs
            .iter()
            .map(|p| {
                let s = match &p.items[0] {
                    Item::Text(t) => t.clone(),
                    Item::Photo(i) => format!("photo {i}"),
                };
                (s, p.inner)
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("ANA: Buenas noches, elija una carta.".into(), false),
                ("(Extiende la baraja.)".into(), false),
                ("photo 0".into(), false),
                ("Sé que es el siete de picas.".into(), true),
                ("ANA: ¿Es su carta?".into(), false),
                ("photo 1".into(), false),
            ]
        );
    }

    #[test]
    fn answers_that_lose_or_invent_placeholders_are_refused() {
        let base = "ANA: Buenas noches, elija una carta.\nSé que es el siete de picas.\nANA: ¿Es su carta?";
        let cases = [
            format!("{base}\n[[FOTO 1]]"),                              // one lost
            format!("[[FOTO 1]]\n{base}\n[[FOTO 2]]\n[[FOTO 3]]"),      // one invented
            format!("[[FOTO 2]]\n{base}\n[[FOTO 1]]"),                  // out of order
            format!("[[FOTO 1]]\n[[FOTO 1]]\n{base}\n[[FOTO 2]]"),      // repeated
            format!("[[FOTO 1]] {base}\n[[FOTO 2]]"),                   // not alone
            format!("[[FOTO 1]]\n{base}\n[[IMAGEN 2]]"),                // renamed
            format!("[[FOTO 1]]\n[/VIDA INTERNA]\n{base}\n[[FOTO 2]]"), // unbalanced
            "[[FOTO 1]]\nANA: Hola.\n[[FOTO 2]]".to_owned(),            // text dropped
            format!("[[FOTO 1]]\n{}\n[[FOTO 2]]", "bla ".repeat(200)),  // text invented
        ];
        for case in cases {
            assert!(
                matches!(
                    parse_answer(&doc(), &case, &[0, 1]),
                    Err(RewriteError::Refused(_))
                ),
                "accepted: {case}"
            );
        }
    }
}
