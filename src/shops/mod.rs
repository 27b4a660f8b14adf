//! Shops: the tenant and the shard key. A shop's API key is shown once and stored as a hash.

pub mod routes;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::money::Currency;
use crate::validate::{self, FieldError};

/// `ShopId::parse`'s rule, for the API document.
pub const SHOP_ID_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$";

/// A shop's slug id: lowercase letters, digits and dashes, 2–63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ShopId(String);

impl ShopId {
    pub fn parse(s: &str) -> Result<ShopId, FieldError> {
        let ok = (2..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(ShopId(s.to_owned()))
        } else {
            Err(FieldError::new("id", "must be 2-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"))
        }
    }
    /// For ids read back from the store, which only ever holds validated ones.
    pub fn trusted(s: String) -> ShopId {
        ShopId(s)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ShopId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShop {
    #[schema(example = "acme", pattern = "^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$")]
    pub id: String,
    #[schema(example = "ACME Outlet", min_length = 1, max_length = 200, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub name: String,
    #[schema(schema_with = crate::money::currency_schema)]
    pub currency: String,
}

/// What the store receives: validated, with the key already hashed.
#[derive(Debug, Clone)]
pub struct NewShop {
    pub id: ShopId,
    pub name: String,
    pub currency: Currency,
    pub api_key_hash: [u8; 32],
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Shop {
    #[schema(value_type = String)]
    pub id: ShopId,
    pub name: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A shop as stored, including the hash its API key is checked against.
#[derive(Debug, Clone)]
pub struct ShopRecord {
    pub shop: Shop,
    pub api_key_hash: [u8; 32],
    /// Set on a shard the shop has left (or is leaving): where its data lives now.
    pub moved_to: Option<String>,
}

impl CreateShop {
    pub fn validate(self, api_key_hash: [u8; 32], now: chrono::DateTime<chrono::Utc>) -> Result<NewShop, Vec<FieldError>> {
        let mut errors = Vec::new();
        let id = ShopId::parse(&self.id).map_err(|e| errors.push(e)).ok();
        validate::text(&mut errors, "name", &self.name, 1, 200);
        let currency = Currency::parse(&self.currency);
        if currency.is_none() {
            errors.push(FieldError::new("currency", "must be an ISO 4217 code such as USD"));
        }
        match (id, currency, errors.is_empty()) {
            (Some(id), Some(currency), true) => Ok(NewShop { id, name: self.name, currency, api_key_hash, created_at: now }),
            _ => Err(errors),
        }
    }
}

/// A fresh API key: 32 random bytes, prefixed so leaked keys are easy to recognise in scans.
pub fn generate_api_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("vk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Keys carry 256 bits of entropy, so a plain SHA-256 is enough; a slow KDF would only cost
/// latency on every authenticated write.
pub fn hash_secret(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub fn secret_matches(presented: &str, expected_hash: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    hash_secret(presented).ct_eq(expected_hash).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shop_ids_are_slugs() {
        assert!(ShopId::parse("acme").is_ok());
        assert!(ShopId::parse("acme-2").is_ok());
        for bad in ["", "a", "Acme", "-acme", "acme-", "ac me", "acme_1", &"a".repeat(64)] {
            assert!(ShopId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keys_verify_only_against_their_hash() {
        let k = generate_api_key();
        assert!(k.starts_with("vk_") && k.len() > 40);
        let h = hash_secret(&k);
        assert!(secret_matches(&k, &h));
        assert!(!secret_matches(&generate_api_key(), &h));
    }
}
