//! `trainyard schedules`: every declared schedule with its next fire time in its own zone,
//! its last tick and why, and whether it fires (active, suspended, paused, stalled and why).

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use trainyard::spec::cron::{CronSchedule, parse_timezone};
use trainyard::store::{ScheduleRow, Stalled, StoreError, TickRow};

use super::{
    MESSAGE_WIDTH, Table, ViewArgs, local_time, no_database, one_line, print, print_json,
    with_store,
};
use crate::cli::Format;

pub(super) async fn list_schedules(view: ViewArgs) -> Result<()> {
    let now = Utc::now();
    let listed = with_store(&view.store, async |store| {
        let mut views = Vec::new();
        for schedule in store.active_schedules().await? {
            let view = match schedule {
                Ok(schedule) => {
                    let last = store.last_tick(&schedule.name).await?;
                    ScheduleView::new(schedule, last, now)
                }
                Err(StoreError::Corrupt {
                    table,
                    row,
                    column,
                    reason,
                }) => {
                    let last = store.last_tick(&row).await?;
                    let stalled = store.stall_of(&row).await?;
                    ScheduleView::unreadable(row, table, column, &reason, stalled, last)
                }
                Err(error) => return Err(error.into()),
            };
            views.push(view);
        }
        Ok(views)
    })
    .await?;
    let Some(schedules) = listed else {
        return no_database(view.format);
    };
    match view.format {
        Format::Json => print_json(&schedules),
        Format::Text if schedules.is_empty() => print("no schedules\n"),
        Format::Text => print(&schedules_table(&schedules)),
    }
}

/// A schedule as the views show it: its stored row with the cron read from its definition
/// and the next fire time worked out.
#[derive(Debug, Serialize)]
struct ScheduleView {
    name: String,
    pipeline: String,
    cron: Option<String>,
    timezone: String,
    /// `None` while suspended or paused, or when the stored cron cannot be read.
    next_fire: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_fire_error: Option<String>,
    state: ScheduleState,
    paused_at: Option<DateTime<Utc>>,
    /// Why it cannot fire until a commit changes it, when it cannot.
    stalled: Option<String>,
    stalled_at: Option<DateTime<Utc>>,
    consecutive_failures: u32,
    commit: String,
    file: String,
    last_tick: Option<TickView>,
}

/// Whether a schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum ScheduleState {
    /// Its ticks fire.
    Active,
    /// `spec.suspend` is set.
    Suspended,
    /// Paused after too many failed runs in a row.
    Paused,
    /// It cannot fire until a commit changes it.
    Stalled,
}

#[derive(Debug, Serialize)]
struct TickView {
    scheduled_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    outcome: &'static str,
    reason: Option<String>,
    run_id: Option<i64>,
}

impl ScheduleView {
    fn new(row: ScheduleRow, last: Option<TickRow>, now: DateTime<Utc>) -> ScheduleView {
        let spec = &row.definition.spec;
        let cron = Some(spec.cron.clone());
        let timezone = spec.timezone.clone();
        let state = if row.stalled.is_some() {
            ScheduleState::Stalled
        } else if row.suspended {
            ScheduleState::Suspended
        } else if row.paused_at.is_some() {
            ScheduleState::Paused
        } else {
            ScheduleState::Active
        };
        let (next_fire, next_fire_error) = if state == ScheduleState::Active {
            match next_fire(cron.as_deref(), &timezone, now) {
                Ok(next) => (next, None),
                Err(error) => (None, Some(error)),
            }
        } else {
            (None, None)
        };
        ScheduleView {
            name: row.name,
            pipeline: row.pipeline,
            cron,
            timezone,
            next_fire,
            next_fire_error,
            state,
            paused_at: row.paused_at,
            stalled_at: row.stalled.as_ref().map(|s| s.at),
            stalled: row.stalled.map(|s| s.reason),
            consecutive_failures: row.consecutive_failures,
            commit: row.commit_sha,
            file: row.file,
            last_tick: last.map(TickView::from),
        }
    }

    /// A schedule whose stored row cannot be read: its name, and why it cannot fire.
    fn unreadable(
        name: String,
        table: &str,
        column: &str,
        reason: &str,
        stalled: Option<Stalled>,
        last: Option<TickRow>,
    ) -> ScheduleView {
        let why = stalled.as_ref().map_or_else(
            || format!("its stored {table} row cannot be read: column {column} {reason}"),
            |s| s.reason.clone(),
        );
        ScheduleView {
            name,
            pipeline: "-".to_owned(),
            cron: None,
            timezone: "-".to_owned(),
            next_fire: None,
            next_fire_error: None,
            state: ScheduleState::Stalled,
            paused_at: None,
            stalled_at: stalled.map(|s| s.at),
            stalled: Some(why),
            consecutive_failures: 0,
            commit: String::new(),
            file: String::new(),
            last_tick: last.map(TickView::from),
        }
    }
}

impl From<TickRow> for TickView {
    fn from(tick: TickRow) -> Self {
        TickView {
            scheduled_at: tick.scheduled_at,
            recorded_at: tick.recorded_at,
            outcome: tick.outcome.as_str(),
            reason: tick.reason,
            run_id: tick.run_id,
        }
    }
}

/// The first fire time after `now`; `None` when the cron never fires again.
fn next_fire(
    cron: Option<&str>,
    timezone: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    let cron = cron.ok_or("the stored definition has no spec.cron")?;
    let tz = parse_timezone(timezone).map_err(|(message, _)| message)?;
    let schedule = CronSchedule::new(cron, tz)?;
    Ok(schedule.next_after(now).map(|t| t.with_timezone(&Utc)))
}

fn schedules_table(schedules: &[ScheduleView]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "PIPELINE",
        "CRON",
        "TIMEZONE",
        "NEXT",
        "LAST TICK",
        "OUTCOME",
        "STATE",
    ]);
    for schedule in schedules {
        let next = match (&schedule.next_fire, &schedule.next_fire_error) {
            (Some(at), _) => local_time(*at),
            (None, Some(error)) => one_line(error, MESSAGE_WIDTH),
            (None, None) => "-".to_owned(),
        };
        let (last, outcome) = match &schedule.last_tick {
            Some(tick) => {
                let mut outcome = tick.outcome.to_owned();
                if let Some(reason) = &tick.reason {
                    outcome.push_str(": ");
                    outcome.push_str(&one_line(reason, MESSAGE_WIDTH));
                }
                if let Some(run) = tick.run_id {
                    outcome.push_str(&format!(" (run {run})"));
                }
                (local_time(tick.scheduled_at), outcome)
            }
            None => ("-".to_owned(), "-".to_owned()),
        };
        let state = match (schedule.state, schedule.paused_at) {
            (ScheduleState::Stalled, _) => format!(
                "stalled: {}",
                schedule.stalled.as_deref().unwrap_or("no reason recorded")
            ),
            (ScheduleState::Paused, Some(at)) => format!("paused since {}", local_time(at)),
            (ScheduleState::Paused, None) => "paused".to_owned(),
            (ScheduleState::Suspended, _) => "suspended".to_owned(),
            (ScheduleState::Active, _) => "active".to_owned(),
        };
        table.row(vec![
            schedule.name.clone(),
            schedule.pipeline.clone(),
            schedule.cron.clone().unwrap_or_else(|| "-".to_owned()),
            schedule.timezone.clone(),
            next,
            last,
            outcome,
            state,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_fire_is_read_in_the_schedules_zone() {
        let now = DateTime::from_timestamp(1_767_225_600, 0).expect("a valid time");
        // 2026-01-01T00:00:00Z: 02:00 in Berlin (winter time) is 01:00 UTC.
        assert_eq!(
            next_fire(Some("0 2 * * *"), "Europe/Berlin", now),
            Ok(DateTime::from_timestamp(1_767_229_200, 0))
        );
    }

    #[test]
    fn a_stored_cron_that_cannot_be_read_explains_why_it_has_no_next_fire() {
        let now = DateTime::from_timestamp(1_767_225_600, 0).expect("a valid time");
        let unknown_zone = next_fire(Some("0 2 * * *"), "Europe/Berln", now);
        assert!(unknown_zone.is_err_and(|e| e.contains("Europe/Berln")));
        let no_cron = next_fire(None, "UTC", now);
        assert!(no_cron.is_err_and(|e| e.contains("spec.cron")));
    }
}
