//! What each scenario asks for, request by request. `browse`: product reads (Zipf-skewed, a few
//! products take most reads, as on a real storefront) and catalog pages; `seed`: the pymongo-api
//! routes; `flash-sale`: many buyers, few SKUs, one unit each under a fresh Idempotency-Key;
//! `mixed`: mostly browsing, some seed traffic, some buying; `probe`: the liveness check, the
//! cheapest answer the server gives, as the same run's reference for what any answer costs.

use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Browse,
    Seed,
    FlashSale,
    Mixed,
    Probe,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Browse => "browse",
            Scenario::Seed => "seed",
            Scenario::FlashSale => "flash-sale",
            Scenario::Mixed => "mixed",
            Scenario::Probe => "probe",
        }
    }

    pub fn buys(self) -> bool {
        matches!(self, Scenario::FlashSale | Scenario::Mixed)
    }
}

/// What the set-up created or found, that requests refer to.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub shop: String,
    pub key: String,
    pub skus: Vec<String>,
    pub categories: Vec<String>,
    pub sale_skus: Vec<String>,
    pub collection: String,
    pub users: Vec<String>,
    /// Distinguishes this run's idempotency keys and seed users from an earlier run's.
    pub run_id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Get(String),
    /// One unit of `sku`; the key is kept across retries of this order.
    Order {
        sku: String,
        key: String,
    },
    CreateUser(serde_json::Value),
}

/// Zipf over ranks `0..n` with exponent `s`: rank 0 is the most requested.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let weights: Vec<f64> = (1..=n.max(1)).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        Zipf {
            cdf: weights
                .iter()
                .map(|w| {
                    acc += w / total;
                    acc
                })
                .collect(),
        }
    }

    /// The rank for a uniform draw `u` in [0, 1).
    pub fn rank(&self, u: f64) -> usize {
        self.cdf.partition_point(|c| *c <= u).min(self.cdf.len() - 1)
    }
}

/// The `i`-th request of a scenario; `u` and `v` are uniform draws in [0, 1).
pub fn request(scenario: Scenario, world: &World, zipf: &Zipf, i: u64, u: f64, v: f64) -> Request {
    let shop = &world.shop;
    match scenario {
        Scenario::Browse => {
            if v < 0.8 {
                Request::Get(format!("/shops/{shop}/products/{}", world.skus[zipf.rank(u)]))
            } else {
                let c = &world.categories[(u * world.categories.len() as f64) as usize % world.categories.len()];
                Request::Get(format!("/shops/{shop}/products?category={c}&limit=20"))
            }
        }
        Scenario::Seed => {
            let c = &world.collection;
            match (v * 100.0) as u32 {
                0..=39 => Request::Get(format!("/{c}/users")),
                40..=69 => Request::Get(format!("/{c}/count")),
                70..=94 if !world.users.is_empty() => Request::Get(format!(
                    "/{c}/users/{}",
                    world.users[(u * world.users.len() as f64) as usize % world.users.len()]
                )),
                70..=94 => Request::Get("/".into()),
                _ => Request::CreateUser(
                    json!({"name": format!("bench-{}-{i}", world.run_id), "age": 30 + i % 40, "city": "Bench"}),
                ),
            }
        }
        Scenario::FlashSale => {
            let sku = world.sale_skus[(u * world.sale_skus.len() as f64) as usize % world.sale_skus.len()].clone();
            Request::Order { sku, key: format!("{}-{i}", world.run_id) }
        }
        Scenario::Probe => Request::Get("/health/live".into()),
        Scenario::Mixed => match (v * 100.0) as u32 {
            0..=69 => request(Scenario::Browse, world, zipf, i, u, v / 0.7),
            70..=89 => request(Scenario::Seed, world, zipf, i, u, (v - 0.7) / 0.2),
            _ => request(Scenario::FlashSale, world, zipf, i, u, v),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_ranks() {
        let z = Zipf::new(100, 1.1);
        let mut counts = [0u32; 100];
        for k in 0..10_000 {
            counts[z.rank(k as f64 / 10_000.0)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        assert!(counts[..10].iter().sum::<u32>() > 5_000, "the top tenth takes most reads: {:?}", &counts[..10]);
        assert_eq!(z.rank(0.0), 0);
        assert_eq!(z.rank(0.999_999), 99);
    }

    fn world() -> World {
        World {
            shop: "s".into(),
            skus: vec!["A".into(), "B".into()],
            categories: vec!["c1".into()],
            sale_skus: vec!["HOT".into()],
            collection: "helloDoc".into(),
            users: vec!["ann".into()],
            run_id: "r1".into(),
            ..World::default()
        }
    }

    #[test]
    fn each_scenario_asks_for_its_routes() {
        let (w, z) = (world(), Zipf::new(2, 1.1));
        assert_eq!(request(Scenario::Browse, &w, &z, 0, 0.0, 0.1), Request::Get("/shops/s/products/A".into()));
        assert_eq!(request(Scenario::Browse, &w, &z, 0, 0.0, 0.9), Request::Get("/shops/s/products?category=c1&limit=20".into()));
        assert_eq!(request(Scenario::Seed, &w, &z, 0, 0.0, 0.1), Request::Get("/helloDoc/users".into()));
        assert_eq!(request(Scenario::Seed, &w, &z, 0, 0.0, 0.8), Request::Get("/helloDoc/users/ann".into()));
        assert!(matches!(request(Scenario::Seed, &w, &z, 7, 0.0, 0.99), Request::CreateUser(_)));
        assert_eq!(request(Scenario::FlashSale, &w, &z, 7, 0.3, 0.3), Request::Order { sku: "HOT".into(), key: "r1-7".into() });
        assert!(matches!(request(Scenario::Mixed, &w, &z, 7, 0.3, 0.95), Request::Order { .. }));
        assert_eq!(request(Scenario::Probe, &w, &z, 7, 0.3, 0.95), Request::Get("/health/live".into()));
    }
}
