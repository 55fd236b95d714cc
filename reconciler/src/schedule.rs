//! Which ticks of a schedule are due, and what happens to each: fire, fire in place of the
//! active run, skip, or record as missed. Pure decisions; the scheduler loop records them.
//!
//! The loop calls [`decide`] for each active schedule and writes one tick row per decision,
//! unique per (schedule, scheduled time), creating the runs of fired ticks in the same
//! transaction. Its next `since` is the newest recorded tick, so a decision is never repeated.

use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::spec::check::MAX_CATCHUP;
use crate::spec::cron::CronSchedule;
use crate::spec::model::{Catchup, Concurrency, ScheduleSpec};
use crate::spec::units::{format_duration, parse_duration};

/// Most ticks decided one by one in a call; older due ticks collapse into one missed tick.
///
/// Bounds the work after long downtime: a per-second cron down for a year has 31 million due
/// ticks, and neither walking nor recording them is useful.
pub const MAX_DECISIONS: usize = 1000;

/// Most fire times walked to count the ticks a collapsed miss stands for; past this the count
/// is extrapolated from their rate.
const MAX_COUNTED: usize = 2000;

/// How late a tick may be seen and still count as on time for `catchup: none`.
///
/// The loop wakes at the tick, but a busy database, a slow transaction or a leader handover
/// delays it by seconds; a tick seen that late was not missed through downtime, and `none`
/// must not drop it.
pub const ON_TIME: Duration = Duration::from_secs(60);

// `catchup: all` must be able to fire every tick it may replay.
const _: () = assert!(MAX_CATCHUP as usize <= MAX_DECISIONS);

/// Runs of this schedule that have not finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActiveRuns {
    /// How many there are.
    pub count: usize,
}

/// What happens to one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickAction {
    /// Start a run.
    Fire,
    /// Cancel the schedule's active runs, then start a run (`concurrency: replace`).
    FireReplacing,
    /// Start nothing now that the tick is due, for the reason given.
    Skip(String),
    /// The tick passed without a chance to run, for the reason given.
    Miss(String),
}

/// The decision about one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickDecision {
    /// The tick's scheduled time.
    pub at: DateTime<Utc>,
    /// What happens to it.
    pub action: TickAction,
}

/// Errors deciding a schedule's ticks.
#[derive(Debug, Error)]
pub enum ScheduleError {
    /// `starting_deadline` is not a duration; validation refuses such schedules first.
    #[error("starting_deadline {value:?}: {reason}")]
    InvalidDeadline {
        /// The value as written.
        value: String,
        /// Why it is not a duration.
        reason: String,
    },
}

/// Decides the due ticks of one schedule: those at times `t` with `since < t <= now`.
///
/// `since` is the later of the newest recorded tick and the time the schedule became active,
/// so a suspended period or a decided tick is never looked at again. `active` counts the
/// schedule's unfinished runs and `paused` says it failed `pause_after_failures` times in a
/// row. Decisions come oldest first; at most [`MAX_DECISIONS`] + 1 of them.
pub fn decide(
    spec: &ScheduleSpec,
    cron: &CronSchedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    active: ActiveRuns,
    paused: bool,
) -> Result<Vec<TickDecision>, ScheduleError> {
    if spec.suspend {
        return Ok(Vec::new());
    }
    let deadline = spec
        .starting_deadline
        .as_deref()
        .map(|value| {
            parse_duration(value).map_err(|reason| ScheduleError::InvalidDeadline {
                value: value.to_owned(),
                reason,
            })
        })
        .transpose()?;

    // The common call finds nothing due; one forward search answers it without walking back
    // from `now`, which for a sparse cron can mean searching back a long way.
    match cron.next_after(since) {
        Some(first) if first.with_timezone(&Utc) <= now => {}
        _ => return Ok(Vec::new()),
    }

    let mut newest_first: Vec<DateTime<Utc>> = cron
        .fires_until(now)
        .map(|t| t.with_timezone(&Utc))
        .take_while(|t| *t > since)
        .take(MAX_DECISIONS + 1)
        .collect();
    let collapsed = if newest_first.len() > MAX_DECISIONS {
        newest_first
            .pop()
            .map(|newest_collapsed| collapse(cron, since, newest_collapsed))
    } else {
        None
    };
    newest_first.reverse();
    let candidates = newest_first;

    let late = |t: DateTime<Utc>| -> Option<String> {
        let deadline = deadline?;
        let lateness = (now - t).to_std().ok()?;
        (lateness > deadline).then(|| {
            format!(
                "started too late: {} after its time, starting_deadline is {}",
                format_duration(lateness),
                format_duration(deadline)
            )
        })
    };
    let mut outcomes: Vec<Option<String>> = candidates.iter().map(|t| late(*t)).collect();
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|i| outcomes[*i].is_none())
        .collect();
    let fire_from = match spec.catchup {
        Catchup::All => eligible.len().saturating_sub(spec.max_catchup as usize),
        Catchup::Latest | Catchup::None => eligible.len().saturating_sub(1),
    };
    for (rank, &i) in eligible.iter().enumerate() {
        let kept = rank >= fire_from;
        let on_time = (now - candidates[i])
            .to_std()
            .is_ok_and(|lateness| lateness <= ON_TIME);
        outcomes[i] = match spec.catchup {
            Catchup::All if !kept => Some(format!("beyond max_catchup ({})", spec.max_catchup)),
            Catchup::Latest if !kept => Some("catchup: latest".to_owned()),
            Catchup::None if !kept || !on_time => Some("catchup: none".to_owned()),
            _ => None,
        };
    }

    let mut decisions = Vec::with_capacity(candidates.len() + 1);
    decisions.extend(collapsed);
    let mut running = active.count > 0;
    for (at, missed) in candidates.into_iter().zip(outcomes) {
        let action = match missed {
            Some(reason) => TickAction::Miss(reason),
            None if paused => TickAction::Skip(paused_reason(spec.pause_after_failures)),
            None => match (spec.concurrency, running) {
                (Concurrency::Forbid, true) => {
                    TickAction::Skip("previous run still active".to_owned())
                }
                // Runs fired earlier in this batch count as active too: otherwise `replace`
                // with `catchup: all` would leave several runs overlapping, which is what
                // `replace` promises never happens.
                (Concurrency::Replace, true) => TickAction::FireReplacing,
                _ => TickAction::Fire,
            },
        };
        running |= matches!(action, TickAction::Fire | TickAction::FireReplacing)
            && spec.concurrency != Concurrency::Allow;
        decisions.push(TickDecision { at, action });
    }
    Ok(decisions)
}

/// When the loop should next look at a schedule: `now` if a tick is already due (a fire time
/// after `since` at or before `now`), else its next fire time; `None` if it never fires again.
pub fn next_fire_after(
    cron: &CronSchedule,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    cron.next_after(since)
        .map(|t| t.with_timezone(&Utc).max(now))
}

/// The fire times of `cron` from `from` to `to`, both included, oldest first, as live ticks
/// see them (walked back from `to`, so a local time that occurs twice fires once, at its
/// first instant, and one that does not exist fires at the next valid instant); `None` when
/// there are more than `cap` of them.
pub fn fires_between(
    cron: &CronSchedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    cap: usize,
) -> Option<Vec<DateTime<Utc>>> {
    let mut times: Vec<DateTime<Utc>> = cron
        .fires_until(to)
        .map(|t| t.with_timezone(&Utc))
        .take_while(|t| *t >= from)
        .take(cap + 1)
        .collect();
    if times.len() > cap {
        return None;
    }
    times.reverse();
    Some(times)
}

fn paused_reason(after: Option<u32>) -> String {
    match after {
        Some(n) => format!("paused after {n} failed runs in a row"),
        None => "paused after failed runs".to_owned(),
    }
}

/// One miss, at the oldest due tick, standing for every due tick from it to `newest`.
fn collapse(cron: &CronSchedule, since: DateTime<Utc>, newest: DateTime<Utc>) -> TickDecision {
    let walked: Vec<DateTime<Utc>> = cron
        .upcoming(since, MAX_COUNTED)
        .into_iter()
        .map(|t| t.with_timezone(&Utc))
        .take_while(|t| *t <= newest)
        .collect();
    let oldest = walked.first().copied().unwrap_or(newest);
    let (count, exact) = match walked.last() {
        Some(last) if walked.len() == MAX_COUNTED && *last < newest => {
            // Counting all of them is the unbounded work this avoids; fires come at a steady
            // rate for every cron worth collapsing, so the rate over the first ones is close.
            let covered = (*last - since).num_milliseconds().max(1) as f64;
            let span = (newest - since).num_milliseconds() as f64;
            ((walked.len() as f64 * span / covered).round() as u64, false)
        }
        _ => (walked.len() as u64, true),
    };
    let about = if exact { "" } else { "about " };
    let ticks = if count == 1 { "tick" } else { "ticks" };
    TickDecision {
        at: oldest,
        action: TickAction::Miss(format!(
            "missed {about}{} {ticks} between {} and {}: too many to decide one by one",
            thousands(count),
            oldest.to_rfc3339(),
            newest.to_rfc3339(),
        )),
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chrono::TimeZone;
    use chrono_tz::Tz;

    use super::*;
    use crate::spec::cron::parse_timezone;

    fn spec(cron: &str, catchup: Catchup, concurrency: Concurrency) -> ScheduleSpec {
        ScheduleSpec {
            pipeline: "train".to_owned(),
            cron: cron.to_owned(),
            timezone: "UTC".to_owned(),
            params: Default::default(),
            concurrency,
            catchup,
            max_catchup: 10,
            starting_deadline: None,
            pause_after_failures: None,
            suspend: false,
        }
    }

    fn cron_of(spec: &ScheduleSpec) -> CronSchedule {
        let tz = parse_timezone(&spec.timezone).expect("test time zone is valid");
        CronSchedule::new(&spec.cron, tz).expect("test cron is valid")
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid test time")
    }

    fn run(spec: &ScheduleSpec, since: DateTime<Utc>, now: DateTime<Utc>) -> Vec<TickDecision> {
        decide(
            spec,
            &cron_of(spec),
            since,
            now,
            ActiveRuns::default(),
            false,
        )
        .expect("decides")
    }

    /// Seconds after `base` of each decision, with a short form of its action.
    fn summary(decisions: &[TickDecision], base: DateTime<Utc>) -> Vec<(i64, &'static str)> {
        decisions
            .iter()
            .map(|d| {
                let kind = match d.action {
                    TickAction::Fire => "fire",
                    TickAction::FireReplacing => "replace",
                    TickAction::Skip(_) => "skip",
                    TickAction::Miss(_) => "miss",
                };
                ((d.at - base).num_seconds(), kind)
            })
            .collect()
    }

    fn reason(action: &TickAction) -> &str {
        match action {
            TickAction::Skip(r) | TickAction::Miss(r) => r,
            TickAction::Fire | TickAction::FireReplacing => "",
        }
    }

    const EVERY_SECOND: &str = "* * * * * *";

    // Ten seconds of downtime under a per-second cron: ticks at base+1 ..= base+10.
    fn ten_seconds() -> (DateTime<Utc>, DateTime<Utc>) {
        let base = at(2026, 5, 1, 12, 0, 0);
        (base, base + chrono::Duration::seconds(10))
    }

    #[test]
    fn catchup_all_fires_every_missed_second_within_max_catchup() {
        let (since, now) = ten_seconds();
        let mut s = spec(EVERY_SECOND, Catchup::All, Concurrency::Allow);
        s.max_catchup = 20;
        let decisions = run(&s, since, now);
        let expected: Vec<(i64, &str)> = (1..=10).map(|i| (i, "fire")).collect();
        assert_eq!(summary(&decisions, since), expected);
    }

    #[test]
    fn catchup_all_fires_only_the_newest_max_catchup_ticks() {
        let (since, now) = ten_seconds();
        let mut s = spec(EVERY_SECOND, Catchup::All, Concurrency::Allow);
        s.max_catchup = 3;
        let decisions = run(&s, since, now);
        let mut expected: Vec<(i64, &str)> = (1..=7).map(|i| (i, "miss")).collect();
        expected.extend([(8, "fire"), (9, "fire"), (10, "fire")]);
        assert_eq!(summary(&decisions, since), expected);
        assert_eq!(reason(&decisions[0].action), "beyond max_catchup (3)");
    }

    #[test]
    fn catchup_latest_fires_the_newest_tick_and_misses_the_rest() {
        let (since, now) = ten_seconds();
        let s = spec(EVERY_SECOND, Catchup::Latest, Concurrency::Allow);
        let decisions = run(&s, since, now);
        let mut expected: Vec<(i64, &str)> = (1..=9).map(|i| (i, "miss")).collect();
        expected.push((10, "fire"));
        assert_eq!(summary(&decisions, since), expected);
        assert_eq!(reason(&decisions[3].action), "catchup: latest");
    }

    #[test]
    fn catchup_none_fires_the_newest_tick_when_it_is_on_time() {
        let (since, now) = ten_seconds();
        let s = spec(EVERY_SECOND, Catchup::None, Concurrency::Allow);
        let decisions = run(&s, since, now);
        let mut expected: Vec<(i64, &str)> = (1..=9).map(|i| (i, "miss")).collect();
        expected.push((10, "fire"));
        assert_eq!(summary(&decisions, since), expected);
        assert_eq!(reason(&decisions[0].action), "catchup: none");
    }

    #[test]
    fn catchup_none_misses_a_tick_seen_later_than_on_time() {
        let s = spec("0 * * * *", Catchup::None, Concurrency::Allow);
        let since = at(2026, 5, 1, 11, 30, 0);
        let late = at(2026, 5, 1, 12, 2, 0);
        let decisions = run(&s, since, late);
        assert_eq!(summary(&decisions, since), [(1800, "miss")]);
        assert_eq!(reason(&decisions[0].action), "catchup: none");
        let on_time = at(2026, 5, 1, 12, 0, 59);
        assert_eq!(summary(&run(&s, since, on_time), since), [(1800, "fire")]);
    }

    #[test]
    fn ticks_at_or_before_since_are_never_considered() {
        let (since, now) = ten_seconds();
        let s = spec(EVERY_SECOND, Catchup::All, Concurrency::Allow);
        assert!(run(&s, now, now).is_empty());
        let decisions = run(&s, since + chrono::Duration::seconds(8), now);
        assert_eq!(summary(&decisions, since), [(9, "fire"), (10, "fire")]);
    }

    #[test]
    fn a_tick_exactly_at_now_is_due() {
        let s = spec("0 * * * *", Catchup::Latest, Concurrency::Forbid);
        let now = at(2026, 5, 1, 12, 0, 0);
        let decisions = run(&s, now - chrono::Duration::seconds(1), now);
        assert_eq!(
            decisions,
            [TickDecision {
                at: now,
                action: TickAction::Fire
            }]
        );
    }

    #[test]
    fn ticks_older_than_the_starting_deadline_are_missed_as_too_late() {
        let mut s = spec("*/10 * * * *", Catchup::All, Concurrency::Allow);
        s.starting_deadline = Some("15m".to_owned());
        let since = at(2026, 5, 1, 11, 55, 0);
        let now = at(2026, 5, 1, 12, 25, 0);
        let decisions = run(&s, since, now);
        assert_eq!(
            summary(&decisions, since),
            [(300, "miss"), (900, "fire"), (1500, "fire")]
        );
        assert_eq!(
            reason(&decisions[0].action),
            "started too late: 25m after its time, starting_deadline is 15m"
        );
    }

    #[test]
    fn a_deadline_miss_does_not_use_up_the_latest_tick() {
        let mut s = spec("*/10 * * * *", Catchup::Latest, Concurrency::Allow);
        s.starting_deadline = Some("1m".to_owned());
        let since = at(2026, 5, 1, 11, 55, 0);
        let now = at(2026, 5, 1, 12, 25, 0);
        let decisions = run(&s, since, now);
        assert!(
            decisions
                .iter()
                .all(|d| reason(&d.action).starts_with("started too late")),
            "{decisions:?}"
        );
        assert_eq!(decisions.len(), 3);
    }

    #[test]
    fn an_unreadable_deadline_is_an_error_not_a_guess() {
        let mut s = spec("* * * * *", Catchup::All, Concurrency::Allow);
        s.starting_deadline = Some("soon".to_owned());
        let (since, now) = ten_seconds();
        let err = decide(&s, &cron_of(&s), since, now, ActiveRuns::default(), false)
            .expect_err("soon is no duration");
        assert!(err.to_string().contains("soon"), "{err}");
    }

    fn with_active(s: &ScheduleSpec, count: usize) -> Vec<TickDecision> {
        let (since, now) = ten_seconds();
        decide(s, &cron_of(s), since, now, ActiveRuns { count }, false).expect("decides")
    }

    #[test]
    fn forbid_fires_when_nothing_is_active() {
        let s = spec(EVERY_SECOND, Catchup::Latest, Concurrency::Forbid);
        let last = with_active(&s, 0).pop().expect("a decision");
        assert_eq!(last.action, TickAction::Fire);
    }

    #[test]
    fn forbid_skips_while_a_run_is_active() {
        let s = spec(EVERY_SECOND, Catchup::Latest, Concurrency::Forbid);
        let last = with_active(&s, 1).pop().expect("a decision");
        assert_eq!(
            last.action,
            TickAction::Skip("previous run still active".to_owned())
        );
    }

    #[test]
    fn forbid_skips_catchup_ticks_after_the_first_fired_in_the_same_batch() {
        let (since, _) = ten_seconds();
        let mut s = spec(EVERY_SECOND, Catchup::All, Concurrency::Forbid);
        s.max_catchup = 3;
        let decisions = with_active(&s, 0);
        assert_eq!(
            summary(&decisions[7..], since),
            [(8, "fire"), (9, "skip"), (10, "skip")]
        );
    }

    #[test]
    fn replace_fires_plainly_when_nothing_is_active() {
        let s = spec(EVERY_SECOND, Catchup::Latest, Concurrency::Replace);
        let last = with_active(&s, 0).pop().expect("a decision");
        assert_eq!(last.action, TickAction::Fire);
    }

    #[test]
    fn replace_fires_in_place_of_an_active_run() {
        let s = spec(EVERY_SECOND, Catchup::Latest, Concurrency::Replace);
        let last = with_active(&s, 2).pop().expect("a decision");
        assert_eq!(last.action, TickAction::FireReplacing);
    }

    #[test]
    fn replace_with_catchup_all_replaces_runs_fired_earlier_in_the_batch() {
        let (since, _) = ten_seconds();
        let mut s = spec(EVERY_SECOND, Catchup::All, Concurrency::Replace);
        s.max_catchup = 3;
        let decisions = with_active(&s, 0);
        assert_eq!(
            summary(&decisions[7..], since),
            [(8, "fire"), (9, "replace"), (10, "replace")]
        );
    }

    #[test]
    fn allow_fires_alongside_active_runs() {
        let (since, _) = ten_seconds();
        let mut s = spec(EVERY_SECOND, Catchup::All, Concurrency::Allow);
        s.max_catchup = 2;
        let decisions = with_active(&s, 4);
        assert_eq!(summary(&decisions[8..], since), [(9, "fire"), (10, "fire")]);
    }

    #[test]
    fn a_paused_schedule_skips_what_would_fire_and_still_misses_the_rest() {
        let (since, now) = ten_seconds();
        let mut s = spec(EVERY_SECOND, Catchup::Latest, Concurrency::Allow);
        s.pause_after_failures = Some(3);
        let decisions =
            decide(&s, &cron_of(&s), since, now, ActiveRuns::default(), true).expect("decides");
        assert_eq!(decisions.len(), 10);
        assert!(matches!(decisions[0].action, TickAction::Miss(_)));
        assert_eq!(
            decisions[9].action,
            TickAction::Skip("paused after 3 failed runs in a row".to_owned())
        );
    }

    #[test]
    fn a_suspended_schedule_decides_nothing() {
        let (since, now) = ten_seconds();
        let mut s = spec(EVERY_SECOND, Catchup::All, Concurrency::Allow);
        s.suspend = true;
        assert!(run(&s, since, now).is_empty());
    }

    #[test]
    fn a_year_of_per_second_downtime_collapses_into_one_miss_and_returns_quickly() {
        let s = spec(EVERY_SECOND, Catchup::All, Concurrency::Allow);
        let since = at(2025, 1, 1, 0, 0, 0);
        let now = at(2026, 1, 1, 0, 0, 0);
        let started = Instant::now();
        let decisions = run(&s, since, now);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "took {took:?}");

        assert_eq!(decisions.len(), MAX_DECISIONS + 1);
        let collapsed = &decisions[0];
        assert_eq!(collapsed.at, since + chrono::Duration::seconds(1));
        let due = 365 * 86_400;
        let expected = format!(
            "missed about {} ticks between 2025-01-01T00:00:01+00:00 and ",
            thousands((due - MAX_DECISIONS) as u64)
        );
        assert!(
            reason(&collapsed.action).starts_with(&expected),
            "{:?}",
            collapsed.action
        );
        let first_decided = now - chrono::Duration::seconds(MAX_DECISIONS as i64 - 1);
        assert_eq!(decisions[1].at, first_decided);
        assert_eq!(decisions[MAX_DECISIONS].at, now);
        let fired = decisions
            .iter()
            .filter(|d| d.action == TickAction::Fire)
            .count();
        assert_eq!(fired, 10, "max_catchup bounds what fires");
        assert!(decisions.windows(2).all(|w| w[0].at < w[1].at));
    }

    #[test]
    fn a_short_collapse_counts_its_ticks_exactly() {
        let s = spec(EVERY_SECOND, Catchup::Latest, Concurrency::Allow);
        let since = at(2026, 5, 1, 12, 0, 0);
        let now = since + chrono::Duration::seconds(MAX_DECISIONS as i64 + 5);
        let decisions = run(&s, since, now);
        assert_eq!(decisions.len(), MAX_DECISIONS + 1);
        assert_eq!(
            reason(&decisions[0].action),
            "missed 5 ticks between 2026-05-01T12:00:01+00:00 and \
             2026-05-01T12:00:05+00:00: too many to decide one by one"
        );
    }

    fn berlin_nightly() -> ScheduleSpec {
        let mut s = spec("30 2 * * *", Catchup::All, Concurrency::Allow);
        s.timezone = "Europe/Berlin".to_owned();
        s
    }

    fn local(decisions: &[TickDecision]) -> Vec<String> {
        let berlin: Tz = parse_timezone("Europe/Berlin").expect("known zone");
        decisions
            .iter()
            .map(|d| {
                d.at.with_timezone(&berlin)
                    .format("%m-%d %H:%M %Z")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_local_time_skipped_by_dst_fires_once_at_the_next_valid_instant() {
        let s = berlin_nightly();
        let decisions = run(&s, at(2026, 3, 28, 12, 0, 0), at(2026, 3, 30, 12, 0, 0));
        assert_eq!(local(&decisions), ["03-29 03:00 CEST", "03-30 02:30 CEST"]);
        assert!(decisions.iter().all(|d| d.action == TickAction::Fire));
        // Seen from right at, and from just after, the moved tick.
        for now in [at(2026, 3, 29, 1, 0, 0), at(2026, 3, 29, 1, 30, 0)] {
            let decisions = run(&s, at(2026, 3, 29, 0, 59, 0), now);
            assert_eq!(local(&decisions), ["03-29 03:00 CEST"], "now {now}");
        }
    }

    #[test]
    fn a_local_time_repeated_by_dst_fires_once() {
        let s = berlin_nightly();
        let decisions = run(&s, at(2026, 10, 24, 12, 0, 0), at(2026, 10, 26, 12, 0, 0));
        assert_eq!(local(&decisions), ["10-25 02:30 CEST", "10-26 02:30 CET"]);
        // Seen from the second 02:30 and from within the repeated hour.
        for now in [at(2026, 10, 25, 1, 30, 0), at(2026, 10, 25, 0, 45, 0)] {
            let decisions = run(&s, at(2026, 10, 24, 12, 0, 0), now);
            assert_eq!(local(&decisions), ["10-25 02:30 CEST"], "now {now}");
        }
    }

    #[test]
    fn the_second_pass_of_a_repeated_local_time_is_not_a_new_tick() {
        let s = berlin_nightly();
        // The first 02:30 (CEST) was recorded; now is 02:45 CET, after the second 02:30.
        let first = at(2026, 10, 25, 0, 30, 0);
        assert!(run(&s, first, at(2026, 10, 25, 1, 45, 0)).is_empty());
    }

    #[test]
    fn next_fire_after_is_now_when_a_tick_is_due_and_the_next_tick_otherwise() {
        let s = spec("0 * * * *", Catchup::Latest, Concurrency::Forbid);
        let cron = cron_of(&s);
        let since = at(2026, 5, 1, 11, 0, 0);
        let now = at(2026, 5, 1, 12, 30, 0);
        assert_eq!(next_fire_after(&cron, since, now), Some(now));
        let recorded = at(2026, 5, 1, 12, 0, 0);
        assert_eq!(
            next_fire_after(&cron, recorded, now),
            Some(at(2026, 5, 1, 13, 0, 0))
        );
    }

    #[test]
    fn fires_between_crosses_both_dst_changes_as_live_ticks_do() {
        let s = berlin_nightly();
        let cron = cron_of(&s);
        let autumn = fires_between(
            &cron,
            at(2026, 10, 23, 12, 0, 0),
            at(2026, 10, 26, 12, 0, 0),
            10,
        )
        .expect("within the cap");
        assert_eq!(
            autumn,
            [
                at(2026, 10, 24, 0, 30, 0),
                at(2026, 10, 25, 0, 30, 0),
                at(2026, 10, 26, 1, 30, 0)
            ],
            "the repeated 02:30 fires once, at its first instant"
        );
        let live = run(&s, at(2026, 10, 23, 12, 0, 0), at(2026, 10, 26, 12, 0, 0));
        assert_eq!(live.iter().map(|d| d.at).collect::<Vec<_>>(), autumn);
        let spring = fires_between(
            &cron,
            at(2026, 3, 28, 12, 0, 0),
            at(2026, 3, 30, 12, 0, 0),
            10,
        )
        .expect("within the cap");
        assert_eq!(
            spring,
            [at(2026, 3, 29, 1, 0, 0), at(2026, 3, 30, 0, 30, 0)]
        );
    }

    #[test]
    fn fires_between_includes_both_ends_and_refuses_more_than_the_cap() {
        let s = spec("0 * * * *", Catchup::Latest, Concurrency::Forbid);
        let cron = cron_of(&s);
        let (from, to) = (at(2026, 5, 1, 10, 0, 0), at(2026, 5, 1, 12, 0, 0));
        assert_eq!(
            fires_between(&cron, from, to, 3),
            Some(vec![from, at(2026, 5, 1, 11, 0, 0), to])
        );
        assert_eq!(fires_between(&cron, from, to, 2), None);
        assert_eq!(fires_between(&cron, to, from, 3), Some(Vec::new()));
    }

    #[test]
    fn thousands_groups_digits_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(31_535_000), "31,535,000");
    }
}
