//! `[discovery]`: where this instance registers itself and under which name and address.

use anyhow::bail;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// etcd client URLs, e.g. `["http://10.0.0.1:2379"]`; empty: no registration.
    pub etcd: Vec<String>,
    /// The key prefix instances register under.
    pub prefix: String,
    /// This instance's name in the registry (its key's last part).
    pub name: String,
    /// The URL the gateway reaches this instance at.
    pub advertise: String,
    /// The lease: how long a crashed instance stays registered at most.
    pub ttl_secs: u64,
}

impl DiscoveryConfig {
    pub fn with_defaults(mut self) -> Self {
        if self.prefix.is_empty() {
            self.prefix = "/vitrina/instances/".into();
        }
        if self.ttl_secs == 0 {
            self.ttl_secs = 5;
        }
        self
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if self.etcd.is_empty() {
            return Ok(());
        }
        if self.name.is_empty() || self.name.contains('/') {
            bail!("discovery.name must be set (without '/') when discovery.etcd is");
        }
        if !self.advertise.starts_with("http://") && !self.advertise.starts_with("https://") {
            bail!("discovery.advertise must be this instance's http(s) URL when discovery.etcd is");
        }
        for url in &self.etcd {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!("discovery.etcd entries are http(s) URLs, got {url:?}");
            }
        }
        Ok(())
    }
}
