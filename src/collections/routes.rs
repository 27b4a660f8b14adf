//! The seed API routes. Shapes follow pymongo-api (FastAPI): `{"detail": ...}` errors,
//! `{"users": [...]}` lists, 201 on create.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{parse_user, valid_collection, UserDoc, ValidationIssue, MAX_LIST};
use crate::cache::{collection_scope, http, CacheError, Family, Loaded};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::StoreError;
use crate::topology::{self, Topology};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(root))
        .routes(routes!(count))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user))
}

/// Errors of the seed API, in FastAPI's `{"detail": ...}` shape.
#[derive(Debug)]
pub enum SeedError {
    NotFound(String),
    Invalid(Vec<ValidationIssue>),
    TooLarge,
    /// The body did not arrive within the body-read timeout.
    TimedOut,
    Store(StoreError),
}

impl From<StoreError> for SeedError {
    fn from(e: StoreError) -> Self {
        SeedError::Store(e)
    }
}

impl IntoResponse for SeedError {
    fn into_response(self) -> Response {
        let (status, detail) = match self {
            SeedError::NotFound(d) => (StatusCode::NOT_FOUND, json!(d)),
            SeedError::Invalid(issues) => (StatusCode::UNPROCESSABLE_ENTITY, json!(issues)),
            SeedError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, json!("Request body too large")),
            SeedError::TimedOut => (StatusCode::REQUEST_TIMEOUT, json!("Request body timed out")),
            SeedError::Store(StoreError::Unavailable(m) | StoreError::Unreachable(m)) => {
                (StatusCode::SERVICE_UNAVAILABLE, json!(m))
            }
            SeedError::Store(e) => {
                tracing::error!(error = %e, "seed API store failure");
                (StatusCode::INTERNAL_SERVER_ERROR, json!("Internal Server Error"))
            }
        };
        let mut resp = (status, Json(json!({ "detail": detail }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn check_collection(name: &str) -> Result<(), SeedError> {
    if valid_collection(name) {
        return Ok(());
    }
    Err(SeedError::Invalid(vec![ValidationIssue {
        kind: "string_pattern_mismatch",
        loc: vec!["path".into(), "collection_name".into()],
        msg: "Collection names are 1-64 characters of A-Z, a-z, 0-9, '_', '-' and '.'".into(),
        input: Value::String(name.to_owned()),
    }]))
}

#[derive(Serialize, ToSchema)]
pub struct CollectionReport {
    pub documents_count: u64,
    /// Documents per shard; the values sum to `documents_count`.
    pub shards_count: BTreeMap<String, u64>,
}

/// `[host, port]`, as pymongo reports a node: a two-item array, not an object.
fn node_schema() -> utoipa::openapi::schema::ArrayBuilder {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let part = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Integer));
    ArrayBuilder::new().items(part).min_items(Some(2)).max_items(Some(2))
}

fn node_list_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new().items(node_schema()).build()
}

fn node_or_null_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(OneOfBuilder::new().item(node_schema()).item(ObjectBuilder::new().schema_type(Type::Null)).build())
}

/// The seed's status report, key for key, plus `topology`: the precise view of the store.
#[derive(Serialize, ToSchema)]
pub struct RootReport {
    pub mongo_topology_type: String,
    pub mongo_replicaset_name: Option<String>,
    pub mongo_db: String,
    pub read_preference: String,
    /// `[host, port]` pairs of every data node.
    #[schema(schema_with = node_list_schema)]
    pub mongo_nodes: Vec<(String, u16)>,
    /// `[host, port]` of the primary, if one.
    #[schema(schema_with = node_or_null_schema)]
    pub mongo_primary_host: Option<(String, u16)>,
    #[schema(schema_with = node_list_schema)]
    pub mongo_secondary_hosts: Vec<(String, u16)>,
    #[schema(schema_with = node_or_null_schema)]
    pub mongo_address: Option<(String, u16)>,
    pub mongo_is_primary: bool,
    pub mongo_is_mongos: bool,
    pub collections: BTreeMap<String, CollectionReport>,
    /// `{shard: "shard/host:port,..."}` when sharded, otherwise null.
    pub shards: Option<BTreeMap<String, String>>,
    /// Shards that did not answer in time; their documents are missing from the counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable_shards: Vec<String>,
    pub cache_enabled: bool,
    /// The cache tiers and their state (the same as `topology.cache`).
    pub cache: crate::cache::CacheReport,
    pub status: String,
    pub topology: Topology,
}

/// `host:port` as the seed reported node addresses, `[host, port]`; a file path has port 0.
fn host_port(address: &str) -> (String, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse() {
            Ok(p) => (host.to_owned(), p),
            Err(_) => (address.to_owned(), 0),
        },
        _ => (address.to_owned(), 0),
    }
}

fn replica_hosts(topology: &Topology) -> Vec<(String, u16)> {
    topology.store.shards.iter().flat_map(|s| &s.nodes).filter(|n| n.role == "replica").map(|n| host_port(&n.address)).collect()
}

/// In pymongo's words: writes, stock and orders read the primary; catalog and seed reads may
/// go to a replica within the staleness budget.
fn read_preference(topology: &Topology, state: &AppState) -> String {
    if replica_hosts(topology).is_empty() {
        "Primary()".into()
    } else {
        format!("SecondaryPreferred(max_staleness_ms={})", state.config.postgres.replica_lag_budget_ms)
    }
}

/// Status and topology report (the seed's `GET /`).
#[utoipa::path(get, path = "/", tag = "seed",
    responses((status = 200, body = RootReport), (status = 503, description = "The store is unavailable")))]
async fn root(State(state): State<AppState>) -> Result<Json<RootReport>, SeedError> {
    let counts = state.store().collection_counts().await?;
    let mut collections: BTreeMap<String, CollectionReport> = BTreeMap::new();
    for c in counts.value {
        let entry = collections
            .entry(c.collection)
            .or_insert_with(|| CollectionReport { documents_count: 0, shards_count: BTreeMap::new() });
        entry.documents_count += c.count;
        *entry.shards_count.entry(c.shard).or_default() += c.count;
    }
    let topology = topology::describe(&state).await;
    let nodes: Vec<(String, u16)> = topology.store.shards.iter().flat_map(|s| &s.nodes).map(|n| host_port(&n.address)).collect();
    let sharded = topology.store.shards.len() > 1;
    // A router (mongos) has no primary of its own; a single store is its own primary.
    let primary = if sharded { None } else { nodes.first().cloned() };
    let shards = sharded.then(|| {
        topology
            .store
            .shards
            .iter()
            .map(|s| {
                let hosts: Vec<&str> = s.nodes.iter().map(|n| n.address.as_str()).collect();
                (s.name.clone(), format!("{}/{}", s.name, hosts.join(",")))
            })
            .collect()
    });
    Ok(Json(RootReport {
        mongo_topology_type: if sharded { "Sharded" } else { "Single" }.into(),
        mongo_replicaset_name: None,
        mongo_db: state.config.mongo_db.clone(),
        read_preference: read_preference(&topology, &state),
        mongo_address: if sharded { nodes.first().cloned() } else { primary.clone() },
        mongo_primary_host: primary,
        // A router reports no secondaries of its own; a single replicated store lists its replicas.
        mongo_secondary_hosts: if sharded { Vec::new() } else { replica_hosts(&topology) },
        mongo_nodes: nodes,
        mongo_is_primary: !sharded,
        mongo_is_mongos: sharded,
        collections,
        shards,
        unavailable_shards: counts.unavailable,
        cache_enabled: state.cache.enabled(),
        cache: state.cache.report(),
        status: "OK".into(),
        topology,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct CountReport {
    pub status: String,
    pub mongo_db: String,
    pub items_count: u64,
    /// Shards that did not answer in time; `items_count` leaves their documents out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable_shards: Vec<String>,
}

/// Number of documents in a collection, cached as its user list is (60 s, invalidated by a
/// write to it): counting the rows on every request was most of what this answer cost.
#[utoipa::path(get, path = "/{collection_name}/count", tag = "seed",
    params(("collection_name" = String, Path)),
    responses((status = 200, body = CountReport)))]
async fn count(State(state): State<AppState>, Path(collection): Path<String>, headers: HeaderMap) -> Result<Response, SeedError> {
    check_collection(&collection)?;
    let (store, name, mongo_db) = (state.store(), collection.clone(), state.config.mongo_db.clone());
    cached_answer(&state, &collection, "count", &headers, async move {
        let count = store.count_users(&name).await?;
        let complete = count.unavailable.is_empty();
        Ok((
            CountReport { status: "OK".into(), mongo_db, items_count: count.value, unavailable_shards: count.unavailable },
            complete,
        ))
    })
    .await
}

/// A seed answer kept in the cache under the collection's scope (which a write to the
/// collection invalidates), serialised once. `load` says whether its answer is complete: one
/// missing a shard is served but never kept.
async fn cached_answer<T: Serialize>(
    state: &AppState,
    collection: &str,
    key: &str,
    headers: &HeaderMap,
    load: impl std::future::Future<Output = Result<(T, bool), StoreError>> + Send + 'static,
) -> Result<Response, SeedError> {
    let loaded = state
        .cache
        .get_or_load(Family::Users, &collection_scope(collection), key, async move {
            let (answer, complete) = load.await?;
            let body = serde_json::to_vec(&answer).map(Bytes::from).map_err(|e| StoreError::Backend(e.to_string()))?;
            Ok(if complete { Loaded::Keep(body) } else { Loaded::Once(body) })
        })
        .await
        .map_err(|e| match e {
            CacheError::Store(e) => SeedError::Store(e),
            CacheError::Overloaded => SeedError::Store(StoreError::Unavailable(e.to_string())),
        })?;
    let cached = loaded.ok_or_else(|| SeedError::Store(StoreError::Backend(format!("a seed {key} cannot be absent"))))?;
    Ok(http::respond(&cached, headers))
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    #[schema(value_type = Vec<Object>)]
    pub users: Vec<UserDoc>,
    /// Shards that did not answer in time; such a partial list is never cached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unavailable_shards: Vec<String>,
}

/// Up to 1000 users of a collection, cached for 60 s and invalidated by a write to it.
#[utoipa::path(get, path = "/{collection_name}/users", tag = "seed",
    params(("collection_name" = String, Path)),
    responses((status = 200, body = UserList)))]
async fn list_users(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    headers: HeaderMap,
) -> Result<Response, SeedError> {
    check_collection(&collection)?;
    let (store, name) = (state.store(), collection.clone());
    cached_answer(&state, &collection, "list", &headers, async move {
        let gathered = store.list_users(&name, MAX_LIST).await?;
        let complete = gathered.unavailable.is_empty();
        Ok((UserList { users: gathered.value, unavailable_shards: gathered.unavailable }, complete))
    })
    .await
}

/// One user by name, or 404 `{"detail": "User <name> not found"}`.
#[utoipa::path(get, path = "/{collection_name}/users/{name}", tag = "seed",
    params(("collection_name" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, description = "`{\"detail\": \"User <name> not found\"}`")))]
async fn get_user(
    State(state): State<AppState>,
    Path((collection, name)): Path<(String, String)>,
) -> Result<Json<UserDoc>, SeedError> {
    check_collection(&collection)?;
    match state.store().find_user(&collection, &name).await? {
        Some(u) => Ok(Json(u)),
        None => Err(SeedError::NotFound(format!("User {name} not found"))),
    }
}

/// A user as posted, as the seed's pydantic model read it; extra fields are kept. Only the API
/// document uses this type: the body is read as JSON and checked by `parse_user`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct UserIn {
    #[schema(min_length = 0, max_length = 256)]
    name: String,
    /// An integer; an integral number (`30.0`) or a string of digits (`"30"`) is taken too.
    #[schema(schema_with = lax_integer)]
    age: i64,
}

fn lax_integer() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema, Type};
    let integer = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(i64::MIN as f64)).maximum(Some(i64::MAX as f64));
    let integral = ObjectBuilder::new()
        .schema_type(Type::Number)
        .multiple_of(Some(1.0))
        .minimum(Some(i64::MIN as f64))
        .exclusive_maximum(Some(i64::MAX as f64));
    let digits = ObjectBuilder::new().schema_type(Type::String).pattern(Some(r"^\s*[+-]?[0-9]{1,18}\s*$"));
    // Any of them, not one of them: `30` is both an integer and an integral number.
    Schema::AnyOf(AnyOfBuilder::new().item(integer).item(integral).item(digits).build())
}

/// Add a user: `name` (string) and `age` (integer) required, extra fields kept. 201 with the stored user.
#[utoipa::path(post, path = "/{collection_name}/users", tag = "seed",
    params(("collection_name" = String, Path)),
    request_body(content = UserIn, description = "`{\"name\": \"ann\", \"age\": 30, ...}`"),
    responses((status = 201, body = Object), (status = 422, description = "`{\"detail\": [validation errors]}`")))]
async fn create_user(
    State(state): State<AppState>,
    Path(collection): Path<String>,
    req: Request,
) -> Result<(StatusCode, Json<UserDoc>), SeedError> {
    check_collection(&collection)?;
    let body = crate::http::extract::body_bytes(req, &state).await.map_err(|e| match e {
        ApiError::PayloadTooLarge(_) => SeedError::TooLarge,
        ApiError::BodyTimeout(_) => SeedError::TimedOut,
        _ => SeedError::Invalid(vec![]),
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        SeedError::Invalid(vec![ValidationIssue {
            kind: "json_invalid",
            loc: vec!["body".into(), json!(e.column())],
            msg: "JSON decode error".into(),
            input: json!({}),
        }])
    })?;
    let doc = parse_user(value).map_err(SeedError::Invalid)?;
    state.store().insert_users(&collection, vec![doc.clone()]).await?;
    state.cache.invalidate(&collection_scope(&collection)).await;
    Ok((StatusCode::CREATED, Json(doc)))
}
