use chrono::{DateTime, Utc};

use super::PayloadFingerprint;

/// Where an activity stands in the conflict rule: of two activities accepted under the same
/// (tenant, key) with different payloads, the one with the smaller rank is kept, in every
/// datacenter, whatever order each datacenter's consumer met them in.
///
/// The rank is the acceptance time in milliseconds (what the stored document keeps of it, so a
/// record and a stored document compare alike), then the accepting datacenter's name, then the
/// fingerprint: a total order, so even two activities accepted in the same millisecond by the same
/// datacenter (a client that raced two API instances) have one winner everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AcceptanceRank<'a> {
    accepted_at_ms: i64,
    accepting_dc: &'a str,
    fingerprint: &'a str,
}

impl<'a> AcceptanceRank<'a> {
    pub fn new(
        accepted_at: DateTime<Utc>,
        accepting_dc: &'a str,
        fingerprint: &'a PayloadFingerprint,
    ) -> AcceptanceRank<'a> {
        AcceptanceRank::from_millis(accepted_at.timestamp_millis(), accepting_dc, fingerprint)
    }

    pub fn from_millis(
        accepted_at_ms: i64,
        accepting_dc: &'a str,
        fingerprint: &'a PayloadFingerprint,
    ) -> AcceptanceRank<'a> {
        AcceptanceRank {
            accepted_at_ms,
            accepting_dc,
            fingerprint: fingerprint.as_str(),
        }
    }

    /// Whether this activity is kept rather than `other`.
    pub fn wins_over(&self, other: &AcceptanceRank<'_>) -> bool {
        // The derived order compares the fields in declaration order: time, datacenter, fingerprint.
        self < other
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn fingerprint(digit: char) -> PayloadFingerprint {
        PayloadFingerprint::try_from(digit.to_string().repeat(32)).unwrap()
    }

    #[test]
    fn the_earlier_acceptance_wins_whichever_datacenter_accepted_it() {
        let (a, b) = (fingerprint('a'), fingerprint('b'));
        let early = Utc.timestamp_millis_opt(1_000).unwrap();
        let late = Utc.timestamp_millis_opt(1_001).unwrap();
        let east_early = AcceptanceRank::new(early, "west", &b);
        let west_late = AcceptanceRank::new(late, "east", &a);
        assert!(east_early.wins_over(&west_late));
        assert!(!west_late.wins_over(&east_early));
    }

    #[test]
    fn a_tie_in_time_goes_to_the_datacenter_name_then_the_fingerprint() {
        let (a, b) = (fingerprint('a'), fingerprint('b'));
        // Microseconds are below what a stored document keeps: they must not decide.
        let at = Utc.timestamp_opt(1, 999_000).unwrap();
        let same_ms = Utc.timestamp_opt(1, 0).unwrap();
        assert!(AcceptanceRank::new(at, "east", &b)
            .wins_over(&AcceptanceRank::new(same_ms, "west", &a)));
        assert!(AcceptanceRank::new(at, "east", &a)
            .wins_over(&AcceptanceRank::from_millis(1_000, "east", &b)));
        let itself = AcceptanceRank::new(at, "east", &a);
        assert!(!itself.wins_over(&itself), "nothing wins over itself");
    }
}
