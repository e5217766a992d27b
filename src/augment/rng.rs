//! The augmentation RNG: xoshiro256++ on the host. Parameters are drawn on the CPU and
//! uploaded, so the same seed gives the same augmentations on every device, the step never
//! waits on the device for them, and the state is four integers a checkpoint can hold.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Self { s: [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)] }
    }

    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    pub fn from_state(s: [u64; 4]) -> Self {
        Self { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Advances by 2^128 draws (the generator's published jump), giving each rank of a
    /// data-parallel run its own non-overlapping stream from one seed.
    pub fn jump(&mut self) {
        const JUMP: [u64; 4] = [0x180e_c6d3_3cfd_0aba, 0xd5a6_1266_f0c9_392c, 0xa958_2618_e03f_c9aa, 0x39ab_dc45_29b1_661c];
        let mut acc = [0u64; 4];
        for word in JUMP {
            for bit in 0..64 {
                if word & (1u64 << bit) != 0 {
                    for (a, s) in acc.iter_mut().zip(self.s) {
                        *a ^= s;
                    }
                }
                self.next_u64();
            }
        }
        self.s = acc;
    }

    /// Uniform on [0, 1) with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform integer in [0, n), n > 0 (multiply-shift; bias below 2^-32 for our n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }

    /// A uniformly random permutation of 0..n (Fisher-Yates).
    pub fn permutation<const N: usize>(&mut self) -> [usize; N] {
        let mut p: [usize; N] = std::array::from_fn(|i| i);
        for i in (1..N).rev() {
            p.swap(i, self.below(i as u64 + 1) as usize);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_state_roundtrip() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = Rng::from_state(a.state());
        assert_eq!(a.next_u64(), c.next_u64());
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    #[test]
    fn stream_and_jump_match_rand_xoshiro() {
        use rand_xoshiro::rand_core::{RngCore, SeedableRng};
        let state = [1u64, 2, 3, 0xDEAD_BEEF_0123_4567];
        let seed: Vec<u8> = state.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut reference = rand_xoshiro::Xoshiro256PlusPlus::from_seed(seed.try_into().unwrap());
        let mut ours = Rng::from_state(state);
        for _ in 0..5 {
            assert_eq!(ours.next_u64(), reference.next_u64());
        }
        ours.jump();
        reference.jump();
        for _ in 0..5 {
            assert_eq!(ours.next_u64(), reference.next_u64());
        }
    }

    #[test]
    fn unit_mean_and_below_range() {
        let mut r = Rng::new(1);
        let n = 200_000;
        let mean = (0..n).map(|_| r.unit()).sum::<f64>() / n as f64;
        // std of the mean is 1/sqrt(12 n) = 6.5e-4; 5 sigma.
        assert!((mean - 0.5).abs() < 3.3e-3, "{mean}");
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[r.below(6) as usize] += 1;
        }
        // Each expected 10000, std ~91; 5 sigma.
        assert!(counts.iter().all(|&c| (c as i64 - 10_000).abs() < 460), "{counts:?}");
    }
}
