//! Runs whose steps all succeeded → the model registry: the model behind its gates (a new
//! version, the alias moved when every gate passes, or a rejected record with its reasons),
//! then the run succeeds. A preview judges its model the same way and registers nothing.
//!
//! Registering is idempotent per run, so a crash between registering and finishing the run
//! only means the next pass finishes it. A run whose model artifact was never stored fails
//! with that reason: no version is ever recorded without the artifact it names.

use std::collections::BTreeMap;

use chrono::Utc;

use super::{Backoff, ObjectError, Pass, Stop, finish_run};
use crate::artifacts::{self, ArtifactStore};
use crate::config::Config;
use crate::registry;
use crate::report::{self, Report, StatusState, status_report};
use crate::spec::Pipeline;
use crate::spec::model::{ModelSpec, Select};
use crate::store::{
    ArtifactRow, ModelState, NewModelVersion, RunRow, RunState, Selected, Store, Trigger,
};

/// The sub-reconciler that completes runs.
pub(super) struct Register {
    store: Store,
    artifacts: ArtifactStore,
    instance: Option<String>,
    installation: String,
    backoff: Backoff,
    errors: u64,
}

impl Register {
    pub(super) fn new(store: Store, artifacts: ArtifactStore, config: &Config) -> Self {
        Register {
            store,
            artifacts,
            instance: config.instance.clone(),
            installation: config.installation.clone(),
            backoff: Backoff::default(),
            errors: 0,
        }
    }

    /// Objects that failed since the last call.
    pub(super) fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }

    /// Completes every run whose steps all succeeded.
    pub(super) async fn reconcile(&mut self, stop: &Stop) -> Pass {
        let mut pass = Pass::default();
        let runs = match self.store.runs_to_complete().await {
            Ok(runs) => runs,
            Err(error) => {
                self.errors += 1;
                let delay = self.backoff.failed("runs");
                tracing::error!(%error, retry_in = ?delay, "reading the runs to complete failed");
                pass.again_after(delay);
                return pass;
            }
        };
        for run in runs {
            if stop.requested() {
                break;
            }
            let run = match run {
                Ok(run) => run,
                Err(error) => {
                    // The runs loop fails a run whose row cannot be read.
                    tracing::error!(%error, "a run to complete cannot be read");
                    self.errors += 1;
                    continue;
                }
            };
            let key = format!("run-{}", run.id);
            match self.complete(&run).await {
                Ok(()) => {
                    self.backoff.succeeded(&key);
                    pass.changed = true;
                }
                Err(ObjectError::Transient(why)) => {
                    self.errors += 1;
                    let delay = self.backoff.failed(&key);
                    tracing::warn!(run = run.id, reason = %why, retry_in = ?delay, "completing the run waits");
                    pass.again_after(delay);
                }
                Err(ObjectError::Permanent(why)) => {
                    self.errors += 1;
                    let message = format!("run {} cannot succeed: {why}", run.id);
                    tracing::error!(run = run.id, reason = %why, "run fails at registration");
                    match finish_run(
                        &self.store,
                        self.instance.as_deref(),
                        run.id,
                        RunState::Failed,
                        &message,
                    )
                    .await
                    {
                        Ok(_) => pass.changed = true,
                        Err(error) => {
                            let delay = self.backoff.failed(&key);
                            tracing::error!(run = run.id, %error, "failing the run failed");
                            pass.again_after(delay);
                        }
                    }
                }
            }
        }
        pass
    }

    /// Registers the model of `run` (when its pipeline has one) and finishes it as
    /// succeeded.
    async fn complete(&mut self, run: &RunRow) -> Result<(), ObjectError> {
        let pipeline: Pipeline = match self
            .store
            .pipeline_version(&run.pipeline, &run.pipeline_version)
            .await?
        {
            Some(row) => row.definition.as_ref().clone(),
            None => {
                return Err(ObjectError::Permanent(format!(
                    "its pipeline version {}@{} is not stored",
                    run.pipeline, run.pipeline_version
                )));
            }
        };
        let mut message = format!("run {} succeeded", run.id);
        if let Some(model) = &pipeline.spec.model {
            let verdict = self.judge(run, &pipeline, model).await?;
            message.push_str(&format!("; {verdict}"));
        }
        if finish_run(
            &self.store,
            self.instance.as_deref(),
            run.id,
            RunState::Succeeded,
            &message,
        )
        .await?
        {
            tracing::info!(run = run.id, pipeline = %run.pipeline, "{message}");
        }
        Ok(())
    }

    /// Gates the model of `run` and, unless it is a preview, registers it; returns what
    /// became of it, in words.
    async fn judge(
        &mut self,
        run: &RunRow,
        pipeline: &Pipeline,
        model: &ModelSpec,
    ) -> Result<String, ObjectError> {
        let stored = self.store.artifacts(run.id).await?;
        let (artifact, metrics_bytes, selected) = match &model.select {
            Some(select) => self.select(run, pipeline, model, select, &stored).await?,
            None => {
                let artifact = find(&stored, &model.artifact, None).ok_or_else(|| {
                    ObjectError::Permanent(format!(
                        "its model artifact {} was not stored",
                        model.artifact
                    ))
                })?;
                let metrics = match &model.metrics {
                    None => b"{}".to_vec(),
                    Some(reference) => self.metrics_of(run, &stored, reference, None).await?,
                };
                (artifact, metrics, None)
            }
        };
        let mut baselines = BTreeMap::new();
        for alias in model.gate.iter().filter_map(|g| g.not_worse_than.as_ref()) {
            if let Some(version) = self.store.alias(&model.name, alias).await? {
                baselines.insert(alias.clone(), version.metrics);
            }
        }
        let gates = registry::evaluate_metrics_file(model, &metrics_bytes, &baselines);
        // Unreadable metrics fail the gates, which say why; no metrics are recorded then.
        let metrics = registry::parse_metrics(&metrics_bytes).unwrap_or_default();
        let summary = registry::describe(&gates);
        if run.trigger == Trigger::Preview {
            let verdict = if gates.passed {
                "would be accepted"
            } else {
                "would be rejected"
            };
            return Ok(format!(
                "model {} {verdict} (preview, not registered): {summary}",
                model.name
            ));
        }
        let (state, description) = if gates.passed {
            let promoted = model
                .promote
                .as_ref()
                .map(|a| format!(", now {a}"))
                .unwrap_or_default();
            (
                StatusState::Success,
                format!("accepted{promoted}: {summary}"),
            )
        } else {
            (StatusState::Failure, format!("rejected: {summary}"))
        };
        let context = report::context(self.instance.as_deref(), "model", Some(&model.name));
        let registration: NewModelVersion<Report> = NewModelVersion {
            model: model.name.clone(),
            run_id: run.id,
            state: if gates.passed {
                ModelState::Accepted
            } else {
                ModelState::Rejected
            },
            metrics,
            reasons: gates
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.detail.clone())
                .collect(),
            gates: gates.checks,
            artifact_uri: artifact.uri.clone(),
            artifact_sha256: artifact.sha256.clone(),
            selected: selected.clone(),
            promote: model.promote.clone().filter(|_| gates.passed),
            at: Utc::now(),
            reports: vec![status_report(
                &run.commit_sha,
                &context,
                state,
                &description,
            )],
        };
        self.store.register_model(&registration).await?;
        Ok(format!(
            "model {} {description}{}",
            model.name,
            selected.as_ref().map(picked).unwrap_or_default()
        ))
    }

    /// The metrics file `reference` names, of `instance` for a matrix step's.
    async fn metrics_of(
        &self,
        run: &RunRow,
        stored: &[ArtifactRow],
        reference: &str,
        instance: Option<&str>,
    ) -> Result<Vec<u8>, ObjectError> {
        let row = find(stored, reference, instance).ok_or_else(|| {
            ObjectError::Permanent(format!("its metrics {reference} were not stored"))
        })?;
        // A cached step recorded the outputs of the attempt it reused, under that run's keys.
        let own = artifacts::output_key(&self.installation, run.id, &row.step, &row.output);
        let key = self.artifacts.key_of(&row.uri).unwrap_or(&own);
        self.artifacts.get_bytes(key).await?.ok_or_else(|| {
            ObjectError::Permanent(format!(
                "its metrics {reference} are recorded but missing from the artifact store"
            ))
        })
    }

    /// The instance of the matrix step making the model whose metric `select` likes best
    /// (the first such instance on a tie): its model, its metrics and what it was. An
    /// instance without the metric is passed over; none with it fails the run.
    async fn select<'a>(
        &self,
        run: &RunRow,
        pipeline: &Pipeline,
        model: &ModelSpec,
        select: &Select,
        stored: &'a [ArtifactRow],
    ) -> Result<(&'a ArtifactRow, Vec<u8>, Option<Selected>), ObjectError> {
        let reference = model.metrics.as_deref().unwrap_or_default();
        let step = model.artifact.split('.').nth(1).unwrap_or_default();
        let definition = pipeline.spec.step(step).ok_or_else(|| {
            ObjectError::Permanent(format!("its pipeline declares no step {step:?}"))
        })?;
        let mut best: Option<(f64, usize, Vec<u8>)> = None;
        for (index, instance) in definition.instance_names().iter().enumerate() {
            let bytes = self
                .metrics_of(run, stored, reference, Some(instance))
                .await?;
            let Some(value) = registry::parse_metrics(&bytes)
                .ok()
                .and_then(|m| m.get(&select.metric).copied())
            else {
                tracing::warn!(run = run.id, %instance, metric = %select.metric, "an instance lacks the metric select compares; passed over");
                continue;
            };
            let better = best.as_ref().is_none_or(|(b, _, _)| {
                if select.greater_is_better {
                    value > *b
                } else {
                    value < *b
                }
            });
            if better {
                best = Some((value, index, bytes));
            }
        }
        let (_, index, bytes) = best.ok_or_else(|| {
            ObjectError::Permanent(format!(
                "no instance of step {step:?} wrote the metric {:?} that select compares",
                select.metric
            ))
        })?;
        let instance = format!("{step}.{index}");
        let artifact = find(stored, &model.artifact, Some(&instance)).ok_or_else(|| {
            ObjectError::Permanent(format!(
                "its model artifact {} of {instance} was not stored",
                model.artifact
            ))
        })?;
        let selected = Selected {
            step: instance,
            values: definition.combination(index),
        };
        Ok((artifact, bytes, Some(selected)))
    }
}

/// How a verdict says which instance was picked: ` (selected train.3: lr=0.01, seed=2)`.
fn picked(selected: &Selected) -> String {
    let values: Vec<String> = selected
        .values
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!(" (selected {}: {})", selected.step, values.join(", "))
}

/// The stored output `reference` (`steps.STEP.outputs.NAME`) names, of `instance` (such as
/// `train.3`) for a matrix step's.
fn find<'a>(
    stored: &'a [ArtifactRow],
    reference: &str,
    instance: Option<&str>,
) -> Option<&'a ArtifactRow> {
    let parts: Vec<&str> = reference.split('.').collect();
    match parts.as_slice() {
        ["steps", step, "outputs", output] => {
            let step = instance.unwrap_or(step);
            stored
                .iter()
                .find(|a| a.step == step && a.output == *output)
        }
        _ => None,
    }
}
