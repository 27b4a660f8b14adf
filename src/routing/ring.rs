//! A consistent-hash ring. The hash is fixed by this file (FNV-1a folded through the MurmurHash3
//! finalizer, with a constant seed): every process and every version computes the same owner
//! for a key, which is what lets stateless instances agree without talking to each other.

/// Virtual nodes per shard. With 1024 the busiest shard carries within a few percent of the mean.
pub const DEFAULT_VNODES: usize = 1024;

const SEED: u64 = 0x7669_7472_696e_6121; // "vitrina!"

/// Stable 64-bit hash: never change it, or every key moves.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ SEED;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // fmix64: spreads FNV's weak low bits over the whole word.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Debug, Clone)]
pub struct Ring {
    shards: Vec<String>,
    /// (point, index into `shards`), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn new(shards: &[String], vnodes: usize) -> Ring {
        let mut points = Vec::with_capacity(shards.len() * vnodes);
        for (i, name) in shards.iter().enumerate() {
            for v in 0..vnodes {
                points.push((stable_hash(format!("{name}#{v}").as_bytes()), i));
            }
        }
        // Ties (astronomically rare) resolve by shard name, the same everywhere.
        points.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| shards[a.1].cmp(&shards[b.1])));
        Ring { shards: shards.to_vec(), points }
    }

    pub fn shards(&self) -> &[String] {
        &self.shards
    }

    /// Index of the shard owning `key`: the first virtual node at or after the key's hash.
    pub fn owner_index(&self, key: &str) -> usize {
        if self.points.len() <= 1 || self.shards.len() == 1 {
            return 0;
        }
        let h = stable_hash(key.as_bytes());
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points[if i == self.points.len() { 0 } else { i }].1
    }

    pub fn owner(&self, key: &str) -> &str {
        &self.shards[self.owner_index(key)]
    }

    /// Share of virtual nodes (of hash space) each shard owns, for the topology report.
    pub fn ownership(&self) -> Vec<(String, f64)> {
        let mut span = vec![0u128; self.shards.len()];
        let n = self.points.len();
        for (i, (point, _)) in self.points.iter().enumerate() {
            // The arc ending at this point belongs to this point's shard.
            let prev = if i == 0 { self.points[n - 1].0 } else { self.points[i - 1].0 };
            let len = point.wrapping_sub(prev) as u128;
            span[self.points[i].1] += if n == 1 { 1u128 << 64 } else { len };
        }
        let total: u128 = span.iter().sum::<u128>().max(1);
        self.shards.iter().cloned().zip(span.into_iter().map(|s| s as f64 / total as f64)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("shard{i}")).collect()
    }

    fn keys(seed: u64, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("shop-{seed}-{i}")).collect()
    }

    #[test]
    fn the_hash_is_pinned() {
        // Changing these values moves every shop in every deployment: never update them.
        assert_eq!(format!("{:016x}", stable_hash(b"acme")), PINNED_ACME);
        assert_eq!(format!("{:016x}", stable_hash(b"shard1#0")), PINNED_SHARD1_0);
    }

    const PINNED_ACME: &str = "d4fc26875bf29457";
    const PINNED_SHARD1_0: &str = "81568208be61c955";

    #[test]
    fn one_shard_owns_everything() {
        let r = Ring::new(&names(1), DEFAULT_VNODES);
        assert!(keys(1, 100).iter().all(|k| r.owner(k) == "shard1"));
        assert!((r.ownership()[0].1 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn ownership_shares_sum_to_one() {
        let r = Ring::new(&names(3), DEFAULT_VNODES);
        let total: f64 = r.ownership().iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn adding_a_shard_moves_about_its_share_and_only_to_it(n in 1usize..8, seed in any::<u64>()) {
            let before = Ring::new(&names(n), DEFAULT_VNODES);
            let after = Ring::new(&names(n + 1), DEFAULT_VNODES);
            let ks = keys(seed, 20_000);
            let new = format!("shard{}", n + 1);
            let mut moved = 0usize;
            for k in &ks {
                if before.owner(k) != after.owner(k) {
                    prop_assert_eq!(after.owner(k), new.as_str(), "a key only ever moves to the new shard");
                    moved += 1;
                }
            }
            let expected = 1.0 / (n as f64 + 1.0);
            let share = moved as f64 / ks.len() as f64;
            prop_assert!((share - expected).abs() <= 0.10 * expected, "moved {share:.4}, expected {expected:.4} ± 10 %");
        }

        #[test]
        fn removing_a_shard_moves_only_its_keys(n in 2usize..9, gone in 0usize..8, seed in any::<u64>()) {
            let gone = gone % n;
            let all = names(n);
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, s)| s.clone()).collect();
            let before = Ring::new(&all, DEFAULT_VNODES);
            let after = Ring::new(&rest, DEFAULT_VNODES);
            for k in keys(seed, 5_000) {
                if before.owner(&k) != all[gone] {
                    prop_assert_eq!(before.owner(&k), after.owner(&k));
                }
            }
        }

        #[test]
        fn load_is_balanced(n in 2usize..10, seed in any::<u64>()) {
            let r = Ring::new(&names(n), DEFAULT_VNODES);
            let ks = keys(seed, 50_000);
            let mut load = vec![0usize; n];
            for k in &ks {
                load[r.owner_index(k)] += 1;
            }
            let mean = ks.len() as f64 / n as f64;
            let max = *load.iter().max().unwrap() as f64;
            prop_assert!(max / mean <= 1.15, "max/mean {:.3} with loads {load:?}", max / mean);
        }
    }
}
