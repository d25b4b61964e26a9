//! The script as a PDF, typeset by typst used as a library.
//!
//! The template below is the only typst markup; it is fixed. Everything that
//! comes from the performer (title, participant, transcript, captions) is
//! passed as data, in a JSON file that only exists in memory, and placed
//! with `par(..)`/`text(..)`, so `#`, `$`, `[`, `<`, `@`, `\` and the like
//! print literally and can never run as code. The photos are in-memory files
//! whose names the template builds from their index. Fonts are the ones
//! embedded in the binary by `typst-assets`; every other file (system paths,
//! packages) is refused.

use std::sync::LazyLock;

use serde::Serialize;
use typst::diag::{FileError, FileResult, SourceDiagnostic};
use typst::foundations::{Bytes, Datetime, Duration};
use typst::syntax::{FileId, RootedPath, Source, VirtualPath, VirtualRoot};
use typst::text::{Font, FontBook};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt, World};
use typst_layout::PagedDocument;

use super::compose::{self, DocLang, Document, Item};

const MAIN_PATH: &str = "/main.typ";
const DATA_PATH: &str = "/data.json";
const PHOTO_DIR: &str = "/photos/";

/// A4 with 2.5 cm margins: the text block is 160 × 247 mm.
const TEXT_WIDTH_MM: f64 = 160.0;
/// The tallest a photo may be, so that it and its caption fit on a page.
const MAX_PHOTO_HEIGHT_MM: f64 = 150.0;

const TEMPLATE: &str = r##"#let data = json("/data.json")

#set document(title: data.title, author: data.authors)
#set page(paper: "a4", margin: 2.5cm, numbering: "1", number-align: center)
#set text(font: "Libertinus Serif", size: 11.5pt, lang: data.lang, hyphenate: true)
#set par(justify: true, leading: 0.72em, spacing: 1.2em)
#set figure(numbering: none, gap: 0.8em)
#show figure: set block(above: 1.6em, below: 1.6em)
#show figure.caption: set text(size: 9.5pt, style: "italic")

#page(numbering: none, {
  set par(justify: false)
  v(1fr)
  align(center, {
    block(text(size: 26pt, weight: "bold", hyphenate: false, data.title))
    v(0.6em)
    line(length: 30%, stroke: 0.6pt)
    v(1.6em)
    for fact in data.facts {
      block(spacing: 0.9em, text(size: 12.5pt, {
        text(weight: "semibold", fact.label)
        text(": ")
        text(fact.value)
      }))
    }
  })
  v(1.6fr)
})

#if data.note != none {
  par(text(style: "italic", data.note))
}

#for b in data.blocks {
  if b.kind == "text" {
    par(b.text)
  } else if b.kind == "inner" {
    // An inner-life block: set apart by a rule, in italics, under its label.
    block(stroke: (left: 1.5pt + luma(150)), inset: (left: 1em, y: 0.2em), spacing: 1.4em, {
      if b.label != none {
        block(below: 0.8em, text(size: 9pt, weight: "bold", tracking: 0.06em, upper(b.label)))
      }
      set text(style: "italic", fill: luma(60))
      for t in b.texts { par(t) }
    })
  } else {
    figure(
      image(b.file, format: "jpg", width: b.width_mm * 1mm, alt: b.caption),
      caption: text(b.caption),
    )
  }
}
"##;

#[derive(Serialize)]
struct Data {
    lang: &'static str,
    title: String,
    authors: Vec<String>,
    facts: Vec<Fact>,
    note: Option<&'static str>,
    blocks: Vec<Block>,
}

#[derive(Serialize)]
struct Fact {
    label: &'static str,
    value: String,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Block {
    Text {
        text: String,
    },
    /// The paragraphs of one inner-life stretch, with the block's label on
    /// its first stretch.
    Inner {
        label: Option<&'static str>,
        texts: Vec<String>,
    },
    Photo {
        file: String,
        caption: String,
        width_mm: f64,
    },
}

struct Labels {
    lang: &'static str,
    participant: &'static str,
    date: &'static str,
    duration: &'static str,
    photo: &'static str,
    empty: &'static str,
    months: [&'static str; 12],
}

fn labels(lang: DocLang) -> Labels {
    match lang {
        DocLang::Es => Labels {
            lang: "es",
            participant: "Participante",
            date: "Fecha",
            duration: "Duración",
            photo: "Foto",
            empty: "(No se reconoció texto en la grabación.)",
            months: [
                "enero",
                "febrero",
                "marzo",
                "abril",
                "mayo",
                "junio",
                "julio",
                "agosto",
                "septiembre",
                "octubre",
                "noviembre",
                "diciembre",
            ],
        },
        DocLang::En => Labels {
            lang: "en",
            participant: "Participant",
            date: "Date",
            duration: "Duration",
            photo: "Photo",
            empty: "(No speech was recognised in the recording.)",
            months: [
                "January",
                "February",
                "March",
                "April",
                "May",
                "June",
                "July",
                "August",
                "September",
                "October",
                "November",
                "December",
            ],
        },
    }
}

/// `YYYY-MM-DD` as numbers, when it is a real date.
fn ymd(date: &str) -> Option<(i32, u8, u8)> {
    let mut parts = date.split('-');
    let y = parts.next()?.parse().ok()?;
    let m = parts.next()?.parse().ok()?;
    let d = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Datetime::from_ymd(y, m, d)?;
    Some((y, m, d))
}

/// "3 de diciembre de 2026" / "3 December 2026"; anything else as given.
fn long_date(date: &str, l: &Labels) -> String {
    match ymd(date) {
        Some((y, m, d)) => {
            let month = l.months[usize::from(m) - 1];
            if l.lang == "es" {
                format!("{d} de {month} de {y}")
            } else {
                format!("{d} {month} {y}")
            }
        }
        None => date.to_owned(),
    }
}

fn data(doc: &Document) -> Data {
    let m = &doc.meta;
    let l = labels(m.lang);
    let mut facts = Vec::new();
    if !m.participant.is_empty() {
        facts.push(Fact {
            label: l.participant,
            value: m.participant.clone(),
        });
    }
    facts.push(Fact {
        label: l.date,
        value: long_date(&m.date, &l),
    });
    facts.push(Fact {
        label: l.duration,
        value: compose::clock(m.duration_ms),
    });

    let mut blocks = Vec::new();
    for (pi, p) in doc.paragraphs.iter().enumerate() {
        let mut text: Vec<&str> = Vec::new();
        let mut label = compose::opens_block(doc, pi).then(|| compose::inner_life_label(m.lang));
        let mut flush = |text: &mut Vec<&str>, blocks: &mut Vec<Block>| {
            if text.is_empty() {
                return;
            }
            let joined = text.join(" ");
            text.clear();
            if !p.inner {
                blocks.push(Block::Text { text: joined });
            } else if let (None, Some(Block::Inner { texts, .. })) = (label, blocks.last_mut()) {
                // The block goes on from the previous paragraph.
                texts.push(joined);
            } else {
                blocks.push(Block::Inner {
                    label: label.take(),
                    texts: vec![joined],
                });
            }
        };
        for item in &p.items {
            match item {
                Item::Text(t) => text.push(t),
                Item::Photo(i) => {
                    flush(&mut text, &mut blocks);
                    let photo = &doc.photos[*i];
                    let (w, h) = (photo.width.max(1) as f64, photo.height.max(1) as f64);
                    let width_mm = TEXT_WIDTH_MM.min(MAX_PHOTO_HEIGHT_MM * w / h);
                    blocks.push(Block::Photo {
                        file: format!("{PHOTO_DIR}{i}.jpg"),
                        caption: format!(
                            "{} {} · {}",
                            l.photo,
                            i + 1,
                            compose::clock(photo.offset_ms)
                        ),
                        width_mm: (width_mm * 10.0).round() / 10.0,
                    });
                }
            }
        }
        flush(&mut text, &mut blocks);
    }

    Data {
        lang: l.lang,
        title: m.title.clone(),
        authors: if m.participant.is_empty() {
            Vec::new()
        } else {
            vec![m.participant.clone()]
        },
        facts,
        note: doc.has_no_text().then_some(l.empty),
        blocks,
    }
}

static LIBRARY: LazyLock<LazyHash<Library>> = LazyLock::new(|| LazyHash::new(Library::default()));

/// The fonts embedded in the binary, parsed once.
static FONTS: LazyLock<(LazyHash<FontBook>, Vec<Font>)> = LazyLock::new(|| {
    let fonts: Vec<Font> = typst_assets::fonts()
        .flat_map(|data| Font::iter(Bytes::new(data)))
        .collect();
    (LazyHash::new(FontBook::from_fonts(&fonts)), fonts)
});

/// Everything the compiler may see: the template, the data and the photos.
struct ScriptWorld {
    main_id: FileId,
    main: Source,
    data: Bytes,
    photos: Vec<Bytes>,
    today: Option<Datetime>,
}

impl ScriptWorld {
    fn photo_index(path: &str) -> Option<usize> {
        let n = path.strip_prefix(PHOTO_DIR)?.strip_suffix(".jpg")?;
        let i: usize = n.parse().ok()?;
        (i.to_string() == n).then_some(i)
    }
}

impl World for ScriptWorld {
    fn library(&self) -> &LazyHash<Library> {
        &LIBRARY
    }

    fn book(&self) -> &LazyHash<FontBook> {
        &FONTS.0
    }

    fn main(&self) -> FileId {
        self.main_id
    }

    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.main_id {
            Ok(self.main.clone())
        } else {
            Err(FileError::AccessDenied)
        }
    }

    fn file(&self, id: FileId) -> FileResult<Bytes> {
        if id == self.main_id {
            return Ok(Bytes::from_string(self.main.clone()));
        }
        if *id.root() != VirtualRoot::Project {
            return Err(FileError::AccessDenied); // no packages
        }
        let path = id.vpath().get_with_slash();
        if path == DATA_PATH {
            return Ok(self.data.clone());
        }
        Self::photo_index(path)
            .and_then(|i| self.photos.get(i).cloned())
            .ok_or(FileError::AccessDenied)
    }

    fn font(&self, index: usize) -> Option<Font> {
        FONTS.1.get(index).cloned()
    }

    fn today(&self, _offset: Option<Duration>) -> Option<Datetime> {
        self.today
    }
}

fn diagnostics(what: &str, diags: &[SourceDiagnostic]) -> String {
    let mut out = format!("{what}:");
    for d in diags {
        out.push(' ');
        out.push_str(&d.message);
        for h in &d.hints {
            out.push_str(" (hint: ");
            out.push_str(&h.v);
            out.push(')');
        }
        out.push(';');
    }
    out.pop();
    out
}

/// Renders the script. `jpegs[i]` are the bytes of `doc.photos[i]`
/// (upright, metadata-free JPEG).
pub fn render(doc: &Document, jpegs: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    if jpegs.len() < doc.photos.len() {
        return Err("missing photo".into());
    }
    let data = serde_json::to_vec(&data(doc)).map_err(|e| e.to_string())?;
    let vpath = VirtualPath::new(MAIN_PATH).map_err(|e| e.to_string())?;
    let main_id = RootedPath::new(VirtualRoot::Project, vpath).intern();
    let today = ymd(&doc.meta.date).and_then(|(y, m, d)| Datetime::from_ymd(y, m, d));
    let world = ScriptWorld {
        main_id,
        main: Source::new(main_id, TEMPLATE.to_owned()),
        data: Bytes::new(data),
        photos: jpegs[..doc.photos.len()]
            .iter()
            .map(|j| Bytes::new(j.clone()))
            .collect(),
        today,
    };
    let result = typst::compile::<PagedDocument>(&world).output;
    let pdf = result
        .map_err(|e| diagnostics("PDF typesetting failed", &e))
        .and_then(|document| {
            let options = typst_pdf::PdfOptions {
                timestamp: today.map(typst_pdf::Timestamp::new_utc),
                ..Default::default()
            };
            typst_pdf::pdf(&document, &options).map_err(|e| diagnostics("PDF export failed", &e))
        });
    drop(world);
    // The compiler memoises across calls; keep none of this performer's
    // document (text, decoded photos) in memory once it is rendered.
    typst::comemo::evict(0);
    pdf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::compose::{Line, Meta, Photo, compose};

    fn meta(lang: DocLang) -> Meta {
        Meta {
            title: "La carta #1 <b>".into(),
            participant: "Ana".into(),
            date: "2026-12-03".into(),
            duration_ms: 61_000,
            lang,
        }
    }

    fn line(start: i64, text: &str) -> Line {
        Line {
            start_ms: start,
            end_ms: start + 900,
            text: text.into(),
        }
    }

    fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                seed.wrapping_mul(37).wrapping_add((x ^ y) as u8),
            ])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    fn photo(offset_ms: i64, w: u32, h: u32, seed: u8) -> Photo {
        Photo {
            offset_ms,
            jpeg: jpeg(w, h, seed),
            width: w,
            height: h,
        }
    }

    fn jpegs(doc: &Document) -> Vec<Vec<u8>> {
        doc.photos.iter().map(|p| p.jpeg.clone()).collect()
    }

    fn run(tool: &str, args: &[&str], pdf: &[u8]) -> String {
        let path = std::env::temp_dir().join(format!(
            "kiroku-pdf-test-{}-{:?}.pdf",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, pdf).unwrap();
        let out = std::process::Command::new(tool)
            .args(args)
            .arg(&path)
            .args(if tool == "pdftotext" {
                &["-"][..]
            } else {
                &[][..]
            })
            .output()
            .unwrap_or_else(|e| panic!("{tool} (poppler-utils) is needed: {e}"));
        std::fs::remove_file(&path).ok();
        assert!(out.status.success(), "{tool} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Keeps a test's PDF for looking at when `KIROKU_PDF_DUMP` names a folder.
    fn dump(name: &str, pdf: &[u8]) {
        if let Some(dir) = std::env::var_os("KIROKU_PDF_DUMP") {
            std::fs::write(std::path::Path::new(&dir).join(name), pdf).unwrap();
        }
    }

    /// The text of the PDF with line-end hyphens and all white space removed.
    fn squeezed(text: &str) -> String {
        text.replace("-\n", "")
            .replace("\u{ad}\n", "")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect()
    }

    #[test]
    fn renders_a_pdf_with_a_title_page_and_the_text() {
        let doc = compose(
            meta(DocLang::Es),
            vec![
                line(0, "Buenas noches."),
                line(1000, "Piense en una carta."),
            ],
            vec![],
        );
        let pdf = render(&doc, &[]).unwrap();
        assert!(pdf.starts_with(b"%PDF"));
        let text = run("pdftotext", &["-layout"], &pdf);
        let pages: Vec<&str> = text.split('\u{c}').collect();
        assert!(pages[0].contains("La carta #1 <b>"), "{text}");
        assert!(pages[0].contains("Participante: Ana"), "{text}");
        assert!(pages[0].contains("Fecha: 3 de diciembre de 2026"), "{text}");
        assert!(pages[0].contains("Duración: 1:01"), "{text}");
        assert!(!pages[0].contains("Buenas"));
        assert!(
            pages[1].contains("Buenas noches. Piense en una carta."),
            "{text}"
        );
        assert!(pages[1].contains('2'), "page number: {text}");
        let info = run("pdfinfo", &[], &pdf);
        assert!(
            info.contains("Title:") && info.contains("La carta #1 <b>"),
            "{info}"
        );
    }

    #[test]
    fn hostile_text_prints_literally() {
        let nasty = "#set page(width: 1pt) #import \"x\" #panic(\"x\") </p><script>alert(1)</script> \
                     $x$ [a](javascript:alert(1)) back\\slash \\ *star* _under_ @ref <lbl> #{1+1} `raw`";
        let mut m = meta(DocLang::En);
        m.title = "#panic(\"t\") $t$ \\ @t".into();
        m.participant = "#import \"p\": *".into();
        let doc = compose(m, vec![line(0, nasty)], vec![]);
        let pdf = render(&doc, &[]).unwrap();
        dump("hostile.pdf", &pdf);
        // Content-stream order: justified lines with wide gaps are not
        // mistaken for columns.
        let text = run("pdftotext", &["-raw"], &pdf);
        assert!(squeezed(&text).contains(&squeezed(nasty)), "{text}");
        assert!(text.contains("#panic(\"t\") $t$ \\ @t"), "{text}");
        assert!(text.contains("#import \"p\": *"), "{text}");
        let size = run("pdfinfo", &[], &pdf);
        assert!(size.contains("595.276 x 841.89 pts (A4)"), "{size}");
    }

    #[test]
    fn spanish_text_keeps_its_accents_and_inverted_marks() {
        let words = "¿Quién eligió la carta? ¡Qué sorpresa! Año, pingüino, acción, Ñandú.";
        let long = "El mago explicó pacientemente que la interpretación cinematográfica \
                    de la prestidigitación contemporánea requiere extraordinaria \
                    concentración y muchísima práctica. "
            .repeat(6);
        let doc = compose(
            meta(DocLang::Es),
            vec![line(0, words), line(1000, &long)],
            vec![],
        );
        let pdf = render(&doc, &[]).unwrap();
        dump("spanish.pdf", &pdf);
        let text = run("pdftotext", &[], &pdf);
        assert!(
            text.contains("¿Quién") && text.contains("¡Qué sorpresa!"),
            "{text}"
        );
        assert!(squeezed(&text).contains(&squeezed(words)), "{text}");
        assert!(squeezed(&text).contains(&squeezed(&long)), "{text}");
    }

    #[test]
    fn photos_are_embedded_with_captions() {
        let lines = vec![
            line(0, "Mire esta carta."),
            line(5000, "Y ahora esta otra."),
        ];
        let without = render(&compose(meta(DocLang::Es), lines.clone(), vec![]), &[]).unwrap();
        let doc = compose(
            meta(DocLang::Es),
            lines,
            vec![photo(1_000, 640, 480, 1), photo(65_000, 300, 900, 2)],
        );
        let pdf = render(&doc, &jpegs(&doc)).unwrap();
        dump("photos.pdf", &pdf);
        assert!(pdf.len() > without.len() + 10_000);
        let list = run("pdfimages", &["-list"], &pdf);
        let rows: Vec<&str> = list.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{list}");
        assert!(
            rows[0].contains(" 640 ") && rows[0].contains(" 480 "),
            "{list}"
        );
        let text = run("pdftotext", &[], &pdf);
        assert!(text.contains("Foto 1 · 0:01"), "{text}");
        assert!(text.contains("Foto 2 · 1:05"), "{text}");

        let en = compose(meta(DocLang::En), vec![], vec![photo(0, 64, 64, 3)]);
        let text = run("pdftotext", &[], &render(&en, &jpegs(&en)).unwrap());
        assert!(text.contains("Photo 1 · 0:00"), "{text}");
    }

    #[test]
    fn an_empty_document_renders() {
        let doc = compose(meta(DocLang::Es), vec![], vec![]);
        let pdf = render(&doc, &[]).unwrap();
        assert!(pdf.starts_with(b"%PDF"));
        let text = run("pdftotext", &[], &pdf);
        assert!(text.contains("No se reconoció texto"), "{text}");

        let mut m = meta(DocLang::En);
        m.title = String::new();
        m.participant = String::new();
        m.date = "not a date".into();
        let pdf = render(&compose(m, vec![], vec![]), &[]).unwrap();
        assert!(pdf.starts_with(b"%PDF"));
    }

    #[test]
    fn bad_photo_bytes_are_an_error_not_a_panic() {
        let mut doc = compose(
            meta(DocLang::Es),
            vec![line(0, "Hola.")],
            vec![photo(0, 8, 8, 0)],
        );
        doc.photos[0].jpeg = vec![0xFF, 0xD8, 0x00];
        let err = render(&doc, &jpegs(&doc)).unwrap_err();
        assert!(err.starts_with("PDF typesetting failed:"), "{err}");
        assert_eq!(render(&doc, &[]).unwrap_err(), "missing photo");
    }

    #[test]
    fn nothing_outside_the_document_can_be_read() {
        let world = ScriptWorld {
            main_id: RootedPath::new(VirtualRoot::Project, VirtualPath::new(MAIN_PATH).unwrap())
                .intern(),
            main: Source::detached(""),
            data: Bytes::new(b"{}".to_vec()),
            photos: vec![Bytes::new(b"x".to_vec())],
            today: None,
        };
        let id =
            |p: &str| RootedPath::new(VirtualRoot::Project, VirtualPath::new(p).unwrap()).intern();
        assert!(world.file(id("/photos/0.jpg")).is_ok());
        assert!(world.file(id(DATA_PATH)).is_ok());
        for p in ["/etc/passwd", "/photos/1.jpg", "/photos/00.jpg", "/x.typ"] {
            assert!(
                matches!(world.file(id(p)), Err(FileError::AccessDenied)),
                "{p}"
            );
            assert!(world.source(id(p)).is_err(), "{p}");
        }
        assert!(world.today(None).is_none());
    }

    /// A 30-paragraph script with 10 photos, timed (`--nocapture` prints it).
    #[test]
    fn a_long_script_with_photos_renders_and_is_timed() {
        let sentence =
            "Ahora, señoras y señores, fíjense bien en esta baraja: nadie la ha tocado. ";
        let lines: Vec<Line> = (0..30)
            .map(|i| line(i * 10_000, &sentence.repeat(6)))
            .collect();
        let photos = (0..10)
            .map(|i| photo(i * 30_000 + 500, 1600, 1200, i as u8))
            .collect();
        let doc = compose(meta(DocLang::Es), lines, photos);
        assert_eq!(doc.paragraphs.len(), 30);
        let jpegs = jpegs(&doc);
        let started = std::time::Instant::now();
        let pdf = render(&doc, &jpegs).unwrap();
        let first = started.elapsed();
        dump("long.pdf", &pdf);
        let started = std::time::Instant::now();
        render(&doc, &jpegs).unwrap();
        let second = started.elapsed();
        let text_only = Document {
            photos: Vec::new(),
            paragraphs: doc
                .paragraphs
                .iter()
                .map(|p| compose::Paragraph {
                    items: p
                        .items
                        .iter()
                        .filter(|i| matches!(i, Item::Text(_)))
                        .cloned()
                        .collect(),
                    inner: p.inner,
                })
                .collect(),
            meta: doc.meta.clone(),
        };
        let started = std::time::Instant::now();
        render(&text_only, &[]).unwrap();
        let without_photos = started.elapsed();
        let pages = run("pdfinfo", &[], &pdf);
        let pages = pages
            .lines()
            .find(|l| l.starts_with("Pages:"))
            .unwrap_or("");
        println!(
            "30 paragraphs, 10 photos (1600×1200): {} bytes, {pages}, first render {first:?}, second {second:?}, text alone {without_photos:?}",
            pdf.len()
        );
        assert_eq!(run("pdfimages", &["-list"], &pdf).lines().count(), 12);
    }
}
