//! The deterministic script formatter, used when no language model
//! rewrites the transcript: the performer's spoken cues mark the "vida
//! interna" blocks (their inner life on stage, which the audience never
//! sees) and are themselves left out of the script.
//!
//! A block opens with "vida interna" or "inner life" and closes with "vuelvo
//! al show", "volvemos al show", "de vuelta al show" or "back to the show".
//! Cues are matched as whole words, ignoring case, accents and punctuation,
//! anywhere in a line (a line is cut where a cue falls). An opening cue
//! inside a block, or a closing cue outside one, is ordinary speech and
//! stays. A block left open runs to the end.

use super::compose::Line;

const OPEN: &[&str] = &["vida interna", "inner life"];
const CLOSE: &[&str] = &[
    "vuelvo al show",
    "volvemos al show",
    "de vuelta al show",
    "back to the show",
];

/// A line of the script and whether it belongs to an inner-life block.
#[derive(Debug, Clone, PartialEq)]
pub struct Marked {
    pub line: Line,
    pub inner: bool,
}

/// Lowercase, unaccented, letters and digits only; every other character
/// is a space. `map[i]` is the byte range in `text` of folded char `i`.
struct Folded {
    chars: Vec<char>,
    map: Vec<(usize, usize)>,
}

fn fold(text: &str) -> Folded {
    let mut chars = Vec::new();
    let mut map = Vec::new();
    for (at, c) in text.char_indices() {
        let lower = c.to_lowercase().next().unwrap_or(c);
        let plain = match lower {
            'á' | 'à' | 'ä' | 'â' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        };
        chars.push(plain);
        map.push((at, at + c.len_utf8()));
    }
    Folded { chars, map }
}

/// The first cue of `cues` in `text`, as the byte range it covers.
fn find_cue(text: &str, cues: &[&str]) -> Option<(usize, usize)> {
    let f = fold(text);
    let mut best: Option<(usize, usize)> = None;
    for cue in cues {
        let words: Vec<&str> = cue.split(' ').collect();
        let mut i = 0;
        while i < f.chars.len() {
            if (i == 0 || f.chars[i - 1] == ' ')
                && let Some(end) = match_words(&f.chars, i, &words)
                && best.is_none_or(|(start, _)| f.map[i].0 < start)
            {
                best = Some((f.map[i].0, f.map[end - 1].1));
            }
            i += 1;
        }
    }
    best
}

/// Matches `words` separated by one or more spaces from `i`; returns the
/// end (exclusive) when the match ends at a word boundary.
fn match_words(chars: &[char], mut i: usize, words: &[&str]) -> Option<usize> {
    for (n, word) in words.iter().enumerate() {
        if n > 0 {
            let start = i;
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        for w in word.chars() {
            if chars.get(i) != Some(&w) {
                return None;
            }
            i += 1;
        }
    }
    (i == chars.len() || chars[i] == ' ').then_some(i)
}

/// Trims what a cut leaves at the edges: spaces and the punctuation that
/// belonged with the cue.
fn tidy(text: &str, capitalise: bool) -> String {
    let edge = |c: char| c.is_whitespace() || ",;:—–-…".contains(c);
    let t = text.trim_matches(edge);
    let t = t.trim_start_matches(['.', '!', '?']).trim_matches(edge);
    if !capitalise {
        return t.to_owned();
    }
    let mut chars = t.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Marks the lines of inner-life blocks and removes the cues.
pub fn mark_inner_life(lines: Vec<Line>) -> Vec<Marked> {
    let mut out = Vec::new();
    let mut inner = false;
    for line in lines {
        let mut rest = line.text.as_str();
        let mut cut_before = false;
        loop {
            let cues = if inner { CLOSE } else { OPEN };
            match find_cue(rest, cues) {
                Some((start, end)) => {
                    let before = tidy(&rest[..start], cut_before);
                    if !before.is_empty() {
                        out.push(Marked {
                            line: Line {
                                text: before,
                                ..line.clone()
                            },
                            inner,
                        });
                    }
                    inner = !inner;
                    rest = &rest[end..];
                    cut_before = true;
                }
                None => {
                    let text = if cut_before {
                        tidy(rest, true)
                    } else {
                        rest.trim().to_owned()
                    };
                    if !text.is_empty() {
                        out.push(Marked {
                            line: Line {
                                text,
                                ..line.clone()
                            },
                            inner,
                        });
                    }
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Vec<Line> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Line {
                start_ms: i as i64 * 1000,
                end_ms: i as i64 * 1000 + 900,
                text: (*t).to_owned(),
            })
            .collect()
    }

    fn shape(marked: &[Marked]) -> Vec<(&str, bool)> {
        marked
            .iter()
            .map(|m| (m.line.text.as_str(), m.inner))
            .collect()
    }

    #[test]
    fn without_cues_nothing_changes() {
        let input = lines(&["Buenas noches.", "Piense en un número."]);
        let out = mark_inner_life(input.clone());
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|m| !m.inner));
        assert_eq!(out[0].line, input[0]);
        assert_eq!(out[1].line, input[1]);
    }

    #[test]
    fn cues_on_their_own_lines_open_and_close_a_block() {
        let out = mark_inner_life(lines(&[
            "Piense en un número.",
            "Vida interna.",
            "Sé que dirá treinta y siete.",
            "Miro su bufanda.",
            "Vuelvo al show.",
            "¿Es correcto?",
        ]));
        assert_eq!(
            shape(&out),
            vec![
                ("Piense en un número.", false),
                ("Sé que dirá treinta y siete.", true),
                ("Miro su bufanda.", true),
                ("¿Es correcto?", false),
            ]
        );
        // Times stay with the text.
        assert_eq!(out[1].line.start_ms, 2000);
        assert_eq!(out[3].line.start_ms, 5000);
    }

    #[test]
    fn cues_inside_a_line_cut_it_and_ignore_case_accents_and_punctuation() {
        let out = mark_inner_life(lines(&[
            "Piense en un número, VIDA INTERNA: sé que dirá treinta y siete, vuelvo al show. ¿Lo tiene?",
        ]));
        assert_eq!(
            shape(&out),
            vec![
                ("Piense en un número", false),
                ("Sé que dirá treinta y siete", true),
                ("¿Lo tiene?", false),
            ]
        );
        let out = mark_inner_life(lines(&[
            "Inner life... she wrote it already. Back to the show!",
        ]));
        assert_eq!(shape(&out), vec![("She wrote it already.", true)]);
    }

    #[test]
    fn cue_words_only_match_whole_words_and_in_the_right_state() {
        let out = mark_inner_life(lines(&[
            "Vuelvo al show de ayer.",
            "La vida internacional.",
            "Vida interna",
            "la vida interna es secreta",
            "de vuelta al show",
        ]));
        assert_eq!(
            shape(&out),
            vec![
                ("Vuelvo al show de ayer.", false),
                ("La vida internacional.", false),
                ("la vida interna es secreta", true),
            ]
        );
    }

    #[test]
    fn a_block_left_open_runs_to_the_end() {
        let out = mark_inner_life(lines(&["Gracias.", "Vida interna, ya está.", "Fin."]));
        assert_eq!(
            shape(&out),
            vec![("Gracias.", false), ("Ya está.", true), ("Fin.", true)]
        );
    }

    #[test]
    fn hostile_text_survives_unchanged() {
        let text = "<script>alert(1)</script> #set text(red) $x$ **bold**";
        let out = mark_inner_life(lines(&[text]));
        assert_eq!(shape(&out), vec![(text, false)]);
    }
}
