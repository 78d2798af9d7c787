//! Embeddings: deterministic unit vectors built from hashes, so that the same text always embeds
//! the same and texts sharing words lie closer together than texts that don't (archival search
//! over them finds something sensible).

use serde_json::{Value, json};

/// The dimension of every vector; Letta pads to 4096 itself for PostgreSQL.
pub const EMBEDDING_DIM: usize = 1536;
/// The embedding model name [`crate::ModelStandin::embedding_config`] declares.
pub const EMBEDDING_MODEL: &str = "standin-embed";

/// How much of a vector comes from the whole text rather than its words: enough that any two
/// different texts embed differently, little enough that shared words dominate.
const WHOLE_TEXT_WEIGHT: f64 = 0.25;

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Adds `weight` times a pseudo-random vector seeded by `seed` (values in [-1, 1)) to `sum`.
fn add_hashed(sum: &mut [f64], seed: u64, weight: f64) {
    let mut state = seed;
    for value in sum.iter_mut() {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        *value += weight * ((z >> 11) as f64 / (1u64 << 52) as f64 - 1.0);
    }
}

/// The embedding of `text`: the sum of one hashed vector per lower-cased word plus a quarter of
/// one for the whole text, scaled to length 1.
pub fn embed(text: &str) -> Vec<f32> {
    let mut sum = vec![0.0f64; EMBEDDING_DIM];
    let lower = text.to_lowercase();
    for word in lower.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        add_hashed(&mut sum, fnv1a(word.as_bytes()), 1.0);
    }
    add_hashed(&mut sum, fnv1a(text.as_bytes()) ^ 0x5eed, WHOLE_TEXT_WEIGHT);
    let norm = sum.iter().map(|v| v * v).sum::<f64>().sqrt();
    sum.iter().map(|v| (v / norm) as f32).collect()
}

/// The texts an embeddings request's `input` stands for: a string, an array of token ids, or an
/// array of either. Token arrays embed as the text `tokens:1,2,3`.
fn inputs(input: &Value) -> Result<Vec<String>, String> {
    let tokens = |tokens: &[Value]| -> Option<String> {
        let ids: Option<Vec<String>> = tokens.iter().map(|t| t.as_u64().map(|t| t.to_string())).collect();
        ids.map(|ids| format!("tokens:{}", ids.join(",")))
    };
    match input {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => tokens(items)
            .map(|t| vec![t])
            .ok_or("token ids must be integers".into()),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                Value::Array(ids) => tokens(ids).ok_or("token ids must be integers".into()),
                _ => Err("each input must be a string or an array of token ids".into()),
            })
            .collect(),
        _ => Err("'input' must be a non-empty string or array".into()),
    }
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = (u32::from(group[0]) << 16)
            | (u32::from(*group.get(1).unwrap_or(&0)) << 8)
            | u32::from(*group.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The answer to `POST /v1/embeddings`, or why the request is invalid.
pub(crate) fn answer(request: &Value) -> Result<Value, String> {
    let texts = inputs(&request["input"])?;
    let base64_wanted = match &request["encoding_format"] {
        Value::Null => false,
        Value::String(format) if format == "float" => false,
        Value::String(format) if format == "base64" => true,
        other => return Err(format!("unknown encoding_format {other}")),
    };
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embed(text);
            let embedding = if base64_wanted {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = texts.iter().map(|t| t.len().div_ceil(4)).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": request["model"].as_str().unwrap_or(EMBEDDING_MODEL),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}
