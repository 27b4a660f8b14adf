//! Keyset pagination. A cursor is the opaque, URL-safe encoding of the last key served, so a
//! page stays stable while rows are inserted before or after it.

use base64::Engine;
use serde::{de::DeserializeOwned, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub const MAX_CURSOR_LEN: usize = 512;

pub fn encode<K: Serialize>(key: &K) -> String {
    // Serializing plain keys (strings, tuples) cannot fail.
    B64.encode(serde_json::to_vec(key).unwrap_or_default())
}

pub fn decode<K: DeserializeOwned>(cursor: &str) -> Option<K> {
    if cursor.len() > MAX_CURSOR_LEN {
        return None;
    }
    let bytes = B64.decode(cursor).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Page size from a query parameter: default when absent, refused outside `1..=max`.
pub fn limit(requested: Option<i64>, default: usize, max: usize) -> Option<usize> {
    match requested {
        None => Some(default),
        Some(n) if n >= 1 && (n as u64) <= max as u64 => Some(n as usize),
        Some(_) => None,
    }
}

/// Page size and position from the `limit` and `cursor` query parameters, refused with a 400.
pub fn from_query<K: DeserializeOwned>(
    limit_param: Option<i64>,
    cursor: Option<&str>,
    limits: &crate::config::LimitsConfig,
) -> Result<(usize, Option<K>), crate::http::error::ApiError> {
    use crate::http::error::ApiError;
    let n = limit(limit_param, limits.page_default, limits.page_max)
        .ok_or_else(|| ApiError::bad_request("invalid_limit", format!("limit must be 1-{}", limits.page_max)))?;
    let after = match cursor {
        None => None,
        Some(c) => Some(decode(c).ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is not one this API issued"))?),
    };
    Ok((n, after))
}

/// Cuts a `limit + 1` fetch into a page and the cursor of its last item.
pub fn split<T, K: Serialize>(mut rows: Vec<T>, limit: usize, key: impl Fn(&T) -> K) -> (Vec<T>, Option<String>) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|r| encode(&key(r)));
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = encode(&"SKU-042");
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode::<String>(&c).as_deref(), Some("SKU-042"));
        let t = encode(&("placed", "0190-abc"));
        assert_eq!(decode::<(String, String)>(&t), Some(("placed".into(), "0190-abc".into())));
    }

    #[test]
    fn garbage_cursors_are_refused() {
        assert_eq!(decode::<String>("%%%"), None);
        assert_eq!(decode::<String>(&B64.encode(b"not json")), None);
        assert_eq!(decode::<String>(&encode(&42)), None);
        assert_eq!(decode::<String>(&"A".repeat(MAX_CURSOR_LEN + 1)), None);
    }

    #[test]
    fn limits() {
        assert_eq!(limit(None, 20, 100), Some(20));
        assert_eq!(limit(Some(1), 20, 100), Some(1));
        assert_eq!(limit(Some(100), 20, 100), Some(100));
        assert_eq!(limit(Some(0), 20, 100), None);
        assert_eq!(limit(Some(101), 20, 100), None);
        assert_eq!(limit(Some(-5), 20, 100), None);
    }

    #[test]
    fn split_emits_cursor_only_when_more_rows_exist() {
        let (page, next) = split(vec![1, 2, 3], 3, |n| *n);
        assert_eq!((page.len(), next), (3, None));
        let (page, next) = split(vec![1, 2, 3, 4], 3, |n| *n);
        assert_eq!(page, vec![1, 2, 3]);
        assert_eq!(decode::<i32>(&next.unwrap()), Some(3));
    }
}
