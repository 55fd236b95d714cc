//! Model gates: whether the metrics of a successful run let its model version be accepted
//! (and its alias moved). Pure evaluation; the runtime records versions and aliases.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::spec::model::{Gate, ModelSpec};

/// Longest summary [`describe`] returns; GitHub cuts commit status descriptions there.
const SUMMARY_CHARS: usize = 140;

/// Errors reading a metrics file.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RegistryError {
    /// The file is not JSON.
    #[error("metrics are not JSON: {reason}")]
    NotJson {
        /// What the parser said, with a hint for the usual mistakes.
        reason: String,
    },
    /// The file is JSON, but not an object.
    #[error("metrics must be a JSON object of numbers, not {found}")]
    NotAnObject {
        /// The kind of JSON value found.
        found: &'static str,
    },
    /// A key of the object holds something other than a number.
    #[error("metric `{metric}` must be a number, not {found}")]
    NotANumber {
        /// The key.
        metric: String,
        /// The kind of JSON value found.
        found: &'static str,
    },
}

/// The bound a check tests, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The value must be at least this.
    Min(f64),
    /// The value must be at most this.
    Max(f64),
    /// The value must not be worse than the version behind `alias`.
    NotWorseThan {
        /// The alias.
        alias: String,
        /// The value of the version behind it, when there is a usable one.
        baseline: Option<f64>,
    },
    /// The gate sets no bound (validation refuses such gates).
    Unbounded,
}

/// The outcome of one bound of one gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateCheck {
    /// The metric the gate reads.
    pub metric: String,
    /// The bound as people read it: `min 0.85`, `not worse than champion (0.91)`.
    pub bound: String,
    /// The same bound as data.
    pub limit: Limit,
    /// The metric's value in this run, when there is a usable one.
    pub value: Option<f64>,
    /// Whether the bound holds.
    pub passed: bool,
    /// Why it passed or failed.
    pub detail: String,
}

/// The outcome of every gate of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// Whether every check passed (a model without gates passes).
    pub passed: bool,
    /// One check per bound, in the order of the gates.
    pub checks: Vec<GateCheck>,
}

/// Reads a metrics file: a JSON object whose values are all numbers.
pub fn parse_metrics(bytes: &[u8]) -> Result<BTreeMap<String, f64>, RegistryError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(bytes);
        // Python's json module writes these by default, and nothing else accepts them.
        let hint = if ["NaN", "Infinity"].iter().any(|w| text.contains(w)) {
            "; NaN and Infinity are not JSON numbers (write finite values, or leave the \
             metric out)"
        } else {
            ""
        };
        RegistryError::NotJson {
            reason: format!("{e}{hint}"),
        }
    })?;
    metrics_of(&value)
}

fn metrics_of(value: &Value) -> Result<BTreeMap<String, f64>, RegistryError> {
    let object = value.as_object().ok_or(RegistryError::NotAnObject {
        found: kind_of(value),
    })?;
    object
        .iter()
        .map(|(metric, v)| match v.as_f64() {
            Some(number) => Ok((metric.clone(), number)),
            None => Err(RegistryError::NotANumber {
                metric: metric.clone(),
                found: kind_of(v),
            }),
        })
        .collect()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The metrics of the version behind each alias a `not_worse_than` gate names.
pub type Baselines = BTreeMap<String, BTreeMap<String, f64>>;

/// Evaluates a model's gates on the metrics of a run.
///
/// `baselines` maps each alias named by a `not_worse_than` gate to the metrics of the version
/// behind it; an alias missing from it has no version yet, and its gates pass.
pub fn evaluate_gates(model: &ModelSpec, metrics: &Value, baselines: &Baselines) -> GateReport {
    evaluate(model, metrics_of(metrics), baselines)
}

/// Evaluates a model's gates on a metrics file as the run wrote it; a file that is not a JSON
/// object of numbers fails every gate, saying why.
pub fn evaluate_metrics_file(model: &ModelSpec, bytes: &[u8], baselines: &Baselines) -> GateReport {
    evaluate(model, parse_metrics(bytes), baselines)
}

fn evaluate(
    model: &ModelSpec,
    metrics: Result<BTreeMap<String, f64>, RegistryError>,
    baselines: &Baselines,
) -> GateReport {
    let checks: Vec<GateCheck> = model
        .gate
        .iter()
        .flat_map(|gate| check_gate(gate, &metrics, baselines))
        .collect();
    GateReport {
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}

/// One bound a gate sets; validation allows exactly one per gate.
enum Bound<'a> {
    Min(f64),
    Max(f64),
    NotWorseThan(&'a str, Baseline),
}

/// What the version behind an alias offers to compare with.
enum Baseline {
    /// No version behind the alias yet.
    Absent,
    /// A version is there, but without a usable value of the metric.
    Unusable,
    Value(f64),
}

fn baseline_of(alias: &str, metric: &str, baselines: &Baselines) -> Baseline {
    let Some(metrics) = baselines.get(alias) else {
        return Baseline::Absent;
    };
    match metrics.get(metric).copied() {
        Some(b) if b.is_finite() => Baseline::Value(b),
        _ => Baseline::Unusable,
    }
}

fn check_gate(
    gate: &Gate,
    metrics: &Result<BTreeMap<String, f64>, RegistryError>,
    baselines: &Baselines,
) -> Vec<GateCheck> {
    let bounds: Vec<Bound> =
        gate.min
            .map(Bound::Min)
            .into_iter()
            .chain(gate.max.map(Bound::Max))
            .chain(gate.not_worse_than.as_deref().map(|alias| {
                Bound::NotWorseThan(alias, baseline_of(alias, &gate.metric, baselines))
            }))
            .collect();
    if bounds.is_empty() {
        // Validation refuses such a gate; a gate that bounds nothing must not let a model by.
        return vec![GateCheck {
            metric: gate.metric.clone(),
            bound: "no bound".to_owned(),
            limit: Limit::Unbounded,
            value: None,
            passed: false,
            detail: format!("the gate on `{}` sets no bound", gate.metric),
        }];
    }
    let value = match metrics {
        Err(problem) => Err(problem.to_string()),
        Ok(map) => match map.get(&gate.metric) {
            None => Err(format!("metric `{}` not in metrics", gate.metric)),
            Some(v) if !v.is_finite() => Err(format!("metric `{}` is {v}", gate.metric)),
            Some(v) => Ok(*v),
        },
    };
    bounds
        .into_iter()
        .map(|bound| check_bound(gate, bound, &value))
        .collect()
}

fn check_bound(gate: &Gate, bound: Bound, value: &Result<f64, String>) -> GateCheck {
    let metric = gate.metric.clone();
    let bound_text = match &bound {
        Bound::Min(min) => format!("min {min}"),
        Bound::Max(max) => format!("max {max}"),
        Bound::NotWorseThan(alias, Baseline::Value(b)) if gate.greater_is_better => {
            format!("not worse than {alias} ({b})")
        }
        Bound::NotWorseThan(alias, Baseline::Value(b)) => {
            format!("not worse than {alias} ({b}, lower is better)")
        }
        Bound::NotWorseThan(alias, _) => format!("not worse than {alias}"),
    };
    let limit = match &bound {
        Bound::Min(min) => Limit::Min(*min),
        Bound::Max(max) => Limit::Max(*max),
        Bound::NotWorseThan(alias, baseline) => Limit::NotWorseThan {
            alias: (*alias).to_owned(),
            baseline: match baseline {
                Baseline::Value(b) => Some(*b),
                Baseline::Absent | Baseline::Unusable => None,
            },
        },
    };
    let value = match value {
        Ok(v) => *v,
        Err(detail) => {
            return GateCheck {
                metric,
                bound: bound_text,
                limit,
                value: None,
                passed: false,
                detail: detail.clone(),
            };
        }
    };
    let (passed, detail) = match bound {
        Bound::Min(min) => {
            let passed = value >= min;
            (
                passed,
                format!("{value} {} {min}", if passed { "≥" } else { "<" }),
            )
        }
        Bound::Max(max) => {
            let passed = value <= max;
            (
                passed,
                format!("{value} {} {max}", if passed { "≤" } else { ">" }),
            )
        }
        Bound::NotWorseThan(alias, Baseline::Value(b)) => {
            let passed = if gate.greater_is_better {
                value >= b
            } else {
                value <= b
            };
            let verdict = if passed {
                "not worse than"
            } else {
                "worse than"
            };
            (passed, format!("{value} is {verdict} {alias}'s {b}"))
        }
        // A first model has nothing to compare with, and a baseline without this metric
        // (one added to the metrics file later) must not block every future version.
        Bound::NotWorseThan(alias, Baseline::Absent) => (true, format!("no {alias} yet")),
        Bound::NotWorseThan(alias, Baseline::Unusable) => (
            true,
            format!("{alias} has no `{}` to compare with", gate.metric),
        ),
    };
    GateCheck {
        metric,
        bound: bound_text,
        limit,
        value: Some(value),
        passed,
        detail,
    }
}

/// A one-line summary within 140 characters for commit statuses, such as
/// `accuracy 0.93 ≥ 0.85 ✓, not worse than champion ✓`.
///
/// When every check does not fit, the failed ones are listed first.
pub fn describe(report: &GateReport) -> String {
    if report.checks.is_empty() {
        return "no gates".to_owned();
    }
    let mut previous_metric: Option<&str> = None;
    let parts: Vec<String> = report
        .checks
        .iter()
        .map(|check| {
            let name = (previous_metric != Some(check.metric.as_str())).then_some(&check.metric);
            previous_metric = Some(&check.metric);
            summarize(check, name.map(String::as_str))
        })
        .collect();
    let line = parts.join(", ");
    if line.chars().count() <= SUMMARY_CHARS {
        return line;
    }
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| summarize(c, Some(&c.metric)))
        .collect();
    let total = report.checks.len();
    let line = if failed.is_empty() {
        format!("all {total} gates passed")
    } else {
        format!(
            "{} of {total} gates failed: {}",
            failed.len(),
            failed.join(", ")
        )
    };
    cut(&line, SUMMARY_CHARS)
}

fn summarize(check: &GateCheck, metric: Option<&str>) -> String {
    let mark = if check.passed { "✓" } else { "✗" };
    let prefix = metric.map(|m| format!("{m} ")).unwrap_or_default();
    let Some(value) = check.value else {
        let metric = metric.unwrap_or(&check.metric);
        let why = match check.limit {
            Limit::Unbounded => "no bound",
            _ => "missing",
        };
        return format!("{metric} {why} {mark}");
    };
    let relation = |op_pass: &str, op_fail: &str, bound: f64| {
        let (v, b) = distinct_pair(value, bound);
        let op = if check.passed { op_pass } else { op_fail };
        format!("{prefix}{v} {op} {b} {mark}")
    };
    match &check.limit {
        Limit::Min(min) => relation("≥", "<", *min),
        Limit::Max(max) => relation("≤", ">", *max),
        // The alias alone, without the baseline, keeps the line short.
        Limit::NotWorseThan { alias, .. } => format!("{prefix}not worse than {alias} {mark}"),
        Limit::Unbounded => format!("{prefix}no bound {mark}"),
    }
}

/// Renders two numbers with 4 significant digits, or more when that would make different
/// numbers look equal (`0.85 < 0.85 ✗` would puzzle anyone).
fn distinct_pair(a: f64, b: f64) -> (String, String) {
    let mut digits = 4;
    loop {
        let (x, y) = (significant(a, digits), significant(b, digits));
        if x != y || a == b || digits >= 17 {
            return (x, y);
        }
        digits += 1;
    }
}

fn significant(x: f64, digits: usize) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-4..15).contains(&magnitude) {
        return format!("{:.*e}", digits.saturating_sub(1), x);
    }
    let decimals = (digits as i32 - 1 - magnitude).max(0) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gate(metric: &str) -> Gate {
        Gate {
            metric: metric.to_owned(),
            min: None,
            max: None,
            not_worse_than: None,
            greater_is_better: true,
        }
    }

    fn min(metric: &str, bound: f64) -> Gate {
        Gate {
            min: Some(bound),
            ..gate(metric)
        }
    }

    fn max(metric: &str, bound: f64) -> Gate {
        Gate {
            max: Some(bound),
            ..gate(metric)
        }
    }

    fn not_worse(metric: &str, alias: &str) -> Gate {
        Gate {
            not_worse_than: Some(alias.to_owned()),
            ..gate(metric)
        }
    }

    fn model(gates: Vec<Gate>) -> ModelSpec {
        ModelSpec {
            name: "iris-classifier".to_owned(),
            artifact: "steps.train.outputs.model".to_owned(),
            metrics: Some("steps.train.outputs.metrics".to_owned()),
            gate: gates,
            promote: Some("champion".to_owned()),
            select: None,
        }
    }

    fn no_baselines() -> Baselines {
        BTreeMap::new()
    }

    fn champion(metrics: Value) -> Baselines {
        let metrics = parse_metrics(metrics.to_string().as_bytes()).expect("numbers");
        BTreeMap::from([("champion".to_owned(), metrics)])
    }

    #[test]
    fn metrics_parse_as_an_object_of_numbers() {
        let metrics = parse_metrics(br#"{"accuracy": 0.93, "epochs": 3}"#).expect("valid");
        assert_eq!(
            metrics,
            BTreeMap::from([("accuracy".to_owned(), 0.93), ("epochs".to_owned(), 3.0)])
        );
    }

    #[test]
    fn metrics_that_are_not_an_object_of_numbers_are_refused_with_what_was_found() {
        assert_eq!(
            parse_metrics(b"[0.9]"),
            Err(RegistryError::NotAnObject { found: "an array" })
        );
        assert_eq!(
            parse_metrics(br#"{"auc": "0.9"}"#),
            Err(RegistryError::NotANumber {
                metric: "auc".to_owned(),
                found: "a string"
            })
        );
        let err = parse_metrics(b"auc=0.9").expect_err("not JSON");
        assert!(matches!(err, RegistryError::NotJson { .. }), "{err}");
    }

    #[test]
    fn non_finite_numbers_as_python_writes_them_get_a_hint() {
        let err = parse_metrics(br#"{"loss": NaN}"#).expect_err("NaN is not JSON");
        assert!(err.to_string().contains("NaN and Infinity"), "{err}");
    }

    #[test]
    fn min_and_max_bounds_are_inclusive() {
        let m = model(vec![min("accuracy", 0.85), max("loss", 0.2)]);
        let at_bounds =
            evaluate_gates(&m, &json!({"accuracy": 0.85, "loss": 0.2}), &no_baselines());
        assert!(at_bounds.passed, "{at_bounds:?}");
        assert_eq!(at_bounds.checks[0].bound, "min 0.85");
        assert_eq!(at_bounds.checks[0].detail, "0.85 ≥ 0.85");
        assert_eq!(at_bounds.checks[1].detail, "0.2 ≤ 0.2");

        let outside = evaluate_gates(
            &m,
            &json!({"accuracy": 0.84, "loss": 0.21}),
            &no_baselines(),
        );
        assert!(!outside.passed);
        assert!(outside.checks.iter().all(|c| !c.passed), "{outside:?}");
        assert_eq!(outside.checks[0].detail, "0.84 < 0.85");
        assert_eq!(outside.checks[1].detail, "0.21 > 0.2");
    }

    #[test]
    fn a_gate_on_a_missing_metric_fails() {
        let m = model(vec![min("auc", 0.8), min("accuracy", 0.5)]);
        let report = evaluate_gates(&m, &json!({"accuracy": 0.9}), &no_baselines());
        assert!(!report.passed);
        assert_eq!(report.checks[0].value, None);
        assert_eq!(report.checks[0].detail, "metric `auc` not in metrics");
        assert!(report.checks[1].passed);
    }

    #[test]
    fn metrics_that_are_not_an_object_of_numbers_fail_every_gate() {
        let m = model(vec![min("auc", 0.8), not_worse("auc", "champion")]);
        let report = evaluate_gates(&m, &json!({"auc": 0.9, "note": "good"}), &no_baselines());
        assert!(!report.passed);
        for check in &report.checks {
            assert!(!check.passed, "{check:?}");
            assert_eq!(check.detail, "metric `note` must be a number, not a string");
        }
        let from_file = evaluate_metrics_file(&m, b"not json", &no_baselines());
        assert!(
            from_file
                .checks
                .iter()
                .all(|c| !c.passed && c.detail.starts_with("metrics are not JSON"))
        );
    }

    #[test]
    fn a_metrics_file_of_numbers_is_evaluated_like_its_json() {
        let m = model(vec![min("auc", 0.8)]);
        let report = evaluate_metrics_file(&m, br#"{"auc": 0.9}"#, &no_baselines());
        assert!(report.passed, "{report:?}");
    }

    #[test]
    fn non_finite_values_fail() {
        let m = model(vec![min("loss", 0.0), not_worse("loss", "champion")]);
        let metrics = Ok(BTreeMap::from([("loss".to_owned(), f64::NAN)]));
        let report = evaluate(&m, metrics, &no_baselines());
        assert!(!report.passed);
        assert!(
            report
                .checks
                .iter()
                .all(|c| !c.passed && c.detail == "metric `loss` is NaN")
        );
    }

    #[test]
    fn not_worse_than_passes_when_no_version_is_behind_the_alias_yet() {
        let m = model(vec![not_worse("auc", "champion")]);
        let report = evaluate_gates(&m, &json!({"auc": 0.5}), &no_baselines());
        assert!(report.passed);
        assert_eq!(report.checks[0].detail, "no champion yet");
        assert_eq!(report.checks[0].bound, "not worse than champion");
    }

    #[test]
    fn not_worse_than_compares_with_the_champion_higher_being_better() {
        let m = model(vec![not_worse("auc", "champion")]);
        let baselines = champion(json!({"auc": 0.91}));
        let equal = evaluate_gates(&m, &json!({"auc": 0.91}), &baselines);
        assert!(equal.passed);
        assert_eq!(equal.checks[0].bound, "not worse than champion (0.91)");
        assert_eq!(
            equal.checks[0].limit,
            Limit::NotWorseThan {
                alias: "champion".to_owned(),
                baseline: Some(0.91)
            }
        );
        let worse = evaluate_gates(&m, &json!({"auc": 0.9}), &baselines);
        assert!(!worse.passed);
        assert_eq!(worse.checks[0].detail, "0.9 is worse than champion's 0.91");
    }

    #[test]
    fn not_worse_than_a_loss_passes_at_or_below_the_champion() {
        let m = model(vec![Gate {
            greater_is_better: false,
            ..not_worse("loss", "champion")
        }]);
        let baselines = champion(json!({"loss": 0.31}));
        let lower = evaluate_gates(&m, &json!({"loss": 0.3}), &baselines);
        assert!(lower.passed, "{lower:?}");
        assert_eq!(
            lower.checks[0].bound,
            "not worse than champion (0.31, lower is better)"
        );
        assert!(evaluate_gates(&m, &json!({"loss": 0.31}), &baselines).passed);
        assert!(!evaluate_gates(&m, &json!({"loss": 0.32}), &baselines).passed);
    }

    #[test]
    fn a_champion_without_the_metric_does_not_block_the_gate() {
        let m = model(vec![not_worse("auc", "champion")]);
        let report = evaluate_gates(&m, &json!({"auc": 0.7}), &champion(json!({"f1": 0.9})));
        assert!(report.passed);
        assert_eq!(
            report.checks[0].detail,
            "champion has no `auc` to compare with"
        );
    }

    #[test]
    fn a_gate_without_a_bound_fails_rather_than_letting_the_model_by() {
        let report = evaluate_gates(
            &model(vec![gate("auc")]),
            &json!({"auc": 1.0}),
            &no_baselines(),
        );
        assert!(!report.passed);
        assert_eq!(report.checks[0].detail, "the gate on `auc` sets no bound");
        assert_eq!(describe(&report), "auc no bound ✗");
    }

    #[test]
    fn a_gate_report_round_trips_through_json() {
        let m = model(vec![min("auc", 0.8), not_worse("auc", "champion")]);
        let report = evaluate_gates(&m, &json!({"auc": 0.9}), &no_baselines());
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["checks"][0]["limit"], json!({"min": 0.8}));
        let back: GateReport = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, report);
    }

    #[test]
    fn a_model_without_gates_passes() {
        let report = evaluate_gates(&model(vec![]), &json!({}), &no_baselines());
        assert!(report.passed);
        assert_eq!(describe(&report), "no gates");
    }

    #[test]
    fn describe_reads_like_the_gates() {
        let m = model(vec![
            min("accuracy", 0.85),
            not_worse("accuracy", "champion"),
        ]);
        let report = evaluate_gates(
            &m,
            &json!({"accuracy": 0.93}),
            &champion(json!({"accuracy": 0.91})),
        );
        assert_eq!(
            describe(&report),
            "accuracy 0.93 ≥ 0.85 ✓, not worse than champion ✓"
        );
        let failing = evaluate_gates(
            &model(vec![min("auc", 0.8), max("loss", 0.2)]),
            &json!({"auc": 0.7}),
            &no_baselines(),
        );
        assert_eq!(describe(&failing), "auc 0.7 < 0.8 ✗, loss missing ✗");
    }

    #[test]
    fn describe_shows_enough_digits_to_tell_close_numbers_apart() {
        let report = evaluate_gates(
            &model(vec![min("auc", 0.85)]),
            &json!({"auc": 0.849_999_1}),
            &no_baselines(),
        );
        assert_eq!(describe(&report), "auc 0.849999 < 0.85 ✗");
        let long = evaluate_gates(
            &model(vec![min("auc", 0.5)]),
            &json!({"auc": 0.912_345_678_9}),
            &no_baselines(),
        );
        assert_eq!(describe(&long), "auc 0.9123 ≥ 0.5 ✓");
    }

    #[test]
    fn describe_stays_within_140_characters_and_lists_failures_first() {
        let gates: Vec<Gate> = (0..20)
            .map(|i| min(&format!("metric_number_{i}"), 0.5))
            .collect();
        let mut metrics = serde_json::Map::new();
        for i in 0..20 {
            metrics.insert(
                format!("metric_number_{i}"),
                json!(if i == 17 { 0.1 } else { 0.9 }),
            );
        }
        let report = evaluate_gates(
            &model(gates.clone()),
            &Value::Object(metrics.clone()),
            &no_baselines(),
        );
        let line = describe(&report);
        assert!(line.chars().count() <= 140, "{line}");
        assert_eq!(line, "1 of 20 gates failed: metric_number_17 0.1 < 0.5 ✗");

        metrics.insert("metric_number_17".to_owned(), json!(0.9));
        let passing = evaluate_gates(&model(gates), &Value::Object(metrics), &no_baselines());
        assert_eq!(describe(&passing), "all 20 gates passed");
    }

    #[test]
    fn many_failures_are_cut_with_an_ellipsis_at_140_characters() {
        let gates: Vec<Gate> = (0..20)
            .map(|i| min(&format!("metric_number_{i}"), 0.5))
            .collect();
        let report = evaluate_gates(&model(gates), &json!({}), &no_baselines());
        let line = describe(&report);
        assert_eq!(line.chars().count(), 140, "{line}");
        assert!(line.starts_with("20 of 20 gates failed: metric_number_0 missing ✗"));
        assert!(line.ends_with('…'));
    }

    #[test]
    fn significant_digits_trim_zeros_and_switch_to_exponents_for_extremes() {
        assert_eq!(significant(0.5, 4), "0.5");
        assert_eq!(significant(12_345.678, 4), "12346");
        assert_eq!(significant(0.000_012_34, 4), "1.234e-5");
        assert_eq!(significant(0.0, 4), "0");
    }
}
