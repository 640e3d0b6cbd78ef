//! Prompt token estimates with OpenAI's BPE encodings (tiktoken).
//!
//! OpenAI models get their own encoding, so the count is what the provider
//! bills for text, give or take its chat framing. Anthropic and Gemini do not
//! publish their tokenizers: for them cl100k_base stands in, and the method
//! says so.

use std::fmt;
use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::Provider;

/// A BPE encoding shipped inside `tiktoken-rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-4.5, GPT-5, o1, o3, o4, gpt-oss.
    O200kBase,
    /// GPT-4, GPT-3.5, and the stand-in for models whose tokenizer is not public.
    Cl100kBase,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }
}

/// How a token count was made. Serializes as one readable string, e.g.
/// `"o200k_base"` or `"cl100k_base (approximation for anthropic)"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateMethod {
    /// The model's own encoding.
    Exact(Encoding),
    /// Another encoding standing in for one that is unknown or unpublished;
    /// `provider` is whose model it approximates, when known.
    Approximation {
        encoding: Encoding,
        provider: Option<Provider>,
    },
    /// No encoding could be loaded (they are compiled in, so this is not
    /// expected): about four bytes of text per token.
    BytesPerToken,
}

impl EstimateMethod {
    pub fn is_approximation(self) -> bool {
        !matches!(self, EstimateMethod::Exact(_))
    }
}

impl fmt::Display for EstimateMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EstimateMethod::Exact(encoding) => f.write_str(encoding.as_str()),
            EstimateMethod::Approximation {
                encoding,
                provider: Some(provider),
            } => {
                write!(f, "{} (approximation for {})", encoding.as_str(), provider.as_str())
            }
            EstimateMethod::Approximation {
                encoding,
                provider: None,
            } => {
                write!(f, "{} (approximation)", encoding.as_str())
            }
            EstimateMethod::BytesPerToken => f.write_str("bytes/4 (approximation)"),
        }
    }
}

impl serde::Serialize for EstimateMethod {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A token count and how it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TokenEstimate {
    pub tokens: u64,
    pub method: EstimateMethod,
}

/// Counts the tokens of `text` as `model` would see it, with no chat framing.
///
/// The first call for an encoding loads it (0.15–0.4 s in a release build;
/// see [`warm_up`]). After that, English text costs about 3.5 ms per 100 KB;
/// the worst input, long runs of whitespace, about 0.7 s per MB.
pub fn estimate_tokens(model: &str, text: &str) -> TokenEstimate {
    let counter = Counter::new(None, Some(model));
    TokenEstimate {
        tokens: counter.count(text),
        method: counter.method,
    }
}

/// Loads both encodings now (blocking until they are), so the request that
/// needs them does not pay for it. They take about 60 MB: a gateway loads
/// them when it first sees AI traffic ([`warm_up_in_background`]), not at
/// start.
pub fn warm_up() {
    let _ = bpe(Encoding::O200kBase);
    let _ = bpe(Encoding::Cl100kBase);
}

/// Starts [`warm_up`] on a thread of its own, once per process.
pub fn warm_up_in_background() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new().name("tokenizer-load".into()).spawn(warm_up);
    });
}

/// Both encodings are loaded: an estimate will not wait for them.
pub fn warmed_up() -> bool {
    O200K.get().is_some() && CL100K.get().is_some()
}

static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();

pub(crate) fn bpe(encoding: Encoding) -> Option<&'static CoreBPE> {
    match encoding {
        Encoding::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref(),
        Encoding::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref(),
    }
}

/// The provider a model name belongs to, when the name says so; requests in
/// OpenAI's format often go to gateways that serve Claude or Gemini models.
fn provider_of_model(model: &str) -> Option<Provider> {
    if model.starts_with("claude") {
        Some(Provider::Anthropic)
    } else if model.starts_with("gemini") || model.starts_with("gemma") {
        Some(Provider::Gemini)
    } else {
        None
    }
}

/// The encoding of an OpenAI model, by tiktoken's own prefix table.
fn openai_encoding(model: &str) -> Option<Encoding> {
    const O200K: &[&str] = &[
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "chatgpt-4o",
        "gpt-oss",
        "codex-mini",
        "o1",
        "o3",
        "o4",
    ];
    const CL100K: &[&str] = &[
        "gpt-4",
        "gpt-3.5",
        "gpt-35-turbo",
        "text-embedding-3",
        "text-embedding-ada-002",
    ];
    if O200K.iter().any(|prefix| is_model_prefix(model, prefix)) {
        Some(Encoding::O200kBase)
    } else if CL100K.iter().any(|prefix| is_model_prefix(model, prefix)) {
        Some(Encoding::Cl100kBase)
    } else {
        None
    }
}

/// `o1` must match `o1` and `o1-mini`, not `o100-something`.
fn is_model_prefix(model: &str, prefix: &str) -> bool {
    model.strip_prefix(prefix).is_some_and(|rest| {
        rest.is_empty() || rest.starts_with(['-', '.', ':']) || prefix.ends_with(|c: char| !c.is_ascii_digit())
    })
}

/// A chosen encoding, ready to count.
#[derive(Clone, Copy)]
pub(crate) struct Counter {
    pub(crate) method: EstimateMethod,
    bpe: Option<&'static CoreBPE>,
}

impl Counter {
    /// Picks the encoding for `model`, with `provider` (the API's owner) as
    /// the fallback when the model name is unknown.
    pub(crate) fn new(provider: Option<Provider>, model: Option<&str>) -> Self {
        // Routers prefix ids ("openai/gpt-4o"); fine-tunes wrap them ("ft:gpt-4o-mini:org::id").
        let model = model.map(|m| {
            let m = m.rsplit('/').next().unwrap_or(m);
            m.strip_prefix("ft:").unwrap_or(m)
        });
        let method = match model.and_then(openai_encoding) {
            Some(encoding) => EstimateMethod::Exact(encoding),
            None => match model.and_then(provider_of_model).or(provider) {
                // An OpenAI model this table does not know yet is most likely a new o200k one.
                Some(Provider::OpenAi) => EstimateMethod::Approximation {
                    encoding: Encoding::O200kBase,
                    provider: Some(Provider::OpenAi),
                },
                other => EstimateMethod::Approximation {
                    encoding: Encoding::Cl100kBase,
                    provider: other,
                },
            },
        };
        let encoding = match method {
            EstimateMethod::Exact(encoding) | EstimateMethod::Approximation { encoding, .. } => Some(encoding),
            EstimateMethod::BytesPerToken => None,
        };
        match encoding.and_then(bpe) {
            Some(bpe) => Counter { method, bpe: Some(bpe) },
            None => Counter {
                method: EstimateMethod::BytesPerToken,
                bpe: None,
            },
        }
    }

    pub(crate) fn count(&self, text: &str) -> u64 {
        match self.bpe {
            Some(bpe) => count_segmented(bpe, text),
            None => text.len().div_ceil(4) as u64,
        }
    }
}

/// Longest slice handed to the encoder at once.
///
/// tiktoken-rs splits text with a backtracking regex that panics once one
/// match needs more than a million steps (a run of ~1 MB of spaces does it),
/// and its BPE merge is quadratic in a piece's length. Bounded slices keep
/// both in check.
pub(crate) const SEGMENT: usize = 4096;

pub(crate) fn count_segmented(bpe: &CoreBPE, mut text: &str) -> u64 {
    let mut total = 0u64;
    while !text.is_empty() {
        let (head, rest) = text.split_at(split_point(text));
        total += bpe.encode_ordinary(head).len() as u64;
        text = rest;
    }
    total
}

/// Where to cut `text` so that each side encodes as it would in place.
///
/// A space right after a visible ASCII character always starts a new piece
/// in both encodings' split patterns (no piece spans it), so cutting there
/// changes nothing. Only text with no such space in half a segment — long
/// runs of one character class, which is not prose — is cut mid-run, and
/// that can change the count by a token or so per cut.
fn split_point(text: &str) -> usize {
    if text.len() <= SEGMENT {
        return text.len();
    }
    let bytes = text.as_bytes();
    let floor = SEGMENT / 2;
    let mut end = SEGMENT;
    while let Some(i) = memchr::memrchr(b' ', &bytes[floor..end]).map(|i| i + floor) {
        if bytes[i - 1].is_ascii_graphic() {
            return i;
        }
        end = i;
    }
    // Never 0: a UTF-8 character is at most 4 bytes long.
    (SEGMENT - 3..=SEGMENT)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(SEGMENT)
}
