//! The `openai` speech engine: any OpenAI-compatible transcription endpoint
//! (`POST {base}/audio/transcriptions`), OpenAI itself or a self-hosted
//! Whisper server, through `async-openai`.
//!
//! Each pipeline segment (at most 40 s, see [`crate::process::segment`]) is
//! sent as a 16 kHz mono 16-bit WAV, about 1.3 MB, far under the 25 MB
//! upload limit; a larger one is refused before it is sent. With
//! `verbose_json` the service's segment timestamps become the lines; with
//! plain `json` (models that return no timestamps) the whole answer is one
//! line spanning the segment.

use async_openai::types::audio::{
    AudioInput, AudioResponseFormat, CreateTranscriptionRequest, TimestampGranularity,
};
use kiroku_runtime::{ConfigError, Env};
use serde::Deserialize;

use super::{SAMPLE_RATE, Segment, SpeechEngine, SpeechError, TranscribeOptions, Transcript};
use crate::process::segment::wav_bytes;
use crate::remote::{self, RemoteConfig, RemoteError};

const SERVICE: &str = "speech service";

/// The most a transcription upload may weigh (OpenAI's documented limit).
pub const UPLOAD_LIMIT: usize = 25 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct OpenAiSpeechConfig {
    pub base_url: String,
    pub api_key: remote::ApiKey,
    pub model: String,
    /// Ask for segment timestamps (`verbose_json`); off for models that
    /// only answer plain `json`.
    pub timestamps: bool,
}

impl OpenAiSpeechConfig {
    pub fn from_env(env: &Env) -> Result<OpenAiSpeechConfig, ConfigError> {
        let timestamps = match env
            .or("KIROKU_OPENAI_SPEECH_FORMAT", "verbose_json")
            .as_str()
        {
            "verbose_json" => true,
            "json" => false,
            _ => {
                return Err(ConfigError::invalid(
                    "KIROKU_OPENAI_SPEECH_FORMAT",
                    "must be verbose_json or json",
                ));
            }
        };
        Ok(OpenAiSpeechConfig {
            base_url: openai_base_url(env),
            api_key: remote::ApiKey::new(env.required("KIROKU_OPENAI_API_KEY")?),
            model: env.or("KIROKU_OPENAI_SPEECH_MODEL", "whisper-1"),
            timestamps,
        })
    }
}

/// `KIROKU_OPENAI_BASE_URL`, OpenAI's own API by default.
pub fn openai_base_url(env: &Env) -> String {
    env.or("KIROKU_OPENAI_BASE_URL", "https://api.openai.com/v1")
}

pub struct OpenAiSpeech {
    client: async_openai::Client<async_openai::config::OpenAIConfig>,
    config: OpenAiSpeechConfig,
    remote: RemoteConfig,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for OpenAiSpeech {
    // No key in any debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSpeech")
            .field("base_url", &self.config.base_url)
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

/// The answer, read leniently: OpenAI-compatible servers differ in the
/// fields they add, and only these matter.
#[derive(Deserialize)]
struct Answer {
    text: String,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    segments: Option<Vec<AnswerSegment>>,
}

#[derive(Deserialize)]
struct AnswerSegment {
    start: f64,
    end: f64,
    text: String,
}

impl OpenAiSpeech {
    /// Must be called inside a Tokio runtime; [`SpeechEngine::transcribe`]
    /// then runs on a blocking thread and waits on that runtime.
    pub fn new(config: OpenAiSpeechConfig, remote: RemoteConfig) -> anyhow::Result<OpenAiSpeech> {
        Ok(OpenAiSpeech {
            client: remote::openai_client(&remote, &config.base_url, &config.api_key)?,
            config,
            remote,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    async fn request(
        &self,
        wav: Vec<u8>,
        duration_ms: u64,
        options: &TranscribeOptions,
    ) -> Result<Transcript, RemoteError> {
        let request = CreateTranscriptionRequest {
            file: AudioInput::from_vec_u8("segment.wav".into(), wav),
            model: self.config.model.clone(),
            language: options.language.code().map(str::to_owned),
            prompt: options.initial_prompt.clone(),
            response_format: Some(if self.config.timestamps {
                AudioResponseFormat::VerboseJson
            } else {
                AudioResponseFormat::Json
            }),
            temperature: Some(0.0),
            timestamp_granularities: self
                .config
                .timestamps
                .then(|| vec![TimestampGranularity::Segment]),
            ..Default::default()
        };
        let body = remote::with_retries(&self.remote, SERVICE, || async {
            self.client
                .audio()
                .transcription()
                .create_raw(request.clone())
                .await
                .map_err(|e| RemoteError::from_openai(SERVICE, &e))
        })
        .await?;
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|_| RemoteError::Malformed { service: SERVICE })?;
        Ok(to_transcript(answer, duration_ms, options))
    }
}

/// The service's answer as timed lines, clamped to the segment.
fn to_transcript(answer: Answer, duration_ms: u64, options: &TranscribeOptions) -> Transcript {
    let language = answer
        .language
        .as_deref()
        .and_then(language_code)
        .or(options.language.code())
        .unwrap_or("und")
        .to_owned();
    let to_ms = |s: f64| {
        if s.is_finite() && s > 0.0 {
            ((s * 1000.0).round() as u64).min(duration_ms)
        } else {
            0
        }
    };
    let segments: Vec<Segment> = match answer.segments {
        Some(segments) if !segments.is_empty() => segments
            .into_iter()
            .map(|s| {
                let start_ms = to_ms(s.start);
                Segment {
                    start_ms,
                    end_ms: to_ms(s.end).max(start_ms),
                    text: s.text.trim().to_owned(),
                }
            })
            .filter(|s| !s.text.is_empty())
            .collect(),
        _ if answer.text.trim().is_empty() => Vec::new(),
        _ => vec![Segment {
            start_ms: 0,
            end_ms: duration_ms,
            text: answer.text.trim().to_owned(),
        }],
    };
    Transcript { language, segments }
}

/// OpenAI answers the language's English name ("spanish"); other servers
/// answer the code. Both are accepted for the languages Kiroku knows.
fn language_code(name: &str) -> Option<&'static str> {
    match name.trim().to_ascii_lowercase().as_str() {
        "es" | "spanish" | "español" | "castilian" => Some("es"),
        "en" | "english" => Some("en"),
        _ => None,
    }
}

impl SpeechEngine for OpenAiSpeech {
    fn transcribe(
        &self,
        audio: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcript, SpeechError> {
        if audio.is_empty() {
            return Err(SpeechError::NoAudio);
        }
        let wav = wav_bytes(audio);
        if wav.len() > UPLOAD_LIMIT {
            return Err(SpeechError::Engine(format!(
                "a segment of {} MB is over the speech service's upload limit",
                wav.len() / 1_000_000
            )));
        }
        let duration_ms = audio.len() as u64 * 1000 / u64::from(SAMPLE_RATE);
        self.runtime
            .block_on(self.request(wav, duration_ms, options))
            .map_err(|e| SpeechError::Engine(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> Answer {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn verbose_answers_become_clamped_timed_segments() {
        let a = answer(
            r#"{"task":"transcribe","language":"spanish","duration":5.0,"text":"Hola. Adiós.",
                "segments":[{"id":0,"start":0.0,"end":1.5,"text":" Hola."},
                            {"id":1,"start":1.5,"end":99.0,"text":" Adiós."},
                            {"id":2,"start":-3,"end":1,"text":"  "}]}"#,
        );
        let t = to_transcript(a, 5_000, &TranscribeOptions::default());
        assert_eq!(t.language, "es");
        assert_eq!(
            t.segments,
            vec![
                Segment {
                    start_ms: 0,
                    end_ms: 1500,
                    text: "Hola.".into()
                },
                Segment {
                    start_ms: 1500,
                    end_ms: 5000,
                    text: "Adiós.".into()
                },
            ]
        );
    }

    #[test]
    fn plain_answers_are_one_line_over_the_segment() {
        let options = TranscribeOptions {
            language: super::super::LanguageHint::English,
            initial_prompt: None,
        };
        let t = to_transcript(answer(r#"{"text":" Good evening. "}"#), 7_000, &options);
        assert_eq!(t.language, "en");
        assert_eq!(t.segments.len(), 1);
        assert_eq!(t.segments[0].end_ms, 7_000);
        assert_eq!(t.segments[0].text, "Good evening.");
        let t = to_transcript(
            answer(r#"{"text":""}"#),
            7_000,
            &TranscribeOptions::default(),
        );
        assert!(t.segments.is_empty());
        assert_eq!(t.language, "und");
    }

    #[test]
    fn wav_is_16_bit_mono_at_16_khz() {
        let wav = wav_bytes(&[0.0, 1.0, -1.0, 2.0]);
        let mut r = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        assert_eq!(r.spec().sample_rate, SAMPLE_RATE);
        assert_eq!(r.spec().channels, 1);
        let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(s, vec![0, i16::MAX, -i16::MAX, i16::MAX]);
    }
}
