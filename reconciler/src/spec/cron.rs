//! Cron expressions in an IANA time zone: validation, upcoming fire times and fire counts.
//!
//! croner does the calendar work (5 or 6 fields, macros, DST: a local time that does not
//! exist fires at the next valid instant, one that occurs twice fires once).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::time::days_in_month;
use croner::{Cron, Direction, TimeComponent, Weekday};

use super::diag::did_you_mean;

const MACROS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// A validated cron expression bound to its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

/// Parses an IANA time zone name, suggesting the closest name on a typo.
pub fn parse_timezone(name: &str) -> Result<Tz, (String, Option<String>)> {
    Tz::from_str(name).map_err(|_| {
        let hint = did_you_mean(name, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()));
        (
            format!("unknown time zone {name:?}; use an IANA name such as Europe/Berlin or UTC"),
            hint,
        )
    })
}

/// Parses a cron expression: 5 fields, 6 with seconds first, or a macro.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let trimmed = expr.trim();
    if trimmed.starts_with('@') {
        if !MACROS.iter().any(|m| m.eq_ignore_ascii_case(trimmed)) {
            return Err(format!(
                "unknown cron macro {trimmed:?}; use one of {}",
                MACROS.join(", ")
            ));
        }
    } else {
        let fields = trimmed.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "cron {expr:?} has {fields} fields; write 5 (minute hour day month weekday) \
                 or 6 with seconds first"
            ));
        }
        // croner reads an empty list item (`,` or `1,,2`) as matching nothing, and a
        // search for the next fire then steps through every minute up to its year limit.
        if let Some(field) = trimmed
            .split_whitespace()
            .find(|field| field.split(',').any(str::is_empty))
        {
            return Err(format!(
                "cron {expr:?} has an empty list item in {field:?}; separate values with \
                 single commas, such as 0,30"
            ));
        }
    }
    // `@midnight` is a common alias croner does not know; it means `@daily`.
    let pattern = if trimmed.eq_ignore_ascii_case("@midnight") {
        "@daily"
    } else {
        trimmed
    };
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| format!("invalid cron {expr:?}: {e}"))
}

/// Years the check that a cron fires at all looks at. Whether a date matches a pattern
/// depends only on its year's kind: the weekday it starts on and whether it is a leap year.
/// Each of the 14 kinds occurs in any 28 consecutive years without a skipped century leap
/// year (2100 is the next), so a pattern that fires in any year fires in these.
const FIRE_SEARCH_YEARS: i32 = 28;
/// First year of that search (the year the check was written); 2026 + 28 stays before 2100.
const FIRE_SEARCH_FROM: i32 = 2026;

/// Whether the parsed `cron` fires at all: some second, minute and hour match, and some
/// date of the 28 years above matches its month and day fields (croner's own
/// `day_match`, with `L`, `W`, `#` and the OR or AND of day and weekday). That is at most
/// 10,227 cheap calls. Asking croner for the next occurrence instead walks a pattern that
/// never fires day by day to its year limit, and even bounded to 28 years its per-day
/// search took seconds under fuzzing's instrumentation (`0 0 6 * +`). Time zones cannot
/// make a pattern that matches some civil time never fire (a skipped local time fires at the
/// next valid instant), so civil dates are enough.
fn fires_at_all(cron: &Cron) -> bool {
    let pattern = &cron.pattern;
    let some = |component| {
        matches!(
            pattern.find_match_in_component(0, component, Direction::Forward),
            Ok(Some(_))
        )
    };
    if !(some(TimeComponent::Second) && some(TimeComponent::Minute) && some(TimeComponent::Hour)) {
        return false;
    }
    for year in FIRE_SEARCH_FROM..FIRE_SEARCH_FROM + FIRE_SEARCH_YEARS {
        let Some(new_year) = NaiveDate::from_ymd_opt(year, 1, 1) else {
            continue;
        };
        // The weekday of the first of each month in turn.
        let mut first = Weekday::from_days_from_sunday(new_year.weekday().num_days_from_sunday());
        for month in 1..=12 {
            let length = days_in_month(year, month);
            if matches!(pattern.month_match(month), Ok(true))
                && (1..=length).any(|day| {
                    matches!(
                        pattern.day_match(year, month, day, first.shift(day as i32 - 1)),
                        Ok(true)
                    )
                })
            {
                return true;
            }
            first = first.shift(length as i32);
        }
    }
    false
}

impl CronSchedule {
    /// Validates `expr` in `timezone`, and that it fires at all.
    pub fn new(expr: &str, tz: Tz) -> Result<Self, String> {
        let schedule = CronSchedule {
            cron: parse_cron(expr)?,
            tz,
        };
        if !fires_at_all(&schedule.cron) {
            return Err(format!(
                "cron {expr:?} never fires (no such date in any year)"
            ));
        }
        Ok(schedule)
    }

    /// The time zone the expression is read in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
    }

    /// The next `n` fire times strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        self.cron
            .iter_after(after.with_timezone(&self.tz))
            .take(n)
            .collect()
    }

    /// Fire times at or before `until`, newest first.
    ///
    /// Walking backwards lets a caller look at the newest ticks after downtime without
    /// enumerating every older one.
    pub fn fires_until(&self, until: DateTime<Utc>) -> impl Iterator<Item = DateTime<Tz>> + use<> {
        self.cron
            .iter_from(until.with_timezone(&self.tz), Direction::Backward)
    }

    /// How many times it fires in `(from, from + window]`, counting at most `cap` fires and
    /// extrapolating linearly past that, so an every-second cron costs no more than a daily one.
    pub fn fires_within(&self, from: DateTime<Utc>, window: Duration, cap: usize) -> f64 {
        let Ok(span) = chrono::Duration::from_std(window) else {
            return 0.0;
        };
        let end = from + span;
        let mut count = 0usize;
        for t in self.cron.iter_after(from.with_timezone(&self.tz)) {
            let t = t.with_timezone(&Utc);
            if t > end {
                return count as f64;
            }
            count += 1;
            if count >= cap {
                let covered = (t - from).num_seconds().max(1) as f64;
                return count as f64 * span.num_seconds() as f64 / covered;
            }
        }
        count as f64
    }

    /// The smallest gap between two consecutive fires among the next `samples` after `from`.
    pub fn min_interval(&self, from: DateTime<Utc>, samples: usize) -> Option<Duration> {
        let times: Vec<DateTime<Tz>> = self.upcoming(from, samples);
        times
            .windows(2)
            .filter_map(|w| (w[1] - w[0]).to_std().ok())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid date")
    }

    #[test]
    fn five_six_fields_and_macros_are_accepted() {
        for ok in [
            "0 2 * * *",
            "*/10 * * * * *",
            "@daily",
            "@HOURLY",
            "@midnight",
            "0 9 * * MON-FRI",
        ] {
            assert!(parse_cron(ok).is_ok(), "{ok} should parse");
        }
    }

    #[test]
    fn wrong_field_counts_macros_and_ranges_are_refused() {
        for bad in [
            "* * *",
            "0 0 0 1 1 * 2026",
            "@fortnightly",
            "61 * * * *",
            "0 25 * * *",
            "",
            ", * * * * *",
            "0 1,,2 * * *",
            "0,5, * * * *",
        ] {
            assert!(parse_cron(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_cron_that_never_fires_is_refused() {
        let err = CronSchedule::new("0 0 30 2 *", Tz::UTC).expect_err("February 30th");
        assert!(err.contains("never fires"), "{err}");
    }

    #[test]
    fn a_cron_that_fires_rarely_is_accepted_and_one_that_never_fires_is_refused() {
        // Every leap year but 2100, and only the Februaries of 29 days that start on a
        // Monday: found within the 28 years searched.
        for rare in ["0 0 29 2 *", "0 0 * 2 MON#5", "0 0 0 29 2 *"] {
            assert!(CronSchedule::new(rare, Tz::UTC).is_ok(), "{rare} fires");
        }
        // A 29th of February on each weekday (with `+`, day of month AND day of week), and
        // the first of January on each: all fourteen kinds of year are within the search.
        for day in ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"] {
            for date in ["29 2", "1 1"] {
                let rare = format!("0 0 {date} +{day}");
                assert!(CronSchedule::new(&rare, Tz::UTC).is_ok(), "{rare} fires");
            }
        }
        for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 31 11 *", "0 0 30 2 +"] {
            let tz = parse_timezone("America/New_York").expect("known");
            assert!(CronSchedule::new(never, tz).is_err(), "{never} never fires");
        }
    }

    /// Whether some midnight (UTC) of the 28 years matches `cron`, asked of croner one
    /// calendar day at a time, with the dates and weekdays from chrono.
    fn some_midnight_matches(cron: &Cron) -> bool {
        let mut day = utc(FIRE_SEARCH_FROM, 1, 1, 0, 0);
        let end = utc(FIRE_SEARCH_FROM + FIRE_SEARCH_YEARS, 1, 1, 0, 0);
        while day < end {
            if cron.is_time_matching(&day).expect("a valid time") {
                return true;
            }
            day += chrono::Duration::days(1);
        }
        false
    }

    #[test]
    fn the_field_check_agrees_with_walking_the_calendar() {
        // Day-of-month and weekday forms, alone and combined by OR and by AND (`+`), in
        // months of 28/29, 30 and 31 days.
        let days = ["*", "29", "30", "31", "L", "LW", "1W", "31W"];
        let months = ["*", "2", "4"];
        let weekdays = ["*", "MON", "+MON", "5L", "+SUN#5", "+"];
        let mut fires = 0;
        for day in days {
            for month in months {
                for weekday in weekdays {
                    let expr = format!("0 0 {day} {month} {weekday}");
                    let Ok(cron) = parse_cron(&expr) else {
                        continue;
                    };
                    let expected = some_midnight_matches(&cron);
                    assert_eq!(fires_at_all(&cron), expected, "{expr}");
                    fires += usize::from(expected);
                }
            }
        }
        assert!(fires > 40, "the sample holds patterns that fire: {fires}");
    }

    #[test]
    fn a_weekday_and_with_no_weekday_never_fires() {
        // Found by fuzzing: croner reads a bare `+` as AND with no weekday, and proving
        // that it never fires by walking the calendar took seconds.
        let err = CronSchedule::new("0 0 6 * +", Tz::UTC).expect_err("never fires");
        assert!(err.contains("never fires"), "{err}");
    }

    #[test]
    fn a_local_time_skipped_by_dst_fires_once_at_the_next_valid_instant() {
        let berlin = parse_timezone("Europe/Berlin").expect("known");
        let s = CronSchedule::new("30 2 * * *", berlin).expect("valid");
        // 2026-03-29: clocks jump from 02:00 to 03:00 in Berlin.
        let fires = s.upcoming(utc(2026, 3, 28, 12, 0), 2);
        let local: Vec<String> = fires
            .iter()
            .map(|t| t.format("%m-%d %H:%M").to_string())
            .collect();
        assert_eq!(local, ["03-29 03:00", "03-30 02:30"]);
    }

    #[test]
    fn a_local_time_repeated_by_dst_fires_once() {
        let berlin = parse_timezone("Europe/Berlin").expect("known");
        let s = CronSchedule::new("30 2 * * *", berlin).expect("valid");
        // 2026-10-25: 02:30 happens twice in Berlin.
        let fires = s.upcoming(utc(2026, 10, 24, 12, 0), 2);
        let local: Vec<String> = fires
            .iter()
            .map(|t| t.format("%m-%d %H:%M").to_string())
            .collect();
        assert_eq!(local, ["10-25 02:30", "10-26 02:30"]);
    }

    #[test]
    fn fires_until_walks_back_newest_first_including_until() {
        let s = CronSchedule::new("0 * * * *", Tz::UTC).expect("valid");
        let fires: Vec<DateTime<Utc>> = s
            .fires_until(utc(2026, 1, 1, 12, 0))
            .take(3)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        assert_eq!(
            fires,
            [
                utc(2026, 1, 1, 12, 0),
                utc(2026, 1, 1, 11, 0),
                utc(2026, 1, 1, 10, 0)
            ]
        );
    }

    #[test]
    fn time_zone_typos_get_a_suggestion() {
        let (msg, hint) = parse_timezone("Europe/Berln").expect_err("typo");
        assert!(msg.contains("Europe/Berln"));
        assert_eq!(hint.as_deref(), Some("did you mean `Europe/Berlin`?"));
    }

    #[test]
    fn fire_counts_are_exact_below_the_cap_and_extrapolated_above_it() {
        let s = CronSchedule::new("0 * * * *", Tz::UTC).expect("valid");
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(s.fires_within(utc(2026, 1, 1, 0, 0), month, 10_000), 720.0);
        let every_second = CronSchedule::new("* * * * * *", Tz::UTC).expect("valid");
        let n = every_second.fires_within(utc(2026, 1, 1, 0, 0), month, 1000);
        assert!((n - 2_592_000.0).abs() < 3000.0, "{n}");
    }

    #[test]
    fn min_interval_sees_the_shortest_gap() {
        let s = CronSchedule::new("*/5 9-17 * * *", Tz::UTC).expect("valid");
        assert_eq!(
            s.min_interval(utc(2026, 1, 1, 0, 0), 64),
            Some(Duration::from_secs(300))
        );
    }
}
