//! Seed-API collections on PostgreSQL, in insertion order like a MongoDB natural scan.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{replica_first, seed_key, PgStore, Tx, ANY_SEED_WRITE};
use crate::collections::UserDoc;
use crate::store::transactions::collections::CollectionRows;
use crate::store::{transactions, CollectionCount, Collections, Gathered, StoreError, StoreResult};

fn to_doc(r: &Row) -> StoreResult<UserDoc> {
    let id: String = r.get(0);
    let extra = match r.get::<_, serde_json::Value>(3) {
        serde_json::Value::Object(m) => m,
        _ => return Err(StoreError::Backend(format!("document {id}: extra fields are not an object"))),
    };
    Ok(UserDoc { id, name: r.get(1), age: r.get(2), extra })
}

impl<C: GenericClient + Sync> CollectionRows for Tx<'_, C> {
    /// One statement for the whole batch: the seed's 1000 users are one round trip.
    async fn insert_docs(&self, collection: &str, docs: &[UserDoc]) -> StoreResult<std::collections::HashSet<String>> {
        let c = self.0;
        let stmt = c
            .prepare_cached(
                "INSERT INTO seed_docs (id, collection, name, age, extra)
                 SELECT id, $1, name, age, extra FROM unnest($2::text[], $3::text[], $4::bigint[], $5::jsonb[])
                   WITH ORDINALITY AS d (id, name, age, extra, n) ORDER BY n
                 ON CONFLICT (id) DO NOTHING RETURNING id",
            )
            .await?;
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
        let ages: Vec<i64> = docs.iter().map(|d| d.age).collect();
        let extras: Vec<serde_json::Value> = docs.iter().map(|d| serde_json::Value::Object(d.extra.clone())).collect();
        Ok(c.query(&stmt, &[&collection, &ids, &names, &ages, &extras]).await?.iter().map(|r| r.get(0)).collect())
    }
}

pub async fn find(c: &impl GenericClient, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
    let stmt = c
        .prepare_cached("SELECT id, name, age, extra FROM seed_docs WHERE collection = $1 AND name = $2 ORDER BY seq LIMIT 1")
        .await?;
    c.query_opt(&stmt, &[&collection, &name]).await?.as_ref().map(to_doc).transpose()
}

pub async fn list(c: &impl GenericClient, collection: &str, limit: usize) -> StoreResult<Vec<UserDoc>> {
    let stmt = c.prepare_cached("SELECT id, name, age, extra FROM seed_docs WHERE collection = $1 ORDER BY seq LIMIT $2").await?;
    c.query(&stmt, &[&collection, &(limit as i64)]).await?.iter().map(to_doc).collect()
}

pub async fn count(c: &impl GenericClient, collection: &str) -> StoreResult<u64> {
    let stmt = c.prepare_cached("SELECT count(*) FROM seed_docs WHERE collection = $1").await?;
    Ok(c.query_one(&stmt, &[&collection]).await?.get::<_, i64>(0) as u64)
}

pub async fn counts(c: &impl GenericClient) -> StoreResult<Vec<(String, u64)>> {
    let stmt = c.prepare_cached("SELECT collection, count(*) FROM seed_docs GROUP BY collection ORDER BY collection").await?;
    Ok(c.query(&stmt, &[]).await?.iter().map(|r| (r.get(0), r.get::<_, i64>(1) as u64)).collect())
}

#[async_trait]
impl Collections for PgStore {
    async fn insert_users(&self, collection: &str, docs: Vec<UserDoc>) -> StoreResult<()> {
        self.replicas
            .after_writes(&[&seed_key(collection), ANY_SEED_WRITE], async {
                let mut client = self.client().await?;
                let tx = client.transaction().await?;
                transactions::collections::insert(&Tx(&tx), collection, &docs).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn find_user(&self, collection: &str, name: &str) -> StoreResult<Option<UserDoc>> {
        replica_first!(self, &seed_key(collection), |c| find(c, collection, name))
    }

    async fn list_users(&self, collection: &str, limit: usize) -> StoreResult<Gathered<Vec<UserDoc>>> {
        replica_first!(self, &seed_key(collection), |c| list(c, collection, limit)).map(Gathered::complete)
    }

    async fn count_users(&self, collection: &str) -> StoreResult<Gathered<u64>> {
        replica_first!(self, &seed_key(collection), |c| count(c, collection)).map(Gathered::complete)
    }

    async fn collection_counts(&self) -> StoreResult<Gathered<Vec<CollectionCount>>> {
        let rows: Vec<(String, u64)> = replica_first!(self, ANY_SEED_WRITE, |c| counts(c))?;
        Ok(Gathered::complete(
            rows.into_iter().map(|(collection, count)| CollectionCount { collection, shard: self.name.clone(), count }).collect(),
        ))
    }
}
