//! Adding documents to a seed-API collection.

use std::collections::HashSet;

use chrono::Utc;

use super::Rows;
use crate::collections::UserDoc;
use crate::events::envelope::user_created;
use crate::store::StoreResult;

/// The rows of the seed API's collections.
#[allow(async_fn_in_trait)]
pub trait CollectionRows: Rows {
    /// Adds the documents whose id is not stored yet; the ids it added.
    async fn insert_docs(&self, collection: &str, docs: &[UserDoc]) -> StoreResult<HashSet<String>>;
}

/// An id already stored is skipped, and records no event: seeding is idempotent, also when
/// instances race.
pub async fn insert(rows: &impl CollectionRows, collection: &str, docs: &[UserDoc]) -> StoreResult<()> {
    let added = rows.insert_docs(collection, docs).await?;
    let events = docs.iter().filter(|d| added.contains(&d.id)).map(|d| user_created(collection, d)).collect();
    rows.emit_all(events, Utc::now()).await
}
