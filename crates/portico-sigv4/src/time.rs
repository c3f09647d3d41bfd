//! `x-amz-date` stamps (`20261203T121500Z`): UTC, to the second.

use std::time::SystemTime;

/// `time` as an `x-amz-date` stamp: RFC 3339 to the second, without its separators.
pub fn amz_date(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(['-', ':'], "")
}

/// The time of an `x-amz-date` stamp; `None` for anything else.
pub fn parse_amz_date(stamp: &str) -> Option<SystemTime> {
    let bytes = stamp.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    // `YYYYMMDDTHHMMSSZ` → `YYYY-MM-DDTHH:MM:SSZ`, which humantime checks field by field.
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        stamp.get(0..4)?,
        stamp.get(4..6)?,
        stamp.get(6..8)?,
        stamp.get(9..11)?,
        stamp.get(11..13)?,
        stamp.get(13..15)?
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps_round_trip_and_bad_ones_are_refused() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_300_100);
        let stamp = amz_date(t);
        assert_eq!(stamp, "20261203T121500Z");
        assert_eq!(parse_amz_date(&stamp), Some(t));
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            parse_amz_date("20240229T235959Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_251_199))
        );
        for bad in [
            "",
            "20261203T113500",
            "2026-12-03T11:35:00Z",
            "20261303T113500Z",
            "20261203T243500Z",
            "2026120xT113500Z",
            "+0261203T113500Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }
}
