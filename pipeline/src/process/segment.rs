//! Splitting 16 kHz mono audio into segments at silences.
//!
//! A cut goes at the quietest 30 ms frame within a window around the target
//! length, never beyond the hard maximum, so no word is split where a pause
//! was available and no segment exceeds what an engine accepts. The
//! [`Segmenter`] takes the audio as it is decoded and hands out each
//! segment as soon as its cut is known: a cut depends only on the audio
//! before it, so the segments are the same however the audio arrives, and a
//! recording still in progress can be cut as far as it has come.

use std::io::Cursor;

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

/// A finished segment: its first sample's offset in the recording and its
/// samples.
#[derive(Debug)]
pub struct Segment {
    pub start: usize,
    pub samples: Vec<f32>,
}

impl Segment {
    pub fn start_ms(&self) -> i64 {
        (self.start * 1000 / RATE) as i64
    }

    pub fn end_ms(&self) -> i64 {
        ((self.start + self.samples.len()) * 1000 / RATE) as i64
    }
}

/// Cuts audio into segments as it arrives; it holds only the segment being
/// filled, never the whole recording.
#[derive(Debug)]
pub struct Segmenter {
    plan: Plan,
    start: usize,
    pending: Vec<f32>,
}

impl Segmenter {
    pub fn new(plan: Plan) -> Self {
        assert!(
            plan.window_s < plan.target_s && plan.target_s < plan.max_s,
            "a segment plan needs window < target < maximum"
        );
        Segmenter {
            plan,
            start: 0,
            pending: Vec::with_capacity((plan.max_s + 1) * RATE),
        }
    }

    /// Adds the next samples of the recording; returns the segments they
    /// completed, in order.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Segment> {
        self.pending.extend_from_slice(samples);
        let mut done = Vec::new();
        while let Some(cut) = self.next_cut() {
            let rest = self.pending.split_off(cut);
            let samples = std::mem::replace(&mut self.pending, rest);
            done.push(Segment {
                start: self.start,
                samples,
            });
            self.start += cut;
        }
        done
    }

    /// The recording has ended: the rest, if any, is the last segment.
    pub fn finish(&mut self) -> Option<Segment> {
        let samples = std::mem::take(&mut self.pending);
        let start = self.start;
        self.start += samples.len();
        (!samples.is_empty()).then_some(Segment { start, samples })
    }

    /// Where the pending audio must be cut, once it is longer than the
    /// maximum: the middle of the quietest frame in the window.
    fn next_cut(&self) -> Option<usize> {
        if self.pending.len() <= self.plan.max_s * RATE {
            return None;
        }
        // Seconds to frames without rounding the rate first (33.3 frames/s).
        let frames = |secs: usize| secs * RATE / FRAME;
        let lo = frames(self.plan.target_s - self.plan.window_s);
        let hi = frames((self.plan.target_s + self.plan.window_s).min(self.plan.max_s));
        let energy = |i: usize| {
            let f = &self.pending[i * FRAME..(i + 1) * FRAME];
            f.iter().map(|s| s * s).sum::<f32>()
        };
        let best = (lo..hi)
            .map(|i| (i, energy(i)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(hi - 1, |(i, _)| i);
        Some(best * FRAME + FRAME / 2)
    }
}

/// Encodes samples as a 16-bit PCM mono WAV file at [`RATE`] (what every
/// engine reads).
pub fn wav_bytes(samples: &[f32]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: RATE as u32,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    // Writing to memory fails only on a data chunk over 4 GiB, which a
    // segment (at most minutes long) can never reach.
    let mut writer = hound::WavWriter::new(&mut out, spec).expect("WAV header to memory");
    {
        let mut pcm = writer.get_i16_writer(samples.len() as u32);
        for s in samples {
            pcm.write_sample((s.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16);
        }
        pcm.flush().expect("WAV samples to memory");
    }
    writer.finalize().expect("WAV to memory");
    out.into_inner()
}

/// Reads back a 16-bit mono PCM WAV file at [`RATE`]; refuses anything
/// else (another rate would silently change the timing).
pub fn wav_samples(bytes: &[u8]) -> Option<Vec<f32>> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).ok()?;
    let spec = reader.spec();
    if spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
        || spec.sample_rate != RATE as u32
    {
        return None;
    }
    reader
        .into_samples::<i16>()
        .map(|s| s.ok().map(|v| f32::from(v) / 32768.0))
        .collect()
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

    /// All segments of `audio` fed in pieces of `piece` samples.
    fn segments(audio: &[f32], piece: usize) -> Vec<Segment> {
        let mut cutter = Segmenter::new(Plan::default());
        let mut out: Vec<Segment> = audio.chunks(piece).flat_map(|p| cutter.push(p)).collect();
        out.extend(cutter.finish());
        out
    }

    /// Segments must tile the recording: no gap, no overlap, nothing lost.
    fn assert_tiles(segs: &[Segment], len: usize) {
        let mut at = 0;
        for s in segs {
            assert_eq!(s.start, at, "segment starts where the last one ended");
            assert!(!s.samples.is_empty());
            at += s.samples.len();
        }
        assert_eq!(at, len);
    }

    #[test]
    fn cuts_fall_in_pauses_near_the_target_and_never_beyond_the_maximum() {
        let audio = tone_with_pauses(125, 7); // a silent second every 7 s
        let plan = Plan::default();
        let segs = segments(&audio, audio.len());
        assert_tiles(&segs, audio.len());
        assert!(segs.len() >= 4);
        for s in &segs {
            assert!(
                s.samples.len() <= plan.max_s * RATE,
                "{} samples",
                s.samples.len()
            );
        }
        for pair in segs.windows(2) {
            let cut = pair[1].start;
            assert_eq!(audio[cut], 0.0, "cut at {cut} is not in a pause");
            assert!(pair[0].samples.len() >= (plan.target_s - plan.window_s) * RATE);
        }
    }

    #[test]
    fn unbroken_sound_is_still_cut_at_the_maximum() {
        let audio: Vec<f32> = (0..100 * RATE)
            .map(|i| 0.5 * ((i as f32) * 0.01).sin() + 0.5)
            .collect();
        let segs = segments(&audio, 4096);
        assert_tiles(&segs, audio.len());
        assert!(segs.iter().all(|s| s.samples.len() <= 40 * RATE));
    }

    #[test]
    fn the_cuts_do_not_depend_on_how_the_audio_arrives() {
        let audio = tone_with_pauses(200, 9);
        let whole: Vec<(usize, usize)> = segments(&audio, audio.len())
            .iter()
            .map(|s| (s.start, s.samples.len()))
            .collect();
        for piece in [1, 479, 480, 16_000, 160_001] {
            let pieces: Vec<(usize, usize)> = segments(&audio, piece)
                .iter()
                .map(|s| (s.start, s.samples.len()))
                .collect();
            assert_eq!(pieces, whole, "fed {piece} samples at a time");
        }
    }

    #[test]
    fn a_recording_in_progress_keeps_its_tail_for_later() {
        let audio = tone_with_pauses(70, 7);
        let mut cutter = Segmenter::new(Plan::default());
        let early = cutter.push(&audio);
        assert!(!early.is_empty(), "a cut is certain after 70 s");
        let tail = cutter.finish().expect("the tail");
        assert_eq!(tail.start + tail.samples.len(), audio.len());
        assert!(
            Segmenter::new(Plan::default())
                .push(&audio[..RATE])
                .is_empty()
        );
        assert!(Segmenter::new(Plan::default()).finish().is_none());
        assert_eq!(tail.end_ms(), 70_000);
        assert_eq!(early[0].start_ms(), 0);
    }

    #[test]
    fn wav_round_trips_and_refuses_other_formats() {
        let s = vec![0.0, 0.5, -0.5, 0.999, 2.0, -2.0];
        let back = wav_samples(&wav_bytes(&s)).unwrap();
        assert_eq!(back.len(), s.len());
        for (a, b) in s.iter().zip(back) {
            assert!((a.clamp(-1.0, 1.0) - b).abs() < 1e-3);
        }
        assert!(wav_samples(b"RIFF\0\0\0\0WAVEjunk").is_none());
        assert!(wav_samples(b"not a wav").is_none());
        assert!(wav_samples(&[]).is_none());
        // A valid WAV at another rate or in stereo is refused.
        for (channels, rate) in [(2, 16_000), (1, 44_100)] {
            let spec = hound::WavSpec {
                channels,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut out = Cursor::new(Vec::new());
            let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
            for _ in 0..4 {
                w.write_sample(0i16).unwrap();
            }
            w.finalize().unwrap();
            assert!(wav_samples(&out.into_inner()).is_none());
        }
        // Truncated data is refused, not read short.
        let mut cut = wav_bytes(&s);
        cut.truncate(cut.len() - 3);
        assert!(wav_samples(&cut).is_none());
    }
}
