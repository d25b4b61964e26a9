//! Splitting 16 kHz mono audio into segments at silences.
//!
//! A cut goes at the quietest 30 ms frame within a window around the target
//! length, never later than the hard maximum, so no word is split where a
//! pause was available and no segment exceeds what an engine accepts. It
//! works on any prefix of the audio: a recording still in progress can be
//! cut as far as it has arrived (see [`cut_points`] `final_part`).

pub const RATE: usize = 16_000;
const FRAME: usize = RATE * 30 / 1000;

/// Segment lengths, seconds.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub target_s: usize,
    pub window_s: usize,
    pub max_s: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            target_s: 30,
            window_s: 8,
            max_s: 40,
        }
    }
}

fn frame_energy(samples: &[f32]) -> Vec<f32> {
    samples
        .chunks(FRAME)
        .map(|f| f.iter().map(|s| s * s).sum::<f32>() / f.len().max(1) as f32)
        .collect()
}

/// Sample offsets where segments end (the last one is `samples.len()` when
/// `final_part`, i.e. the recording has stopped; otherwise the tail after
/// the last cut is left for later).
pub fn cut_points(samples: &[f32], plan: Plan, final_part: bool) -> Vec<usize> {
    let energy = frame_energy(samples);
    // Seconds to frames without rounding the rate first (33.3 frames/s).
    let frames = |secs: usize| secs * RATE / FRAME;
    let mut cuts = Vec::new();
    let mut start = 0usize; // in frames
    loop {
        let remaining = energy.len().saturating_sub(start);
        if remaining <= frames(plan.max_s) {
            if final_part && remaining > 0 {
                cuts.push(samples.len());
            }
            break;
        }
        let lo = start + frames(plan.target_s - plan.window_s);
        let hi = (start + frames(plan.target_s + plan.window_s)).min(start + frames(plan.max_s));
        let best = (lo..hi.min(energy.len()))
            .min_by(|a, b| energy[*a].total_cmp(&energy[*b]))
            .unwrap_or(hi);
        // Cut in the middle of the quietest frame.
        cuts.push((best * FRAME + FRAME / 2).min(samples.len()));
        start = best + 1;
    }
    cuts
}

/// Encodes samples as a 16-bit PCM WAV file (what every engine reads).
pub fn wav_bytes(samples: &[f32]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&(RATE as u32).to_le_bytes());
    out.extend_from_slice(&(RATE as u32 * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    out
}

/// Reads back what [`wav_bytes`] wrote (16-bit mono PCM at any offset of
/// the data chunk). Refuses anything else.
pub fn wav_samples(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut pos = 12;
    let mut format_ok = false;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().ok()?) as usize;
        let body = bytes.get(pos + 8..pos + 8 + len)?;
        if id == b"fmt " && body.len() >= 16 {
            let fmt = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let bits = u16::from_le_bytes([body[14], body[15]]);
            format_ok = fmt == 1 && channels == 1 && bits == 16;
        } else if id == b"data" {
            if !format_ok {
                return None;
            }
            return Some(
                body.chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                    .collect(),
            );
        }
        pos += 8 + len + (len & 1);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_with_pauses(seconds: usize, pause_every_s: usize) -> Vec<f32> {
        (0..seconds * RATE)
            .map(|i| {
                let t = i / RATE;
                if t % pause_every_s == pause_every_s - 1 {
                    0.0
                } else {
                    0.3 * ((i as f32) * 0.05).sin()
                }
            })
            .collect()
    }

    #[test]
    fn cuts_fall_in_pauses_near_the_target_and_never_beyond_the_maximum() {
        let audio = tone_with_pauses(125, 7); // a silent second every 7 s
        let plan = Plan::default();
        let cuts = cut_points(&audio, plan, true);
        assert_eq!(*cuts.last().unwrap(), audio.len());
        let mut prev = 0;
        for c in &cuts {
            let len_s = (c - prev) as f32 / RATE as f32;
            assert!(len_s <= plan.max_s as f32 + 0.1, "segment of {len_s} s");
            if *c != audio.len() {
                assert!(audio[*c] == 0.0, "cut at {c} is not in a pause");
                assert!(
                    len_s >= (plan.target_s - plan.window_s) as f32 - 0.1,
                    "cuts {cuts:?}"
                );
            }
            prev = *c;
        }
    }

    #[test]
    fn unbroken_sound_is_still_cut_at_the_maximum() {
        let audio: Vec<f32> = (0..100 * RATE)
            .map(|i| 0.5 * ((i as f32) * 0.01).sin() + 0.5)
            .collect();
        let cuts = cut_points(&audio, Plan::default(), true);
        let mut prev = 0;
        for c in cuts {
            assert!(c - prev <= 40 * RATE + FRAME);
            prev = c;
        }
    }

    #[test]
    fn a_prefix_keeps_its_tail_for_later() {
        let audio = tone_with_pauses(70, 7);
        let partial = cut_points(&audio, Plan::default(), false);
        assert!(partial.iter().all(|c| *c < audio.len()));
        assert!(cut_points(&audio[..RATE], Plan::default(), false).is_empty());
        assert_eq!(cut_points(&[], Plan::default(), true), Vec::<usize>::new());
    }

    #[test]
    fn wav_round_trips_and_refuses_other_formats() {
        let s = vec![0.0, 0.5, -0.5, 0.999];
        let back = wav_samples(&wav_bytes(&s)).unwrap();
        for (a, b) in s.iter().zip(back) {
            assert!((a - b).abs() < 1e-3);
        }
        assert!(wav_samples(b"RIFF\0\0\0\0WAVEjunk").is_none());
        assert!(wav_samples(b"not a wav").is_none());
    }
}
