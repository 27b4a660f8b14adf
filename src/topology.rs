//! The precise view of what this instance runs on, for `GET /` and operators.

use serde::Serialize;
use utoipa::ToSchema;

use crate::cache::CacheReport;
use crate::state::AppState;
use crate::store::StoreReport;

#[derive(Serialize, ToSchema)]
pub struct Topology {
    pub store: StoreReport,
    pub cache: CacheReport,
    /// Requests inside the admission gates now.
    pub admission: crate::admission::AdmissionReport,
    /// The outbox relay per shard: this instance's role and each sink's progress.
    pub relay: std::collections::BTreeMap<String, crate::events::relay::ShardRelay>,
    /// Sinks the relay publishes to, besides the shops' webhooks.
    pub sinks: Vec<SinkReport>,
    pub version: String,
    pub ready: bool,
    pub uptime_secs: u64,
}

#[derive(Serialize, ToSchema)]
pub struct SinkReport {
    pub name: String,
    pub kind: crate::events::config::SinkKind,
    /// Its URL, password masked.
    pub url: String,
}

pub async fn describe(state: &AppState) -> Topology {
    Topology {
        store: state.store().report().await,
        cache: state.cache.report(),
        admission: state.admission.report(),
        relay: state.relay_status.snapshot(),
        sinks: state
            .config
            .events
            .sinks
            .iter()
            .map(|s| SinkReport { name: s.name(), kind: s.kind, url: crate::secrets::mask_url_password(&s.url) })
            .collect(),
        version: env!("CARGO_PKG_VERSION").into(),
        ready: state.is_ready(),
        uptime_secs: state.started.elapsed().as_secs(),
    }
}
