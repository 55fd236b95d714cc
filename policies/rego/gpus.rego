# Rules about GPU usage by pipeline steps and schedules.
package trainyard.platform

# gpu-limit: a step requests no more GPUs than its owner may use per step.
deny contains v if {
	some p in input.pipelines

	# facts.gpus is the largest request of any step: skip pipelines within
	# every limit without looking at their steps.
	not p.facts.gpus <= _lowest_gpu_limit
	owner := object.get(p, "owner", null)
	limit := _gpu_limit(owner)
	some i, step in p.spec.steps
	gpus := step.resources.gpu
	is_number(gpus)
	gpus > limit
	v := _pipeline_violation(p, "gpu-limit", sprintf("spec.steps[%d].resources.gpu", [i]), sprintf(
		"step %q requests %s, but %s; request fewer GPUs or ask the platform team to raise the limit",
		[step.name, _count(gpus, "GPU"), _gpu_limit_text(owner, limit)],
	))
}

_gpu_limits := object.get(config, "max_gpus_per_step", {})

_lowest_gpu_limit := min({object.get(_gpu_limits, "default", 8)} | {n | some n in object.get(_gpu_limits, "owners", {})})

# The per-step GPU limit of an owner: its own limit if configured, else the default.
_gpu_limit(owner) := limit if {
	limit := _gpu_limits.owners[owner]
} else := object.get(_gpu_limits, "default", 8)

_gpu_limit_text(owner, limit) := msg if {
	_ := _gpu_limits.owners[owner]
	msg := sprintf("pipelines of owner %q may use at most %s per step", [owner, _count(limit, "GPU")])
} else := sprintf("the platform allows at most %s per step", [_count(limit, "GPU")])

# gpu-schedule-frequency: GPU pipelines are not scheduled more often than allowed.
deny contains v if {
	some s in input.schedules
	interval := s.facts.min_interval_seconds
	interval < _gpu_schedule_min_interval
	is_number(interval)
	_positive(s.pipeline.facts.gpus)
	minimum := _gpu_schedule_min_interval
	v := _schedule_violation(s, "gpu-schedule-frequency", "spec.cron", sprintf(
		"schedule %q runs GPU pipeline %q as often as every %s (cron %q); GPU pipelines may be scheduled at most once every %s",
		[s.name, s.pipeline.name, _duration(interval), s.spec.cron, _duration(minimum)],
	))
}

_gpu_schedule_min_interval := object.get(config, "gpu_schedule_min_interval_seconds", 900)

# gpu-step-timeout (warning): a GPU step sets a timeout so a hung job frees its GPUs.
warn contains v if {
	some p in input.pipelines
	not p.facts.gpus == 0
	some i, step in p.spec.steps
	gpus := step.resources.gpu
	gpus > 0
	is_number(gpus)
	object.get(step, "timeout", null) in {null, ""}
	v := _pipeline_violation(p, "gpu-step-timeout", sprintf("spec.steps[%d]", [i]), sprintf(
		"GPU step %q has no timeout; set one (for example timeout: 4h) so a hung run does not hold %s indefinitely",
		[step.name, _count(gpus, "GPU")],
	))
}
