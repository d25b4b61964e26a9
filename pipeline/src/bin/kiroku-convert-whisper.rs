//! `kiroku-convert-whisper CT2_DIR OUT`: converts a CTranslate2 Whisper
//! model directory (`model.bin`, `vocabulary.txt` or `tokenizer.json`) to
//! the ggml file whisper.cpp loads. `scripts/fetch-whisper-model.sh` runs
//! it; see `kiroku_pipeline::speech::convert` for the formats.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [dir, out] = args.as_slice() else {
        eprintln!("usage: kiroku-convert-whisper CTRANSLATE2_MODEL_DIR OUTPUT_GGML_FILE");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    match kiroku_pipeline::speech::convert::convert_dir(dir, out) {
        Ok(s) => {
            let h = s.hparams;
            eprintln!(
                "wrote {}: {} tensors, {} tokens (n_vocab {}), {}+{} layers, width {}, {} mel bins, in {:.1} s",
                out.display(),
                s.n_tensors,
                s.n_tokens,
                h.n_vocab,
                h.n_audio_layer,
                h.n_text_layer,
                h.n_audio_state,
                h.n_mels,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
