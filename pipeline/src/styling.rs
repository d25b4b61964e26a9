//! Photo styling for projects recorded with "stylize photos" on: which
//! engine draws the photos, and how many a performer may have drawn a day.
//!
//! `local` (the default) is [`crate::process::style::magic_book`], pure
//! Rust in this process. `gemini` (an image model's `generateContent`) and
//! `openai` (`POST /images/edits`) send the upright, metadata-free photo to
//! the service with [`PROMPT`]. Whatever goes wrong (the service fails
//! after its retries, answers no image, or the quota is used up) the
//! original photo is used and the project says so; styling never fails a
//! script.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use image::RgbImage;
use kiroku_runtime::{ConfigError, Env};
use serde::Deserialize;
use uuid::Uuid;

use crate::process::photos;
use crate::remote::{self, RemoteConfig, RemoteError};

const SERVICE: &str = "image service";

/// What the remote image models are asked to do with each photo.
pub const PROMPT: &str = "Redraw this photograph as clean black ink line art, like an \
illustration in an old book of conjuring tricks. Draw the people as line art and remove the \
background, leaving white paper. Keep every object exactly as it is in the photograph, and \
copy any writing, numbers, cards or symbols exactly, letter for letter. Do not add, invent or \
remove anything.";

#[derive(Debug, Clone)]
pub enum StyleEngine {
    Local,
    Gemini {
        base_url: String,
        api_key: remote::ApiKey,
        model: String,
    },
    OpenAi {
        base_url: String,
        api_key: remote::ApiKey,
        model: String,
    },
}

#[derive(Debug, Clone)]
pub struct StyleConfig {
    pub engine: StyleEngine,
    /// Photos one user may have styled per UTC day; 0 turns styling off.
    pub daily_quota: u32,
}

impl StyleConfig {
    pub fn from_env(env: &Env) -> Result<StyleConfig, ConfigError> {
        let engine = match env.or("KIROKU_STYLE_ENGINE", "local").as_str() {
            "local" => StyleEngine::Local,
            "gemini" => StyleEngine::Gemini {
                base_url: env.or(
                    "KIROKU_GEMINI_BASE_URL",
                    "https://generativelanguage.googleapis.com/v1beta",
                ),
                api_key: remote::ApiKey::new(env.required("KIROKU_GEMINI_API_KEY")?),
                model: env.or("KIROKU_GEMINI_IMAGE_MODEL", "gemini-2.5-flash-image"),
            },
            "openai" => StyleEngine::OpenAi {
                base_url: crate::speech::openai::openai_base_url(env),
                api_key: remote::ApiKey::new(env.required("KIROKU_OPENAI_API_KEY")?),
                model: env.or("KIROKU_OPENAI_IMAGE_MODEL", "gpt-image-1"),
            },
            _ => {
                return Err(ConfigError::invalid(
                    "KIROKU_STYLE_ENGINE",
                    "must be local, gemini or openai",
                ));
            }
        };
        Ok(StyleConfig {
            engine,
            daily_quota: env.parse_or("KIROKU_STYLE_DAILY_QUOTA", 100)?,
        })
    }
}

/// Draws photos with the configured engine.
#[derive(Clone)]
pub struct Styler {
    engine: StyleEngine,
    remote: RemoteConfig,
    http: reqwest::Client,
    openai: Option<async_openai::Client<async_openai::config::OpenAIConfig>>,
}

impl std::fmt::Debug for Styler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.engine {
            StyleEngine::Local => "local",
            StyleEngine::Gemini { .. } => "gemini",
            StyleEngine::OpenAi { .. } => "openai",
        };
        f.debug_struct("Styler").field("engine", &name).finish()
    }
}

impl Styler {
    pub fn new(engine: StyleEngine, remote: RemoteConfig) -> anyhow::Result<Styler> {
        let openai = match &engine {
            StyleEngine::OpenAi {
                base_url, api_key, ..
            } => Some(remote::openai_client(&remote, base_url, api_key)?),
            _ => None,
        };
        Ok(Styler {
            http: remote::http_client(&remote)?,
            engine,
            remote,
            openai,
        })
    }

    /// Draws `photo` (upright, at most [`photos::MAX_SIDE`] a side).
    pub async fn draw(&self, photo: RgbImage) -> Result<RgbImage, RemoteError> {
        match &self.engine {
            StyleEngine::Local => {
                tokio::task::spawn_blocking(move || crate::process::style::magic_book(&photo))
                    .await
                    .map_err(|_| RemoteError::Rejected {
                        service: "local style",
                        reason: "the drawing task failed",
                    })
            }
            StyleEngine::Gemini {
                base_url,
                api_key,
                model,
            } => {
                let jpeg = jpeg_of(photo).await?;
                let image = self.gemini(base_url, api_key, model, &jpeg).await?;
                decode(image).await
            }
            StyleEngine::OpenAi { model, .. } => {
                let jpeg = jpeg_of(photo).await?;
                let image = self.openai_edit(model, jpeg).await?;
                decode(image).await
            }
        }
    }

    async fn gemini(
        &self,
        base_url: &str,
        api_key: &remote::ApiKey,
        model: &str,
        jpeg: &[u8],
    ) -> Result<Vec<u8>, RemoteError> {
        let url = format!(
            "{}/models/{}:generateContent",
            base_url.trim_end_matches('/'),
            model
        );
        let body = serde_json::json!({
            "contents": [{
                "role": "user",
                "parts": [
                    { "text": PROMPT },
                    { "inline_data": { "mime_type": "image/jpeg", "data": STANDARD.encode(jpeg) } },
                ],
            }],
            "generationConfig": { "responseModalities": ["IMAGE"] },
        });
        let answer: GeminiAnswer = remote::with_retries(&self.remote, SERVICE, || async {
            let resp = self
                .http
                .post(&url)
                .header("x-goog-api-key", api_key.expose())
                .json(&body)
                .send()
                .await
                .map_err(|e| RemoteError::from_http(SERVICE, &e))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(RemoteError::Status {
                    service: SERVICE,
                    status: status.as_u16(),
                });
            }
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| RemoteError::from_http(SERVICE, &e))?;
            serde_json::from_slice(&bytes).map_err(|_| RemoteError::Malformed { service: SERVICE })
        })
        .await?;
        image_bytes(
            answer
                .candidates
                .iter()
                .flat_map(|c| c.content.iter().flat_map(|c| c.parts.iter()))
                .find_map(|p| p.inline_data.as_ref().map(|d| d.data.as_str())),
        )
    }

    async fn openai_edit(&self, model: &str, jpeg: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        use async_openai::types::images::{
            CreateImageEditRequest, ImageEditInput, ImageInput, ImageModel,
        };
        let client = self.openai.as_ref().ok_or(RemoteError::Misconfigured {
            service: SERVICE,
            reason: "no client",
        })?;
        let request = CreateImageEditRequest {
            image: ImageEditInput::Image(ImageInput::from_vec_u8("photo.jpg".into(), jpeg)),
            prompt: PROMPT.to_owned(),
            model: ImageModel::Other(model.to_owned()),
            n: Some(1),
            ..Default::default()
        };
        let answer: OpenAiImages = remote::with_retries(&self.remote, SERVICE, || async {
            client
                .images()
                .edit_byot(request.clone())
                .await
                .map_err(|e| RemoteError::from_openai(SERVICE, &e))
        })
        .await?;
        image_bytes(answer.data.iter().find_map(|d| d.b64_json.as_deref()))
    }
}

/// The image a service answered, as base64; none is a refusal.
fn image_bytes(b64: Option<&str>) -> Result<Vec<u8>, RemoteError> {
    let b64 = b64.ok_or(RemoteError::Rejected {
        service: SERVICE,
        reason: "it drew no image",
    })?;
    STANDARD
        .decode(b64)
        .map_err(|_| RemoteError::Malformed { service: SERVICE })
}

#[derive(Deserialize)]
struct GeminiAnswer {
    #[serde(default)]
    candidates: Vec<GeminiCandidate>,
}

#[derive(Deserialize)]
struct GeminiCandidate {
    #[serde(default)]
    content: Option<GeminiContent>,
}

#[derive(Deserialize)]
struct GeminiContent {
    #[serde(default)]
    parts: Vec<GeminiPart>,
}

#[derive(Deserialize)]
struct GeminiPart {
    #[serde(default, rename = "inlineData", alias = "inline_data")]
    inline_data: Option<GeminiBlob>,
}

#[derive(Deserialize)]
struct GeminiBlob {
    data: String,
}

#[derive(Deserialize)]
struct OpenAiImages {
    #[serde(default)]
    data: Vec<OpenAiImage>,
}

#[derive(Deserialize)]
struct OpenAiImage {
    #[serde(default)]
    b64_json: Option<String>,
}

async fn jpeg_of(photo: RgbImage) -> Result<Vec<u8>, RemoteError> {
    tokio::task::spawn_blocking(move || photos::encode(&photo).map(|p| p.jpeg))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(RemoteError::Rejected {
            service: SERVICE,
            reason: "the photo could not be encoded",
        })
}

/// The service's image, decoded with the same limits as an upload.
async fn decode(bytes: Vec<u8>) -> Result<RgbImage, RemoteError> {
    tokio::task::spawn_blocking(move || photos::upright(&bytes))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(RemoteError::Rejected {
            service: SERVICE,
            reason: "its image could not be decoded",
        })
}

/// Takes one place in a user's daily styling set, atomically: a photo
/// already in the set keeps its place (a retried job is not charged twice),
/// a new one gets a place only while the set holds fewer than the quota.
/// KEYS[1] the day's set, ARGV[1] the photo, ARGV[2] the quota, ARGV[3] the
/// set's lifetime in seconds. Answers 1 when the photo may be drawn.
const LUA_TAKE_QUOTA: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Counts `photo` against `user`'s styling quota for today; `false` when
/// the quota is used up. Counting a photo twice (a retried job) is free:
/// the day's photos are a set. Photos drawn side by side cannot both be
/// refused for each other's sake, since the check and the count are one
/// script run by Redis at once.
pub async fn take_quota(
    redis: &fred::clients::Client,
    prefix: &str,
    user: Uuid,
    photo: Uuid,
    quota: u32,
) -> anyhow::Result<bool> {
    use fred::interfaces::LuaInterface;
    if quota == 0 {
        return Ok(false);
    }
    let today = time::OffsetDateTime::now_utc().date();
    let key = format!("{prefix}:style-quota:{user}:{today}");
    let taken: i64 = redis
        .eval(
            LUA_TAKE_QUOTA,
            vec![key],
            vec![
                photo.to_string(),
                quota.to_string(),
                (2 * 24 * 3600).to_string(),
            ],
        )
        .await?;
    Ok(taken == 1)
}
