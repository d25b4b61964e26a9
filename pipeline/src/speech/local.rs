//! The `local` speech engine: Whisper through whisper.cpp (`whisper-rs`),
//! in this process, on the CPU.
//!
//! The model is a whisper.cpp ggml file that `scripts/fetch-whisper-model.sh`
//! makes from the PyPI packages (see [`super::convert`]); nothing is fetched
//! at run time.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Instant;

use kiroku_runtime::{ConfigError, Env};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

use super::{LanguageHint, Segment, SpeechEngine, SpeechError, TranscribeOptions, Transcript};

/// The converted model's file name inside the cache directory.
pub const MODEL_FILE: &str = "ggml-base.bin";

/// Where `scripts/fetch-whisper-model.sh` puts the model:
/// `$KIROKU_CACHE_DIR/models/whisper-base/ggml-base.bin`, the cache
/// directory defaulting to `~/.cache/kiroku` like the other scripts'.
/// (`KIROKU_CACHE_DIR` is the scripts' setting, read here only so that
/// the default matches theirs.)
pub fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("KIROKU_CACHE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("kiroku")
        });
    cache.join("models").join("whisper-base").join(MODEL_FILE)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// `KIROKU_WHISPER_MODEL`: the ggml model file.
    pub model: PathBuf,
    /// `KIROKU_WHISPER_THREADS`: CPU threads per transcription.
    pub threads: usize,
    /// Beams of the beam search (Whisper's own default, 5).
    pub beam_size: usize,
}

impl LocalConfig {
    pub fn from_env(env: &Env) -> Result<LocalConfig, ConfigError> {
        let model = env
            .get("KIROKU_WHISPER_MODEL")
            .map_or_else(default_model_path, PathBuf::from);
        let threads = env.parse_or("KIROKU_WHISPER_THREADS", default_threads())?;
        if !(1..=256).contains(&threads) {
            return Err(ConfigError::invalid(
                "KIROKU_WHISPER_THREADS",
                "must be between 1 and 256",
            ));
        }
        Ok(LocalConfig {
            model,
            threads,
            beam_size: 5,
        })
    }
}

/// A loaded model; one transcription at a time per call, any number of
/// calls in parallel (each gets its own decoder state).
#[derive(Debug)]
pub struct LocalEngine {
    ctx: WhisperContext,
    config: LocalConfig,
}

static LOGGING: Once = Once::new();

fn invalid(path: &Path, reason: impl ToString) -> SpeechError {
    SpeechError::ModelInvalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

impl LocalEngine {
    /// Loads the model. A missing, truncated or foreign file is an error
    /// naming the file, checked before whisper.cpp reads it.
    pub fn load(config: LocalConfig) -> Result<LocalEngine, SpeechError> {
        // whisper.cpp and ggml log through `tracing` (target whisper_rs),
        // not straight to stderr.
        LOGGING.call_once(whisper_rs::install_logging_hooks);
        let path = &config.model;
        if !path.is_file() {
            return Err(SpeechError::ModelMissing(path.clone()));
        }
        let started = Instant::now();
        let summary =
            super::convert::check_ggml_file(path).map_err(|e| invalid(path, format!("{e:#}")))?;
        let ctx = WhisperContext::new_with_params(path, WhisperContextParameters::default())
            .map_err(|e| invalid(path, format!("whisper.cpp cannot load it: {e}")))?;
        tracing::info!(
            model = %path.display(),
            layers = summary.hparams.n_audio_layer,
            threads = config.threads,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "whisper model loaded"
        );
        Ok(LocalEngine { ctx, config })
    }

    pub fn config(&self) -> &LocalConfig {
        &self.config
    }
}

fn engine_error(what: &str, e: impl std::fmt::Display) -> SpeechError {
    SpeechError::Engine(format!("{what}: {e}"))
}

impl SpeechEngine for LocalEngine {
    fn transcribe(
        &self,
        audio: &[f32],
        options: &TranscribeOptions,
    ) -> Result<Transcript, SpeechError> {
        if audio.is_empty() {
            return Err(SpeechError::NoAudio);
        }
        let started = Instant::now();
        let mut state = self
            .ctx
            .create_state()
            .map_err(|e| engine_error("cannot create a whisper state", e))?;
        let mut params = FullParams::new(SamplingStrategy::BeamSearch {
            beam_size: self.config.beam_size as i32,
            patience: -1.0,
        });
        params.set_n_threads(self.config.threads as i32);
        // "auto" detects the language from the first 30 s; a known
        // language skips that and cannot be misdetected.
        params.set_language(Some(options.language.code().unwrap_or("auto")));
        params.set_translate(false);
        params.set_no_timestamps(false);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        if let Some(prompt) = options.initial_prompt.as_deref().filter(|p| !p.is_empty()) {
            params.set_initial_prompt(prompt);
        }
        state
            .full(params, audio)
            .map_err(|e| engine_error("whisper.cpp failed", e))?;

        let language = match options.language {
            LanguageHint::Auto => whisper_rs::get_lang_str(state.full_lang_id_from_state())
                .ok_or_else(|| SpeechError::Engine("no language detected".into()))?
                .to_owned(),
            known => known.code().unwrap_or_default().to_owned(),
        };
        let audio_ms = audio.len() as u64 * 1000 / u64::from(super::SAMPLE_RATE);
        let mut segments = Vec::new();
        for segment in state.as_iter() {
            let text = segment
                .to_str_lossy()
                .map_err(|e| engine_error("cannot read a segment", e))?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            // whisper.cpp counts in centiseconds, and its last timestamp
            // may lie past the end of the audio
            let ms = |cs: i64| (u64::try_from(cs).unwrap_or(0) * 10).min(audio_ms);
            segments.push(Segment {
                start_ms: ms(segment.start_timestamp()),
                end_ms: ms(segment.end_timestamp()),
                text: text.to_owned(),
            });
        }
        let audio_secs = audio.len() as f64 / f64::from(super::SAMPLE_RATE);
        let wall = started.elapsed().as_secs_f64();
        tracing::info!(
            language,
            segments = segments.len(),
            audio_secs,
            speed = audio_secs / wall.max(1e-9),
            "transcribed"
        );
        Ok(Transcript { language, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_defaults_and_overrides() {
        let c = LocalConfig::from_env(&Env::default()).unwrap();
        assert_eq!(c.model, default_model_path());
        assert!(c.model.ends_with("models/whisper-base/ggml-base.bin"));
        assert!(c.threads >= 1);
        assert_eq!(c.beam_size, 5);

        let env = Env::from_pairs([
            ("KIROKU_WHISPER_MODEL", "/models/w.bin"),
            ("KIROKU_WHISPER_THREADS", "3"),
        ]);
        let c = LocalConfig::from_env(&env).unwrap();
        assert_eq!(c.model, PathBuf::from("/models/w.bin"));
        assert_eq!(c.threads, 3);

        for bad in ["0", "-1", "many"] {
            let env = Env::from_pairs([("KIROKU_WHISPER_THREADS", bad)]);
            let e = LocalConfig::from_env(&env).unwrap_err();
            assert!(e.to_string().contains("KIROKU_WHISPER_THREADS"), "{e}");
        }
    }
}
