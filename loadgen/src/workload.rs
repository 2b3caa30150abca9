//! The population and the traffic: which PSP each user belongs to, who pays whom (uniform, zipf or a
//! hot set of payers), how much, and the mix of operations. Pure and deterministic given a seed, so
//! the switch run and the PostgreSQL baseline get the same shape of workload.

use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// How payers are chosen among the users.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skew {
    /// Every user equally likely.
    Uniform,
    /// Zipf over user rank with this exponent (rank 0 the most active).
    Zipf(f64),
    /// `share` of payments come from the first `fraction` of users (e.g. 80% from the top 1%).
    Hot { share: f64, fraction: f64 },
    /// The fairness run (`--flood`): `share` of payments from the first PSP's users (the flooding
    /// PSP), the rest from the other PSPs' users, uniformly within each group.
    Flood { share: f64 },
}

impl Skew {
    /// The hot set of the issue: 80% of payments from the top 1% of payers.
    pub const HOT: Skew = Skew::Hot { share: 0.8, fraction: 0.01 };

    pub fn name(&self) -> String {
        match self {
            Skew::Uniform => "uniform".into(),
            Skew::Zipf(exponent) => format!("zipf (s = {exponent})"),
            Skew::Flood { share } => format!("flood ({:.1}% from the first PSP)", share * 100.0),
            Skew::Hot { share, fraction } => {
                format!("hot ({:.0}% from the top {}% of payers)", share * 100.0, fraction * 100.0)
            }
        }
    }
}

/// What one operation of the mix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pay,
    Collect,
    Refund,
    Status,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Pay, Kind::Collect, Kind::Refund, Kind::Status];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pay => "pay",
            Kind::Collect => "collect",
            Kind::Refund => "refund",
            Kind::Status => "status",
        }
    }
}

/// Relative weights of the operation kinds, parsed from `pay=90,collect=4,refund=3,status=3`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Default for Mix {
    fn default() -> Self {
        Mix { weights: [100, 0, 0, 0] }
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights = [0u32; 4];
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let (name, weight) =
                part.split_once('=').ok_or_else(|| format!("{part:?}: expected kind=weight, e.g. pay=90"))?;
            let kind = Kind::ALL
                .iter()
                .position(|kind| kind.name() == name.trim())
                .ok_or_else(|| format!("{name:?}: kinds are pay, collect, refund and status"))?;
            weights[kind] =
                weight.trim().parse().map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
        }
        if weights.iter().all(|weight| *weight == 0) {
            return Err("the mix needs at least one positive weight".into());
        }
        if weights[0] == 0 && (weights[2] > 0 || weights[3] > 0) {
            return Err("refunds and status checks need payments in the mix (pay > 0)".into());
        }
        Ok(Mix { weights })
    }
}

impl Mix {
    pub fn weight(&self, kind: Kind) -> u32 {
        self.weights[kind as usize]
    }

    pub fn pick(&self, rng: &mut SmallRng) -> Kind {
        let total: u32 = self.weights.iter().sum();
        let mut roll = rng.random_range(0..total);
        for kind in Kind::ALL {
            let weight = self.weights[kind as usize];
            if roll < weight {
                return kind;
            }
            roll -= weight;
        }
        Kind::Pay
    }

    pub fn describe(&self) -> String {
        let parts: Vec<String> = Kind::ALL
            .iter()
            .filter(|kind| self.weight(**kind) > 0)
            .map(|kind| format!("{}={}", kind.name(), self.weight(*kind)))
            .collect();
        parts.join(",")
    }
}

/// The simulated population: `users` customers spread over `psps` PSPs in contiguous blocks (user
/// `n` belongs to PSP `n * psps / users`), so the most active users of a skewed workload belong to
/// the first PSP and its position becomes the ledger's hot account, as a large bank's does.
#[derive(Clone, Debug)]
pub struct Population {
    pub users: u64,
    pub psps: u32,
    pub psp_ids: Vec<String>,
}

impl Population {
    pub fn new(prefix: &str, psps: u32, users: u64) -> Population {
        let psp_ids = (1..=psps).map(|index| format!("{prefix}-{index:02}")).collect();
        Population { users, psps, psp_ids }
    }

    /// The PSP (index) a user belongs to.
    pub fn psp_of(&self, user: u64) -> u32 {
        ((u128::from(user) * u128::from(self.psps)) / u128::from(self.users)) as u32
    }

    /// The users of one PSP: `first..end`.
    pub fn users_of(&self, psp: u32) -> std::ops::Range<u64> {
        let first = (u128::from(psp) * u128::from(self.users)).div_ceil(u128::from(self.psps)) as u64;
        let end = (u128::from(psp + 1) * u128::from(self.users)).div_ceil(u128::from(self.psps)) as u64;
        first..end
    }

    pub fn alias(&self, user: u64) -> String {
        format!("u{user}@{}", self.psp_ids[self.psp_of(user) as usize])
    }
}

/// Draws payers by the skew, payees uniformly at another PSP, and amounts uniformly.
pub struct Traffic {
    pub population: Population,
    skew: Skew,
    zipf: Option<Zipf<f64>>,
    amount_min: u64,
    amount_max: u64,
}

/// One payment's parties (user numbers and their PSPs) and amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parties {
    pub payer: u64,
    pub payee: u64,
    pub payer_psp: u32,
    pub payee_psp: u32,
    pub amount: u64,
}

impl Traffic {
    pub fn new(population: Population, skew: Skew, amount_min: u64, amount_max: u64) -> Result<Traffic, String> {
        if population.psps < 2 {
            return Err("at least two PSPs are needed (payments go from one PSP to another)".into());
        }
        if population.users < u64::from(population.psps) {
            return Err(format!("--users must be at least --psps ({})", population.psps));
        }
        if amount_min == 0 || amount_min > amount_max {
            return Err("amounts: need 1 <= --amount-min <= --amount-max".into());
        }
        let zipf = match skew {
            Skew::Zipf(exponent) => {
                Some(Zipf::new(population.users as f64, exponent).map_err(|error| format!("zipf exponent: {error}"))?)
            }
            Skew::Hot { share, fraction } if !(0.0..=1.0).contains(&share) || !(0.0..=1.0).contains(&fraction) => {
                return Err("hot skew: share and fraction are between 0 and 1".into())
            }
            Skew::Flood { share } if !(0.0..=1.0).contains(&share) => {
                return Err("flood skew: the share is between 0 and 1".into())
            }
            _ => None,
        };
        Ok(Traffic { population, skew, zipf, amount_min, amount_max })
    }

    pub fn skew(&self) -> Skew {
        self.skew
    }

    pub fn payer(&self, rng: &mut SmallRng) -> u64 {
        let users = self.population.users;
        match self.skew {
            Skew::Uniform => rng.random_range(0..users),
            Skew::Zipf(_) => match &self.zipf {
                // Zipf draws ranks 1..=users.
                Some(zipf) => (zipf.sample(rng) as u64).clamp(1, users) - 1,
                None => rng.random_range(0..users),
            },
            Skew::Hot { share, fraction } => {
                let hot = ((users as f64 * fraction) as u64).clamp(1, users);
                if rng.random_bool(share) {
                    rng.random_range(0..hot)
                } else {
                    rng.random_range(0..users)
                }
            }
            Skew::Flood { share } => {
                let flooder = self.population.users_of(0);
                if rng.random_bool(share) {
                    rng.random_range(flooder)
                } else {
                    rng.random_range(flooder.end..users)
                }
            }
        }
    }

    /// A payee uniformly among the users of the other PSPs.
    pub fn payee(&self, rng: &mut SmallRng, payer_psp: u32) -> u64 {
        let population = &self.population;
        let mut psp = rng.random_range(0..population.psps - 1);
        if psp >= payer_psp {
            psp += 1;
        }
        let users = population.users_of(psp);
        rng.random_range(users)
    }

    pub fn draw(&self, rng: &mut SmallRng) -> Parties {
        let payer = self.payer(rng);
        let payer_psp = self.population.psp_of(payer);
        let payee = self.payee(rng, payer_psp);
        let payee_psp = self.population.psp_of(payee);
        let amount = rng.random_range(self.amount_min..=self.amount_max);
        Parties { payer, payee, payer_psp, payee_psp, amount }
    }
}

/// Payment ids: unique across runs and never reserved. The top 48 bits are the run's start in Unix
/// milliseconds (UUIDv7-like, so the ledger's keys stay in time order), the next 16 bits random, the
/// low 64 bits a per-run counter.
#[derive(Clone, Copy, Debug)]
pub struct IdSpace {
    prefix: u128,
}

impl IdSpace {
    pub fn new(unix_ms: u64, random: u16) -> IdSpace {
        let prefix = (u128::from(unix_ms & ((1 << 48) - 1)) << 80) | (u128::from(random) << 64);
        IdSpace { prefix: prefix.max(1 << 64) }
    }

    pub fn id(&self, sequence: u64) -> u128 {
        self.prefix | u128::from(sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn traffic(skew: Skew) -> Traffic {
        Traffic::new(Population::new("lg", 20, 100_000), skew, 100, 10_000).expect("valid")
    }

    #[test]
    fn users_are_split_into_contiguous_blocks_covering_everyone() {
        let population = Population::new("lg", 3, 10);
        let blocks: Vec<_> = (0..3).map(|psp| population.users_of(psp)).collect();
        assert_eq!(blocks, vec![0..4, 4..7, 7..10]);
        for (psp, block) in blocks.iter().enumerate() {
            assert!(block.clone().all(|user| population.psp_of(user) == psp as u32));
        }
        assert_eq!(population.alias(5), "u5@lg-02");
    }

    #[test]
    fn payees_are_always_at_another_psp() {
        let traffic = traffic(Skew::Uniform);
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let parties = traffic.draw(&mut rng);
            assert_ne!(parties.payer_psp, parties.payee_psp);
            assert!((100..=10_000).contains(&parties.amount));
            assert!(parties.payer < 100_000 && parties.payee < 100_000);
        }
    }

    #[test]
    fn hot_skew_sends_the_asked_share_from_the_hot_set() {
        let traffic = traffic(Skew::HOT);
        let mut rng = SmallRng::seed_from_u64(1);
        let draws = 100_000;
        // Hot users are the first 1% (1,000); uniform draws land there 1% of the time too.
        let hot = (0..draws).filter(|_| traffic.payer(&mut rng) < 1_000).count() as f64 / draws as f64;
        assert!((hot - (0.8 + 0.2 * 0.01)).abs() < 0.01, "hot share {hot}");
        let uniform = self::traffic(Skew::Uniform);
        let cold = (0..draws).filter(|_| uniform.payer(&mut rng) < 1_000).count() as f64 / draws as f64;
        assert!(cold < 0.02, "uniform share of the first 1%: {cold}");
    }

    #[test]
    fn flood_skew_sends_the_asked_share_from_the_first_psp_and_the_rest_from_the_others() {
        let traffic = traffic(Skew::Flood { share: 0.9 });
        let mut rng = SmallRng::seed_from_u64(5);
        let draws = 100_000;
        let payers: Vec<u32> = (0..draws).map(|_| traffic.draw(&mut rng).payer_psp).collect();
        let flooder = payers.iter().filter(|psp| **psp == 0).count() as f64 / draws as f64;
        assert!((flooder - 0.9).abs() < 0.01, "flooder's share {flooder}");
        // The others are spread over PSPs 1..20, each about 10% / 19 of the draws.
        for psp in 1..20 {
            let share = payers.iter().filter(|payer| **payer == psp).count() as f64 / draws as f64;
            assert!((share - 0.1 / 19.0).abs() < 0.003, "PSP {psp}'s share {share}");
        }
        let none = self::traffic(Skew::Flood { share: 0.0 });
        assert!((0..10_000).all(|_| none.draw(&mut rng).payer_psp != 0), "share 0: nothing from the flooder");
        assert!(Traffic::new(Population::new("lg", 20, 100_000), Skew::Flood { share: 1.5 }, 100, 200).is_err());
    }

    #[test]
    fn zipf_favours_low_ranks() {
        let traffic = traffic(Skew::Zipf(1.0));
        let mut rng = SmallRng::seed_from_u64(3);
        let draws: Vec<u64> = (0..50_000).map(|_| traffic.payer(&mut rng)).collect();
        let first = draws.iter().filter(|user| **user == 0).count();
        let tenth = draws.iter().filter(|user| **user == 9).count();
        assert!(draws.iter().all(|user| *user < 100_000));
        assert!(first > 5 * tenth.max(1), "rank 1 drawn {first} times, rank 10 {tenth}");
    }

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let mix: Mix = "pay=90, collect=4,refund=3,status=3".parse().expect("valid");
        assert_eq!((mix.weight(Kind::Pay), mix.weight(Kind::Status)), (90, 3));
        assert_eq!(mix.describe(), "pay=90,collect=4,refund=3,status=3");
        assert!("pay=0".parse::<Mix>().is_err());
        assert!("bogus=3".parse::<Mix>().is_err());
        assert!("pay=x".parse::<Mix>().is_err());
        assert!("pay".parse::<Mix>().is_err());
        assert!("refund=5".parse::<Mix>().is_err(), "refunds need payments to refund");
        let mut rng = SmallRng::seed_from_u64(9);
        let picks: Vec<Kind> = (0..1_000).map(|_| mix.pick(&mut rng)).collect();
        let pays = picks.iter().filter(|kind| **kind == Kind::Pay).count();
        assert!((850..950).contains(&pays), "{pays} payments in 1,000 picks at 90%");
    }

    #[test]
    fn ids_are_unique_per_run_and_never_reserved() {
        let space = IdSpace::new(1_700_000_000_000, 0xBEEF);
        let other = IdSpace::new(1_700_000_000_000, 0xBEF0);
        assert_ne!(space.id(1), other.id(1));
        assert_ne!(space.id(1), space.id(2));
        assert_ne!(IdSpace::new(0, 0).id(0), 0, "never the all-zero id");
        assert_ne!(space.id(u64::MAX), u128::MAX, "never the all-ones id");
    }

    #[test]
    fn bad_traffic_settings_are_refused() {
        let population = Population::new("lg", 1, 100);
        assert!(Traffic::new(population, Skew::Uniform, 1, 2).is_err());
        assert!(Traffic::new(Population::new("lg", 20, 10), Skew::Uniform, 1, 2).is_err());
        assert!(Traffic::new(Population::new("lg", 2, 10), Skew::Uniform, 5, 2).is_err());
        assert!(Traffic::new(Population::new("lg", 2, 10), Skew::Hot { share: 1.5, fraction: 0.1 }, 1, 2).is_err());
    }
}
