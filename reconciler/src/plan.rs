//! What a change would do: pipelines and schedules added, changed (field by field) and
//! removed, the next fire times of new or changed schedules, and the GPU-hours bound.
//! Rendered for terminals, for pull-request comments (Markdown) and for tools (JSON).
//! No I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::spec::catalog::DocumentKey;
use crate::spec::cron::{CronSchedule, parse_timezone};
use crate::spec::units::parse_duration;
use crate::spec::{Catalog, Diagnostic, Entry, Kind, Pipeline, SETTINGS_FILE, Schedule, Severity};

/// Timeout assumed for steps that set none, when `trainyard.yaml` sets no default either.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The month GPU-hours are counted over.
pub const MONTH: Duration = Duration::from_secs(30 * 86_400);
/// Fire times counted exactly before extrapolating.
const FIRES_COUNTED: usize = 10_000;
/// Fire times shown for each new or changed schedule.
const NEXT_FIRES: usize = 3;

/// What happens to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// New in the target revision.
    Added,
    /// Present in both, with different content.
    Changed,
    /// Gone from the target revision.
    Removed,
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    /// Path such as `steps.train.resources.gpu`.
    pub field: String,
    /// The old value (absent when the field is new).
    pub before: Option<String>,
    /// The new value (absent when the field is gone).
    pub after: Option<String>,
}

/// One document's change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Pipeline or schedule.
    pub kind: Kind,
    /// `metadata.name`.
    pub name: String,
    /// Added, changed or removed.
    pub action: Action,
    /// The file it is (or was) defined in.
    pub file: String,
    /// For changes: the fields that differ.
    pub fields: Vec<FieldChange>,
    /// For new or changed schedules: the next fire times, RFC 3339 in the schedule's zone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub next_fires: Vec<String>,
    /// For schedules: the GPU-hours bound per month, before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_hours: Option<(f64, f64)>,
    /// For new or changed pipelines: the cached steps that ask for GPUs. The bound counts
    /// them in full: whether the cache holds an attempt they can reuse is known only when
    /// they are due.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cached_gpu_steps: Vec<String>,
}

/// Said of cached GPU steps wherever the plan shows them.
const CACHED_COUNTED: &str =
    "counted in full in GPU-hours: a cache hit is known only when the step is due";

/// Upper bound of GPU-hours a month: Σ over schedules of fires × Σ step GPUs × timeout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GpuHours {
    /// In the source revision.
    pub before: f64,
    /// In the target revision.
    pub after: f64,
}

/// What a change would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Source revision (short id or name).
    pub from: String,
    /// Target revision.
    pub to: String,
    /// Changes, pipelines first, by name.
    pub changes: Vec<Change>,
    /// Monthly GPU-hours bound before and after.
    pub gpu_hours: GpuHours,
    /// Files whose documents keep their last good version because they have errors.
    pub failed_files: Vec<String>,
    /// Diagnostics of the target revision.
    pub diagnostics: Vec<Diagnostic>,
}

impl Plan {
    /// Whether the target revision has errors (the plan cannot be applied as is).
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    /// How many documents are added, changed and removed.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |a| self.changes.iter().filter(|c| c.action == a).count();
        (
            count(Action::Added),
            count(Action::Changed),
            count(Action::Removed),
        )
    }
}

/// Computes plans, remembering each schedule's GPU-hours so that repeated plans over large
/// catalogs only count the fires of schedules that changed.
#[derive(Default)]
pub struct Planner {
    /// By (schedule version, pipeline version, day, default timeout in seconds), with the
    /// number of the plan that last used it so that stale entries can be dropped.
    gpu_hours: HashMap<HoursKey, (f64, u64)>,
    plans: u64,
    /// GPU-hours per schedule of the catalog the last plan went to.
    last: Option<BTreeMap<Arc<str>, f64>>,
}

type HoursKey = (Arc<str>, Arc<str>, i64, u64);

impl Planner {
    /// Compares `old` and `new` in full. `now` anchors fire times and the month counted.
    pub fn plan(
        &mut self,
        from: &str,
        to: &str,
        old: &Catalog,
        new: &Catalog,
        diagnostics: Vec<Diagnostic>,
        now: DateTime<Utc>,
    ) -> Plan {
        self.plans += 1;
        let mut changes = Vec::new();
        diff_kind(
            &old.pipelines,
            &new.pipelines,
            new,
            Kind::Pipeline,
            &mut changes,
        );
        diff_kind(
            &old.schedules,
            &new.schedules,
            new,
            Kind::Schedule,
            &mut changes,
        );
        let before = self.schedule_hours(old, now);
        let after = if new.failed_files.is_empty() {
            self.schedule_hours(new, now)
        } else {
            self.schedule_hours(&new.with_last_good(old), now)
        };
        let previous = self.plans - 1;
        self.gpu_hours.retain(|_, (_, used)| *used >= previous);
        self.finish(
            from,
            to,
            old,
            new,
            changes,
            &before,
            after,
            diagnostics,
            now,
        )
    }

    /// Like [`Planner::plan`], but compares only `touched` (the documents an evaluation
    /// re-checked), so following a branch costs what a commit changes. `old` must be the
    /// catalog the previous plan of this planner went to, as it is when following a branch.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_touched(
        &mut self,
        from: &str,
        to: &str,
        old: &Catalog,
        new: &Catalog,
        touched: &BTreeSet<DocumentKey>,
        diagnostics: Vec<Diagnostic>,
        now: DateTime<Utc>,
    ) -> Plan {
        self.plans += 1;
        let before = match self.last.take() {
            Some(hours) => hours,
            None => self.schedule_hours(old, now),
        };
        let mut changes = Vec::new();
        let mut after = before.clone();
        for (kind, name) in touched {
            let change = match kind {
                Kind::Pipeline => diff_one(
                    name,
                    old.pipelines.get(name),
                    new.pipelines.get(name),
                    new,
                    Kind::Pipeline,
                ),
                Kind::Schedule => {
                    let kept = new.schedules.get(name).or_else(|| {
                        old.schedules
                            .get(name)
                            .filter(|e| new.failed_files.contains(e.file.as_ref()))
                    });
                    let pipelines = if new.schedules.contains_key(name) {
                        new
                    } else {
                        old
                    };
                    match kept.and_then(|entry| self.hours_of(pipelines, entry, now)) {
                        Some(hours) if hours > 0.0 => after.insert(name.clone(), hours),
                        _ => after.remove(name),
                    };
                    diff_one(
                        name,
                        old.schedules.get(name),
                        new.schedules.get(name),
                        new,
                        Kind::Schedule,
                    )
                }
            };
            changes.extend(change);
        }
        changes.sort_by_key(|c| (c.kind, c.action == Action::Removed, c.name.clone()));
        self.finish(
            from,
            to,
            old,
            new,
            changes,
            &before,
            after,
            diagnostics,
            now,
        )
    }

    /// Completes a plan from its changes and the GPU-hours of each side; remembers `after`
    /// for the next [`Planner::plan_touched`].
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        from: &str,
        to: &str,
        old: &Catalog,
        new: &Catalog,
        mut changes: Vec<Change>,
        before: &BTreeMap<Arc<str>, f64>,
        after: BTreeMap<Arc<str>, f64>,
        mut diagnostics: Vec<Diagnostic>,
        now: DateTime<Utc>,
    ) -> Plan {
        let removed_schedules = changes
            .iter()
            .filter(|c| c.kind == Kind::Schedule && c.action == Action::Removed)
            .count();
        if removed_schedules > 0
            && removed_schedules == old.schedules.len()
            && new.schedules.is_empty()
            && !new.settings.allow_empty
        {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: SETTINGS_FILE.to_owned(),
                line: 0,
                column: 0,
                code: "removes-every-schedule".to_owned(),
                message: format!(
                    "this change removes every schedule ({removed_schedules}); a service refuses it"
                ),
                hint: Some(
                    "set `allow_empty: true` in trainyard.yaml if that is intended".to_owned(),
                ),
                source_line: None,
                width: 0,
            });
        }
        for change in changes
            .iter_mut()
            .filter(|c| c.kind == Kind::Pipeline && c.action != Action::Removed)
        {
            if let Some(entry) = new.pipelines.get(change.name.as_str()) {
                let spec = &entry.value.spec;
                change.cached_gpu_steps = spec
                    .steps
                    .iter()
                    .filter(|s| s.resources.as_ref().is_some_and(|r| r.gpu > 0))
                    .filter(|s| spec.cache_of(s).is_some())
                    .map(|s| s.name.clone())
                    .collect();
            }
        }
        for change in changes.iter_mut().filter(|c| c.kind == Kind::Schedule) {
            let b = before.get(change.name.as_str()).copied().unwrap_or(0.0);
            let a = after.get(change.name.as_str()).copied().unwrap_or(0.0);
            if a > 0.0 || b > 0.0 {
                change.gpu_hours = Some((b, a));
            }
            if change.action != Action::Removed
                && let Some(entry) = new.schedules.get(change.name.as_str())
            {
                change.next_fires = next_fires(&entry.value, now);
            }
        }
        let gpu_hours = GpuHours {
            before: before.values().fold(0.0, |a, b| a + b),
            after: after.values().fold(0.0, |a, b| a + b),
        };
        self.last = Some(after);
        Plan {
            from: from.to_owned(),
            to: to.to_owned(),
            changes,
            gpu_hours,
            failed_files: new.failed_files.iter().cloned().collect(),
            diagnostics,
        }
    }

    /// The GPU-hours bound of one schedule of `catalog`, remembered by version.
    fn hours_of(
        &mut self,
        catalog: &Catalog,
        entry: &Entry<Schedule>,
        now: DateTime<Utc>,
    ) -> Option<f64> {
        if entry.value.spec.suspend {
            return Some(0.0);
        }
        let pipeline = catalog.pipelines.get(entry.value.spec.pipeline.as_str())?;
        let default_timeout = catalog
            .settings
            .default_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .unwrap_or(DEFAULT_STEP_TIMEOUT);
        let day = now.timestamp().div_euclid(86_400);
        let key = (
            entry.version.clone(),
            pipeline.version.clone(),
            day,
            default_timeout.as_secs(),
        );
        let plans = self.plans;
        let (value, used) = self.gpu_hours.entry(key).or_insert_with(|| {
            let per_run = gpu_hours_per_run(&pipeline.value, default_timeout);
            let value = if per_run == 0.0 {
                0.0
            } else {
                fires_per_month(&entry.value, now) * per_run
            };
            (value, plans)
        });
        *used = plans;
        Some(*value)
    }

    /// GPU-hours bound per schedule name.
    fn schedule_hours(&mut self, catalog: &Catalog, now: DateTime<Utc>) -> BTreeMap<Arc<str>, f64> {
        let mut hours = BTreeMap::new();
        for (name, entry) in &catalog.schedules {
            if let Some(value) = self.hours_of(catalog, entry, now).filter(|v| *v > 0.0) {
                hours.insert(name.clone(), value);
            }
        }
        hours
    }
}

/// Σ over steps, finally steps too, of instances × GPUs × timeout, in hours.
fn gpu_hours_per_run(pipeline: &Pipeline, default_timeout: Duration) -> f64 {
    pipeline
        .spec
        .all_steps()
        .map(|step| {
            let gpus = step.resources.as_ref().map_or(0, |r| r.gpu);
            let instances = u32::try_from(step.instances()).unwrap_or(u32::MAX);
            let gpus = f64::from(gpus) * f64::from(instances);
            let timeout = step
                .timeout
                .as_deref()
                .and_then(|t| parse_duration(t).ok())
                .unwrap_or(default_timeout);
            gpus * timeout.as_secs_f64() / 3600.0
        })
        .sum()
}

fn cron_of(schedule: &Schedule) -> Option<CronSchedule> {
    let tz = parse_timezone(&schedule.spec.timezone).ok()?;
    CronSchedule::new(&schedule.spec.cron, tz).ok()
}

fn fires_per_month(schedule: &Schedule, now: DateTime<Utc>) -> f64 {
    cron_of(schedule).map_or(0.0, |c| c.fires_within(now, MONTH, FIRES_COUNTED))
}

fn next_fires(schedule: &Schedule, now: DateTime<Utc>) -> Vec<String> {
    cron_of(schedule).map_or_else(Vec::new, |c| {
        c.upcoming(now, NEXT_FIRES)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    })
}

/// The change of one document between two catalogs, if any.
fn diff_one<T: Serialize>(
    name: &str,
    before: Option<&Entry<T>>,
    after: Option<&Entry<T>>,
    new_catalog: &Catalog,
    kind: Kind,
) -> Option<Change> {
    let change = |action, file: &str, fields| Change {
        kind,
        name: name.to_owned(),
        action,
        file: file.to_owned(),
        fields,
        next_fires: Vec::new(),
        cached_gpu_steps: Vec::new(),
        gpu_hours: None,
    };
    let to_json = |e: &Entry<T>| serde_json::to_value(e.value.as_ref()).unwrap_or(Value::Null);
    match (before, after) {
        (None, Some(entry)) => Some(change(Action::Added, &entry.file, Vec::new())),
        (Some(entry), None) if !new_catalog.failed_files.contains(entry.file.as_ref()) => {
            Some(change(Action::Removed, &entry.file, Vec::new()))
        }
        (Some(b), Some(a)) if b.version != a.version => {
            let mut fields = Vec::new();
            diff_values("", &to_json(b), &to_json(a), &mut fields);
            Some(change(Action::Changed, &a.file, fields))
        }
        _ => None,
    }
}

/// Walks both sorted maps together, so unchanged documents cost one comparison each.
/// Removals come after the other changes of their kind.
fn diff_kind<T: Serialize>(
    old: &BTreeMap<Arc<str>, Entry<T>>,
    new: &BTreeMap<Arc<str>, Entry<T>>,
    new_catalog: &Catalog,
    kind: Kind,
    out: &mut Vec<Change>,
) {
    let mut removed = Vec::new();
    let (mut olds, mut news) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let (before, after) = match (olds.peek(), news.peek()) {
            (None, None) => break,
            (Some((a, _)), Some((b, _))) if a == b => (olds.next(), news.next()),
            (Some((a, _)), Some((b, _))) if a > b => (None, news.next()),
            (Some(_), _) => (olds.next(), None),
            (None, Some(_)) => (None, news.next()),
        };
        let Some(name) = before.or(after).map(|(name, _)| name) else {
            break;
        };
        match diff_one(
            name,
            before.map(|(_, e)| e),
            after.map(|(_, e)| e),
            new_catalog,
            kind,
        ) {
            Some(change) if change.action == Action::Removed => removed.push(change),
            Some(change) => out.push(change),
            None => {}
        }
    }
    out.append(&mut removed);
}

/// Leaf-by-leaf differences; sequences of objects with a `name` are matched by name so that
/// reordering or inserting a step reads as what it is.
fn diff_values(path: &str, before: &Value, after: &Value, out: &mut Vec<FieldChange>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, va) in a {
                match b.get(key) {
                    Some(vb) => diff_values(&join(key), va, vb, out),
                    None => out.push(FieldChange {
                        field: join(key),
                        before: Some(show(va)),
                        after: None,
                    }),
                }
            }
            for (key, vb) in b {
                if !a.contains_key(key) {
                    out.push(FieldChange {
                        field: join(key),
                        before: None,
                        after: Some(show(vb)),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if is_named_list(a) && is_named_list(b) => {
            let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_owned();
            let b_by_name: BTreeMap<String, &Value> = b.iter().map(|v| (name(v), v)).collect();
            let a_names: Vec<String> = a.iter().map(name).collect();
            for va in a {
                match b_by_name.get(&name(va)) {
                    Some(vb) => diff_values(&join(&name(va)), va, vb, out),
                    None => out.push(FieldChange {
                        field: join(&name(va)),
                        before: Some("step".into()),
                        after: None,
                    }),
                }
            }
            for vb in b {
                if !a_names.contains(&name(vb)) {
                    out.push(FieldChange {
                        field: join(&name(vb)),
                        before: None,
                        after: Some("step".into()),
                    });
                }
            }
        }
        (a, b) if a != b => out.push(FieldChange {
            field: path.to_owned(),
            before: Some(show(a)),
            after: Some(show(b)),
        }),
        _ => {}
    }
}

fn is_named_list(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(|v| v["name"].is_string())
}

/// A value as users wrote it: strings bare, the rest as compact JSON, cut at 80 characters.
fn show(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(79).collect::<String>())
    } else {
        text
    }
}

fn describe(field: &FieldChange) -> String {
    match (&field.before, &field.after) {
        (None, Some(a)) if a == "step" => format!("{} added", field.field),
        (Some(b), None) if b == "step" => format!("{} removed", field.field),
        (Some(b), Some(a)) => format!("{}: {b} → {a}", field.field),
        (None, Some(a)) => format!("{}: set to {a}", field.field),
        (Some(b), None) => format!("{}: {b} removed", field.field),
        (None, None) => field.field.clone(),
    }
}

fn hours(h: f64) -> String {
    format!("{:.0}", h)
}

fn delta(g: &GpuHours) -> String {
    let d = g.after - g.before;
    if d.abs() < 0.5 {
        "no change".to_owned()
    } else {
        format!("{:+.0}", d)
    }
}

/// Renders the plan for a terminal.
pub fn render_text(plan: &Plan) -> String {
    let mut out = format!("Plan {} → {}\n", plan.from, plan.to);
    if plan.changes.is_empty() {
        out.push_str("\n  No changes.\n");
    }
    for change in &plan.changes {
        let sign = match change.action {
            Action::Added => '+',
            Action::Changed => '~',
            Action::Removed => '-',
        };
        let _ = writeln!(
            out,
            "\n  {sign} {} {} ({})",
            change.kind, change.name, change.file
        );
        for field in &change.fields {
            let _ = writeln!(out, "      {}", describe(field));
        }
        if !change.next_fires.is_empty() {
            let _ = writeln!(out, "      next: {}", change.next_fires.join(", "));
        }
        if let Some((b, a)) = change.gpu_hours {
            let _ = writeln!(out, "      GPU-hours/month ≤ {} → {}", hours(b), hours(a));
        }
        if !change.cached_gpu_steps.is_empty() {
            let steps = change.cached_gpu_steps.join(", ");
            let _ = writeln!(out, "      cached GPU steps {steps}: {CACHED_COUNTED}");
        }
    }
    for file in &plan.failed_files {
        let _ = writeln!(
            out,
            "\n  ! {file} has errors: its documents keep their last good version"
        );
    }
    let (added, changed, removed) = plan.counts();
    let g = &plan.gpu_hours;
    let _ = writeln!(
        out,
        "\nGPU-hours per month, upper bound: {} → {} ({})",
        hours(g.before),
        hours(g.after),
        delta(g)
    );
    let _ = writeln!(
        out,
        "{added} to add, {changed} to change, {removed} to remove."
    );
    if !plan.diagnostics.is_empty() {
        out.push('\n');
        for d in &plan.diagnostics {
            out.push_str(&d.render());
        }
    }
    out
}

/// Escapes text for a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// Renders the plan as a pull-request comment.
pub fn render_markdown(plan: &Plan) -> String {
    let (added, changed, removed) = plan.counts();
    let g = &plan.gpu_hours;
    let status = if plan.has_errors() {
        "❌ invalid"
    } else {
        "✅ valid"
    };
    let mut out = format!("### Trainyard plan `{}` → `{}`\n\n", plan.from, plan.to);
    let _ = writeln!(
        out,
        "{status} · **{added} to add, {changed} to change, {removed} to remove** · GPU-hours/month (upper bound): {} → {} ({})\n",
        hours(g.before),
        hours(g.after),
        delta(g)
    );
    if !plan.changes.is_empty() {
        out.push_str("| | Kind | Name | Changes |\n|---|---|---|---|\n");
        for change in &plan.changes {
            let sign = match change.action {
                Action::Added => "➕",
                Action::Changed => "✏️",
                Action::Removed => "➖",
            };
            let mut details: Vec<String> = match change.action {
                Action::Added => vec![format!("added in `{}`", change.file)],
                Action::Removed => vec![format!("removed from `{}`", change.file)],
                Action::Changed => change
                    .fields
                    .iter()
                    .map(|f| format!("`{}`", describe(f)))
                    .collect(),
            };
            if !change.next_fires.is_empty() {
                details.push(format!("next: {}", change.next_fires.join(", ")));
            }
            if let Some((b, a)) = change.gpu_hours {
                details.push(format!("GPU-hours/month ≤ {} → {}", hours(b), hours(a)));
            }
            if !change.cached_gpu_steps.is_empty() {
                let steps = change.cached_gpu_steps.join(", ");
                details.push(format!("cached GPU steps {steps}: {CACHED_COUNTED}"));
            }
            let _ = writeln!(
                out,
                "| {sign} | {} | `{}` | {} |",
                change.kind,
                cell(&change.name),
                cell(&details.join("<br>"))
            );
        }
        out.push('\n');
    }
    for file in &plan.failed_files {
        let _ = writeln!(
            out,
            "> **{}** has errors: its documents keep their last good version.\n",
            cell(file)
        );
    }
    if !plan.diagnostics.is_empty() {
        out.push_str("#### Diagnostics\n\n");
        for d in &plan.diagnostics {
            let icon = if d.severity == Severity::Error {
                "❌"
            } else {
                "⚠️"
            };
            let place = if d.line == 0 {
                d.file.clone()
            } else {
                format!("{}:{}:{}", d.file, d.line, d.column)
            };
            let hint = d
                .hint
                .as_ref()
                .map(|h| format!(" — {h}"))
                .unwrap_or_default();
            let _ = writeln!(out, "- {icon} `{place}` {}{hint}", cell(&d.message));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Settings, parse_file};

    fn catalog(yaml: &str) -> Catalog {
        let parsed = Arc::new(parse_file(yaml.as_bytes()));
        assert!(!parsed.has_errors(), "{:?}", parsed.findings);
        let (catalog, cross) =
            Catalog::assemble(Settings::default(), &[(Arc::from("p.yaml"), parsed)]);
        assert!(cross.is_empty(), "{cross:?}");
        catalog
    }

    const PIPELINE: &str = "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: churn, owner: t}\nspec:\n  image: img\n  steps:\n    - {name: prep, run: [x]}\n    - {name: train, needs: [prep], run: [y], resources: {gpu: 2}, timeout: 2h}\n";
    const SCHEDULE: &str = "---\napiVersion: trainyard.dev/v1\nkind: Schedule\nmetadata: {name: nightly}\nspec: {pipeline: churn, cron: '0 2 * * *', timezone: Europe/Berlin}\n";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    #[test]
    fn changes_are_field_by_field_with_steps_matched_by_name() {
        let old = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let new_pipeline = PIPELINE
            .replace("resources: {gpu: 2}", "resources: {gpu: 4}")
            .replace(
                "    - {name: prep, run: [x]}\n",
                "    - {name: prep, run: [x]}\n    - {name: check, run: [z]}\n",
            );
        let new = catalog(&format!(
            "{new_pipeline}{}",
            SCHEDULE.replace("0 2 * * *", "0 3 * * *")
        ));
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        let described: Vec<(String, Vec<String>)> = plan
            .changes
            .iter()
            .map(|c| (c.name.clone(), c.fields.iter().map(describe).collect()))
            .collect();
        assert_eq!(
            described,
            [
                (
                    "churn".to_owned(),
                    vec![
                        "spec.steps.train.resources.gpu: 2 → 4".to_owned(),
                        "spec.steps.check added".to_owned()
                    ]
                ),
                (
                    "nightly".to_owned(),
                    vec!["spec.cron: 0 2 * * * → 0 3 * * *".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn new_schedules_show_their_next_fire_times_in_their_zone() {
        let old = catalog(PIPELINE);
        let new = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        let schedule = plan
            .changes
            .iter()
            .find(|c| c.kind == Kind::Schedule)
            .expect("added");
        assert_eq!(schedule.action, Action::Added);
        assert_eq!(
            schedule.next_fires,
            [
                "2026-11-27T02:00:00+01:00",
                "2026-11-28T02:00:00+01:00",
                "2026-11-29T02:00:00+01:00"
            ]
        );
    }

    #[test]
    fn gpu_hours_bound_counts_fires_gpus_and_timeouts() {
        let old = catalog(PIPELINE);
        let new = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        // 30 daily fires × (2 GPUs × 2 h for train + 0 for prep).
        assert_eq!(
            plan.gpu_hours,
            GpuHours {
                before: 0.0,
                after: 120.0
            }
        );
        // A step without timeout counts the default of 24 h.
        let untimed = catalog(&format!(
            "{}{SCHEDULE}",
            PIPELINE.replace(", timeout: 2h", "")
        ));
        let plan = Planner::default().plan("a", "b", &old, &untimed, Vec::new(), now());
        assert_eq!(plan.gpu_hours.after, 30.0 * 2.0 * 24.0);
    }

    #[test]
    fn finally_steps_are_shown_and_their_gpus_counted() {
        let old = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let with_finally = format!(
            "{PIPELINE}  finally:\n    - {{name: eval, run: [z], resources: {{gpu: 1}}, timeout: 1h}}\n{SCHEDULE}"
        );
        let new = catalog(&with_finally);
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        // 30 daily fires × (2 GPUs × 2 h for train + 1 GPU × 1 h for eval).
        assert_eq!(plan.gpu_hours.after, 150.0);
        // The first finally step sets the list; later ones are matched by name.
        let fields: Vec<String> = plan.changes[0].fields.iter().map(describe).collect();
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert!(
            fields[0].starts_with("spec.finally: set to [") && fields[0].contains("\"eval\""),
            "{fields:?}"
        );
        let more =
            with_finally.replace("  finally:\n", "  finally:\n    - {name: tidy, run: [t]}\n");
        let plan = Planner::default().plan("a", "b", &new, &catalog(&more), Vec::new(), now());
        let fields: Vec<String> = plan.changes[0].fields.iter().map(describe).collect();
        assert_eq!(fields, ["spec.finally.tidy added"]);
    }

    #[test]
    fn cached_gpu_steps_are_named_and_still_counted_in_full() {
        let old = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let cached = PIPELINE
            .replace("  steps:\n", "  cache: true\n  steps:\n")
            .replace(
                "{name: prep, run: [x]}",
                "{name: prep, run: [x], cache: false}",
            );
        let new = catalog(&format!("{cached}{SCHEDULE}"));
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        assert_eq!(plan.gpu_hours.after, 120.0, "a hit is never certain ahead");
        let pipeline = plan
            .changes
            .iter()
            .find(|c| c.kind == Kind::Pipeline)
            .expect("changed");
        assert_eq!(pipeline.cached_gpu_steps, ["train"]);
        let text = render_text(&plan);
        assert!(
            text.contains("cached GPU steps train: counted in full"),
            "{text}"
        );
        assert!(render_markdown(&plan).contains("cached GPU steps train"));
        // Back to no cache: nothing to say.
        let plan = Planner::default().plan("a", "b", &new, &old, Vec::new(), now());
        assert!(plan.changes.iter().all(|c| c.cached_gpu_steps.is_empty()));
    }

    #[test]
    fn a_matrix_step_counts_its_gpus_once_per_instance() {
        let old = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let sweep = PIPELINE.replace(
            "resources: {gpu: 2}",
            "resources: {gpu: 2}, matrix: {lr: [0.1, 0.01], seed: [1, 2, 3]}",
        );
        let new = catalog(&format!("{sweep}{SCHEDULE}"));
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        // 30 daily fires × 6 instances × 2 GPUs × 2 h.
        assert_eq!(plan.gpu_hours.after, 720.0);
    }

    #[test]
    fn removals_are_listed_unless_the_file_only_failed() {
        let old = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let mut new = catalog(PIPELINE);
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        assert_eq!(plan.counts(), (0, 0, 1));
        new.failed_files.insert("p.yaml".to_owned());
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        assert_eq!(plan.counts(), (0, 0, 0));
        assert!(!plan.has_errors());
    }

    #[test]
    fn removing_every_schedule_is_an_error_unless_allowed() {
        let old = catalog(&format!("{PIPELINE}{SCHEDULE}"));
        let mut new = catalog(PIPELINE);
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        assert!(plan.has_errors());
        assert_eq!(plan.diagnostics[0].code, "removes-every-schedule");
        new.settings.allow_empty = true;
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        assert!(!plan.has_errors());
    }

    #[test]
    fn planning_touched_documents_agrees_with_planning_everything() {
        use crate::spec::catalog::Assembly;
        let file = |yaml: &str| Some(Arc::new(parse_file(yaml.as_bytes())));
        let gpu = |n: u32| PIPELINE.replace("gpu: 2", &format!("gpu: {n}"));
        let other = "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: other, owner: t}\nspec: {image: i, steps: [{name: s, run: [x]}]}\n";
        let commits: Vec<Vec<(&str, Option<String>)>> = vec![
            vec![
                ("p.yaml", Some(gpu(2))),
                ("s.yaml", Some(SCHEDULE.to_owned())),
                ("o.yaml", Some(other.to_owned())),
            ],
            vec![("p.yaml", Some(gpu(4)))],
            vec![("s.yaml", Some(SCHEDULE.replace("0 2 * * *", "0 */6 * * *")))],
            vec![("o.yaml", None)],
            vec![("s.yaml", None)],
            vec![
                ("s.yaml", Some(SCHEDULE.to_owned())),
                ("p.yaml", Some(gpu(1))),
            ],
        ];
        let mut assembly = Assembly::new(Settings::default());
        let (mut incremental, mut full) = (Planner::default(), Planner::default());
        let mut old = Catalog::default();
        for commit in commits {
            let changes = commit
                .iter()
                .map(|(p, y)| (Arc::from(*p), y.as_deref().and_then(file)))
                .collect();
            let touched = assembly.update(changes);
            let new = assembly.catalog().clone();
            let a = incremental.plan_touched("a", "b", &old, &new, &touched, Vec::new(), now());
            let b = full.plan("a", "b", &old, &new, Vec::new(), now());
            assert_eq!(a.changes, b.changes);
            assert_eq!(a.gpu_hours, b.gpu_hours);
            old = new;
        }
    }

    #[test]
    fn markdown_is_a_table_that_escapes_pipes() {
        let old = catalog(PIPELINE);
        let new = catalog(&format!(
            "{}{SCHEDULE}",
            PIPELINE.replace("run: [y]", "run: ['a|b']")
        ));
        let plan = Planner::default().plan("a", "b", &old, &new, Vec::new(), now());
        let md = render_markdown(&plan);
        assert!(
            md.contains(
                "| ✏️ | Pipeline | `churn` | `spec.steps.train.run: [\"y\"] → [\"a\\|b\"]` |"
            ),
            "{md}"
        );
        assert!(
            md.contains("**1 to add, 1 to change, 0 to remove**"),
            "{md}"
        );
        assert!(
            md.contains("GPU-hours/month (upper bound): 0 → 120 (+120)"),
            "{md}"
        );
    }
}
