//! `trainyard cancel`, `retry` and `backfill`: like `trainyard run`, each writes what it
//! asks for to the store, and the service acts on it (a running one within a poll, or the
//! next one to start). Input that does not fit (an unknown run or schedule, a run not
//! finished for retry, a range that ends before it starts) is refused with the argument
//! named, and nothing is written.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use trainyard::schedule::fires_between;
use trainyard::spec::check::resolve_params;
use trainyard::spec::cron::{CronSchedule, parse_timezone};
use trainyard::store::{FOLLOWED_CURSOR, NewRun, Refused, Store, Trigger};

use super::{EXIT_INVALID, StoreArgs, parse_time, print};

/// Most fire times a backfill's range may hold, recorded or not: a per-second cron over a
/// year is a mistake to refuse, not 31 million fire times to walk.
const MAX_FIRE_TIMES: usize = 100_000;

/// `trainyard cancel RUN`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The run's id (as `trainyard runs` lists it).
    run: i64,
    /// Where the service keeps its state.
    #[command(flatten)]
    store: StoreArgs,
}

/// `trainyard retry RUN`.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// The id of a failed or cancelled run.
    run: i64,
    /// Where the service keeps its state.
    #[command(flatten)]
    store: StoreArgs,
}

/// `trainyard backfill SCHEDULE --from T --to T`.
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The schedule, as declared on the followed branch.
    schedule: String,
    /// The first time of the range, included (RFC 3339, such as 2026-10-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    from: DateTime<Utc>,
    /// The last time of the range, included; not in the future.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    to: DateTime<Utc>,
    /// Most ticks to record, the oldest first.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    max: u32,
    /// List the fire times a backfill would record, and record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the service keeps its state.
    #[command(flatten)]
    store: StoreArgs,
}

/// What the service does with a request, for the messages.
const SERVICE: &str = "the service acts on it (trainyard serve, or serve --once)";

fn block_on(task: impl Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(task)
}

async fn connect(store: &StoreArgs) -> Result<Store> {
    let database = store.database()?;
    Store::connect(&database)
        .await
        .with_context(|| format!("cannot open the database {database}"))
}

/// Prints why a request was refused; the exit status for it.
fn refused(why: &Refused) -> ExitCode {
    eprintln!("trainyard: {why}");
    ExitCode::from(EXIT_INVALID)
}

/// Asks the service to cancel a run.
pub fn cancel(args: CancelArgs) -> Result<ExitCode> {
    block_on(async move {
        let store = connect(&args.store).await?;
        match store.cancel_run(args.run).await? {
            Ok(()) => {
                print(&format!(
                    "run {}: cancel requested; its running steps are stopped, its waiting ones \
                     skipped, and it ends cancelled: {SERVICE}\n",
                    args.run
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(why) => Ok(refused(&why)),
        }
    })
}

/// Starts a finished run's failed, skipped and cancelled steps again.
pub fn retry(args: RetryArgs) -> Result<ExitCode> {
    block_on(async move {
        let store = connect(&args.store).await?;
        match store.retry_run(args.run).await? {
            Ok(steps) => {
                print(&format!(
                    "run {}: retrying {}; they start again as new attempts, the other steps \
                     keep their outputs: {SERVICE}\n",
                    args.run,
                    steps.join(", ")
                ))?;
                Ok(ExitCode::SUCCESS)
            }
            Err(why) => Ok(refused(&why)),
        }
    })
}

/// Records (or with `--dry-run` lists) a schedule's unrecorded fire times in a range.
pub fn backfill(args: BackfillArgs) -> Result<ExitCode> {
    block_on(run_backfill(args))
}

async fn run_backfill(args: BackfillArgs) -> Result<ExitCode> {
    let now = Utc::now();
    if let Err(why) = check_range(args.from, args.to, now) {
        eprintln!("trainyard: {why}");
        return Ok(ExitCode::from(EXIT_INVALID));
    }
    let store = connect(&args.store).await?;
    let name = &args.schedule;
    let Some(row) = store
        .schedule(name)
        .await?
        .filter(|r| r.retired_at.is_none())
    else {
        return Ok(refused(&Refused::UnknownSchedule(name.clone())));
    };
    let spec = &row.definition.spec;
    let (tz, cron) = match parse_timezone(&spec.timezone)
        .map_err(|(why, _)| why)
        .and_then(|tz| CronSchedule::new(&spec.cron, tz).map(|cron| (tz, cron)))
    {
        Ok(found) => found,
        Err(why) => {
            eprintln!("trainyard: schedule {name} cannot fire: {why}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let Some(fires) = fires_between(&cron, args.from, args.to, MAX_FIRE_TIMES) else {
        eprintln!(
            "trainyard: --from {} to --to {} holds more than {MAX_FIRE_TIMES} fire times of \
             schedule {name}; backfill a shorter range",
            args.from.to_rfc3339(),
            args.to.to_rfc3339()
        );
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let recorded = store.tick_times_between(name, args.from, args.to).await?;
    let plan = Plan::of(&fires, |t| recorded.contains(t), args.max as usize);
    if args.dry_run {
        let mut out = String::new();
        for at in &plan.todo {
            out.push_str(&format!("{}\n", shown(*at, tz)));
        }
        out.push_str(&format!(
            "schedule {name}: {} to backfill{} (dry run: nothing recorded)\n",
            count(plan.todo.len(), "fire time"),
            plan.also(),
        ));
        print(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if plan.todo.is_empty() {
        print(&format!(
            "schedule {name}: nothing to backfill{}\n",
            plan.also()
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let pipeline_name = &spec.pipeline;
    let Some(pipeline) = store.current_pipeline(pipeline_name).await? else {
        eprintln!(
            "trainyard: pipeline {pipeline_name} of schedule {name} is not declared on the \
             followed branch"
        );
        return Ok(ExitCode::from(EXIT_INVALID));
    };
    let params = match resolve_params(&pipeline.definition, &spec.params) {
        Ok(params) => params,
        Err(problems) => {
            for problem in problems {
                eprintln!("trainyard: schedule {name}: {}", problem.message);
            }
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let head = store
        .cursor(FOLLOWED_CURSOR)
        .await?
        .context("no commit has been applied yet")?;
    let runs = plan
        .todo
        .iter()
        .map(|at| {
            NewRun::of(
                &pipeline.definition,
                &pipeline.version,
                &head,
                Trigger::Backfill,
                params.clone(),
            )
            .for_tick(name, *at)
        })
        .collect();
    let ticks = match store.record_backfill(name, runs).await? {
        Ok(ticks) => ticks,
        Err(why) => return Ok(refused(&why)),
    };
    let mut out = String::new();
    let mut fired = 0;
    for tick in &ticks {
        match (tick.new, tick.run_id) {
            (true, Some(run)) => {
                fired += 1;
                out.push_str(&format!("{}  run {run}\n", shown(tick.scheduled_at, tz)));
            }
            _ => out.push_str(&format!(
                "{}  recorded meanwhile; not fired again\n",
                shown(tick.scheduled_at, tz)
            )),
        }
    }
    out.push_str(&format!(
        "schedule {name}: {} backfilled{}; their runs start one after another within the \
         schedule's concurrency: {SERVICE}\n",
        count(fired, "tick"),
        plan.also(),
    ));
    print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Why a range cannot be backfilled, naming the argument.
fn check_range(from: DateTime<Utc>, to: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if from > to {
        return Err(format!(
            "--from {} is after --to {}",
            from.to_rfc3339(),
            to.to_rfc3339()
        ));
    }
    if to > now {
        return Err(format!(
            "--to {} is in the future: a backfill covers past fire times, live ticks fire the \
             others",
            to.to_rfc3339()
        ));
    }
    Ok(())
}

/// Which fire times of a range a backfill records.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    /// Not recorded yet, oldest first, at most `--max`.
    todo: Vec<DateTime<Utc>>,
    /// Recorded before (fired, skipped or missed).
    recorded: usize,
    /// Not recorded yet, beyond `--max`.
    beyond_max: usize,
}

impl Plan {
    fn of(fires: &[DateTime<Utc>], recorded: impl Fn(&DateTime<Utc>) -> bool, max: usize) -> Plan {
        let (done, open): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) =
            fires.iter().partition(|t| recorded(t));
        let beyond_max = open.len().saturating_sub(max);
        Plan {
            todo: open.into_iter().take(max).collect(),
            recorded: done.len(),
            beyond_max,
        }
    }

    /// What else the range holds, for the summary line.
    fn also(&self) -> String {
        let mut parts = Vec::new();
        if self.recorded > 0 {
            parts.push(format!("{} already recorded", count(self.recorded, "tick")));
        }
        if self.beyond_max > 0 {
            parts.push(format!(
                "{} beyond --max left for another backfill",
                count(self.beyond_max, "fire time")
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A fire time in UTC and in the schedule's time zone.
fn shown(at: DateTime<Utc>, tz: Tz) -> String {
    format!(
        "{}  {}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 10, 25, h, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn a_range_that_ends_before_it_starts_or_in_the_future_is_refused() {
        let why = check_range(at(2), at(1), at(5)).expect_err("reversed");
        assert!(
            why.starts_with("--from 2026-10-25T02:00:00+00:00 is after --to"),
            "{why}"
        );
        let why = check_range(at(1), at(6), at(5)).expect_err("future");
        assert!(
            why.starts_with("--to 2026-10-25T06:00:00+00:00 is in the future"),
            "{why}"
        );
        assert_eq!(check_range(at(1), at(1), at(5)), Ok(()));
    }

    #[test]
    fn a_plan_skips_recorded_times_and_keeps_the_oldest_up_to_max() {
        let fires = [at(1), at(2), at(3), at(4)];
        let plan = Plan::of(&fires, |t| *t == at(2), 2);
        assert_eq!(
            plan,
            Plan {
                todo: vec![at(1), at(3)],
                recorded: 1,
                beyond_max: 1
            }
        );
        assert_eq!(
            plan.also(),
            " (1 tick already recorded, 1 fire time beyond --max left for another backfill)"
        );
        let none = Plan::of(&fires, |_| true, 100);
        assert!(none.todo.is_empty());
        assert_eq!(none.also(), " (4 ticks already recorded)");
    }

    #[test]
    fn a_fire_time_is_shown_in_utc_and_in_the_schedules_zone() {
        let tz: Tz = "Europe/Berlin".parse().expect("zone");
        let first = Utc
            .with_ymd_and_hms(2026, 10, 25, 0, 30, 0)
            .single()
            .expect("valid");
        assert_eq!(
            shown(first, tz),
            "2026-10-25T00:30:00Z  2026-10-25 02:30:00 CEST"
        );
    }
}
