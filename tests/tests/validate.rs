//! End-to-end tests of `trainyard validate`: exit statuses, diagnostics placed at their
//! file, line and column, hostile input, and reading a Git revision with `--rev`.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;
use trainyard_tests::{
    Diagnostic, PINNED_IMAGE, Repo, Result, Run, TestResult, copy_dir, examples_copy,
    examples_repo, position, replaced, temp_dir, trainyard, work_tree, workspace_root, write,
};

/// A valid pipeline; the tests break it in one place and know every line of it.
const CHURN: &str = r#"apiVersion: trainyard.dev/v1
kind: Pipeline
metadata:
  name: churn
  owner: team-growth
spec:
  params:
    epochs: {type: int, default: 3}
  steps:
    - name: prepare
      run: [python3, prepare.py]
    - name: train
      needs: [prepare]
      run: [python3, train.py, --epochs, "{{ params.epochs }}"]
"#;

/// A valid schedule of `churn`.
const NIGHTLY: &str = r#"apiVersion: trainyard.dev/v1
kind: Schedule
metadata:
  name: churn-nightly
spec:
  pipeline: churn
  cron: "30 2 * * *"
  timezone: Europe/Berlin
"#;

/// Generous bound for refusing hostile input (it takes well under a second).
const HOSTILE_LIMIT: Duration = Duration::from_secs(10);

/// A working tree with repository settings (a pinned default image, the sample
/// repository's owner policy) and `files`.
fn fixture(files: &[(&str, &str)]) -> Result<TempDir> {
    let dir = work_tree(files)?;
    let settings = format!("image: {PINNED_IMAGE}\npolicies: [policies/owners.rego]\n");
    write(dir.path(), "trainyard.yaml", settings)?;
    let owners = std::fs::read(examples_repo().join("policies/owners.rego"))?;
    write(dir.path(), "policies/owners.rego", owners)?;
    Ok(dir)
}

/// `trainyard validate . --format json` in `dir`.
fn validate_json(dir: &Path) -> Result<Run> {
    trainyard(dir, &["validate", ".", "--format", "json"])
}

/// The `file:line:col code` of every diagnostic.
fn places(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(Diagnostic::place).collect()
}

/// Validates the fixture made of `files` as JSON, checks it fails with exit status 1, and
/// returns its diagnostics.
fn invalid(files: &[(&str, &str)]) -> Result<Vec<Diagnostic>> {
    let dir = fixture(files)?;
    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(run.json()?["valid"], false, "{run}");
    run.diagnostics()
}

#[test]
fn the_sample_repository_is_valid() -> TestResult {
    let run = trainyard(&workspace_root(), &["validate", "examples-repo"])?;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        "examples-repo: valid: 3 pipelines, 2 schedules, 0 errors, 0 warnings\n"
    );
    Ok(())
}

#[test]
fn the_sample_repository_is_valid_as_json() -> TestResult {
    let run = trainyard(&examples_repo(), &["validate", "--format", "json"])?;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.json()?,
        serde_json::json!({"valid": true, "pipelines": 3, "schedules": 2, "diagnostics": []})
    );
    Ok(())
}

#[test]
fn the_fixture_used_by_these_tests_is_valid() -> TestResult {
    let dir = fixture(&[("pipelines/churn.yaml", CHURN), ("schedules.yaml", NIGHTLY)])?;
    let run = trainyard(dir.path(), &["validate"])?;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(
        run.stdout,
        ".: valid: 1 pipelines, 1 schedules, 0 errors, 0 warnings\n"
    );
    Ok(())
}

#[test]
fn an_unknown_need_is_reported_at_its_position_with_a_suggestion() -> TestResult {
    let churn = replaced(CHURN, "needs: [prepare]", "needs: [prepar]")?;
    let dir = fixture(&[("pipelines/churn.yaml", &churn)])?;

    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(1), "{run}");
    let diagnostics = run.diagnostics()?;
    assert_eq!(
        places(&diagnostics),
        ["pipelines/churn.yaml:13:15 unknown-step"]
    );
    assert_eq!(diagnostics[0].severity, "error");
    assert_eq!(
        diagnostics[0].message,
        r#"step "train" needs unknown step "prepar""#
    );
    assert_eq!(
        diagnostics[0].hint.as_deref(),
        Some("did you mean `prepare`?")
    );

    let text = trainyard(dir.path(), &["validate"])?;
    assert_eq!(text.code, Some(1), "{text}");
    assert_eq!(
        text.stdout,
        concat!(
            "pipelines/churn.yaml:13:15: error: step \"train\" needs unknown step \"prepar\"\n",
            "   |\n",
            "13 |       needs: [prepar]\n",
            "   |               ^^^^^^\n",
            "  = help: did you mean `prepare`?\n",
            ".: invalid: 0 pipelines, 0 schedules, 1 errors, 0 warnings\n",
        )
    );
    Ok(())
}

#[test]
fn a_cycle_is_reported_on_the_need_that_starts_it() -> TestResult {
    let churn = replaced(
        CHURN,
        "    - name: prepare\n",
        "    - name: prepare\n      needs: [train]\n",
    )?;
    let diagnostics = invalid(&[("pipelines/churn.yaml", &churn)])?;
    assert_eq!(places(&diagnostics), ["pipelines/churn.yaml:11:15 cycle"]);
    assert_eq!(
        diagnostics[0].message,
        "steps form a cycle: prepare → train → prepare"
    );
    Ok(())
}

#[test]
fn an_invalid_cron_expression_is_reported_on_the_cron_value() -> TestResult {
    let nightly = replaced(NIGHTLY, r#""30 2 * * *""#, r#""30 25 * * *""#)?;
    let diagnostics = invalid(&[
        ("pipelines/churn.yaml", CHURN),
        ("schedules.yaml", &nightly),
    ])?;
    assert_eq!(places(&diagnostics), ["schedules.yaml:7:9 invalid-cron"]);
    assert!(
        diagnostics[0]
            .message
            .starts_with(r#"invalid cron "30 25 * * *""#),
        "{diagnostics:?}"
    );
    Ok(())
}

#[test]
fn an_unknown_time_zone_is_reported_with_a_suggestion() -> TestResult {
    let nightly = replaced(NIGHTLY, "Europe/Berlin", "Europe/Berln")?;
    let diagnostics = invalid(&[
        ("pipelines/churn.yaml", CHURN),
        ("schedules.yaml", &nightly),
    ])?;
    assert_eq!(
        places(&diagnostics),
        ["schedules.yaml:8:13 unknown-timezone"]
    );
    assert!(
        diagnostics[0].message.contains(r#""Europe/Berln""#),
        "{diagnostics:?}"
    );
    assert_eq!(
        diagnostics[0].hint.as_deref(),
        Some("did you mean `Europe/Berlin`?")
    );
    Ok(())
}

#[test]
fn a_misspelt_field_is_an_unknown_field_that_lists_the_expected_ones() -> TestResult {
    let churn = replaced(
        CHURN,
        "      needs: [prepare]\n",
        "      needs: [prepare]\n      timout: 1h\n",
    )?;
    let diagnostics = invalid(&[("pipelines/churn.yaml", &churn)])?;
    assert_eq!(
        places(&diagnostics),
        ["pipelines/churn.yaml:14:7 unknown-field"]
    );
    let message = &diagnostics[0].message;
    assert!(message.contains("unknown field `timout`"), "{message}");
    assert!(message.contains("timeout"), "{message}");
    Ok(())
}

#[test]
fn a_pipeline_defined_in_two_files_is_reported_on_the_second_file() -> TestResult {
    let dir = fixture(&[
        ("pipelines/a/pipeline.yaml", CHURN),
        ("pipelines/b/pipeline.yaml", CHURN),
    ])?;
    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(1), "{run}");
    let diagnostics = run.diagnostics()?;
    assert_eq!(
        places(&diagnostics),
        ["pipelines/b/pipeline.yaml:4:9 duplicate-name"]
    );
    assert_eq!(
        diagnostics[0].message,
        r#"pipeline "churn" is already defined in pipelines/a/pipeline.yaml (document at line 1)"#
    );
    // The first definition stays in the catalog.
    assert_eq!(run.json()?["pipelines"], 1);
    Ok(())
}

#[test]
fn a_schedule_of_an_unknown_pipeline_is_reported_with_a_suggestion() -> TestResult {
    let nightly = replaced(NIGHTLY, "pipeline: churn", "pipeline: chrun")?;
    let diagnostics = invalid(&[
        ("pipelines/churn.yaml", CHURN),
        ("schedules.yaml", &nightly),
    ])?;
    assert_eq!(
        places(&diagnostics),
        ["schedules.yaml:6:13 unknown-pipeline"]
    );
    assert_eq!(
        diagnostics[0].message,
        r#"schedule "churn-nightly" starts unknown pipeline "chrun""#
    );
    assert_eq!(
        diagnostics[0].hint.as_deref(),
        Some("did you mean `churn`?")
    );
    Ok(())
}

#[test]
fn a_schedule_param_of_the_wrong_type_is_reported_on_its_value() -> TestResult {
    let nightly = format!("{NIGHTLY}  params: {{epochs: three}}\n");
    let diagnostics = invalid(&[
        ("pipelines/churn.yaml", CHURN),
        ("schedules.yaml", &nightly),
    ])?;
    assert_eq!(places(&diagnostics), ["schedules.yaml:9:20 schedule-param"]);
    assert_eq!(
        diagnostics[0].message,
        r#"param "epochs" of pipeline "churn" is int, but "three" is not"#
    );
    Ok(())
}

#[test]
fn an_output_name_that_could_leave_the_step_directory_is_refused() -> TestResult {
    let churn = replaced(
        CHURN,
        "      run: [python3, prepare.py]\n",
        "      run: [python3, prepare.py]\n      outputs: [../x]\n",
    )?;
    let diagnostics = invalid(&[("pipelines/churn.yaml", &churn)])?;
    assert_eq!(
        places(&diagnostics),
        ["pipelines/churn.yaml:12:17 output-escapes"]
    );
    assert!(
        diagnostics[0].message.contains(r#""../x""#),
        "{diagnostics:?}"
    );
    Ok(())
}

#[test]
fn a_run_command_written_as_a_shell_string_is_refused() -> TestResult {
    let churn = replaced(
        CHURN,
        "run: [python3, prepare.py]",
        "run: python3 prepare.py",
    )?;
    let diagnostics = invalid(&[("pipelines/churn.yaml", &churn)])?;
    assert_eq!(places(&diagnostics), ["pipelines/churn.yaml:11:12 yaml"]);
    let message = &diagnostics[0].message;
    assert!(
        message.contains("`run` must be an argv list") && message.contains("[python3, prepare.py]"),
        "{message}"
    );
    Ok(())
}

#[test]
fn an_image_not_pinned_by_digest_is_denied_for_every_step_using_it() -> TestResult {
    let churn = replaced(CHURN, "spec:\n", "spec:\n  image: python:3.12\n")?;
    let diagnostics = invalid(&[("pipelines/churn.yaml", &churn)])?;
    assert_eq!(
        places(&diagnostics),
        [
            "pipelines/churn.yaml:7:10 policy/image-pinned",
            "pipelines/churn.yaml:7:10 policy/image-pinned"
        ]
    );
    for step in ["prepare", "train"] {
        let wanted = format!(r#"image "python:3.12" of step "{step}" is not pinned by digest"#);
        assert!(
            diagnostics.iter().any(|d| d.message.starts_with(&wanted)),
            "{wanted} in {diagnostics:?}"
        );
    }
    Ok(())
}

#[test]
fn a_pipeline_owned_by_a_person_is_denied_by_the_repository_policy() -> TestResult {
    let churn = replaced(CHURN, "owner: team-growth", "owner: alice")?;
    let diagnostics = invalid(&[("pipelines/churn.yaml", &churn)])?;
    assert_eq!(
        places(&diagnostics),
        ["pipelines/churn.yaml:5:10 policy/owner-is-a-team"]
    );
    assert_eq!(
        diagnostics[0].message,
        r#"owner "alice" of pipeline "churn" is not a team (team-...)"#
    );
    Ok(())
}

#[test]
fn a_gpu_pipeline_scheduled_every_five_minutes_is_denied_unless_the_policy_config_allows_it()
-> TestResult {
    let gpu = replaced(
        CHURN,
        "      needs: [prepare]\n",
        "      needs: [prepare]\n      resources: {gpu: 1}\n      timeout: 1h\n",
    )?;
    let often = replaced(NIGHTLY, r#""30 2 * * *""#, r#""*/5 * * * *""#)?;
    let dir = fixture(&[("pipelines/churn.yaml", &gpu), ("schedules.yaml", &often)])?;

    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(1), "{run}");
    assert_eq!(
        places(&run.diagnostics()?),
        ["schedules.yaml:7:9 policy/gpu-schedule-frequency"]
    );

    let config = temp_dir()?;
    write(
        config.path(),
        "policy.yaml",
        "gpu_schedule_min_interval_seconds: 300\n",
    )?;
    let config = config.path().join("policy.yaml");
    let args = [
        OsStr::new("validate"),
        OsStr::new("--policy-config"),
        config.as_os_str(),
    ];
    let allowed = trainyard(dir.path(), &args)?;
    assert_eq!(allowed.code, Some(0), "{allowed}");
    Ok(())
}

#[test]
fn a_warning_alone_leaves_the_repository_valid() -> TestResult {
    let untimed_gpu = replaced(
        CHURN,
        "      needs: [prepare]\n",
        "      needs: [prepare]\n      resources: {gpu: 1}\n",
    )?;
    let dir = fixture(&[("pipelines/churn.yaml", &untimed_gpu)])?;
    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.json()?["valid"], true);
    let diagnostics = run.diagnostics()?;
    assert_eq!(
        places(&diagnostics),
        ["pipelines/churn.yaml:12:7 policy/gpu-step-timeout"]
    );
    assert_eq!(diagnostics[0].severity, "warning");

    let text = trainyard(dir.path(), &["validate"])?;
    assert_eq!(text.code, Some(0), "{text}");
    assert!(
        text.stdout
            .starts_with("pipelines/churn.yaml:12:7: warning: GPU step \"train\" has no timeout"),
        "{text}"
    );
    assert_eq!(
        text.last_line(),
        ".: valid: 1 pipelines, 0 schedules, 0 errors, 1 warnings"
    );
    Ok(())
}

#[test]
fn every_problem_in_every_file_is_reported_in_one_run() -> TestResult {
    let unknown_need = replaced(CHURN, "needs: [prepare]", "needs: [prepar]")?;
    let personal = replaced(CHURN, "owner: team-growth", "owner: alice")?;
    let personal = replaced(&personal, "name: churn", "name: forecast")?;
    let bad_zone = replaced(NIGHTLY, "Europe/Berlin", "Mars/Olympus")?;
    let bad_zone = format!("{bad_zone}  params: {{epochs: 2.5}}\n");
    let dir = fixture(&[
        ("pipelines/churn.yaml", unknown_need.as_str()),
        ("pipelines/forecast.yaml", personal.as_str()),
        ("schedules.yaml", bad_zone.as_str()),
        (
            "broken.yaml",
            "apiVersion: trainyard.dev/v1\nkind: [Pipeline\n",
        ),
        (
            "valid/pipeline.yaml",
            &replaced(CHURN, "name: churn", "name: valid")?,
        ),
    ])?;
    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(1), "{run}");
    let diagnostics = run.diagnostics()?;
    let codes: Vec<(&str, &str)> = diagnostics
        .iter()
        .map(|d| (d.file.as_str(), d.code.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            ("broken.yaml", "yaml"),
            ("pipelines/churn.yaml", "unknown-step"),
            ("pipelines/forecast.yaml", "policy/owner-is-a-team"),
            ("schedules.yaml", "unknown-timezone"),
            ("schedules.yaml", "schedule-param"),
        ]
    );
    assert_eq!(run.json()?["pipelines"], 1, "only `valid` is left: {run}");

    let text = trainyard(dir.path(), &["validate"])?;
    assert_eq!(text.code, Some(1), "{text}");
    assert_eq!(
        text.last_line(),
        ".: invalid: 1 pipelines, 0 schedules, 5 errors, 0 warnings"
    );
    Ok(())
}

// Hostile input: each is refused quickly, and the sample repository's other files are still
// read and counted.

/// The sample repository with `content` added at `file`, validated as JSON; checks that the
/// run failed quickly with the sample's documents still counted and only `file` reported, and
/// returns the diagnostics.
fn hostile(file: &str, content: impl AsRef<[u8]>) -> Result<Vec<Diagnostic>> {
    let dir = examples_copy()?;
    write(dir.path(), file, content)?;
    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.elapsed < HOSTILE_LIMIT, "took {:?}", run.elapsed);
    let json = run.json()?;
    assert_eq!(
        (&json["pipelines"], &json["schedules"]),
        (&3.into(), &2.into()),
        "{run}"
    );
    let diagnostics = run.diagnostics()?;
    assert!(!diagnostics.is_empty(), "{file} is reported: {run}");
    assert!(
        diagnostics.iter().all(|d| d.file == file),
        "only {file} is reported: {diagnostics:?}"
    );
    Ok(diagnostics)
}

/// A pipeline whose param default is `value` (a place where any YAML value parses).
fn pipeline_with_default(value: &str) -> String {
    format!(
        "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {{name: hostile, owner: team-ml}}\nspec:\n  params:\n    p: {{type: string, default: {value}}}\n  steps:\n    - {{name: s, run: [x]}}\n"
    )
}

/// Nine anchors, each a list of nine aliases of the one before: 9^9 strings if expanded.
fn alias_bomb() -> String {
    let mut yaml = String::from(
        "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: bomb, owner: team-ml}\nspec:\n  params:\n",
    );
    yaml.push_str(
        "    a: {type: string, default: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]}\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .into_iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let aliases = vec![format!("*{prev}"); 9].join(", ");
        yaml.push_str(&format!(
            "    {name}: {{type: string, default: &{name} [{aliases}]}}\n"
        ));
    }
    yaml.push_str("  steps:\n    - {name: s, run: [x]}\n");
    yaml
}

/// A pipeline whose param default is nested 10,000 lists deep.
fn deep_nesting() -> String {
    pipeline_with_default(&format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)))
}

#[test]
fn a_file_over_one_mebibyte_is_refused_without_being_parsed() -> TestResult {
    let big = format!("# {}\n", "x".repeat(1024 * 1024));
    let diagnostics = hostile("hostile/big.yaml", big.as_bytes())?;
    assert_eq!(
        places(&diagnostics),
        ["hostile/big.yaml:0:0 file-too-large"]
    );
    assert_eq!(
        diagnostics[0].message,
        "file is 1048579 bytes; the limit is 1048576 bytes"
    );
    Ok(())
}

#[test]
fn an_alias_bomb_is_refused_quickly() -> TestResult {
    let bomb = alias_bomb();
    let diagnostics = hostile("hostile/bomb.yaml", bomb.as_bytes())?;
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert!(
        matches!(diagnostics[0].code.as_str(), "yaml" | "yaml-limit"),
        "{diagnostics:?}"
    );
    Ok(())
}

#[test]
fn an_alias_bomb_is_reported_as_a_yaml_limit() -> TestResult {
    let bomb = alias_bomb();
    let diagnostics = hostile("hostile/bomb.yaml", bomb.as_bytes())?;
    assert_eq!(diagnostics[0].code, "yaml-limit", "{diagnostics:?}");
    Ok(())
}

#[test]
fn ten_thousand_levels_of_nesting_are_refused_quickly() -> TestResult {
    let deep = deep_nesting();
    let diagnostics = hostile("hostile/deep.yaml", deep.as_bytes())?;
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert!(
        matches!(diagnostics[0].code.as_str(), "yaml" | "yaml-limit"),
        "{diagnostics:?}"
    );
    assert_eq!(diagnostics[0].line, 6, "{diagnostics:?}");
    Ok(())
}

#[test]
fn nesting_a_little_deeper_than_allowed_is_a_yaml_limit() -> TestResult {
    let deep = pipeline_with_default(&format!("{}{}", "[".repeat(100), "]".repeat(100)));
    let diagnostics = hostile("hostile/deep.yaml", deep.as_bytes())?;
    assert_eq!(places(&diagnostics), ["hostile/deep.yaml:6:92 yaml-limit"]);
    Ok(())
}

#[test]
fn ten_thousand_levels_of_nesting_are_reported_as_a_yaml_limit() -> TestResult {
    let deep = deep_nesting();
    let diagnostics = hostile("hostile/deep.yaml", deep.as_bytes())?;
    let found: Vec<(u64, &str)> = diagnostics
        .iter()
        .map(|d| (d.line, d.code.as_str()))
        .collect();
    assert_eq!(found, [(6, "yaml-limit")]);
    Ok(())
}

#[test]
fn a_file_that_is_not_utf8_is_refused_at_the_first_bad_byte() -> TestResult {
    let latin1 = b"apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata:\n  name: caf\xe9\n";
    let diagnostics = hostile("hostile/latin1.yaml", latin1)?;
    assert_eq!(places(&diagnostics), ["hostile/latin1.yaml:4:12 not-utf8"]);
    Ok(())
}

#[cfg(unix)]
#[test]
fn a_symlink_leaving_the_repository_is_not_followed() -> TestResult {
    let outside = work_tree(&[("secret.yaml", CHURN)])?;
    let dir = examples_copy()?;
    std::os::unix::fs::symlink(
        outside.path().join("secret.yaml"),
        dir.path().join("pipelines/secret.yaml"),
    )?;
    let run = validate_json(dir.path())?;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.elapsed < HOSTILE_LIMIT, "took {:?}", run.elapsed);
    let diagnostics = run.diagnostics()?;
    assert_eq!(places(&diagnostics), ["pipelines/secret.yaml:0:0 symlink"]);
    assert!(
        diagnostics[0]
            .message
            .contains("leaves the tracked directory"),
        "{diagnostics:?}"
    );
    let json = run.json()?;
    assert_eq!(
        (&json["pipelines"], &json["schedules"]),
        (&3.into(), &2.into())
    );
    Ok(())
}

#[cfg(unix)]
#[test]
fn a_committed_symlink_leaving_the_repository_is_not_followed() -> TestResult {
    let repo = Repo::from_examples()?;
    std::os::unix::fs::symlink(
        "../../etc/passwd",
        repo.path().join("pipelines/passwd.yaml"),
    )?;
    repo.commit("a link out of the repository")?;
    let run = trainyard(
        repo.path(),
        &["validate", ".", "--rev", "HEAD", "--format", "json"],
    )?;
    assert_eq!(run.code, Some(1), "{run}");
    let diagnostics = run.diagnostics()?;
    assert_eq!(places(&diagnostics), ["pipelines/passwd.yaml:0:0 symlink"]);
    assert!(
        diagnostics[0]
            .message
            .contains("leaves the tracked directory"),
        "{diagnostics:?}"
    );
    assert_eq!(run.json()?["pipelines"], 3);
    Ok(())
}

// `--rev`: reading a Git revision instead of the working tree.

/// The sample repository's iris pipeline.
const IRIS: &str = "pipelines/iris/pipeline.yaml";

/// Where the need of `prepar` in the broken iris pipeline is reported.
fn prepar_place(dir: &Path) -> Result<String> {
    let (line, column) = position(&std::fs::read_to_string(dir.join(IRIS))?, "prepar]")?;
    Ok(format!("{IRIS}:{line}:{column} unknown-step"))
}

/// The sample repository committed twice: valid, then with an unknown need in iris.
fn valid_then_broken() -> Result<Repo> {
    let repo = Repo::from_examples()?;
    repo.commit("valid")?;
    repo.edit(IRIS, "needs: [prepare]\n", "needs: [prepar]\n")?;
    repo.commit("broken")?;
    Ok(repo)
}

#[test]
fn rev_validates_the_named_revision() -> TestResult {
    let repo = valid_then_broken()?;
    let before = trainyard(repo.path(), &["validate", "--rev", "HEAD~1"])?;
    assert_eq!(before.code, Some(0), "{before}");
    assert_eq!(
        before.stdout,
        ".: valid: 3 pipelines, 2 schedules, 0 errors, 0 warnings\n"
    );

    let head = trainyard(
        repo.path(),
        &["validate", "--rev", "HEAD", "--format", "json"],
    )?;
    assert_eq!(head.code, Some(1), "{head}");
    let diagnostics = head.diagnostics()?;
    assert!(
        places(&diagnostics).contains(&prepar_place(repo.path())?),
        "{head}"
    );
    Ok(())
}

#[test]
fn rev_does_not_read_the_working_tree() -> TestResult {
    let repo = valid_then_broken()?;
    // The working tree is broken like HEAD; repair it without committing.
    repo.edit(IRIS, "needs: [prepar]\n", "needs: [prepare]\n")?;
    assert_eq!(trainyard(repo.path(), &["validate"])?.code, Some(0));
    let head = trainyard(repo.path(), &["validate", "--rev", "HEAD"])?;
    assert_eq!(head.code, Some(1), "{head}");

    // Breaking the working tree in another way does not change what HEAD~1 says.
    repo.write(IRIS, "kind: [\n")?;
    repo.write("extra.yaml", "not: a document\n")?;
    assert_eq!(trainyard(repo.path(), &["validate"])?.code, Some(1));
    let before = trainyard(repo.path(), &["validate", "--rev", "HEAD~1"])?;
    assert_eq!(before.code, Some(0), "{before}");
    Ok(())
}

#[test]
fn rev_accepts_a_subdirectory_and_reports_paths_relative_to_it() -> TestResult {
    let repo = Repo::new()?;
    copy_dir(&examples_repo(), &repo.path().join("ml"))?;
    repo.write("README.md", "# not definitions\n")?;
    repo.write("ci.yaml", "jobs: {test: {}}\n")?;
    repo.commit("definitions in a subdirectory")?;
    repo.edit(
        "ml/pipelines/iris/pipeline.yaml",
        "needs: [prepare]\n",
        "needs: [prepar]\n",
    )?;
    repo.commit("broken")?;

    let valid = trainyard(repo.path(), &["validate", "ml", "--rev", "HEAD~1"])?;
    assert_eq!(valid.code, Some(0), "{valid}");
    assert_eq!(
        valid.stdout,
        "ml: valid: 3 pipelines, 2 schedules, 0 errors, 0 warnings\n"
    );

    // Run from inside the subdirectory, naming it as `.`.
    let broken = trainyard(
        &repo.path().join("ml"),
        &["validate", ".", "--rev", "HEAD", "--format", "json"],
    )?;
    assert_eq!(broken.code, Some(1), "{broken}");
    let diagnostics = broken.diagnostics()?;
    assert_eq!(
        diagnostics[0].place(),
        prepar_place(&repo.path().join("ml"))?
    );
    Ok(())
}

#[test]
fn an_unknown_revision_is_a_usage_error() -> TestResult {
    let repo = valid_then_broken()?;
    let run = trainyard(repo.path(), &["validate", "--rev", "no-such-branch"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .contains(r#"revision "no-such-branch" not found"#),
        "{run}"
    );
    Ok(())
}

#[test]
fn rev_of_a_path_missing_at_that_revision_is_a_usage_error() -> TestResult {
    let repo = valid_then_broken()?;
    std::fs::create_dir(repo.path().join("later"))?;
    let run = trainyard(repo.path(), &["validate", "later", "--rev", "HEAD"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr
            .contains(r#"path "later" does not exist at HEAD"#),
        "{run}"
    );
    Ok(())
}

#[test]
fn rev_outside_a_git_repository_is_a_usage_error() -> TestResult {
    let dir = examples_copy()?;
    if git2::Repository::discover(dir.path()).is_ok() {
        // The temporary directory lies inside some repository: nothing to test here.
        return Ok(());
    }
    let run = trainyard(dir.path(), &["validate", "--rev", "HEAD"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr.contains("is not inside a Git repository"),
        "{run}"
    );
    Ok(())
}

// Usage errors.

#[test]
fn an_unknown_flag_is_a_usage_error() -> TestResult {
    let run = trainyard(&examples_repo(), &["validate", "--strict"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("--strict"), "{run}");
    Ok(())
}

#[test]
fn an_unknown_output_format_is_a_usage_error() -> TestResult {
    let run = trainyard(&examples_repo(), &["validate", "--format", "yaml"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("yaml"), "{run}");
    Ok(())
}

#[test]
fn a_nonexistent_path_is_a_usage_error() -> TestResult {
    let dir = temp_dir()?;
    let run = trainyard(dir.path(), &["validate", "no-such-dir"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr
            .starts_with("trainyard: error: cannot read no-such-dir"),
        "{run}"
    );
    Ok(())
}

#[test]
fn a_nonexistent_path_names_the_system_error_once() -> TestResult {
    let dir = temp_dir()?;
    let run = trainyard(dir.path(), &["validate", "no-such-dir"])?;
    assert_eq!(run.code, Some(2), "{run}");
    assert_eq!(run.stderr.matches("(os error").count(), 1, "{run}");
    Ok(())
}
