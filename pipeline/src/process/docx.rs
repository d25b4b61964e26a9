//! The script as a Word document: real heading styles, text as runs,
//! photos as inline pictures (from our own PNG, never from bytes docx-rs
//! would have to decode).

use docx_rs::{AlignmentType, Docx, Paragraph, Pic, Run, Style, StyleType};

use super::compose::{self, Document, Item};

/// EMUs per pixel at 96 dpi.
const EMU_PER_PX: u32 = 9525;
/// Widest picture on an A4 page with 2.5 cm margins (about 16 cm), EMU.
const MAX_WIDTH_EMU: u32 = 5_760_000;

fn styles(doc: Docx) -> Docx {
    doc.add_style(
        Style::new("Title", StyleType::Paragraph)
            .name("Title")
            .size(48)
            .bold()
            .based_on("Normal")
            .next("Normal"),
    )
    .add_style(
        Style::new("Heading1", StyleType::Paragraph)
            .name("heading 1")
            .size(32)
            .bold()
            .outline_lvl(0)
            .based_on("Normal")
            .next("Normal"),
    )
    .add_style(
        Style::new("Caption", StyleType::Paragraph)
            .name("caption")
            .size(18)
            .italic(),
    )
    // Inner-life blocks: indented italics under a small bold label, so a
    // performer can restyle them all at once in their word processor.
    .add_style(
        Style::new("InnerLife", StyleType::Paragraph)
            .name("Inner life")
            .italic()
            .color("4A443C")
            .indent(Some(567), None, None, None)
            .based_on("Normal"),
    )
    .add_style(
        Style::new("InnerLifeLabel", StyleType::Paragraph)
            .name("Inner life label")
            .bold()
            .size(18)
            .indent(Some(567), None, None, None)
            .based_on("Normal")
            .next("InnerLife"),
    )
}

pub fn render(doc: &Document, pngs: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let m = &doc.meta;
    let mut out = styles(Docx::new());
    out = out.add_paragraph(
        Paragraph::new()
            .style("Title")
            .add_run(Run::new().add_text(m.title.clone())),
    );
    let (participant, date, duration) = match m.lang {
        compose::DocLang::Es => ("Participante", "Fecha", "Duración"),
        compose::DocLang::En => ("Participant", "Date", "Duration"),
    };
    let mut facts = Vec::new();
    if !m.participant.is_empty() {
        facts.push(format!("{participant}: {}", m.participant));
    }
    facts.push(format!("{date}: {}", m.date));
    facts.push(format!("{duration}: {}", compose::clock(m.duration_ms)));
    out = out
        .add_paragraph(Paragraph::new().add_run(Run::new().add_text(facts.join(" · ")).italic()));
    for (pi, p) in doc.paragraphs.iter().enumerate() {
        if compose::opens_block(doc, pi) {
            out = out.add_paragraph(
                Paragraph::new()
                    .style("InnerLifeLabel")
                    .add_run(Run::new().add_text(compose::inner_life_label(m.lang))),
            );
        }
        let fresh = || {
            if p.inner {
                Paragraph::new().style("InnerLife")
            } else {
                Paragraph::new()
            }
        };
        let mut para = fresh();
        let mut has_text = false;
        for item in &p.items {
            match item {
                Item::Text(t) => {
                    let text = if has_text { format!(" {t}") } else { t.clone() };
                    para = para.add_run(Run::new().add_text(text));
                    has_text = true;
                }
                Item::Photo(i) => {
                    if has_text {
                        out = out.add_paragraph(std::mem::replace(&mut para, fresh()));
                        has_text = false;
                    }
                    let photo = &doc.photos[*i];
                    let png = pngs.get(*i).ok_or("missing photo")?;
                    let (mut w, mut h) = (photo.width * EMU_PER_PX, photo.height * EMU_PER_PX);
                    if w > MAX_WIDTH_EMU {
                        h = (h as u64 * MAX_WIDTH_EMU as u64 / w as u64) as u32;
                        w = MAX_WIDTH_EMU;
                    }
                    let pic =
                        Pic::new_with_dimensions(png.clone(), photo.width, photo.height).size(w, h);
                    out = out.add_paragraph(
                        Paragraph::new()
                            .align(AlignmentType::Center)
                            .add_run(Run::new().add_image(pic)),
                    );
                    let caption = match m.lang {
                        compose::DocLang::Es => {
                            format!("Foto {} · {}", i + 1, compose::clock(photo.offset_ms))
                        }
                        compose::DocLang::En => {
                            format!("Photo {} · {}", i + 1, compose::clock(photo.offset_ms))
                        }
                    };
                    out = out.add_paragraph(
                        Paragraph::new()
                            .style("Caption")
                            .align(AlignmentType::Center)
                            .add_run(Run::new().add_text(caption)),
                    );
                }
            }
        }
        if has_text {
            out = out.add_paragraph(para);
        }
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    out.build().pack(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes.into_inner())
}
