//! `trainyard models`: registered model versions, accepted and rejected, with their
//! metrics, aliases and lineage (commit, pipeline version, params, run).

use std::collections::BTreeMap;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use trainyard::registry::GateCheck;
use trainyard::spec::check::Params;
use trainyard::store::{ModelState, ModelVersionRow, Selected};

use super::{
    NO_RUNS_YET, NotFound, Table, ViewArgs, local_time, metrics_text, no_database, print,
    print_json, short_sha, with_store,
};
use crate::cli::Format;

pub(super) async fn list_models(name: Option<String>, view: ViewArgs) -> Result<()> {
    let name = name.as_deref();
    let listed = with_store(&view.store, async |store| {
        let versions = store.models(name).await?;
        let mut aliases: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for version in &versions {
            if !aliases.contains_key(&version.model) {
                let of_model = store.aliases(&version.model).await?;
                aliases.insert(version.model.clone(), of_model);
            }
        }
        Ok((versions, aliases))
    })
    .await?;
    let (versions, aliases) = match (listed, name) {
        (None, Some(name)) => {
            return Err(NotFound(format!("model {name} not found ({NO_RUNS_YET})")).into());
        }
        (None, None) => return no_database(view.format),
        (Some((versions, _)), Some(name)) if versions.is_empty() => {
            return Err(NotFound(format!("model {name} not found")).into());
        }
        (Some(listed), _) => listed,
    };
    let models: Vec<ModelView> = versions
        .iter()
        .map(|version| ModelView::new(version, &aliases))
        .collect();
    match view.format {
        Format::Json => print_json(&models),
        Format::Text if models.is_empty() => print("no models registered\n"),
        Format::Text => print(&models_table(&models)),
    }
}

#[derive(Debug, Serialize)]
struct ModelView<'a> {
    model: &'a str,
    /// `None` when rejected.
    version: Option<i64>,
    state: &'static str,
    /// The aliases that point at this version.
    aliases: Vec<&'a str>,
    metrics: &'a BTreeMap<String, f64>,
    gates: &'a [GateCheck],
    reasons: &'a [String],
    artifact_uri: &'a str,
    artifact_sha256: &'a str,
    commit: &'a str,
    pipeline: &'a str,
    pipeline_version: &'a str,
    params: &'a Params,
    run_id: i64,
    /// For a model of a matrix step: the instance `select` picked, and its values.
    #[serde(skip_serializing_if = "Option::is_none")]
    selected: Option<&'a Selected>,
    created_at: DateTime<Utc>,
}

impl<'a> ModelView<'a> {
    fn new(
        row: &'a ModelVersionRow,
        aliases: &'a BTreeMap<String, Vec<(String, i64)>>,
    ) -> ModelView<'a> {
        let pointing = aliases
            .get(&row.model)
            .into_iter()
            .flatten()
            .filter(|(_, version)| Some(*version) == row.version)
            .map(|(alias, _)| alias.as_str())
            .collect();
        ModelView {
            model: &row.model,
            version: row.version,
            state: row.state.as_str(),
            aliases: pointing,
            metrics: &row.metrics,
            gates: &row.gates,
            reasons: &row.reasons,
            artifact_uri: &row.artifact_uri,
            artifact_sha256: &row.artifact_sha256,
            commit: &row.commit_sha,
            pipeline: &row.pipeline,
            pipeline_version: &row.pipeline_version,
            params: &row.params,
            run_id: row.run_id,
            selected: row.selected.as_ref(),
            created_at: row.created_at,
        }
    }
}

fn models_table(models: &[ModelView<'_>]) -> String {
    let mut table = Table::new(&[
        "MODEL", "VERSION", "ALIASES", "METRICS", "COMMIT", "RUN", "CREATED",
    ]);
    for model in models {
        // Only accepted models get a version number.
        let version = model
            .version
            .map_or_else(|| ModelState::Rejected.to_string(), |v| v.to_string());
        let aliases = if model.aliases.is_empty() {
            "-".to_owned()
        } else {
            model.aliases.join(",")
        };
        table.row(vec![
            model.model.to_owned(),
            version,
            aliases,
            metrics_text(model.metrics),
            short_sha(model.commit).to_owned(),
            match model.selected {
                Some(selected) => format!("{} ({})", model.run_id, selected.step),
                None => model.run_id.to_string(),
            },
            local_time(model.created_at),
        ]);
    }
    table.render()
}
