//! End-to-end tests of `trainyard plan`: what a change between two Git revisions adds,
//! changes and removes, next fire times, the GPU-hours bound, and its three output formats.

use serde_json::{Value, json};
use trainyard_tests::{Repo, Result, TestResult, copy_dir, examples_repo, position, trainyard};

/// The time plans are computed at: a Friday, two days before Berlin switches to summer time
/// (New York switched on 8 March).
const NOW: &str = "2026-03-27T12:00:00Z";

/// The sample repository's GPU pipeline.
const LLM: &str = "pipelines/llm-finetune/pipeline.yaml";

/// A CPU schedule the base revision of the fixtures adds to the sample repository.
const IRIS_WEEKLY: &str = r#"apiVersion: trainyard.dev/v1
kind: Schedule
metadata:
  name: iris-weekly
spec:
  pipeline: iris
  cron: "@weekly"
  timezone: UTC
"#;

/// A CPU schedule the changed revision adds instead.
const IRIS_HOURLY: &str = r#"apiVersion: trainyard.dev/v1
kind: Schedule
metadata:
  name: iris-hourly
spec:
  pipeline: iris
  cron: "@hourly"
  timezone: UTC
"#;

/// The sample repository with its weekly GPU schedule enabled and one more schedule,
/// `iris-weekly`, committed as the base (`HEAD~1`); then, as `HEAD`, a commit that moves
/// `iris-nightly` from 02:30 to 04:00, gives the `evaluate` step of `llm-finetune` 2 GPUs
/// instead of 1, adds `iris-hourly` and removes `iris-weekly`.
fn changed() -> Result<Repo> {
    let repo = Repo::from_examples()?;
    repo.edit("schedules.yaml", "  suspend: true\n", "  suspend: false\n")?;
    repo.write("extra-schedules.yaml", IRIS_WEEKLY)?;
    repo.commit("base")?;
    repo.edit(
        "schedules.yaml",
        r#"cron: "30 2 * * *""#,
        r#"cron: "0 4 * * *""#,
    )?;
    repo.edit(LLM, "gpu: 1, gpu_type: h100", "gpu: 2, gpu_type: h100")?;
    repo.write("extra-schedules.yaml", IRIS_HOURLY)?;
    repo.commit("change")?;
    Ok(repo)
}

/// `trainyard plan --from HEAD~1 --now NOW --format json`, which must exit with `code`.
fn plan_json(repo: &Repo, code: i32) -> Result<Value> {
    let run = trainyard(
        repo.path(),
        &["plan", "--from", "HEAD~1", "--now", NOW, "--format", "json"],
    )?;
    assert_eq!(run.code, Some(code), "{run}");
    run.json()
}

/// The change of `name` in a JSON plan.
fn change<'a>(plan: &'a Value, name: &str) -> Result<&'a Value> {
    plan["changes"]
        .as_array()
        .and_then(|changes| changes.iter().find(|c| c["name"] == name))
        .ok_or_else(|| format!("no change of {name} in {plan:#}").into())
}

#[test]
fn plan_lists_what_is_added_changed_and_removed() -> TestResult {
    let plan = plan_json(&changed()?, 0)?;
    let changes: Vec<Value> = plan["changes"]
        .as_array()
        .ok_or("no changes")?
        .iter()
        .map(|c| json!([c["kind"], c["name"], c["action"], c["file"]]))
        .collect();
    assert_eq!(
        changes,
        [
            json!(["Pipeline", "llm-finetune", "changed", LLM]),
            json!(["Schedule", "iris-hourly", "added", "extra-schedules.yaml"]),
            json!(["Schedule", "iris-nightly", "changed", "schedules.yaml"]),
            json!(["Schedule", "iris-weekly", "removed", "extra-schedules.yaml"]),
        ]
    );
    assert_eq!(plan["diagnostics"], json!([]));
    assert_eq!(plan["failed_files"], json!([]));
    Ok(())
}

#[test]
fn plan_shows_each_changed_field_with_its_old_and_new_value() -> TestResult {
    let plan = plan_json(&changed()?, 0)?;
    assert_eq!(
        change(&plan, "llm-finetune")?["fields"],
        json!([{"field": "spec.steps.evaluate.resources.gpu", "before": "1", "after": "2"}])
    );
    assert_eq!(
        change(&plan, "iris-nightly")?["fields"],
        json!([{"field": "spec.cron", "before": "30 2 * * *", "after": "0 4 * * *"}])
    );
    assert_eq!(change(&plan, "iris-hourly")?["fields"], json!([]));
    Ok(())
}

#[test]
fn plan_shows_the_next_three_fires_of_new_and_changed_schedules_in_their_zone() -> TestResult {
    let plan = plan_json(&changed()?, 0)?;
    // Berlin moves to summer time in the night of 29 March 2026.
    assert_eq!(
        change(&plan, "iris-nightly")?["next_fires"],
        json!([
            "2026-03-28T04:00:00+01:00",
            "2026-03-29T04:00:00+02:00",
            "2026-03-30T04:00:00+02:00"
        ])
    );
    assert_eq!(
        change(&plan, "iris-hourly")?["next_fires"],
        json!([
            "2026-03-27T13:00:00+00:00",
            "2026-03-27T14:00:00+00:00",
            "2026-03-27T15:00:00+00:00"
        ])
    );
    assert_eq!(change(&plan, "iris-weekly")?.get("next_fires"), None);
    Ok(())
}

#[test]
fn plan_bounds_gpu_hours_a_month_before_and_after() -> TestResult {
    let plan = plan_json(&changed()?, 0)?;
    // llm-finetune-weekly fires on the 5 Sundays of the 30 days from NOW (29 March to
    // 26 April, 06:00 New York). A run may use 8 GPUs for 6 h (finetune) plus 1 GPU, then
    // 2 GPUs, for 1 h (evaluate): 5 × 49 = 245 before, 5 × 50 = 250 after. The iris
    // schedules use no GPU.
    assert_eq!(plan["gpu_hours"], json!({"before": 245.0, "after": 250.0}));
    for name in ["iris-hourly", "iris-nightly", "iris-weekly"] {
        assert_eq!(change(&plan, name)?.get("gpu_hours"), None, "{name}");
    }
    Ok(())
}

#[test]
fn a_suspended_gpu_schedule_counts_no_gpu_hours() -> TestResult {
    let repo = Repo::from_examples()?;
    repo.commit("sample, weekly fine-tune suspended")?;
    repo.edit(LLM, "gpu: 1, gpu_type: h100", "gpu: 2, gpu_type: h100")?;
    repo.commit("more GPUs")?;
    let plan = plan_json(&repo, 0)?;
    assert_eq!(plan["gpu_hours"], json!({"before": 0.0, "after": 0.0}));
    assert_eq!(change(&plan, "llm-finetune")?["action"], "changed");
    Ok(())
}

#[test]
fn plan_text_describes_every_change_and_the_totals() -> TestResult {
    let repo = changed()?;
    let run = trainyard(repo.path(), &["plan", "--from", "HEAD~1", "--now", NOW])?;
    assert_eq!(run.code, Some(0), "{run}");
    for line in [
        &format!("  ~ Pipeline llm-finetune ({LLM})"),
        "      spec.steps.evaluate.resources.gpu: 1 → 2",
        "  + Schedule iris-hourly (extra-schedules.yaml)",
        "  ~ Schedule iris-nightly (schedules.yaml)",
        "      spec.cron: 30 2 * * * → 0 4 * * *",
        "      next: 2026-03-28T04:00:00+01:00, 2026-03-29T04:00:00+02:00, 2026-03-30T04:00:00+02:00",
        "  - Schedule iris-weekly (extra-schedules.yaml)",
        "GPU-hours per month, upper bound: 245 → 250 (+5)",
        "1 to add, 2 to change, 1 to remove.",
    ] {
        assert!(run.stdout.lines().any(|l| l == line), "{line:?} in\n{run}");
    }
    Ok(())
}

#[test]
fn plan_markdown_is_a_table_with_a_row_per_change() -> TestResult {
    let repo = changed()?;
    let run = trainyard(
        repo.path(),
        &[
            "plan", "--from", "HEAD~1", "--now", NOW, "--format", "markdown",
        ],
    )?;
    assert_eq!(run.code, Some(0), "{run}");
    let md = &run.stdout;
    assert!(md.starts_with("### Trainyard plan `"), "{md}");
    for line in [
        "✅ valid · **1 to add, 2 to change, 1 to remove** · GPU-hours/month (upper bound): 245 → 250 (+5)",
        "| | Kind | Name | Changes |",
        "| ✏️ | Pipeline | `llm-finetune` | `spec.steps.evaluate.resources.gpu: 1 → 2` |",
        "| ➖ | Schedule | `iris-weekly` | removed from `extra-schedules.yaml` |",
    ] {
        assert!(md.lines().any(|l| l == line), "{line:?} in\n{md}");
    }
    assert!(
        md.contains("| ✏️ | Schedule | `iris-nightly` | `spec.cron: 30 2 * * * → 0 4 * * *`<br>next: 2026-03-28T04:00:00+01:00"),
        "{md}"
    );
    assert!(!md.contains("Diagnostics"), "{md}");
    Ok(())
}

/// `changed()` plus a commit asking 9 GPUs for `finetune`, one more than the platform allows.
fn too_many_gpus() -> Result<Repo> {
    let repo = changed()?;
    repo.edit(LLM, "gpu: 8, gpu_type: h100", "gpu: 9, gpu_type: h100")?;
    repo.commit("too many GPUs")?;
    Ok(repo)
}

#[test]
fn plan_of_a_broken_target_exits_1_and_shows_its_diagnostics() -> TestResult {
    let repo = too_many_gpus()?;
    let llm = std::fs::read_to_string(repo.path().join(LLM))?;
    let (line, column) = position(&llm, "9, gpu_type")?;

    let plan = plan_json(&repo, 1)?;
    assert_eq!(plan["failed_files"], json!([LLM]));
    let diagnostics = &plan["diagnostics"];
    assert_eq!(diagnostics.as_array().map(Vec::len), Some(1), "{plan:#}");
    assert_eq!(diagnostics[0]["code"], "policy/gpu-limit");
    assert_eq!(
        (&diagnostics[0]["line"], &diagnostics[0]["column"]),
        (&json!(line), &json!(column))
    );
    // The failing file keeps its last good version: nothing is removed.
    assert_eq!(plan["changes"], json!([]));

    let run = trainyard(
        repo.path(),
        &[
            "plan", "--from", "HEAD~1", "--now", NOW, "--format", "markdown",
        ],
    )?;
    assert_eq!(run.code, Some(1), "{run}");
    let md = &run.stdout;
    assert!(
        md.contains("❌ invalid · **0 to add, 0 to change, 0 to remove**"),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "> **{LLM}** has errors: its documents keep their last good version."
        )),
        "{md}"
    );
    assert!(md.contains("#### Diagnostics\n"), "{md}");
    let item = format!("- ❌ `{LLM}:{line}:{column}` step \"finetune\" requests 9 GPUs");
    assert!(
        md.lines().any(|l| l.starts_with(&item)),
        "{item:?} in\n{md}"
    );
    Ok(())
}

#[test]
fn a_failing_file_keeps_its_last_good_gpu_hours() -> TestResult {
    let plan = plan_json(&too_many_gpus()?, 1)?;
    assert_eq!(plan["gpu_hours"], json!({"before": 250.0, "after": 250.0}));
    Ok(())
}

/// The sample repository plus `iris-weekly`, then a commit deleting every schedule (and
/// setting `allow_empty: true` in `trainyard.yaml` when `allow_empty` is true).
fn without_schedules(allow_empty: bool) -> Result<Repo> {
    let repo = Repo::from_examples()?;
    repo.write("extra-schedules.yaml", IRIS_WEEKLY)?;
    repo.commit("base")?;
    repo.remove("schedules.yaml")?;
    repo.remove("extra-schedules.yaml")?;
    if allow_empty {
        repo.edit("trainyard.yaml", "allow_empty: false", "allow_empty: true")?;
    }
    repo.commit("no more schedules")?;
    Ok(repo)
}

fn removed_names(plan: &Value) -> Vec<String> {
    plan["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["action"] == "removed")
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn removing_every_schedule_is_refused() -> TestResult {
    let repo = without_schedules(false)?;
    let plan = plan_json(&repo, 1)?;
    assert_eq!(
        removed_names(&plan),
        ["iris-nightly", "iris-weekly", "llm-finetune-weekly"]
    );
    let diagnostics = plan["diagnostics"].as_array().ok_or("no diagnostics")?;
    assert_eq!(diagnostics.len(), 1, "{plan:#}");
    assert_eq!(diagnostics[0]["code"], "removes-every-schedule");
    assert_eq!(diagnostics[0]["file"], "trainyard.yaml");
    assert!(
        diagnostics[0]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("allow_empty: true")),
        "{plan:#}"
    );

    let text = trainyard(repo.path(), &["plan", "--from", "HEAD~1", "--now", NOW])?;
    assert_eq!(text.code, Some(1), "{text}");
    assert!(
        text.stdout
            .contains("trainyard.yaml: error: this change removes every schedule (3)"),
        "{text}"
    );
    Ok(())
}

#[test]
fn removing_every_schedule_is_accepted_when_allow_empty_is_set() -> TestResult {
    let plan = plan_json(&without_schedules(true)?, 0)?;
    assert_eq!(
        removed_names(&plan),
        ["iris-nightly", "iris-weekly", "llm-finetune-weekly"]
    );
    assert_eq!(plan["diagnostics"], json!([]));
    Ok(())
}

#[test]
fn plan_between_identical_revisions_has_no_changes() -> TestResult {
    let repo = changed()?;
    let run = trainyard(
        repo.path(),
        &["plan", "--from", "HEAD", "--to", "HEAD", "--now", NOW],
    )?;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("\n  No changes.\n"), "{run}");
    assert!(
        run.stdout
            .contains("GPU-hours per month, upper bound: 250 → 250 (no change)\n"),
        "{run}"
    );
    assert_eq!(run.last_line(), "0 to add, 0 to change, 0 to remove.");
    Ok(())
}

#[test]
fn plan_to_an_older_revision_reverses_the_change() -> TestResult {
    let repo = changed()?;
    let run = trainyard(
        repo.path(),
        &[
            "plan", "--from", "HEAD", "--to", "HEAD~1", "--now", NOW, "--format", "json",
        ],
    )?;
    assert_eq!(run.code, Some(0), "{run}");
    let plan = run.json()?;
    assert_eq!(change(&plan, "iris-hourly")?["action"], "removed");
    assert_eq!(change(&plan, "iris-weekly")?["action"], "added");
    assert_eq!(
        change(&plan, "llm-finetune")?["fields"],
        json!([{"field": "spec.steps.evaluate.resources.gpu", "before": "2", "after": "1"}])
    );
    assert_eq!(plan["gpu_hours"], json!({"before": 250.0, "after": 245.0}));
    Ok(())
}

#[test]
fn plan_from_before_the_directory_existed_adds_everything() -> TestResult {
    let repo = Repo::with_files(&[("README.md", "# ML\n")])?;
    copy_dir(&examples_repo(), &repo.path().join("ml"))?;
    repo.commit("definitions")?;
    let run = trainyard(
        repo.path(),
        &[
            "plan", "ml", "--from", "HEAD~1", "--now", NOW, "--format", "json",
        ],
    )?;
    assert_eq!(run.code, Some(0), "{run}");
    let plan = run.json()?;
    let actions: Vec<&str> = plan["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["action"].as_str())
        .collect();
    assert_eq!(actions, ["added"; 5], "{plan:#}");
    Ok(())
}

#[test]
fn plan_of_an_unknown_revision_is_a_usage_error() -> TestResult {
    let repo = changed()?;
    let unknown_from: &[&str] = &["plan", "--from", "no-such-branch"];
    let unknown_to: &[&str] = &["plan", "--from=HEAD~1", "--to", "no-such-branch"];
    for args in [unknown_from, unknown_to] {
        let run = trainyard(repo.path(), args)?;
        assert_eq!(run.code, Some(2), "{run}");
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr
                .contains(r#"revision "no-such-branch" not found"#),
            "{run}"
        );
    }
    Ok(())
}

#[test]
fn plan_without_from_or_with_a_bad_time_is_a_usage_error() -> TestResult {
    let repo = changed()?;
    let missing = trainyard(repo.path(), &["plan"])?;
    assert_eq!(missing.code, Some(2), "{missing}");
    assert!(missing.stderr.contains("--from"), "{missing}");

    let bad_time = trainyard(
        repo.path(),
        &["plan", "--from", "HEAD~1", "--now", "tomorrow"],
    )?;
    assert_eq!(bad_time.code, Some(2), "{bad_time}");
    assert!(bad_time.stderr.contains("RFC 3339"), "{bad_time}");
    Ok(())
}
