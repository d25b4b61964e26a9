//! The local speech engine on the recorded fixtures: word error rate
//! against the reference texts, language detection, and clear errors for
//! a missing or corrupt model.
//!
//! The model is found where `scripts/fetch-whisper-model.sh` (run by
//! `just setup`, hence by `just test`) puts it, or at
//! `KIROKU_WHISPER_MODEL`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use kiroku_pipeline::speech::convert::{GGML_MAGIC, mel_filters};
use kiroku_pipeline::speech::convert::{GgmlHeader, Hparams, N_FFT, N_MELS, SAMPLE_RATE};
use kiroku_pipeline::speech::local::{LocalConfig, LocalEngine};
use kiroku_pipeline::speech::{
    LanguageHint, SpeechEngine, SpeechError, TranscribeOptions, Transcript,
};
use kiroku_runtime::Env;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// 16 kHz mono PCM WAV as samples in -1..1.
fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1), "{path:?}");
    match spec.sample_format {
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.unwrap() as f32 / scale)
                .collect()
        }
        hound::SampleFormat::Float => reader.samples::<f32>().map(Result::unwrap).collect(),
    }
}

// ---------------------------------------------------------------------------
// Word error rate

fn number_words(n: u64, language: &str) -> Option<String> {
    let (units, tens): (&[&str], &[&str]) = match language {
        "es" => (
            &[
                "cero",
                "uno",
                "dos",
                "tres",
                "cuatro",
                "cinco",
                "seis",
                "siete",
                "ocho",
                "nueve",
                "diez",
                "once",
                "doce",
                "trece",
                "catorce",
                "quince",
                "dieciséis",
                "diecisiete",
                "dieciocho",
                "diecinueve",
                "veinte",
                "veintiuno",
                "veintidós",
                "veintitrés",
                "veinticuatro",
                "veinticinco",
                "veintiséis",
                "veintisiete",
                "veintiocho",
                "veintinueve",
            ],
            &[
                "",
                "",
                "",
                "treinta",
                "cuarenta",
                "cincuenta",
                "sesenta",
                "setenta",
                "ochenta",
                "noventa",
            ],
        ),
        _ => (
            &[
                "zero",
                "one",
                "two",
                "three",
                "four",
                "five",
                "six",
                "seven",
                "eight",
                "nine",
                "ten",
                "eleven",
                "twelve",
                "thirteen",
                "fourteen",
                "fifteen",
                "sixteen",
                "seventeen",
                "eighteen",
                "nineteen",
            ],
            &[
                "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
                "ninety",
            ],
        ),
    };
    let n = n as usize;
    if n < units.len() {
        return Some(units[n].to_owned());
    }
    if n == 100 {
        return Some(
            if language == "es" {
                "cien"
            } else {
                "one hundred"
            }
            .to_owned(),
        );
    }
    if n > 100 {
        return None;
    }
    let (t, u) = (tens[n / 10], n % 10);
    Some(match (u, language) {
        (0, _) => t.to_owned(),
        (_, "es") => format!("{t} y {}", units[u]),
        _ => format!("{t} {}", units[u]),
    })
}

/// Lower case, punctuation (not accents) removed, numbers as words.
fn normalise(text: &str, language: &str) -> Vec<String> {
    words(text, Some(language))
}

/// Lower case, punctuation (not accents) removed; with a language,
/// numbers written as words in it.
fn words(text: &str, numbers_in: Option<&str>) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let spelt = |w: &str| match (w.parse::<u64>(), numbers_in) {
        (Ok(n), Some(language)) => number_words(n, language),
        _ => None,
    };
    cleaned
        .split_whitespace()
        .flat_map(|w| match spelt(w) {
            Some(words) => words.split(' ').map(str::to_owned).collect(),
            None => vec![w.to_owned()],
        })
        .collect()
}

/// Word-level edit distance over the reference length.
fn word_error_rate(reference: &[String], hypothesis: &[String]) -> f64 {
    let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let cost = if r == h { prev } else { prev + 1 };
            let next = cost.min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[hypothesis.len()] as f64 / reference.len().max(1) as f64
}

#[test]
fn word_error_rate_counts_edits() {
    let w = |s: &str| normalise(s, "en");
    assert_eq!(word_error_rate(&w("a b c d"), &w("a b c d")), 0.0);
    assert_eq!(word_error_rate(&w("a b c d"), &w("a x c d")), 0.25);
    assert_eq!(word_error_rate(&w("a b c d"), &w("a c d")), 0.25);
    assert_eq!(word_error_rate(&w("a b c d"), &w("a b b c d e")), 0.5);
    assert_eq!(word_error_rate(&w("a b"), &w("")), 1.0);
    assert_eq!(w("Seven of hearts. 7!"), ["seven", "of", "hearts", "seven"]);
    assert_eq!(
        normalise("¿Es el 37? Sí.", "es"),
        ["es", "el", "treinta", "y", "siete", "sí"]
    );
    assert_eq!(normalise("21, 100", "es"), ["veintiuno", "cien"]);
}

// ---------------------------------------------------------------------------
// The engine

fn engine() -> &'static LocalEngine {
    static ENGINE: OnceLock<LocalEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = LocalConfig::from_env(&Env::from_process()).unwrap();
        let started = Instant::now();
        let engine = LocalEngine::load(config).unwrap_or_else(|e| {
            panic!("{e}\n(`just setup` runs scripts/fetch-whisper-model.sh, which makes the model)")
        });
        eprintln!("model loaded in {:.2} s", started.elapsed().as_secs_f64());
        engine
    })
}

fn run(fixture_name: &str, options: &TranscribeOptions) -> (Transcript, f64) {
    // One transcription at a time: each already uses every core, and
    // whisper.cpp's threads spin-wait, so overlapping runs only slow
    // each other down.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let audio = read_wav(&fixture(&format!("{fixture_name}.wav")));
    let started = Instant::now();
    let transcript = engine().transcribe(&audio, options).unwrap();
    let wall = started.elapsed().as_secs_f64();
    let speed = audio.len() as f64 / 16_000.0 / wall;
    let reference = std::fs::read_to_string(fixture(&format!("{fixture_name}.txt"))).unwrap();
    let wer = word_error_rate(
        &normalise(&reference, &transcript.language),
        &normalise(&transcript.text(), &transcript.language),
    );
    let wer_digits = word_error_rate(&words(&reference, None), &words(&transcript.text(), None));
    eprintln!(
        "{fixture_name} ({:?}, prompt {}): language {}, WER {:.1} % ({:.1} % without number \
         normalisation), {speed:.2}× real time on {} threads",
        options.language,
        options.initial_prompt.is_some(),
        transcript.language,
        wer * 100.0,
        wer_digits * 100.0,
        engine().config().threads
    );
    for s in &transcript.segments {
        eprintln!("  [{:>6} – {:>6} ms] {}", s.start_ms, s.end_ms, s.text);
    }
    check_segments(&transcript, audio.len() as u64 / 16);
    (transcript, wer)
}

fn check_segments(t: &Transcript, audio_ms: u64) {
    assert!(!t.segments.is_empty());
    let mut last_end = 0;
    for s in &t.segments {
        assert!(s.start_ms <= s.end_ms, "{s:?}");
        assert!(
            s.start_ms + 1000 >= last_end,
            "segments go back in time: {s:?}"
        );
        assert!(s.end_ms <= audio_ms, "{s:?} after the end ({audio_ms} ms)");
        assert!(!s.text.trim().is_empty());
        last_end = s.end_ms;
    }
    assert!(
        last_end > audio_ms / 2,
        "the segments cover too little of the audio"
    );
}

#[test]
fn local_engine_transcribes_spanish_and_detects_it() {
    let (transcript, wer) = run("routine-es", &TranscribeOptions::default());
    assert_eq!(transcript.language, "es");
    assert!(
        wer <= 0.25,
        "Spanish word error rate {:.1} % > 25 %",
        wer * 100.0
    );
}

#[test]
fn local_engine_transcribes_english_and_detects_it() {
    let (transcript, wer) = run("routine-en", &TranscribeOptions::default());
    assert_eq!(transcript.language, "en");
    assert!(
        wer <= 0.15,
        "English word error rate {:.1} % > 15 %",
        wer * 100.0
    );
    let e = engine()
        .transcribe(&[], &TranscribeOptions::default())
        .unwrap_err();
    assert!(matches!(e, SpeechError::NoAudio), "{e:?}");
}

/// What a performer would list as the routine's vocabulary: its props,
/// its names and its terms of art.
fn vocabulary_prompt(language: &str) -> String {
    match language {
        "es" => {
            "Rutina de mentalismo: la señora de la bufanda roja, una predicción en la libreta, \
                 una pizarra negra, tiza blanca, concéntrese en cada cifra, un aplauso."
                .into()
        }
        _ => "Card routine: shuffle the deck, cut, the colour and the value of your card, \
              picture it, the seven of hearts, a round of applause for my helper."
            .into(),
    }
}

#[test]
fn a_vocabulary_prompt_helps() {
    for (name, language, limit) in [("routine-es", "es", 0.25), ("routine-en", "en", 0.15)] {
        let options = TranscribeOptions {
            language: language.parse().unwrap(),
            initial_prompt: Some(vocabulary_prompt(language)),
        };
        let (transcript, wer) = run(name, &options);
        assert_eq!(transcript.language, language);
        assert!(
            wer <= limit,
            "{name} with a prompt: word error rate {:.1} %",
            wer * 100.0
        );
    }
}

// ---------------------------------------------------------------------------
// Errors

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiroku-speech-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn load(path: &Path) -> SpeechError {
    let config = LocalConfig {
        model: path.to_owned(),
        threads: 1,
        beam_size: 5,
    };
    LocalEngine::load(config).expect_err("an unusable model loaded")
}

#[test]
fn missing_or_corrupt_model_is_a_clear_error() {
    let dir = temp_dir();

    let missing = dir.join("nowhere.bin");
    let e = load(&missing);
    assert!(matches!(e, SpeechError::ModelMissing(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("nowhere.bin") && text.contains("KIROKU_WHISPER_MODEL"),
        "{text}"
    );

    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"<html>503 Service Unavailable</html>").unwrap();
    let e = load(&garbage);
    assert!(matches!(e, SpeechError::ModelInvalid { .. }), "{e:?}");
    assert!(
        e.to_string().contains("not a whisper.cpp ggml model"),
        "{e}"
    );

    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(load(&empty), SpeechError::ModelInvalid { .. }));

    // A plausible header (Whisper base's) with the weights cut off, as a
    // truncated download would leave it.
    let header = GgmlHeader {
        hparams: Hparams {
            n_vocab: 51865,
            n_audio_ctx: 1500,
            n_audio_state: 512,
            n_audio_head: 8,
            n_audio_layer: 6,
            n_text_ctx: 448,
            n_text_state: 512,
            n_text_head: 8,
            n_text_layer: 6,
            n_mels: N_MELS as i32,
            ftype: 1,
        },
        n_mel: N_MELS,
        n_fft: N_FFT / 2 + 1,
        filters: mel_filters(SAMPLE_RATE, N_FFT, N_MELS),
        vocab: vec![b"a".to_vec(); 10],
    };
    let mut bytes = Vec::new();
    header.write(&mut bytes).unwrap();
    assert_eq!(&bytes[..4], &GGML_MAGIC.to_le_bytes());
    let cut = dir.join("cut.bin");
    std::fs::write(&cut, &bytes).unwrap();
    let e = load(&cut);
    assert!(matches!(e, SpeechError::ModelInvalid { .. }), "{e:?}");
    assert!(e.to_string().contains("missing"), "{e}");

    // Nonsense hyper-parameters (whisper.cpp itself would abort on them).
    let mut odd = bytes.clone();
    odd[4 + 6 * 4..4 + 7 * 4].copy_from_slice(&384i32.to_le_bytes()); // n_text_state
    std::fs::write(&cut, &odd).unwrap();
    let e = load(&cut);
    assert!(e.to_string().contains("n_text_state"), "{e}");

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn language_hints_parse() {
    assert_eq!("auto".parse::<LanguageHint>().unwrap(), LanguageHint::Auto);
    assert_eq!("ES".parse::<LanguageHint>().unwrap(), LanguageHint::Spanish);
    assert_eq!(LanguageHint::English.code(), Some("en"));
    assert!("fr".parse::<LanguageHint>().is_err());
}
