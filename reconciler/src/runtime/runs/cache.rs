//! Step caching in the run loop: the cache key of a step about to start, and whether an
//! earlier attempt under that key can stand in for it.
//!
//! The key is the sha256 of everything that decides what a step writes, as JSON: the image
//! as written (a tag that moves is not noticed: pin `@sha256:` digests, or bump
//! `cache_version`), the argv and env with their templates rendered (secret names, never
//! values), the outputs it declares, a digest of the step's folder at the run's commit (every
//! file's path, mode and blob id but the pipeline file's own), the sha256 of every input,
//! and the user's `cache_version`. Paths are rendered as if every attempt ran in the same
//! directory, so the job's own name (which holds the run id) stays out of it; `{{ run.id }}` and `{{ run.scheduled_time }}` do not, and a step
//! that reads them is never reused.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{Pinned, Runs};
use crate::artifacts;
use crate::execute::{Executor, StepJob, job_name};
use crate::runtime::ObjectError;
use crate::runtime::job::{self, Placement};
use crate::spec::CachePolicy;
use crate::spec::units::parse_duration;
use crate::store::{AttemptId, CacheEntry, RunRow, Trigger};

/// Where the key's rendering places the job: any fixed directory would do.
const KEY_DIR: &str = "/trainyard";
/// Bumped when what goes into a key changes, so no old entry matches a new key by chance.
const KEY_FORMAT: u32 = 1;

/// What a cache key is the digest of.
#[derive(Serialize)]
struct KeyParts<'a> {
    format: u32,
    image: &'a str,
    argv: &'a [String],
    env: &'a BTreeMap<String, String>,
    secrets: &'a [String],
    outputs: Vec<&'a str>,
    /// Input path below the job directory → sha256 of its content.
    inputs: BTreeMap<String, &'a str>,
    /// The digest of the step's folder at the run's commit, if there is one.
    tree: Option<&'a str>,
    version: &'a str,
}

impl KeyParts<'_> {
    fn digest(&self) -> String {
        // A struct of strings, maps and lists always serializes.
        let json = serde_json::to_vec(self).unwrap_or_default();
        artifacts::hex(&Sha256::digest(json))
    }
}

/// What starting a step comes to, as far as the cache is concerned.
pub(super) enum Reuse {
    /// An earlier attempt stands in for this one, which is recorded as cached.
    Reused,
    /// The step runs; `key` is its cache key when its attempt may become an entry.
    Run { key: Option<String> },
}

impl<E: Executor> Runs<E> {
    /// For attempt `attempt` of a step that is cached: records it as cached when an earlier
    /// attempt can stand in for it (unless the run refuses the cache), else gives the key its
    /// attempt is recorded under, so that it refreshes the cache. A preview reuses entries
    /// but makes none: it runs a pull request's code, which must not decide what later runs
    /// of the branch get.
    pub(super) async fn reuse(
        &mut self,
        run: &RunRow,
        pinned: &Pinned,
        step: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Reuse, ObjectError> {
        let spec = &pinned.pipeline.spec;
        let Some((definition, policy)) = spec
            .step(step)
            .and_then(|d| spec.cache_of(d).map(|policy| (d, policy)))
        else {
            return Ok(Reuse::Run { key: None });
        };
        let Some(key) = self.cache_key(run, pinned, step, &policy).await? else {
            return Ok(Reuse::Run { key: None });
        };
        // A run that refuses the cache still refreshes it.
        let entry = if run.no_cache {
            None
        } else {
            self.usable_entry(&key, &definition.outputs, &policy, now)
                .await?
        };
        let Some(entry) = entry else {
            let key = (run.trigger != Trigger::Preview).then_some(key);
            return Ok(Reuse::Run { key });
        };
        let job = job_name(&self.installation, run.id, step, attempt);
        let from = &entry.attempt;
        let cached = AttemptId {
            run_id: run.id,
            step: step.to_owned(),
            attempt,
        };
        if self
            .store
            .record_cached(&cached, &job, &key, &entry, now)
            .await?
        {
            tracing::info!(run = run.id, %step, attempt, from_run = from.run_id, from_step = %from.step, from_attempt = from.attempt, "step cached");
        }
        Ok(Reuse::Reused)
    }

    /// The cache key of `step` in `run`, or `None` when the step cannot be keyed (its command
    /// does not render, which fails it when it starts, or an input has no record).
    pub(super) async fn cache_key(
        &mut self,
        run: &RunRow,
        pinned: &Pinned,
        step: &str,
        policy: &CachePolicy<'_>,
    ) -> Result<Option<String>, ObjectError> {
        let settings = self.settings_at(&run.commit_sha).await?;
        let place = Placement {
            job_dir: PathBuf::from(KEY_DIR),
            workdir: PathBuf::from(KEY_DIR).join("src"),
            source: None,
            default_timeout: settings.default_timeout.as_deref(),
            default_image: settings.image.as_deref(),
            installation: &self.installation,
        };
        let Ok(job) = job::build(run, &pinned.pipeline, step, 1, "cache", place, None) else {
            return Ok(None);
        };
        let recorded = self.recorded_inputs(run, &job).await?;
        let mut inputs = BTreeMap::new();
        for (input, row) in job.inputs.iter().zip(&recorded) {
            let below = input.path.strip_prefix(KEY_DIR).unwrap_or(&input.path);
            let sha256 = match row {
                Some(row) => row.sha256.as_str(),
                // The index of a matrix step's instances follows from its definition, and
                // each instance's output is an input of its own.
                None if input.path.ends_with(job::INDEX_FILE) => "index",
                None => return Ok(None),
            };
            inputs.insert(below.display().to_string(), sha256);
        }
        let folder = self.folder_digest(&run.commit_sha, &pinned.file).await?;
        Ok(Some(key_of(
            &job,
            inputs,
            folder.as_deref(),
            policy.version,
        )))
    }

    /// The digest of the folder of pipeline file `file` at `commit`, where its steps run:
    /// every file's path, mode and blob id, except the pipeline file's own (what of it
    /// decides a step's output is in the key already, so editing a gate reuses the steps).
    /// `None` when the folder is not in the commit.
    async fn folder_digest(
        &mut self,
        commit: &str,
        file: &str,
    ) -> Result<Option<String>, ObjectError> {
        let memo = (commit.to_owned(), file.to_owned());
        if let Some(found) = self.folders.get(&memo) {
            return Ok(found.clone());
        }
        let dir = job::step_dir(file);
        let folder = Path::new(&self.subdir).join(dir).display().to_string();
        let own = Path::new(file)
            .strip_prefix(dir)
            .unwrap_or(Path::new(file))
            .display()
            .to_string();
        let at = commit.to_owned();
        let listed = self
            .repo
            .run(move |repo| repo.tree_files(&at, folder.trim_end_matches('/')))
            .await;
        let digest = match listed {
            Ok((_, mut files)) => {
                files.sort_by(|a, b| a.path.cmp(&b.path));
                let mut hash = Sha256::new();
                for f in files.iter().filter(|f| f.path != own.as_bytes()) {
                    hash.update((f.path.len() as u64).to_le_bytes());
                    hash.update(&f.path);
                    hash.update([u8::from(f.executable)]);
                    hash.update(f.blob.as_bytes());
                }
                Some(artifacts::hex(&hash.finalize()))
            }
            Err(error) if error.is_transient() => return Err(error.into()),
            // Not a folder at that commit: nothing of it decides the output.
            Err(_) => None,
        };
        self.folders.insert(memo, digest.clone());
        Ok(digest)
    }

    /// The entry under `key` that can stand in for a new attempt of a step declaring
    /// `outputs`: new enough for `policy`, with every output recorded and still in the
    /// artifact store. One that is not is passed over (and said why), never reused.
    pub(super) async fn usable_entry(
        &self,
        key: &str,
        outputs: &[String],
        policy: &CachePolicy<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<CacheEntry>, ObjectError> {
        let max_age = match policy.max_age.map(parse_duration) {
            None => None,
            Some(Ok(age)) => Some(age),
            Some(Err(why)) => {
                // Validation refuses it; a stored definition this version cannot read
                // reuses nothing.
                tracing::warn!(%why, "cache_max_age cannot be read; nothing is reused");
                return Ok(None);
            }
        };
        let not_before = max_age.map(|age| not_before(now, age));
        let Some(entry) = self.store.cache_entry(key, not_before).await? else {
            return Ok(None);
        };
        let recorded: HashSet<&str> = entry.artifacts.iter().map(|a| a.output.as_str()).collect();
        if let Some(missing) = outputs.iter().find(|o| !recorded.contains(o.as_str())) {
            tracing::warn!(run = entry.attempt.run_id, step = %entry.attempt.step, output = %missing, "a cache entry lacks an output; not reused");
            return Ok(None);
        }
        for artifact in &entry.artifacts {
            let present = match self.artifacts.key_of(&artifact.uri) {
                Some(key) => self.artifacts.exists(key).await?,
                None => false,
            };
            if !present {
                tracing::warn!(uri = %artifact.uri, "a cache entry's output is gone from the artifact store; not reused");
                return Ok(None);
            }
        }
        Ok(Some(entry))
    }
}

/// The key of a job rendered for keying, with its inputs' sha256 by path.
fn key_of(
    job: &StepJob,
    inputs: BTreeMap<String, &str>,
    tree: Option<&str>,
    version: &str,
) -> String {
    KeyParts {
        format: KEY_FORMAT,
        image: &job.image,
        argv: &job.argv,
        env: &job.env,
        secrets: &job.secrets,
        outputs: job.outputs.iter().map(|o| o.name.as_str()).collect(),
        inputs,
        tree,
        version,
    }
    .digest()
}

/// The oldest end an entry may have to be reused at `now` under a maximum age.
fn not_before(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::StepOutput;

    fn job() -> StepJob {
        StepJob {
            name: "cache".to_owned(),
            instance: "i".to_owned(),
            run_id: 1,
            step: "train".to_owned(),
            attempt: 1,
            argv: vec!["python3".to_owned(), "train.py".to_owned()],
            env: BTreeMap::from([("LR".to_owned(), "0.1".to_owned())]),
            image: "python:3.12".to_owned(),
            resources: None,
            timeout: None,
            job_dir: PathBuf::from(KEY_DIR),
            workdir: PathBuf::from(KEY_DIR),
            source: None,
            inputs: Vec::new(),
            outputs: vec![StepOutput {
                name: "model".to_owned(),
                path: PathBuf::from("/trainyard/outputs/model"),
                key: "i/runs/1/train/model".to_owned(),
            }],
            log_key: String::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            secrets: vec!["s3".to_owned()],
        }
    }

    fn key(job: &StepJob, input: &str, tree: Option<&str>, version: &str) -> String {
        let inputs = BTreeMap::from([("inputs/prepare/data".to_owned(), input)]);
        key_of(job, inputs, tree, version)
    }

    #[test]
    fn every_part_that_decides_the_output_changes_the_key() {
        let base = job();
        let first = key(&base, "aa", Some("t1"), "");
        assert_eq!(first, key(&base, "aa", Some("t1"), ""), "the key is stable");
        assert_eq!(first.len(), 64);
        let mut changed = Vec::new();
        let mut with = |change: fn(&mut StepJob)| {
            let mut job = job();
            change(&mut job);
            changed.push(key(&job, "aa", Some("t1"), ""));
        };
        with(|j| j.image = "python:3.13".to_owned());
        with(|j| j.argv.push("--fast".to_owned()));
        with(|j| {
            j.env.insert("LR".to_owned(), "0.2".to_owned());
        });
        with(|j| j.secrets.push("other".to_owned()));
        with(|j| j.outputs[0].name = "weights".to_owned());
        changed.push(key(&base, "bb", Some("t1"), ""));
        changed.push(key(&base, "aa", Some("t2"), ""));
        changed.push(key(&base, "aa", None, ""));
        changed.push(key(&base, "aa", Some("t1"), "2"));
        let distinct: HashSet<&String> = changed.iter().chain([&first]).collect();
        assert_eq!(distinct.len(), changed.len() + 1, "{changed:?}");
    }

    #[test]
    fn what_does_not_decide_the_output_leaves_the_key_alone() {
        let base = key(&job(), "aa", Some("t1"), "");
        let mut other = job();
        other.name = "ty-i-9-train-3".to_owned();
        other.run_id = 9;
        other.attempt = 3;
        other.timeout = Some(Duration::from_secs(60));
        other
            .labels
            .insert("trainyard.dev/run".to_owned(), "9".to_owned());
        other.outputs[0].key = "i/runs/9/train/model".to_owned();
        assert_eq!(key(&other, "aa", Some("t1"), ""), base);
    }

    #[test]
    fn a_maximum_age_bounds_how_old_a_reused_attempt_may_be() {
        let now = DateTime::from_timestamp(1_000_000, 0).expect("time");
        assert_eq!(
            not_before(now, Duration::from_secs(3600)),
            DateTime::from_timestamp(1_000_000 - 3600, 0).expect("time")
        );
        assert_eq!(
            not_before(now, Duration::from_secs(u64::MAX)),
            DateTime::<Utc>::MIN_UTC
        );
    }
}
