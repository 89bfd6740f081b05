//! A fast non-keyed hash for maps probed on every request (route index, pools, metrics). Their
//! keys come from the config (host names, paths, cluster names, endpoint addresses), never from
//! clients, so nobody can steer them into long probe chains; SipHash's keyed protection would be
//! paid on every request for nothing.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The Firefox/rustc hash: one multiply per 8 bytes.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.add(u64::from_le_bytes(tail));
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    #[test]
    fn keys_that_differ_hash_apart() {
        let mut m: FastMap<(SocketAddr, u64), u32> = FastMap::default();
        for port in 1..=1000u16 {
            m.insert((SocketAddr::from(([127, 0, 0, 1], port)), u64::from(port % 3)), u32::from(port));
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m[&(SocketAddr::from(([127, 0, 0, 1], 7)), 1)], 7);
        let hash = |s: &str| {
            let mut h = FxHasher::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_ne!(hash("api"), hash("apj"));
        assert_ne!(hash("a-long-cluster-name-1"), hash("a-long-cluster-name-2"));
    }
}
