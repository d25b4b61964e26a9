//! From transcript lines and photos to the script: paragraphs in time
//! order with each photo placed right after the line being spoken when it
//! was taken, inner-life blocks marked ([`super::script`]), and its
//! Markdown and HTML renderings.
//!
//! Transcript text is data everywhere: it is escaped for Markdown and HTML
//! here and never spliced into any markup unescaped.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// A transcribed stretch of speech.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
}

/// A photo ready for documents (upright, metadata-free JPEG).
#[derive(Debug, Clone)]
pub struct Photo {
    pub offset_ms: i64,
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocLang {
    Es,
    En,
}

#[derive(Debug, Clone)]
pub struct Meta {
    pub title: String,
    pub participant: String,
    /// `YYYY-MM-DD`
    pub date: String,
    pub duration_ms: i64,
    pub lang: DocLang,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Text(String),
    /// Index into [`Document::photos`].
    Photo(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Paragraph {
    pub items: Vec<Item>,
    /// Part of a "vida interna" block: what the performer thinks, not what
    /// the audience hears.
    pub inner: bool,
}

#[derive(Debug, Clone)]
pub struct Document {
    pub meta: Meta,
    pub paragraphs: Vec<Paragraph>,
    pub photos: Vec<Photo>,
}

impl Document {
    /// True when no speech was recognised at all.
    pub fn has_no_text(&self) -> bool {
        !self
            .paragraphs
            .iter()
            .any(|p| p.items.iter().any(|i| matches!(i, Item::Text(_))))
    }
}

/// A pause longer than this starts a new paragraph.
const PARAGRAPH_PAUSE_MS: i64 = 1500;
const MAX_LINES_PER_PARAGRAPH: usize = 5;

pub fn compose(meta: Meta, mut lines: Vec<Line>, mut photos: Vec<Photo>) -> Document {
    lines.retain(|l| !l.text.trim().is_empty());
    lines.sort_by_key(|l| (l.start_ms, l.end_ms));
    photos.sort_by_key(|p| p.offset_ms);
    let lines = super::script::mark_inner_life(lines);

    // Which line each photo follows: the last line started at or before it.
    let mut after_line: Vec<Vec<usize>> = vec![Vec::new(); lines.len()];
    let mut before_all = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        match lines.iter().rposition(|l| l.line.start_ms <= p.offset_ms) {
            Some(li) => after_line[li].push(i),
            None => before_all.push(i),
        }
    }

    let mut paragraphs: Vec<Paragraph> = Vec::new();
    let mut current: Vec<Item> = before_all.into_iter().map(Item::Photo).collect();
    let mut inner = lines.first().is_some_and(|l| l.inner);
    let mut lines_in_current = 0;
    let mut last_end: Option<i64> = None;
    for (li, marked) in lines.iter().enumerate() {
        let line = &marked.line;
        let pause = last_end.map(|e| line.start_ms - e).unwrap_or(0);
        if marked.inner != inner
            || (lines_in_current > 0
                && (pause > PARAGRAPH_PAUSE_MS || lines_in_current >= MAX_LINES_PER_PARAGRAPH))
        {
            if !current.is_empty() {
                paragraphs.push(Paragraph {
                    items: std::mem::take(&mut current),
                    inner,
                });
            }
            lines_in_current = 0;
            inner = marked.inner;
        }
        current.push(Item::Text(line.text.trim().to_owned()));
        lines_in_current += 1;
        current.extend(after_line[li].iter().map(|i| Item::Photo(*i)));
        last_end = Some(line.end_ms);
    }
    if !current.is_empty() {
        paragraphs.push(Paragraph {
            items: current,
            inner,
        });
    }
    Document {
        meta,
        paragraphs,
        photos,
    }
}

/// Whether paragraph `i` opens an inner-life block (and so takes its label).
pub fn opens_block(doc: &Document, i: usize) -> bool {
    doc.paragraphs[i].inner && (i == 0 || !doc.paragraphs[i - 1].inner)
}

struct Labels {
    participant: &'static str,
    date: &'static str,
    duration: &'static str,
    photo: &'static str,
    empty: &'static str,
    inner: &'static str,
}

/// The heading of an inner-life block in the document's language.
pub fn inner_life_label(lang: DocLang) -> &'static str {
    labels(lang).inner
}

fn labels(lang: DocLang) -> Labels {
    match lang {
        DocLang::Es => Labels {
            participant: "Participante",
            date: "Fecha",
            duration: "Duración",
            photo: "Foto",
            empty: "(No se reconoció texto en la grabación.)",
            inner: "Vida interna",
        },
        DocLang::En => Labels {
            participant: "Participant",
            date: "Date",
            duration: "Duration",
            photo: "Photo",
            empty: "(No speech was recognised in the recording.)",
            inner: "Inner life",
        },
    }
}

/// `m:ss` or `h:mm:ss`.
pub fn clock(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Escapes text so that Markdown shows it literally.
pub fn md_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for (i, c) in text.chars().enumerate() {
        let at_start = i == 0;
        let special = matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '~' | '$' | '&' | '!'
        ) || (at_start && matches!(c, '-' | '+' | '=' | '.' | ')'));
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    // "12. " at the start would become a list item.
    if let Some(dot) = out.find(['.', ')'])
        && dot > 0
        && out[..dot].chars().all(|c| c.is_ascii_digit())
    {
        out.insert(dot, '\\');
    }
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn photo_caption(doc: &Document, i: usize) -> String {
    let l = labels(doc.meta.lang);
    format!("{} {} · {}", l.photo, i + 1, clock(doc.photos[i].offset_ms))
}

pub fn markdown(doc: &Document) -> String {
    let l = labels(doc.meta.lang);
    let m = &doc.meta;
    let mut out = format!("# {}\n\n", md_escape(&m.title));
    if !m.participant.is_empty() {
        out.push_str(&format!(
            "**{}:** {}  \n",
            l.participant,
            md_escape(&m.participant)
        ));
    }
    out.push_str(&format!("**{}:** {}  \n", l.date, m.date));
    out.push_str(&format!("**{}:** {}\n\n", l.duration, clock(m.duration_ms)));
    if doc.has_no_text() {
        out.push_str(&format!("{}\n\n", md_escape(l.empty)));
    }
    // Each paragraph and photo is a piece; an inner-life block is one
    // block quote under its label, photos included, so its pieces are
    // joined by quoted blank lines.
    let mut pieces: Vec<(bool, String)> = Vec::new();
    for (pi, p) in doc.paragraphs.iter().enumerate() {
        if opens_block(doc, pi) {
            pieces.push((true, format!("**{}**", l.inner)));
        }
        let mut text: Vec<String> = Vec::new();
        for item in &p.items {
            match item {
                Item::Text(t) => text.push(md_escape(t)),
                Item::Photo(i) => {
                    if !text.is_empty() {
                        pieces.push((p.inner, text.join(" ")));
                        text.clear();
                    }
                    pieces.push((
                        p.inner,
                        format!(
                            "![{}](data:image/jpeg;base64,{})",
                            md_escape(&photo_caption(doc, *i)),
                            STANDARD.encode(&doc.photos[*i].jpeg)
                        ),
                    ));
                }
            }
        }
        if !text.is_empty() {
            pieces.push((p.inner, text.join(" ")));
        }
    }
    for (i, (inner, piece)) in pieces.iter().enumerate() {
        if *inner {
            out.push_str("> ");
        }
        out.push_str(piece);
        let next_inner = pieces.get(i + 1).is_some_and(|(n, _)| *n);
        out.push_str(if *inner && next_inner {
            "\n>\n"
        } else {
            "\n\n"
        });
    }
    out
}

/// The script's stylesheet, shared with the app, whose Content Security
/// Policy allows exactly this text (by hash) in the preview frame.
const STYLE: &str = include_str!("../../../templates/script.css");

pub fn html(doc: &Document) -> String {
    let l = labels(doc.meta.lang);
    let m = &doc.meta;
    let lang = match m.lang {
        DocLang::Es => "es",
        DocLang::En => "en",
    };
    let mut out = String::new();
    out.push_str(&format!(
        "<!doctype html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; \
         style-src 'unsafe-inline'\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"meta\">",
        html_escape(&m.title),
        html_escape(&m.title)
    ));
    if !m.participant.is_empty() {
        out.push_str(&format!(
            "<span>{}: {}</span>",
            l.participant,
            html_escape(&m.participant)
        ));
    }
    out.push_str(&format!(
        "<span>{}: {}</span><span>{}: {}</span></p>\n",
        l.date,
        html_escape(&m.date),
        l.duration,
        clock(m.duration_ms)
    ));
    if doc.has_no_text() {
        out.push_str(&format!("<p>{}</p>\n", html_escape(l.empty)));
    }
    for (pi, p) in doc.paragraphs.iter().enumerate() {
        if opens_block(doc, pi) {
            out.push_str(&format!("<p class=\"inner inner-label\">{}</p>\n", l.inner));
        }
        let open = if p.inner {
            "<p class=\"inner\">"
        } else {
            "<p>"
        };
        let mut text: Vec<String> = Vec::new();
        let flush = |text: &mut Vec<String>, out: &mut String| {
            if !text.is_empty() {
                out.push_str(&format!("{open}{}</p>\n", text.join(" ")));
                text.clear();
            }
        };
        for item in &p.items {
            match item {
                Item::Text(t) => text.push(html_escape(t)),
                Item::Photo(i) => {
                    flush(&mut text, &mut out);
                    let photo = &doc.photos[*i];
                    out.push_str(&format!(
                        "<figure><img src=\"data:image/jpeg;base64,{}\" width=\"{}\" height=\"{}\" alt=\"{}\">\
                         <figcaption>{}</figcaption></figure>\n",
                        STANDARD.encode(&photo.jpeg),
                        photo.width,
                        photo.height,
                        html_escape(&photo_caption(doc, *i)),
                        html_escape(&photo_caption(doc, *i)),
                    ));
                }
            }
        }
        flush(&mut text, &mut out);
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            title: "La carta <b>".into(),
            participant: "Ana".into(),
            date: "2026-12-03".into(),
            duration_ms: 61_000,
            lang: DocLang::Es,
        }
    }

    fn line(start: i64, end: i64, text: &str) -> Line {
        Line {
            start_ms: start,
            end_ms: end,
            text: text.into(),
        }
    }

    fn photo(offset: i64) -> Photo {
        Photo {
            offset_ms: offset,
            jpeg: vec![0xFF, 0xD8],
            width: 10,
            height: 10,
        }
    }

    #[test]
    fn photos_follow_the_line_being_spoken_and_pauses_make_paragraphs() {
        let lines = vec![
            line(0, 2000, "Buenas noches."),
            line(2100, 4000, "Piense en una carta."),
            line(7000, 9000, "Ahora mírela."),
        ];
        let doc = compose(meta(), lines, vec![photo(9500), photo(2500), photo(-1)]);
        assert_eq!(doc.paragraphs.len(), 2);
        // Photos are sorted by time: -1 → index 0, 2500 → 1, 9500 → 2.
        assert_eq!(
            doc.paragraphs[0].items,
            vec![
                Item::Photo(0),
                Item::Text("Buenas noches.".into()),
                Item::Text("Piense en una carta.".into()),
                Item::Photo(1),
            ]
        );
        assert_eq!(
            doc.paragraphs[1].items,
            vec![Item::Text("Ahora mírela.".into()), Item::Photo(2)]
        );
    }

    #[test]
    fn inner_life_cues_make_their_own_labelled_paragraphs_in_markdown_and_html() {
        let lines = vec![
            line(0, 1000, "Piense en un número."),
            line(1100, 2000, "Vida interna: sé que dirá treinta y siete."),
            line(2100, 3000, "Miro su <bufanda>."),
            line(3100, 4000, "Vuelvo al show. ¿Es correcto?"),
        ];
        let doc = compose(meta(), lines, vec![photo(2500)]);
        let shape: Vec<(bool, usize)> = doc
            .paragraphs
            .iter()
            .map(|p| (p.inner, p.items.len()))
            .collect();
        assert_eq!(shape, vec![(false, 1), (true, 3), (false, 1)]);
        assert!(opens_block(&doc, 1) && !opens_block(&doc, 0) && !opens_block(&doc, 2));
        assert_eq!(
            doc.paragraphs[1].items,
            vec![
                Item::Text("Sé que dirá treinta y siete.".into()),
                Item::Text("Miro su <bufanda>.".into()),
                Item::Photo(0),
            ]
        );

        let md = markdown(&doc);
        assert!(
            md.contains(
                "> **Vida interna**\n>\n> Sé que dirá treinta y siete. Miro su \\<bufanda\\>.\n>\n> ![Foto 1"
            ),
            "{md}"
        );
        assert!(md.contains("\n\n¿Es correcto?\n\n"), "{md}");
        assert!(!md.to_lowercase().contains("vuelvo al show"));
        let html = html(&doc);
        assert!(
            html.contains(
                "<p class=\"inner inner-label\">Vida interna</p>\n<p class=\"inner\">Sé que dirá treinta y siete. \
                 Miro su &lt;bufanda&gt;.</p>\n<figure>"
            ),
            "{html}"
        );
        assert!(html.contains("<p>¿Es correcto?</p>"));
        let en = compose(
            Meta {
                lang: DocLang::En,
                ..meta()
            },
            vec![line(
                0,
                1000,
                "Inner life. She will say 37. Back to the show.",
            )],
            vec![],
        );
        assert!(
            markdown(&en).contains("> **Inner life**\n>\n> She will say 37.\n"),
            "{}",
            markdown(&en)
        );
    }

    #[test]
    fn hostile_text_stays_literal_in_markdown_and_html() {
        let nasty = "#set page(width: 1pt) #import \"x\" </p><script>alert(1)</script> $x$ \
                     [a](javascript:alert(1)) back\\slash *bold* _it_ @ref";
        let doc = compose(meta(), vec![line(0, 1000, nasty)], vec![]);
        let h = html(&doc);
        assert!(!h.contains("<script>alert"));
        assert!(h.contains("&lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(h.contains("<title>La carta &lt;b&gt;</title>"));
        let md = markdown(&doc);
        assert!(md.contains(r"\[a\](javascript:alert(1))"));
        assert!(md.contains(r"\*bold\*") && md.contains(r"\_it\_") && md.contains(r"back\\slash"));
        assert!(md.contains(r"\<script\>") && md.contains(r"\$x\$") && md.contains(r"\#set"));
    }

    #[test]
    fn markdown_escapes_list_and_heading_starts() {
        assert_eq!(md_escape("1. uno"), r"1\. uno");
        assert_eq!(md_escape("- dos"), r"\- dos");
        assert_eq!(md_escape("# tres"), r"\# tres");
        assert_eq!(md_escape("sin nada"), "sin nada");
    }

    #[test]
    fn an_empty_transcript_still_makes_a_document() {
        let doc = compose(meta(), vec![line(0, 10, "   ")], vec![photo(5)]);
        assert!(markdown(&doc).contains("No se reconoció"));
        assert!(html(&doc).contains("<figure>"));
    }
}
