//! Speech to text: the [`SpeechEngine`] trait the pipeline transcribes
//! with, and its engines. `local` ([`local::LocalEngine`]) runs Whisper
//! through whisper.cpp in this process, on a model converted from a
//! package-registry download by `scripts/fetch-whisper-model.sh`
//! ([`convert`] does the conversion).

pub mod convert;
pub mod local;
pub mod openai;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

/// The sample rate every engine takes: 16 kHz mono `f32` in -1..1.
pub const SAMPLE_RATE: u32 = 16_000;

/// The language the performer speaks, when the project knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LanguageHint {
    /// Let the engine detect it (from the first 30 s).
    #[default]
    Auto,
    Spanish,
    English,
}

impl LanguageHint {
    /// The ISO 639-1 code, `None` for auto-detection.
    pub fn code(self) -> Option<&'static str> {
        match self {
            LanguageHint::Auto => None,
            LanguageHint::Spanish => Some("es"),
            LanguageHint::English => Some("en"),
        }
    }
}

impl std::str::FromStr for LanguageHint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(LanguageHint::Auto),
            "es" => Ok(LanguageHint::Spanish),
            "en" => Ok(LanguageHint::English),
            other => Err(format!("unknown language {other:?} (auto, es or en)")),
        }
    }
}

/// What to transcribe with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranscribeOptions {
    pub language: LanguageHint,
    /// Text that primes the decoder with the routine's vocabulary (names,
    /// props, terms of art); it biases spelling, it is not transcribed.
    pub initial_prompt: Option<String>,
}

/// A stretch of speech and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// ISO 639-1 code of the language spoken (given or detected).
    pub language: String,
    pub segments: Vec<Segment>,
}

impl Transcript {
    /// The segments' text, one segment a line.
    pub fn text(&self) -> String {
        self.segments
            .iter()
            .map(|s| s.text.trim())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Debug, Error)]
pub enum SpeechError {
    #[error(
        "the Whisper model {} does not exist (set KIROKU_WHISPER_MODEL, or run scripts/fetch-whisper-model.sh)",
        .0.display()
    )]
    ModelMissing(PathBuf),
    #[error(
        "the Whisper model {} is unusable: {reason} (run scripts/fetch-whisper-model.sh to fetch and convert it again)",
        path.display()
    )]
    ModelInvalid { path: PathBuf, reason: String },
    #[error("no audio to transcribe")]
    NoAudio,
    #[error("speech engine failed: {0}")]
    Engine(String),
}

/// Turns speech into timed text. Implementations are blocking and
/// CPU-bound: call [`transcribe`] from async code.
pub trait SpeechEngine: Send + Sync + fmt::Debug {
    /// `audio`: 16 kHz mono samples.
    fn transcribe(
        &self,
        audio: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcript, SpeechError>;
}

/// Runs an engine on the blocking thread pool.
pub async fn transcribe(
    engine: Arc<dyn SpeechEngine>,
    audio: Vec<f32>,
    options: TranscribeOptions,
) -> Result<Transcript, SpeechError> {
    tokio::task::spawn_blocking(move || engine.transcribe(&audio, &options))
        .await
        .map_err(|e| SpeechError::Engine(format!("transcription task failed: {e}")))?
}
