//! `lbMethod: hash`: consistent hashing with a Maglev table, and an optional bounded load.
//!
//! The table (a prime number of slots, at least a hundred per member, 65 537 for up to 655
//! members) is filled once per candidate set: each member walks its own permutation of the slots, derived from its URL
//! only, and takes the next free slot in turn, as often as its load factor says. A key goes to
//! the member of slot `hash(key) mod size`. Because the permutations depend on nothing but the
//! member's URL, every replica builds the same table, and adding or removing a member moves
//! little more than that member's share of the keys.
//!
//! With a bounded load of `c` percent, a member already carrying `c`% of its fair share of the
//! requests in flight (by load factor) is passed over and the key goes on to the next slots,
//! whose members are spread at random: one hot key cannot swamp a member.
//! A request without the key goes to a random slot, so by load factor.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use http::{HeaderMap, Uri, header};

use super::{BalancedMember, Method, PickContext, sticky};
use crate::api::HashKey;
use crate::discovery::{HashConfig, fnv1a};

/// A slot no member has taken yet.
const EMPTY: u32 = u32::MAX;

#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
    /// Percentage of the fair share a member may carry; `None`: unbounded.
    bounded_load: Option<u32>,
}

impl Maglev {
    /// The table of `candidates`, weighted by `factors` (by member index; empty: the members'
    /// own).
    pub fn new(
        members: &[BalancedMember],
        factors: &[u32],
        candidates: &[u32],
        bounded_load: Option<u32>,
    ) -> Self {
        Maglev {
            table: table(members, factors, candidates),
            bounded_load,
        }
    }

    /// The member a key maps to when every candidate is free: for tests and the manager.
    pub fn owner(&self, key: u64) -> Option<usize> {
        let size = self.table.len() as u64;
        (size > 0).then(|| self.table[(key % size) as usize] as usize)
    }
}

/// The smallest prime at or above `n`.
fn prime_at_least(n: u64) -> u64 {
    let is_prime = |p: u64| {
        p >= 2
            && (2..)
                .take_while(|d| d * d <= p)
                .all(|d| !p.is_multiple_of(d))
    };
    (n..).find(|&p| is_prime(p)).unwrap_or(n)
}

/// The table's size for `n` members: a prime of at least a hundred slots per member, fixed
/// over wide ranges of `n` (65 537 up to 655 members, then ten times that, ...), since keys
/// only stay put when a member comes or goes if the size does not change with it.
fn table_size(n: usize) -> u64 {
    let mut base = 65_537u64;
    while base < n as u64 * 100 {
        base = base.saturating_mul(10);
    }
    prime_at_least(base)
}

/// Spreads the bits of a hash (SplitMix64's finaliser).
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn table(members: &[BalancedMember], factors: &[u32], candidates: &[u32]) -> Vec<u32> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let size = table_size(candidates.len());
    let slots = usize::try_from(size).unwrap_or(usize::MAX);
    let mut table = vec![EMPTY; slots];
    let walks: Vec<(u64, u64)> = candidates
        .iter()
        .map(|&i| {
            let id = fnv1a(members[i as usize].url.as_bytes());
            let offset = mix(id) % size;
            let skip = mix(id ^ 0x5bd1_e995_5bd1_e995) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let weights: Vec<u64> = candidates
        .iter()
        .map(|&i| {
            let i = i as usize;
            u64::from(
                factors
                    .get(i)
                    .copied()
                    .unwrap_or(members[i].load_factor)
                    .max(1),
            )
        })
        .collect();
    let heaviest = weights.iter().copied().max().unwrap_or(1);
    let mut credit = vec![0u64; candidates.len()];
    let mut next = vec![0u64; candidates.len()];
    let mut filled = 0usize;
    while filled < slots {
        for k in 0..candidates.len() {
            credit[k] += weights[k];
            if credit[k] < heaviest {
                continue;
            }
            credit[k] -= heaviest;
            let (offset, skip) = walks[k];
            // The walk is a permutation of all slots (size is prime), so a free one comes.
            loop {
                let slot = ((offset + next[k] % size * skip) % size) as usize;
                next[k] += 1;
                if table[slot] == EMPTY {
                    table[slot] = candidates[k];
                    filled += 1;
                    break;
                }
            }
            if filled == slots {
                break;
            }
        }
    }
    table
}

impl Method for Maglev {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let size = self.table.len();
        if size == 0
            || (!ctx.exclude.is_empty() && ctx.candidates.iter().all(|&i| ctx.excluded(i as usize)))
        {
            return None;
        }
        let key = ctx.key.unwrap_or_else(|| mix(ctx.random));
        let start = (key % size as u64) as usize;
        // Bounded load: the requests in flight and the load factors of the candidates.
        let bound = self.bounded_load.map(|percent| {
            let (mut in_flight, mut weights) = (0u64, 0u64);
            for &i in ctx.candidates {
                let i = i as usize;
                in_flight += ctx.members[i].stats.busy.load(Relaxed).max(0) as u64;
                weights += u64::from(ctx.factor(i));
            }
            (u64::from(percent), in_flight, weights)
        });
        let has_room = |i: usize| match bound {
            None => true,
            Some((percent, in_flight, weights)) => {
                let busy = ctx.members[i].stats.busy.load(Relaxed).max(0) as u64;
                // busy + 1 <= ceil((in_flight + 1) * percent/100 * factor / weights)
                let limit =
                    ((in_flight + 1) * percent * u64::from(ctx.factor(i))).div_ceil(100 * weights);
                busy < limit
            }
        };
        for step in 0..size {
            let i = self.table[(start + step) % size] as usize;
            if !ctx.excluded(i) && has_room(i) {
                return Some(i);
            }
        }
        // Every free member is full (requests finished and started while we looked): the
        // least busy one.
        ctx.candidates
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| !ctx.excluded(i))
            .min_by_key(|&i| ctx.members[i].stats.busy.load(Relaxed))
    }
}

/// The hash of the request's key, or `None` when the request does not carry it.
pub fn request_key(
    config: &HashConfig,
    headers: &HeaderMap,
    uri: &Uri,
    client: IpAddr,
) -> Option<u64> {
    let hashed = |bytes: &[u8]| mix(fnv1a(bytes));
    match config.key {
        HashKey::ClientIp => Some(match client {
            IpAddr::V4(v4) => hashed(&v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => hashed(&v4.octets()),
                None => hashed(&v6.octets()),
            },
        }),
        HashKey::Header => {
            let mut values = headers.get_all(config.name.as_str()).iter().peekable();
            values.peek()?;
            let mut joined = Vec::new();
            for (n, v) in values.enumerate() {
                if n > 0 {
                    joined.push(b',');
                }
                joined.extend_from_slice(v.as_bytes());
            }
            Some(hashed(&joined))
        }
        HashKey::Cookie => {
            let cookies = headers.get_all(header::COOKIE);
            sticky::cookie_value(cookies, &config.name).map(|v| hashed(v.as_bytes()))
        }
        HashKey::QueryParam => {
            sticky::query_value(uri.query()?, &config.name).map(|v| hashed(v.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::testing::{context, members};
    use proptest::prelude::*;

    fn keys(n: usize) -> impl Iterator<Item = u64> {
        (0..n as u64).map(|k| mix(k.wrapping_add(0x1234_5678)))
    }

    #[test]
    fn the_table_follows_load_factors_and_every_member_gets_slots() {
        let m = members(&[1, 3, 1]);
        let c = [0, 1, 2];
        let t = table(&m, &[], &c);
        assert!(t.len() == 65_537 && t.iter().all(|&i| i != EMPTY));
        assert_eq!(table_size(655), 65_537);
        assert!(table_size(656) >= 655_370);
        let share = |i: u32| t.iter().filter(|&&s| s == i).count() as f64 / t.len() as f64;
        assert!((share(1) - 0.6).abs() < 0.01, "{}", share(1));
        assert!((share(0) - 0.2).abs() < 0.01);
        // The same members build the same table: every replica agrees.
        assert_eq!(t, table(&members(&[1, 3, 1]), &[], &c));
    }

    #[test]
    fn excluded_members_pass_their_keys_on_and_others_keep_theirs() {
        let m = members(&[1, 1, 1, 1]);
        let c = [0, 1, 2, 3];
        let maglev = Maglev::new(&m, &[], &c, None);
        for key in keys(500) {
            let mut ctx = context(&m, &c, &[2]);
            ctx.key = Some(key);
            let owner = maglev.owner(key).expect("owner");
            let picked = maglev.pick(&ctx).expect("member");
            assert_ne!(picked, 2);
            if owner != 2 {
                assert_eq!(picked, owner);
            }
        }
        let mut ctx = context(&m, &c, &[0, 1, 2, 3]);
        ctx.key = Some(1);
        assert_eq!(maglev.pick(&ctx), None);
    }

    #[test]
    fn keys_come_from_the_configured_part_of_the_request() {
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().expect("value"));
        headers.insert("cookie", "a=1; session=s42; b=2".parse().expect("value"));
        let uri: Uri = "/cart?x=1&user=bob".parse().expect("uri");
        let config = |key, name: &str| HashConfig {
            key,
            name: name.into(),
            bounded_load: None,
        };
        let h = |bytes: &[u8]| Some(mix(fnv1a(bytes)));
        let key = |c: &HashConfig| request_key(c, &headers, &uri, ip);
        assert_eq!(key(&config(HashKey::Header, "x-user")), h(b"alice"));
        assert_eq!(key(&config(HashKey::Cookie, "session")), h(b"s42"));
        assert_eq!(key(&config(HashKey::QueryParam, "user")), h(b"bob"));
        assert_eq!(key(&config(HashKey::ClientIp, "")), h(&[10, 1, 2, 3]));
        assert_eq!(key(&config(HashKey::Header, "x-missing")), None);
        assert_eq!(key(&config(HashKey::Cookie, "missing")), None);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(
            request_key(&config(HashKey::ClientIp, ""), &headers, &uri, mapped),
            h(&[10, 1, 2, 3])
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Adding a member to N moves about 1/(N+1) of the keys (measured: within 15%), and most
        /// of those to the new member.
        #[test]
        fn adding_a_member_moves_about_one_nth_of_the_keys(n in 2usize..40) {
            let before = members(&vec![1; n]);
            let after = members(&vec![1; n + 1]);
            let c_before: Vec<u32> = (0..n as u32).collect();
            let c_after: Vec<u32> = (0..=n as u32).collect();
            let (t0, t1) = (Maglev::new(&before, &[], &c_before, None), Maglev::new(&after, &[], &c_after, None));
            let total = 20_000;
            let moved: Vec<u64> = keys(total).filter(|&k| t0.owner(k) != t1.owner(k)).collect();
            let to_new = moved.iter().filter(|&&k| t1.owner(k) == Some(n)).count();
            let share = moved.len() as f64 / total as f64;
            let ideal = 1.0 / (n as f64 + 1.0);
            prop_assert!(share <= ideal * 1.25 + 0.005, "moved {share}, ideal {ideal}");
            prop_assert!(to_new * 10 >= moved.len() * 7, "{to_new} of {} moved to the new member", moved.len());
        }

        /// With a bound of c%, no member ever carries more than c% of its fair share (rounded
        /// up) of the requests in flight, however the keys fall.
        #[test]
        fn bounded_load_holds(
            factors in prop::collection::vec(1u32..=4, 2..8),
            percent in 101u32..=300,
            hot in prop::collection::vec(0u64..6, 1..400),
        ) {
            let m = members(&factors);
            let c: Vec<u32> = (0..m.len() as u32).collect();
            let maglev = Maglev::new(&m, &[], &c, Some(percent));
            let weights: u64 = factors.iter().map(|&f| u64::from(f)).sum();
            for (n, &k) in hot.iter().enumerate() {
                let mut ctx = context(&m, &c, &[]);
                // Few distinct keys: hot keys, the case the bound is for.
                ctx.key = Some(mix(k));
                let i = maglev.pick(&ctx).expect("member");
                m[i].stats.busy.fetch_add(1, Relaxed);
                let in_flight = n as u64 + 1;
                for (j, member) in m.iter().enumerate() {
                    let limit = (in_flight * u64::from(percent) * u64::from(factors[j])).div_ceil(100 * weights);
                    prop_assert!(member.stats.busy.load(Relaxed) as u64 <= limit);
                }
            }
        }
    }
}
