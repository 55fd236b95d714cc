//! End-to-end tests of `trainyard serve --once`: a commit of the sample repository is
//! applied, its pipeline really trains, the model is registered behind its gates, and the
//! results are written back as a Git note on the commit.

use trainyard_tests::{Repo, Result, TestResult, installation_of, trainyard};

/// The Trainyard note of `commit`, or an empty string.
fn note(repo: &Repo, commit: git2::Oid) -> Result<String> {
    let git = git2::Repository::open(repo.path())?;
    let note = match git.find_note(Some("refs/notes/trainyard"), commit) {
        Ok(note) => note.message().unwrap_or_default().to_owned(),
        Err(_) => String::new(),
    };
    Ok(note)
}

fn line<'a>(note: &'a str, context: &str) -> &'a str {
    note.lines()
        .find(|l| l.starts_with(&format!("{context}:")))
        .unwrap_or("")
}

fn once(repo: &Repo) -> Result<trainyard_tests::Run> {
    trainyard(repo.path(), &["serve", "--once"])
}

#[test]
fn serve_once_trains_registers_and_notes_the_sample_model() -> TestResult {
    let repo = Repo::from_examples()?;
    let commit = repo.commit("sample")?;
    let run = once(&repo)?;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("run 1 succeeded"), "{run}");
    let note = note(&repo, commit)?;
    assert!(
        line(&note, "trainyard/validate").contains("success — 3 pipelines, 2 schedules"),
        "{note}"
    );
    assert!(
        line(&note, "trainyard/run/iris").contains("success — run 1 succeeded"),
        "{note}"
    );
    let model = line(&note, "trainyard/model/iris-classifier");
    assert!(
        model.contains("success — accepted, now champion: accuracy 0.9"),
        "{note}"
    );
    let id = installation_of(&repo.path().join(".trainyard/trainyard.db"))?;
    let stored = repo
        .path()
        .join(format!(".trainyard/artifacts/{id}/runs/1/train/model"));
    let weights = std::fs::read_to_string(&stored)?;
    assert!(
        weights.contains("setosa"),
        "the model artifact holds the trained classes: {weights}"
    );
    Ok(())
}

#[test]
fn a_second_pass_over_the_same_commit_starts_nothing() -> TestResult {
    let repo = Repo::from_examples()?;
    let commit = repo.commit("sample")?;
    assert_eq!(once(&repo)?.code, Some(0));
    let first = note(&repo, commit)?;
    let again = once(&repo)?;
    assert_eq!(again.code, Some(0), "{again}");
    assert!(again.stdout.contains("no run to start"), "{again}");
    assert_eq!(note(&repo, commit)?, first);
    Ok(())
}

#[test]
fn a_worse_model_is_rejected_and_the_champion_stays() -> TestResult {
    let repo = Repo::from_examples()?;
    repo.commit("sample")?;
    assert_eq!(once(&repo)?.code, Some(0));
    repo.edit(
        "pipelines/iris/pipeline.yaml",
        "epochs: {type: int, default: 200}",
        "epochs: {type: int, default: 1}",
    )?;
    repo.edit(
        "pipelines/iris/pipeline.yaml",
        "lr: {type: float, default: 0.1}",
        "lr: {type: float, default: 0.0001}",
    )?;
    let second = repo.commit("undertrain")?;
    let run = once(&repo)?;
    assert_eq!(run.code, Some(0), "the run itself succeeds: {run}");
    assert!(run.stdout.contains("run 2 succeeded"), "{run}");
    let note = note(&repo, second)?;
    let model = line(&note, "trainyard/model/iris-classifier");
    assert!(model.contains("failure — rejected"), "{note}");
    assert!(model.contains("✗"), "the failed gate is named: {note}");
    Ok(())
}

#[test]
fn a_broken_file_keeps_its_last_good_version_and_fails_validation() -> TestResult {
    let repo = Repo::from_examples()?;
    repo.commit("sample")?;
    assert_eq!(once(&repo)?.code, Some(0));
    repo.edit(
        "pipelines/iris/pipeline.yaml",
        "needs: [prepare]",
        "needs: [prepped]",
    )?;
    let broken = repo.commit("typo")?;
    let run = once(&repo)?;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(
        run.stdout.contains("no run to start"),
        "nothing runs from a broken file: {run}"
    );
    let note = note(&repo, broken)?;
    let validate = line(&note, "trainyard/validate");
    assert!(
        validate.contains("failure — 2 errors; 1 file kept at their last good version"),
        "{note}"
    );
    assert!(
        validate.contains("pipelines/iris/pipeline.yaml:"),
        "the error names its place: {note}"
    );

    repo.edit(
        "pipelines/iris/pipeline.yaml",
        "needs: [prepped]",
        "needs: [prepare]",
    )?;
    repo.edit(
        "pipelines/iris/pipeline.yaml",
        "seed: {type: int, default: 42}",
        "seed: {type: int, default: 7}",
    )?;
    repo.commit("repaired")?;
    let repaired = once(&repo)?;
    assert!(
        repaired.stdout.contains("run 2 succeeded"),
        "the repaired version runs: {repaired}"
    );
    Ok(())
}

#[test]
fn a_failing_step_is_retried_then_fails_the_run() -> TestResult {
    let pipeline = "apiVersion: trainyard.dev/v1\nkind: Pipeline\nmetadata: {name: flaky, owner: team-a}\n\
        spec:\n  image: reg.example.com/x@sha256:4f3c9d2e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e\n  \
        triggers: {on_change: true}\n  steps:\n    - name: s\n      retries: 1\n      \
        run: [python3, -c, \"import sys; print('trying'); sys.exit(3)\"]\n";
    let repo = Repo::with_files(&[("flaky.yaml", pipeline)])?;
    let head = git2::Repository::open(repo.path())?
        .head()?
        .peel_to_commit()?
        .id();
    let run = once(&repo)?;
    assert_eq!(run.code, Some(1), "a failed run fails the pass: {run}");
    assert!(run.stdout.contains("run 1 failed"), "{run}");
    let id = installation_of(&repo.path().join(".trainyard/trainyard.db"))?;
    assert!(
        run.stderr.contains(&format!("ty-{id}-1-s-2")),
        "the step was attempted a second time: {run}"
    );
    let note = note(&repo, head)?;
    assert!(
        line(&note, "trainyard/run/flaky").contains("failure — step s failed: exited with code 3"),
        "{note}"
    );
    Ok(())
}

#[test]
fn a_queued_manual_run_is_driven_with_its_params() -> TestResult {
    let repo = Repo::from_examples()?;
    repo.commit("sample")?;
    assert_eq!(once(&repo)?.code, Some(0));
    let queued = trainyard(
        repo.path(),
        &["run", "iris", "--param", "epochs=300", "--param", "lr=0.05"],
    )?;
    assert_eq!(queued.code, Some(0), "{queued}");
    assert!(queued.stdout.contains("run 2 of iris queued"), "{queued}");
    let run = once(&repo)?;
    assert!(run.stdout.contains("run 2 succeeded"), "{run}");
    let id = installation_of(&repo.path().join(".trainyard/trainyard.db"))?;
    let args = std::fs::read_to_string(
        repo.path()
            .join(format!(".trainyard/artifacts/jobs/ty-{id}-2-train-1/log")),
    )?;
    assert!(
        args.contains("epoch 300") || args.contains("300"),
        "the step saw epochs=300: {args}"
    );
    Ok(())
}

#[test]
fn a_manual_run_with_a_bad_param_or_pipeline_is_refused() -> TestResult {
    let repo = Repo::from_examples()?;
    repo.commit("sample")?;
    assert_eq!(once(&repo)?.code, Some(0));
    let wrong_type = trainyard(repo.path(), &["run", "iris", "--param", "epochs=many"])?;
    assert_eq!(wrong_type.code, Some(1), "{wrong_type}");
    assert!(
        wrong_type
            .stderr
            .contains("param \"epochs\" of pipeline \"iris\" is int"),
        "{wrong_type}"
    );
    let unknown = trainyard(repo.path(), &["run", "irsi"])?;
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(
        unknown.stderr.contains("pipeline \"irsi\" is not declared"),
        "{unknown}"
    );
    let typo = trainyard(repo.path(), &["run", "iris", "--param", "epoch=3"])?;
    assert!(typo.stderr.contains("did you mean `epochs`?"), "{typo}");
    Ok(())
}

#[test]
fn a_repository_given_by_url_is_fetched_into_a_cache_and_followed() -> TestResult {
    let source = Repo::from_examples()?;
    source.commit("sample")?;
    let data = trainyard_tests::temp_dir()?;
    let url = format!("file://{}", source.path().display());
    let data_dir = data.path().join("state");
    let data_arg = data_dir.display().to_string();
    let args = [
        "serve",
        "--repo",
        url.as_str(),
        "--data-dir",
        data_arg.as_str(),
        "--once",
    ];
    let first = trainyard(data.path(), &args)?;
    assert_eq!(first.code, Some(0), "{first}");
    assert!(first.stdout.contains("run 1 succeeded"), "{first}");
    assert!(
        first.stdout.contains("--git-dir"),
        "the note is in the cache: {first}"
    );

    source.edit(
        "pipelines/iris/pipeline.yaml",
        "seed: {type: int, default: 42}",
        "seed: {type: int, default: 7}",
    )?;
    let second_commit = source.commit("new seed")?;
    let second = trainyard(data.path(), &args)?;
    assert!(
        second.stdout.contains("run 2 succeeded"),
        "the new commit was fetched: {second}"
    );
    let cache = git2::Repository::open_bare(data_dir.join("repo.git"))?;
    let note = cache.find_note(Some("refs/notes/trainyard"), second_commit)?;
    assert!(
        note.message()
            .unwrap_or_default()
            .contains("trainyard/run/iris: success"),
        "{:?}",
        note.message()
    );
    Ok(())
}
