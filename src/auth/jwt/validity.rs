//! When a token is valid: its `exp` and `nbf` claims against the clock, with the policy's
//! leeway, in checked arithmetic.
//!
//! Both claims are NumericDates: seconds since the Unix epoch, as a JSON number (a fraction is
//! dropped). A token is valid while `now < exp + leeway` and once `nbf <= now + leeway`; its
//! streams end at `exp + leeway`. Every number here comes from the client (signed, but by
//! whoever holds the key, and a valid signature says nothing about sane values), so nothing
//! may overflow: an `exp + leeway` beyond what the clock can represent refuses the token rather
//! than panicking or wrapping around.

use std::{
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A NumericDate claim as the token wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NumericDate {
    /// Whole seconds since the Unix epoch.
    Seconds(u64),
    /// A number that is not a time: negative, or at least 2^64 seconds.
    OutOfRange,
}

/// Why a token's times make it invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Invalid {
    MissingExp,
    OutOfRange(&'static str),
    Expired,
    NotYetValid,
}

impl Invalid {
    /// The message for the client.
    pub(super) fn message(self) -> &'static str {
        match self {
            Self::MissingExp => "invalid token: it has no exp claim",
            Self::OutOfRange("exp") => {
                "invalid token: its exp claim (plus the leeway) is not a time this server can \
                 represent"
            }
            Self::OutOfRange(_) => "invalid token: its nbf claim is not a time",
            Self::Expired => "invalid token: it has expired",
            Self::NotYetValid => "invalid token: it is not valid yet",
        }
    }
}

/// Checks `exp` and `nbf` against `now` (seconds since the epoch) with `leeway` (seconds), and
/// returns when the token's permission ends.
pub(super) fn validity(
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    now: u64,
    leeway: u64,
) -> Result<SystemTime, Invalid> {
    let exp = match exp.ok_or(Invalid::MissingExp)? {
        NumericDate::Seconds(exp) => exp,
        NumericDate::OutOfRange => return Err(Invalid::OutOfRange("exp")),
    };
    let end = exp.checked_add(leeway).ok_or(Invalid::OutOfRange("exp"))?;
    let expires_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(end))
        .ok_or(Invalid::OutOfRange("exp"))?;
    if end <= now {
        return Err(Invalid::Expired);
    }
    match nbf {
        None => {}
        Some(NumericDate::OutOfRange) => return Err(Invalid::OutOfRange("nbf")),
        // Past u64::MAX, `now + leeway` is later than any `nbf`: saturating is exact here.
        Some(NumericDate::Seconds(nbf)) if nbf > now.saturating_add(leeway) => {
            return Err(Invalid::NotYetValid)
        }
        Some(NumericDate::Seconds(_)) => {}
    }
    Ok(expires_at)
}

/// The clock in whole seconds since the epoch (0 for a clock set before it).
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NumericDateVisitor)
    }
}

struct NumericDateVisitor;

impl Visitor<'_> for NumericDateVisitor {
    type Value = NumericDate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("seconds since the Unix epoch")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
        Ok(NumericDate::Seconds(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
        Ok(u64::try_from(v).map_or(NumericDate::OutOfRange, NumericDate::Seconds))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
        // 2^64 is the first float a u64 cannot hold; NaN fails the comparison.
        const LIMIT: f64 = 18_446_744_073_709_551_616.0;
        Ok(if (0.0..LIMIT).contains(&v) {
            NumericDate::Seconds(v as u64)
        } else {
            NumericDate::OutOfRange
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn secs(n: u64) -> Option<NumericDate> {
        Some(NumericDate::Seconds(n))
    }

    #[test]
    fn the_overflow_case_is_refused() {
        let huge = validity(secs(u64::MAX - 10), None, 1_000, u64::MAX / 2);
        assert_eq!(huge, Err(Invalid::OutOfRange("exp")));
        // Representable as a sum, not as a clock reading.
        let far = validity(secs(u64::MAX / 2 + 1), None, 1_000, 0);
        assert_eq!(far, Err(Invalid::OutOfRange("exp")));
        assert_eq!(
            validity(secs(2_000), None, 1_000, u64::MAX - 1_000),
            Err(Invalid::OutOfRange("exp"))
        );
        assert_eq!(
            validity(secs(2_000), None, u64::MAX, 0),
            Err(Invalid::Expired)
        );
        assert_eq!(
            validity(secs(2_000), secs(u64::MAX), 1_000, u64::MAX / 4),
            Err(Invalid::NotYetValid)
        );
    }

    #[test]
    fn bounds() {
        let ok = |exp, nbf, now, leeway| validity(secs(exp), nbf, now, leeway).is_ok();
        // Expired from the second of `exp + leeway` on.
        assert!(ok(100, None, 99, 0) && !ok(100, None, 100, 0));
        assert!(ok(100, None, 129, 30) && !ok(100, None, 130, 30));
        // Valid from `nbf - leeway` on.
        assert!(ok(1_000, secs(100), 100, 0) && !ok(1_000, secs(101), 100, 0));
        assert!(ok(1_000, secs(130), 100, 30) && !ok(1_000, secs(131), 100, 30));
        assert_eq!(
            validity(secs(100), None, 0, 30),
            Ok(UNIX_EPOCH + Duration::from_secs(130))
        );
        assert_eq!(validity(None, None, 0, 0), Err(Invalid::MissingExp));
        assert_eq!(
            validity(Some(NumericDate::OutOfRange), None, 0, 0),
            Err(Invalid::OutOfRange("exp"))
        );
        assert_eq!(
            validity(secs(100), Some(NumericDate::OutOfRange), 0, 0),
            Err(Invalid::OutOfRange("nbf"))
        );
    }

    #[test]
    fn numeric_dates_from_json() {
        let date = |json: &str| serde_json::from_str::<NumericDate>(json).ok();
        assert_eq!(date("12"), Some(NumericDate::Seconds(12)));
        assert_eq!(date("12.9"), Some(NumericDate::Seconds(12)));
        assert_eq!(
            date("18446744073709551615"),
            Some(NumericDate::Seconds(u64::MAX))
        );
        assert_eq!(date("18446744073709551616"), Some(NumericDate::OutOfRange));
        assert_eq!(date("1e300"), Some(NumericDate::OutOfRange));
        assert_eq!(date("-1"), Some(NumericDate::OutOfRange));
        assert_eq!(date("-0.5"), Some(NumericDate::OutOfRange));
        assert_eq!(date("\"12\""), None);
        assert_eq!(date("null"), None);
    }

    proptest! {
        /// Against arithmetic that cannot overflow (u128): never a panic, and valid exactly
        /// when the definition says.
        #[test]
        fn matches_wide_arithmetic(
            exp in prop_oneof![any::<u64>(), 0u64..4_000_000_000, (u64::MAX - 1_000)..=u64::MAX],
            nbf in proptest::option::of(any::<u64>()),
            now in prop_oneof![any::<u64>(), 1_700_000_000u64..1_800_000_000],
            leeway in prop_oneof![any::<u64>(), 0u64..100_000, (u64::MAX - 1_000)..=u64::MAX],
        ) {
            let result = validity(secs(exp), nbf.map(NumericDate::Seconds), now, leeway);
            let end = u128::from(exp) + u128::from(leeway);
            let representable = u64::try_from(end)
                .ok()
                .and_then(|end| UNIX_EPOCH.checked_add(Duration::from_secs(end)));
            let not_before_ok =
                nbf.is_none_or(|nbf| u128::from(nbf) <= u128::from(now) + u128::from(leeway));
            match representable {
                None => prop_assert_eq!(result, Err(Invalid::OutOfRange("exp"))),
                Some(at) if end > u128::from(now) && not_before_ok => prop_assert_eq!(result, Ok(at)),
                Some(_) if end <= u128::from(now) => prop_assert_eq!(result, Err(Invalid::Expired)),
                Some(_) => prop_assert_eq!(result, Err(Invalid::NotYetValid)),
            }
        }
    }
}
