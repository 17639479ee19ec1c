//! Deterministic generated records: the same seed and index always give the same
//! record, whatever else was generated, so 100k contacts can be made in any order
//! (or in parallel) and compared across runs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "John",
    "Margaret",
    "Ken",
    "Radia",
    "Tim",
    "Sophie",
    "Linus",
    "Hedy",
    "Dennis",
    "Katherine",
    "Niklaus",
    "Shafi",
    "Leslie",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "McCarthy",
    "Hamilton",
    "Thompson",
    "Perlman",
    "Berners-Lee",
    "Wilson",
    "Torvalds",
    "Lamarr",
    "Ritchie",
    "Johnson",
    "Wirth",
    "Goldwasser",
    "Lamport",
];
const TITLES: &[&str] = &[
    "CEO",
    "CTO",
    "Head of Sales",
    "Sales Manager",
    "Account Executive",
    "Engineer",
    "Buyer",
    "Operations Lead",
    "Founder",
    "Marketing Director",
];
const ORG_A: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Wonka",
    "Gringotts",
    "Monarch",
    "Pied Piper",
];
const ORG_B: &[&str] = &[
    "Labs",
    "Systems",
    "Industries",
    "Logistics",
    "Analytics",
    "Foods",
    "Energy",
    "Robotics",
];
const INDUSTRIES: &[&str] = &[
    "SOFTWARE",
    "RETAIL",
    "MANUFACTURING",
    "LOGISTICS",
    "FINANCE",
    "HEALTHCARE",
];
const CITIES: &[&str] = &[
    "Milano",
    "Berlin",
    "London",
    "Austin",
    "Toronto",
    "Bangalore",
    "Sydney",
    "Tokyo",
];
const STAGES: &[&str] = &[
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
    "closedwon",
    "closedlost",
];

/// A person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub phone: String,
    pub job_title: String,
}

/// An organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub name: String,
    pub domain: String,
    pub industry: String,
    pub city: String,
    pub phone: String,
}

/// A sales opportunity.
#[derive(Debug, Clone, PartialEq)]
pub struct Opportunity {
    pub name: String,
    /// Whole currency units.
    pub amount: u32,
    /// HubSpot-style stage id; emulators translate it.
    pub stage: String,
}

/// The generator for one seed.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    seed: u64,
}

fn pick<'a>(rng: &mut ChaCha8Rng, from: &[&'a str]) -> &'a str {
    from[rng.gen_range(0..from.len())]
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// An independent random stream for record `index` of `kind`.
    pub fn rng(&self, kind: u64, index: u64) -> ChaCha8Rng {
        let mixed = self.seed
            ^ kind.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ChaCha8Rng::seed_from_u64(mixed)
    }

    pub fn person(&self, index: u64) -> Person {
        let mut rng = self.rng(1, index);
        let first = pick(&mut rng, FIRST);
        let last = pick(&mut rng, LAST);
        let email = format!(
            "{}.{}.{index}@example.com",
            first.to_lowercase(),
            last.to_lowercase().replace('-', "")
        );
        Person {
            first_name: first.into(),
            last_name: last.into(),
            email,
            phone: format!(
                "+39 02 {:04} {:04}",
                rng.gen_range(0..10_000),
                index % 10_000
            ),
            job_title: pick(&mut rng, TITLES).into(),
        }
    }

    pub fn org(&self, index: u64) -> Org {
        let mut rng = self.rng(2, index);
        let name = format!(
            "{} {} {index}",
            pick(&mut rng, ORG_A),
            pick(&mut rng, ORG_B)
        );
        let domain = format!("{}.example.com", name.to_lowercase().replace(' ', "-"));
        Org {
            name,
            domain,
            industry: pick(&mut rng, INDUSTRIES).into(),
            city: pick(&mut rng, CITIES).into(),
            phone: format!("+1 555 {:04}", rng.gen_range(0..10_000)),
        }
    }

    pub fn opportunity(&self, index: u64) -> Opportunity {
        let mut rng = self.rng(3, index);
        Opportunity {
            name: format!("{} renewal {index}", pick(&mut rng, ORG_A)),
            amount: rng.gen_range(1..500) * 100,
            stage: pick(&mut rng, STAGES).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_index_give_the_same_record() {
        let a = Generator::new(42);
        let b = Generator::new(42);
        assert_eq!(a.person(7), b.person(7));
        assert_eq!(a.org(3), b.org(3));
        assert_eq!(a.opportunity(9), b.opportunity(9));
        assert_ne!(a.person(7), Generator::new(43).person(7));
        assert_ne!(a.person(7).email, a.person(8).email);
    }
}
