//! Seed-API collections on SQLite, kept in insertion order like a MongoDB natural scan.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{SqliteStore, Tx};
use crate::collections::UserDoc;
use crate::store::transactions::at_once;
use crate::store::transactions::collections::CollectionRows;
use crate::store::{transactions, CollectionCount, Collections, Gathered, StoreError, StoreResult};

fn doc_row(r: &Row<'_>) -> rusqlite::Result<(String, String, i64, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_doc((id, name, age, extra): (String, String, i64, String)) -> StoreResult<UserDoc> {
    let extra = serde_json::from_str(&extra).map_err(|e| StoreError::Backend(format!("document {id}: {e}")))?;
    Ok(UserDoc { id, name, age, extra })
}

impl CollectionRows for Tx<'_> {
    async fn insert_docs(&self, collection: &str, docs: &[UserDoc]) -> StoreResult<std::collections::HashSet<String>> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO seed_docs (id, collection, name, age, extra) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
        )?;
        let mut added = std::collections::HashSet::new();
        for d in docs {
            let extra = serde_json::to_string(&d.extra).map_err(|e| StoreError::Backend(e.to_string()))?;
            if stmt.execute(params![d.id, collection, d.name, d.age, extra])? == 1 {
                added.insert(d.id.clone());
            }
        }
        Ok(added)
    }
}

pub fn find(c: &Connection, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
    c.prepare_cached("SELECT id, name, age, extra FROM seed_docs WHERE collection = ?1 AND name = ?2 ORDER BY seq LIMIT 1")?
        .query_row(params![collection, name], doc_row)
        .optional()?
        .map(to_doc)
        .transpose()
}

pub fn list(c: &Connection, collection: &str, limit: usize) -> StoreResult<Vec<UserDoc>> {
    c.prepare_cached("SELECT id, name, age, extra FROM seed_docs WHERE collection = ?1 ORDER BY seq LIMIT ?2")?
        .query_map(params![collection, limit as i64], doc_row)?
        .map(|r| to_doc(r?))
        .collect()
}

pub fn count(c: &Connection, collection: &str) -> StoreResult<u64> {
    Ok(c.prepare_cached("SELECT count(*) FROM seed_docs WHERE collection = ?1")?.query_row([collection], |r| r.get(0))?)
}

pub fn counts(c: &Connection) -> StoreResult<Vec<(String, u64)>> {
    Ok(c.prepare_cached("SELECT collection, count(*) FROM seed_docs GROUP BY collection ORDER BY collection")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

#[async_trait]
impl Collections for SqliteStore {
    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()> {
        let collection = collection.to_owned();
        self.write(move |c| at_once(transactions::collections::insert(&Tx(c), &collection, &docs))).await
    }

    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
        let (collection, name) = (collection.to_owned(), name.to_owned());
        self.read(move |c| find(c, &collection, &name)).await
    }

    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>> {
        let collection = collection.to_owned();
        self.read(move |c| list(c, &collection, limit)).await.map(Gathered::complete)
    }

    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>> {
        let collection = collection.to_owned();
        self.read(move |c| count(c, &collection)).await.map(Gathered::complete)
    }

    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>> {
        let rows = self.read(counts).await?;
        let shard = &self.name;
        Ok(Gathered::complete(
            rows.into_iter().map(|(collection, count)| CollectionCount { collection, shard: shard.clone(), count }).collect(),
        ))
    }
}
