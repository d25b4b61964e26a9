//! The pipeline's view of a speech engine ([`crate::speech`]).

use std::sync::Arc;

use super::compose::Line;
use super::{Transcriber, Transcript};
use crate::speech::{SpeechEngine, SpeechError, TranscribeOptions};

/// Adapts any [`SpeechEngine`] to the pipeline's [`Transcriber`].
pub struct EngineTranscriber(pub Arc<dyn SpeechEngine>);

impl Transcriber for EngineTranscriber {
    fn transcribe(&self, samples: &[f32], language: &str) -> anyhow::Result<Transcript> {
        let options = TranscribeOptions {
            language: language.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            initial_prompt: None,
        };
        let t = match self.0.transcribe(samples, &options) {
            Ok(t) => t,
            // A silent stretch has nothing to say; that is not a failure.
            Err(SpeechError::NoAudio) => return Ok(Transcript::default()),
            Err(e) => return Err(e.into()),
        };
        let lines = t
            .segments
            .into_iter()
            .map(|s| Line {
                start_ms: s.start_ms as i64,
                end_ms: s.end_ms as i64,
                text: s.text.trim().to_owned(),
            })
            .collect();
        Ok(Transcript {
            language: Some(t.language),
            lines,
        })
    }
}
