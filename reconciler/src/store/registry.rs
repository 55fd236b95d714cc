//! The model registry's records: versions (accepted or rejected) with their lineage, and
//! aliases such as `champion`.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::outbox::enqueue;
use super::{
    Cells, ModelState, ModelVersionRow, NewModelVersion, Result, Store, StoreError, millis, to_json,
};

/// The columns of [`ModelVersionRow`] from `model_versions m`, for `concat!`.
macro_rules! model_version_columns {
    () => {
        "SELECT m.id, m.model, m.version, m.run_id, m.state, m.metrics, m.gates, m.reasons,
             m.artifact_uri, m.artifact_sha256, m.commit_sha, m.pipeline, m.pipeline_version,
             m.params, m.created_at, m.selected
         FROM model_versions m "
    };
}

impl Store {
    /// Records a trained model and its gate decision, with its reports, in one transaction.
    ///
    /// An accepted model gets the model's next version number and, with `promote`, the alias
    /// moves to it; a rejected one is kept without a version, with its reasons. Commit,
    /// pipeline version and params are copied from the run. A run registers a model once:
    /// registering again returns the first result and writes nothing.
    ///
    /// Returns the version number, or `None` for a rejected model.
    pub async fn register_model<P: Serialize>(
        &self,
        model: &NewModelVersion<P>,
    ) -> Result<Option<i64>> {
        if model.state == ModelState::Rejected && model.reasons.is_empty() {
            return Err(StoreError::Invalid(format!(
                "rejected model {} of run {} needs a reason",
                model.model, model.run_id
            )));
        }
        let mut tx = self.write().await?;
        let earlier =
            sqlx::query("SELECT version FROM model_versions WHERE run_id = $1 AND model = $2")
                .bind(model.run_id)
                .bind(&model.model)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(earlier) = earlier {
            let version: Option<i64> = earlier.try_get("version")?;
            tx.rollback().await?;
            return Ok(version);
        }
        let run = sqlx::query(
            "SELECT commit_sha, pipeline, pipeline_version, params FROM runs WHERE id = $1",
        )
        .bind(model.run_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "run",
            key: model.run_id.to_string(),
        })?;
        let version: Option<i64> = match model.state {
            ModelState::Accepted => Some(
                sqlx::query_scalar(
                    "INSERT INTO models (name, latest_version) VALUES ($1, 1)
                     ON CONFLICT (name) DO UPDATE SET latest_version = models.latest_version + 1
                     RETURNING latest_version",
                )
                .bind(&model.model)
                .fetch_one(&mut *tx)
                .await?,
            ),
            ModelState::Rejected => None,
        };
        let reasons = if model.reasons.is_empty() {
            None
        } else {
            Some(to_json("a model's reasons", &model.reasons)?)
        };
        let at = millis(model.at);
        sqlx::query(
            "INSERT INTO model_versions (model, version, run_id, state, metrics, gates, reasons,
                 artifact_uri, artifact_sha256, commit_sha, pipeline, pipeline_version, params,
                 created_at, selected)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&model.model)
        .bind(version)
        .bind(model.run_id)
        .bind(model.state.as_str())
        .bind(to_json("a model's metrics", &model.metrics)?)
        .bind(to_json("a model's gate results", &model.gates)?)
        .bind(reasons)
        .bind(&model.artifact_uri)
        .bind(&model.artifact_sha256)
        .bind(run.try_get::<String, _>("commit_sha")?)
        .bind(run.try_get::<String, _>("pipeline")?)
        .bind(run.try_get::<String, _>("pipeline_version")?)
        .bind(run.try_get::<String, _>("params")?)
        .bind(at)
        .bind(match &model.selected {
            Some(selected) => Some(to_json("a model's selected instance", selected)?),
            None => None,
        })
        .execute(&mut *tx)
        .await?;
        if let (Some(version), Some(alias)) = (version, &model.promote) {
            sqlx::query(
                "INSERT INTO model_aliases (model, alias, version, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version,
                     updated_at = excluded.updated_at",
            )
            .bind(&model.model)
            .bind(alias)
            .bind(version)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        enqueue(&mut tx, &model.reports, model.at).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// The version an alias points at.
    pub async fn alias(&self, model: &str, alias: &str) -> Result<Option<ModelVersionRow>> {
        sqlx::query(concat!(
            model_version_columns!(),
            "JOIN model_aliases a ON a.model = m.model AND a.version = m.version
             WHERE a.model = $1 AND a.alias = $2"
        ))
        .bind(model)
        .bind(alias)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| model_version_row(&row))
        .transpose()
    }

    /// Registered versions, accepted and rejected, of one model or all: by model name, newest
    /// first.
    pub async fn models(&self, name: Option<&str>) -> Result<Vec<ModelVersionRow>> {
        sqlx::query(concat!(
            model_version_columns!(),
            "WHERE ($1 IS NULL OR m.model = $1) ORDER BY m.model, m.id DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(model_version_row)
        .collect()
    }

    /// The model versions run `run_id` registered (accepted or rejected).
    pub async fn models_of_run(&self, run_id: i64) -> Result<Vec<ModelVersionRow>> {
        sqlx::query(concat!(
            model_version_columns!(),
            "WHERE m.run_id = $1 ORDER BY m.id"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(model_version_row)
        .collect()
    }

    /// A model's aliases and the versions they point at, by alias.
    pub async fn aliases(&self, model: &str) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT alias, version FROM model_aliases WHERE model = $1 ORDER BY alias")
                .bind(model)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("alias")?, row.try_get("version")?)))
            .collect()
    }
}

fn model_version_row(row: &AnyRow) -> Result<ModelVersionRow> {
    let id: i64 = row.try_get("id")?;
    let c = Cells::new(row, "model_versions", id);
    Ok(ModelVersionRow {
        id,
        model: c.get("model")?,
        version: c.get("version")?,
        run_id: c.get("run_id")?,
        state: c.word("state", ModelState::from_stored)?,
        metrics: c.json("metrics")?,
        gates: c.json("gates")?,
        reasons: c.opt_json("reasons")?.unwrap_or_default(),
        artifact_uri: c.get("artifact_uri")?,
        artifact_sha256: c.get("artifact_sha256")?,
        selected: c.opt_json("selected")?,
        commit_sha: c.get("commit_sha")?,
        pipeline: c.get("pipeline")?,
        pipeline_version: c.get("pipeline_version")?,
        params: c.json("params")?,
        created_at: c.time("created_at")?,
    })
}
