//! Consistent hashing for `ring_hash` and `maglev`: a request's key (L4: the source IP; L7: a
//! header or cookie value) maps to an endpoint so that the same key keeps its endpoint, and adding
//! or removing one of N endpoints moves only about 1/N of the keys. Both honour endpoint weights.
//!
//! Built once per cluster per revision (pure, off the hot path); a lookup is a binary search
//! (ring) or one index (maglev). Point positions depend only on each endpoint's own address, so
//! the parts of the structure that belong to untouched endpoints stay put across revisions.

use std::net::{IpAddr, SocketAddr};

use super::lb::LbEndpoint;

/// Ring points per unit of weight; with equal weights the load is within a few percent.
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// Bound on the ring size for heavy weights (points are scaled down, at least one per endpoint).
const RING_MAX_POINTS: u64 = 1 << 17;
/// Maglev table sizes (primes); the smallest at least `MAGLEV_SLOTS_PER_ENDPOINT` x N is used.
const MAGLEV_PRIMES: [u64; 10] = [1021, 2039, 4093, 8191, 16381, 32749, 65521, 131_071, 262_139, 524_287];
const MAGLEV_SLOTS_PER_ENDPOINT: u64 = 100;
/// Keys re-hashed before giving up on the structure when the chosen endpoint is unusable (maglev).
const MAGLEV_RETRIES: u64 = 8;

/// 64-bit FNV-1a followed by a murmur3 finaliser: stable across builds and platforms (unlike
/// `DefaultHasher`), so the same key maps to the same endpoint on every node.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// The hash key of a client IP (the port is left out: one client, one endpoint).
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

fn hash_addr(addr: SocketAddr, salt: u64) -> u64 {
    let mut bytes = [0u8; 26];
    let ip: [u8; 16] = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    bytes[..16].copy_from_slice(&ip);
    bytes[16..18].copy_from_slice(&addr.port().to_be_bytes());
    bytes[18..].copy_from_slice(&salt.to_be_bytes());
    hash_bytes(&bytes)
}

/// A hashing structure over a cluster's endpoints, indices into the cluster's endpoint list.
#[derive(Debug)]
pub enum HashIndex {
    Ring(Ring),
    Maglev(Maglev),
}

impl HashIndex {
    pub fn ring(endpoints: &[LbEndpoint]) -> HashIndex {
        HashIndex::Ring(Ring::new(endpoints))
    }

    pub fn maglev(endpoints: &[LbEndpoint]) -> HashIndex {
        HashIndex::Maglev(Maglev::new(endpoints))
    }

    /// The endpoint for `key` among those `usable` says yes to; `None` if the structure is empty
    /// or the nearby candidates are all unusable (the caller falls back to a scan).
    pub fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashIndex::Ring(r) => r.pick(key, usable),
            HashIndex::Maglev(m) => m.pick(key, usable),
        }
    }
}

/// Ketama-style ring: each endpoint owns `weight x RING_POINTS_PER_WEIGHT` pseudo-random points;
/// a key belongs to the first point at or after its hash. An unusable endpoint's keys move on
/// to the next usable endpoint clockwise, spreading them over the others.
#[derive(Debug, Default)]
pub struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(endpoints: &[LbEndpoint]) -> Ring {
        let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
        let per_weight = if total * RING_POINTS_PER_WEIGHT > RING_MAX_POINTS {
            (RING_MAX_POINTS as f64 / total as f64).max(f64::MIN_POSITIVE)
        } else {
            RING_POINTS_PER_WEIGHT as f64
        };
        let mut points = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            if e.weight == 0 {
                continue;
            }
            let n = ((f64::from(e.weight) * per_weight).round() as u64).max(1);
            points.extend((0..n).map(|p| (hash_addr(e.state.address(), p), i as u32)));
        }
        points.sort_unstable();
        Ring { points }
    }

    fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < key);
        (0..n).map(|k| self.points[(start + k) % n].1 as usize).find(|&i| usable(i))
    }
}

/// Maglev lookup table (Eisenbud et al., NSDI 2016): each endpoint walks its own permutation of
/// the slots (offset and skip from its address) and takes turns claiming free slots, in
/// proportion to its weight; a key is `table[key % M]`.
#[derive(Debug, Default)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(endpoints: &[LbEndpoint]) -> Maglev {
        let live: Vec<usize> = (0..endpoints.len()).filter(|&i| endpoints[i].weight > 0).collect();
        if live.is_empty() {
            return Maglev::default();
        }
        let want = MAGLEV_SLOTS_PER_ENDPOINT * live.len() as u64;
        let m = MAGLEV_PRIMES.iter().copied().find(|&p| p >= want).unwrap_or(MAGLEV_PRIMES[MAGLEV_PRIMES.len() - 1]);
        let perms: Vec<(u64, u64)> = live
            .iter()
            .map(|&i| {
                let a = endpoints[i].state.address();
                (hash_addr(a, 0xdead) % m, hash_addr(a, 0xbeef) % (m - 1) + 1)
            })
            .collect();
        let max_weight = live.iter().map(|&i| u64::from(endpoints[i].weight)).max().unwrap_or(1);
        let mut table = vec![u32::MAX; m as usize];
        let mut next = vec![0u64; live.len()];
        let mut taken = vec![0u64; live.len()];
        let mut filled = 0u64;
        let mut round = 0u64;
        // Each round the heaviest endpoint claims one slot and the others their share of one, so
        // claims interleave in weight proportion however large the weights are.
        'fill: loop {
            round += 1;
            for (k, &i) in live.iter().enumerate() {
                let allowed = round * u64::from(endpoints[i].weight) / max_weight;
                while taken[k] < allowed {
                    let (offset, skip) = perms[k];
                    let mut slot = (offset + next[k] * skip) % m;
                    while table[slot as usize] != u32::MAX {
                        next[k] += 1;
                        slot = (offset + next[k] * skip) % m;
                    }
                    table[slot as usize] = i as u32;
                    next[k] += 1;
                    taken[k] += 1;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table }
    }

    fn pick(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        // An unusable endpoint: look again with the key re-hashed, which lands on other endpoints
        // in proportion to their share of the table; then walk the table so a usable one is found.
        let rehashed = (1..MAGLEV_RETRIES).map(|t| fmix64(key ^ t) % m);
        let walk = (1..m).map(|k| (key % m + k) % m);
        std::iter::once(key % m)
            .chain(rehashed)
            .chain(walk)
            .map(|slot| self.table[slot as usize] as usize)
            .find(|&i| usable(i))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::lb::EndpointState;
    use super::*;

    fn endpoints(ports: &[u16], weights: &[u32]) -> Vec<LbEndpoint> {
        ports
            .iter()
            .zip(weights)
            .map(|(&p, &w)| LbEndpoint {
                state: Arc::new(EndpointState::new(SocketAddr::from(([10, 0, 0, 1], p)))),
                weight: w,
                name: None,
                backup: false,
                max_connections: None,
            })
            .collect()
    }

    fn keys(n: u32) -> Vec<u64> {
        (0..n).map(|i| hash_ip(IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]))).collect()
    }

    /// Maps every key to an endpoint port.
    fn assign(index: &HashIndex, eps: &[LbEndpoint], keys: &[u64]) -> Vec<u16> {
        keys.iter().map(|&k| eps[index.pick(k, |_| true).unwrap()].state.address().port()).collect()
    }

    fn check_stability(build: fn(&[LbEndpoint]) -> HashIndex, tolerance: f64) {
        let ks = keys(10_000);
        let five = endpoints(&[1, 2, 3, 4, 5], &[1; 5]);
        let four = endpoints(&[1, 2, 3, 4], &[1; 4]);
        let before = assign(&build(&five), &five, &ks);
        let after = assign(&build(&four), &four, &ks);
        // Same input, same answer.
        assert_eq!(before, assign(&build(&five), &five, &ks));
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_removed = before.iter().filter(|&&p| p == 5).count();
        // Ideally exactly the removed endpoint's keys (about 1/5) move.
        let fraction = moved as f64 / ks.len() as f64;
        assert!((0.2 - tolerance..=0.2 + tolerance).contains(&fraction), "moved {fraction}");
        assert!(moved >= on_removed, "every key of the removed endpoint moves");
        assert!(moved - on_removed <= (ks.len() as f64 * tolerance) as usize, "few keys of kept endpoints move");
        // Adding it back restores the original mapping exactly.
        assert_eq!(before, assign(&build(&five), &five, &ks));
    }

    #[test]
    fn ring_remaps_about_one_in_n_keys() {
        check_stability(HashIndex::ring, 0.04);
    }

    #[test]
    fn maglev_remaps_about_one_in_n_keys() {
        check_stability(HashIndex::maglev, 0.05);
    }

    fn shares(build: fn(&[LbEndpoint]) -> HashIndex, weights: &[u32]) -> Vec<f64> {
        let ports: Vec<u16> = (1..=weights.len() as u16).collect();
        let eps = endpoints(&ports, weights);
        let ks = keys(20_000);
        let got = assign(&build(&eps), &eps, &ks);
        ports.iter().map(|p| got.iter().filter(|&&g| g == *p).count() as f64 / ks.len() as f64).collect()
    }

    #[test]
    fn weights_shape_the_split() {
        for build in [HashIndex::ring as fn(&[LbEndpoint]) -> HashIndex, HashIndex::maglev] {
            let s = shares(build, &[1, 1, 1, 1]);
            assert!(s.iter().all(|&x| (0.17..0.33).contains(&x)), "equal weights {s:?}");
            let s = shares(build, &[3, 1, 0]);
            assert!((0.68..0.82).contains(&s[0]) && (0.18..0.32).contains(&s[1]) && s[2] == 0.0, "3:1:0 {s:?}");
            // Huge weights neither overflow nor starve anyone.
            let s = shares(build, &[1_000_000, 1_000_000]);
            assert!(s.iter().all(|&x| (0.4..0.6).contains(&x)), "huge weights {s:?}");
        }
    }

    #[test]
    fn unusable_endpoints_are_skipped_and_others_keep_their_keys() {
        for build in [HashIndex::ring as fn(&[LbEndpoint]) -> HashIndex, HashIndex::maglev] {
            let eps = endpoints(&[1, 2, 3], &[1; 3]);
            let index = build(&eps);
            let ks = keys(3000);
            for &k in &ks {
                let all = index.pick(k, |_| true).unwrap();
                let without_0 = index.pick(k, |i| i != 0).unwrap();
                assert_ne!(without_0, 0);
                if all != 0 {
                    assert_eq!(all, without_0, "a key of a usable endpoint stays");
                }
            }
            assert_eq!(index.pick(ks[0], |_| false), None);
        }
    }

    #[test]
    fn empty_and_zero_weight_clusters_have_no_pick() {
        assert_eq!(HashIndex::ring(&[]).pick(1, |_| true), None);
        assert_eq!(HashIndex::maglev(&endpoints(&[1], &[0])).pick(1, |_| true), None);
    }

    #[test]
    fn ipv4_mapped_v6_hashes_like_v4() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(hash_ip(v4), hash_ip(v6));
        assert_ne!(hash_ip(v4), hash_ip("192.0.2.8".parse().unwrap()));
    }
}
