//! The tests every [`Forge`] must pass, written once over any forge that can show what it
//! holds; each backend instantiates them with `forge_suite!(its_fixture)`.

use std::any::Any;

use super::{Forge, ForgeError, Status, StatusState};

/// Reads back what a forge holds, as its users would see it.
pub(crate) trait ForgeProbe {
    /// The statuses of `commit`, one per context.
    fn statuses(&self, commit: &str) -> Vec<Status>;
    /// How many writes the forge has made so far (notes commits, status requests).
    fn writes(&self) -> usize;
}

/// A fresh forge with two commits it knows and one it does not.
pub(crate) struct Fixture<F> {
    pub forge: F,
    pub commit: String,
    pub other_commit: String,
    pub unknown_commit: String,
    /// Whatever must live as long as the forge: a temp directory, a stub server.
    pub _keep: Box<dyn Any + Send>,
}

fn status(commit: &str, context: &str, state: StatusState, description: &str) -> Status {
    Status {
        commit: commit.to_owned(),
        context: context.to_owned(),
        state,
        description: description.to_owned(),
        target_url: None,
    }
}

fn held<F: ForgeProbe>(forge: &F, commit: &str, context: &str) -> Vec<Status> {
    forge
        .statuses(commit)
        .into_iter()
        .filter(|s| s.context == context)
        .collect()
}

pub(crate) async fn a_status_set_reads_back<F: Forge + ForgeProbe>(f: Fixture<F>) {
    let mut s = status(
        &f.commit,
        "trainyard/run/iris",
        StatusState::Success,
        "run 12 succeeded in 4.1s",
    );
    s.target_url = Some("http://localhost:8080/runs/12".to_owned());
    f.forge.set_status(&s).await.expect("status set");
    assert_eq!(f.forge.statuses(&f.commit), [s]);
}

pub(crate) async fn a_later_state_replaces_the_earlier_one<F: Forge + ForgeProbe>(f: Fixture<F>) {
    let context = "trainyard/run/iris";
    let pending = status(&f.commit, context, StatusState::Pending, "run 12 queued");
    let failed = status(
        &f.commit,
        context,
        StatusState::Failure,
        "run 12 failed: train",
    );
    f.forge.set_status(&pending).await.expect("pending set");
    f.forge.set_status(&failed).await.expect("failure set");
    assert_eq!(held(&f.forge, &f.commit, context), [failed]);
}

pub(crate) async fn an_identical_status_writes_nothing<F: Forge + ForgeProbe>(f: Fixture<F>) {
    let s = status(
        &f.commit,
        "trainyard/validate",
        StatusState::Success,
        "2 pipelines, 2 schedules",
    );
    f.forge.set_status(&s).await.expect("status set");
    let other = status(
        &f.commit,
        "trainyard/plan",
        StatusState::Success,
        "no changes",
    );
    f.forge.set_status(&other).await.expect("other status set");
    let writes = f.forge.writes();
    f.forge.set_status(&s).await.expect("repeat accepted");
    f.forge.set_status(&other).await.expect("repeat accepted");
    assert_eq!(
        f.forge.writes(),
        writes,
        "a repeated status is not written again"
    );
    let changed = status(
        &f.commit,
        "trainyard/validate",
        StatusState::Failure,
        "1 error",
    );
    f.forge
        .set_status(&changed)
        .await
        .expect("changed status set");
    assert_eq!(f.forge.writes(), writes + 1, "a changed status is written");
}

pub(crate) async fn contexts_of_different_names_do_not_overwrite_each_other<
    F: Forge + ForgeProbe,
>(
    f: Fixture<F>,
) {
    let run = status(
        &f.commit,
        "trainyard/run/iris",
        StatusState::Success,
        "run 12 ok",
    );
    let model = status(
        &f.commit,
        "trainyard/model/iris-classifier",
        StatusState::Failure,
        "gate failed",
    );
    let elsewhere = status(
        &f.other_commit,
        "trainyard/run/iris",
        StatusState::Pending,
        "queued",
    );
    for s in [&run, &model, &elsewhere] {
        f.forge.set_status(s).await.expect("status set");
    }
    let mut on_commit = f.forge.statuses(&f.commit);
    on_commit.sort_by(|a, b| a.context.cmp(&b.context));
    assert_eq!(on_commit, [model, run]);
    assert_eq!(f.forge.statuses(&f.other_commit), [elsewhere]);
}

pub(crate) async fn descriptions_longer_than_140_characters_are_cut<F: Forge + ForgeProbe>(
    f: Fixture<F>,
) {
    let long = format!("run 12 failed: {}", "ø".repeat(300));
    let s = status(&f.commit, "trainyard/run/iris", StatusState::Failure, &long);
    f.forge.set_status(&s).await.expect("status set");
    let held = held(&f.forge, &f.commit, "trainyard/run/iris");
    assert_eq!(held.len(), 1, "{held:?}");
    let description = &held[0].description;
    assert_eq!(description.chars().count(), 140, "{description}");
    assert!(
        description.starts_with("run 12 failed: øøø"),
        "{description}"
    );
}

pub(crate) async fn an_unknown_commit_is_a_permanent_error<F: Forge + ForgeProbe>(f: Fixture<F>) {
    let s = status(
        &f.unknown_commit,
        "trainyard/plan",
        StatusState::Success,
        "ok",
    );
    let err = f.forge.set_status(&s).await.expect_err("unknown commit");
    assert!(matches!(err, ForgeError::Permanent { .. }), "{err:?}");
    assert_eq!(f.forge.writes(), 0);
}

/// Instantiates the suite for one forge; `$fixture` is an async fn returning a fresh
/// [`Fixture`].
macro_rules! forge_suite {
    ($fixture:path) => {
        mod forge_suite {
            use super::*;
            use $crate::report::suite;

            #[tokio::test]
            async fn a_status_set_reads_back() {
                suite::a_status_set_reads_back($fixture().await).await;
            }

            #[tokio::test]
            async fn a_later_state_replaces_the_earlier_one() {
                suite::a_later_state_replaces_the_earlier_one($fixture().await).await;
            }

            #[tokio::test]
            async fn an_identical_status_writes_nothing() {
                suite::an_identical_status_writes_nothing($fixture().await).await;
            }

            #[tokio::test]
            async fn contexts_of_different_names_do_not_overwrite_each_other() {
                suite::contexts_of_different_names_do_not_overwrite_each_other($fixture().await)
                    .await;
            }

            #[tokio::test]
            async fn descriptions_longer_than_140_characters_are_cut() {
                suite::descriptions_longer_than_140_characters_are_cut($fixture().await).await;
            }

            #[tokio::test]
            async fn an_unknown_commit_is_a_permanent_error() {
                suite::an_unknown_commit_is_a_permanent_error($fixture().await).await;
            }
        }
    };
}

pub(crate) use forge_suite;
