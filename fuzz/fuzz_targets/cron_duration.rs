//! Cron, time zone, duration and quantity parsing on arbitrary text, one field a line:
//! cron, time zone, duration, quantity, and a Unix time to start from. A cron that parses
//! is walked forwards and backwards a bounded number of fires, which must be in order.
#![no_main]

use std::time::Duration;

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use trainyard::schedule::next_fire_after;
use trainyard::spec::cron::{CronSchedule, parse_cron, parse_timezone};
use trainyard::spec::units::{QuantityKind, format_duration, parse_duration, parse_quantity};

/// 2026-01-01T00:00:00Z.
const REFERENCE: i64 = 1_767_225_600;
/// Fires looked at in each direction.
const FIRES: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let cron = lines.next().unwrap_or_default();
    let timezone = lines.next().unwrap_or_default();
    let duration = lines.next().unwrap_or_default();
    let quantity = lines.next().unwrap_or_default();
    // Any time between 1970 and about 2200.
    let at = lines
        .next()
        .and_then(|l| l.trim().parse::<i64>().ok())
        .map_or(REFERENCE, |t| t.rem_euclid(7_258_118_400));
    let at = DateTime::<Utc>::from_timestamp(at, 0).expect("in range");

    if let Ok(d) = parse_duration(duration) {
        assert!(d > Duration::ZERO);
        let written = format_duration(d);
        assert_eq!(
            parse_duration(&written),
            Ok(d),
            "{duration:?} written as {written:?}"
        );
    }
    for kind in [QuantityKind::Cpu, QuantityKind::Memory] {
        if let Ok(q) = parse_quantity(quantity, kind) {
            assert!(q.is_finite() && q > 0.0, "{quantity:?} gave {q}");
        }
    }

    let tz = parse_timezone(timezone)
        .or_else(|_| parse_timezone("UTC"))
        .expect("UTC is a time zone");
    let parsed = parse_cron(cron);
    let Ok(schedule) = CronSchedule::new(cron, tz) else {
        return;
    };
    assert!(
        parsed.is_ok(),
        "CronSchedule accepted {cron:?} that parse_cron refuses"
    );
    let upcoming = schedule.upcoming(at, FIRES);
    for pair in upcoming.windows(2) {
        assert!(pair[0] < pair[1], "{cron:?}: fires out of order: {pair:?}");
    }
    if let Some(first) = upcoming.first() {
        assert!(
            first.with_timezone(&Utc) > at,
            "{cron:?}: {first} is not after {at}"
        );
        assert_eq!(schedule.next_after(at).as_ref(), Some(first));
        assert!(next_fire_after(&schedule, at, at).is_some());
    }
    let back: Vec<_> = schedule.fires_until(at).take(FIRES).collect();
    for pair in back.windows(2) {
        assert!(
            pair[0] > pair[1],
            "{cron:?}: backward fires out of order: {pair:?}"
        );
    }
    if let Some(newest) = back.first() {
        assert!(
            newest.with_timezone(&Utc) <= at,
            "{cron:?}: {newest} is after {at}"
        );
    }
    let _ = schedule.min_interval(at, 16);
    let n = schedule.fires_within(at, Duration::from_secs(86_400), 1_000);
    assert!(n.is_finite() && n >= 0.0);
});
