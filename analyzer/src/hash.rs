//! A fast hasher for the replay's maps.
//!
//! The replay does several map operations per record (live blocks by address, call sites
//! by stack id, threads by tid), and std's SipHash dominated its profile. Keys are
//! integers from a local trace file, so resistance to collision attacks buys nothing
//! worth that cost. Heap addresses are 16-byte aligned, so a plain multiply (whose low
//! bits stay zero) would crowd the table; each word is therefore run through a full
//! 64-bit finalizer (MurmurHash3's fmix64), which spreads every input bit over the
//! whole output.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// See the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher {
    state: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = fmix64(self.state.rotate_left(5) ^ word);
    }
}

/// MurmurHash3's 64-bit finalizer.
#[inline]
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// A `HashMap` using [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// A `HashSet` using [`FastHasher`].
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn h<T: Hash>(v: T) -> u64 {
        let mut s = FastHasher::default();
        v.hash(&mut s);
        s.finish()
    }

    #[test]
    fn aligned_addresses_spread_over_low_bits() {
        let mut buckets = [0u32; 64];
        for i in 0..64 * 1024u64 {
            buckets[(h(0x5555_0000_0000 + i * 16) & 63) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (768..=1280).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn byte_strings_differ_by_length_and_content() {
        assert_ne!(h("ab"), h("ab\0"));
        assert_ne!(h([1u8, 2, 3]), h([1u8, 2, 4]));
        assert_ne!(h((1u32, 2u32)), h((2u32, 1u32)));
    }
}
