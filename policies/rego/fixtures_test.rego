# Fixtures shared by the platform rule tests.
#
# The tests refer to platform rules by their full path, data.trainyard.platform.*,
# rather than through `import data.trainyard.platform`: regorus 0.14 evaluates a
# set whose definitions span several modules only partially when it is reached
# through an import alias.
package trainyard.platform_test

_digest := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

_image := concat("", ["reg.example.com/ml/churn@sha256:", _digest])

# The default configuration, as the evaluator loads it.
_config := {
	"allowed_registries": [],
	"max_gpus_per_step": {"default": 8, "owners": {}},
	"gpu_schedule_min_interval_seconds": 900,
	"max_matrix_instances": 64,
}

# A pipeline that passes every platform rule: a CPU step and a GPU step with a
# timeout, a pinned image and a gated model promotion.
_clean_pipeline := {
	"name": "churn",
	"owner": "team-growth",
	"file": "pipelines/churn.yaml",
	"spec": {
		"image": _image,
		"params": {"epochs": {"type": "int", "default": 3}},
		"triggers": {"on_change": true},
		"steps": [
			{
				"name": "prepare", "image": null, "run": ["python3", "prepare.py"],
				"needs": [], "outputs": ["dataset"], "resources": null,
				"retries": 0, "timeout": null, "env": {}, "env_from_secrets": [],
			},
			{
				"name": "train", "image": null, "run": ["python3", "train.py"],
				"needs": ["prepare"], "outputs": ["model", "metrics"],
				"resources": {"cpu": "8", "memory": "64Gi", "gpu": 1, "gpu_type": "h100"},
				"retries": 2, "timeout": "4h", "env": {}, "env_from_secrets": [],
			},
		],
		"model": {
			"name": "churn-classifier",
			"artifact": "steps.train.outputs.model",
			"metrics": "steps.train.outputs.metrics",
			"gate": [{"metric": "auc", "min": 0.8}],
			"promote": "champion",
		},
	},
	"facts": {
		"gpus": 1,
		"images": [
			{"step": "prepare", "image": _image, "field": "spec.image"},
			{"step": "train", "image": _image, "field": "spec.image"},
		],
	},
}

# The clean pipeline with parts replaced (objects merge, everything else is replaced).
_pipeline(overrides) := object.union(_clean_pipeline, overrides)

# The clean pipeline whose train step is replaced by `train`.
_with_train_step(train, gpus) := _pipeline({
	"spec": {"steps": [_clean_pipeline.spec.steps[0], object.union(_clean_pipeline.spec.steps[1], train)]},
	"facts": {"gpus": gpus},
})

# The clean pipeline whose effective images are `images`.
_with_images(images) := _pipeline({"facts": {"images": images}})

# The input for one pipeline document.
_pipeline_input(p) := {"pipelines": [p], "schedules": []}

# The input for one schedule document of `pipeline` whose fire times are at least `interval` seconds apart.
_schedule_input(pipeline, cron, interval) := {"pipelines": [], "schedules": [{
	"name": "churn-nightly",
	"file": "schedules.yaml",
	"spec": {
		"pipeline": "churn", "cron": cron, "timezone": "Europe/Berlin", "params": {},
		"concurrency": "forbid", "catchup": "latest", "suspend": false,
	},
	"pipeline": pipeline,
	"facts": {"min_interval_seconds": interval},
}]}

# The (kind, name, field) of the violations of `rule` in `violations`.
_found(violations, rule) := {[v.kind, v.name, v.field] | some v in violations; v.rule == rule}

# The messages of the violations of `rule` in `violations`.
_messages(violations, rule) := [v.msg | some v in violations; v.rule == rule]
