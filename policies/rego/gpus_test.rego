# Tests of the GPU rules: gpu-limit, gpu-schedule-frequency and gpu-step-timeout.
package trainyard.platform_test

_owner_limits(owners) := object.union(_config, {"max_gpus_per_step": {"owners": owners}})

_deny_gpus(gpus, config) := denials if {
	denials := data.trainyard.platform.deny with input as _pipeline_input(_with_train_step({"resources": {"gpu": gpus}}, gpus))
		with data.trainyard.config as config
}

# gpu-limit

test_gpu_request_at_the_default_limit_is_allowed if {
	_found(_deny_gpus(8, _config), "gpu-limit") == set()
}

test_gpu_request_over_the_default_limit_is_denied if {
	denials := _deny_gpus(9, _config)
	_found(denials, "gpu-limit") == {["Pipeline", "churn", "spec.steps[1].resources.gpu"]}
	_messages(denials, "gpu-limit") == [`step "train" requests 9 GPUs, but the platform allows at most 8 GPUs per step; request fewer GPUs or ask the platform team to raise the limit`]
}

test_configured_default_limit_is_used if {
	config := object.union(_config, {"max_gpus_per_step": {"default": 2}})
	_found(_deny_gpus(2, config), "gpu-limit") == set()
	_found(_deny_gpus(3, config), "gpu-limit") == {["Pipeline", "churn", "spec.steps[1].resources.gpu"]}
}

test_owner_limit_can_raise_the_default if {
	_found(_deny_gpus(16, _owner_limits({"team-growth": 16})), "gpu-limit") == set()
}

test_owner_limit_can_lower_the_default if {
	denials := _deny_gpus(4, _owner_limits({"team-growth": 2}))
	_found(denials, "gpu-limit") == {["Pipeline", "churn", "spec.steps[1].resources.gpu"]}
	contains(_messages(denials, "gpu-limit")[0], `pipelines of owner "team-growth" may use at most 2 GPUs per step`)
}

test_owner_limit_of_zero_denies_any_gpu if {
	denials := _deny_gpus(1, _owner_limits({"team-growth": 0}))
	_found(denials, "gpu-limit") == {["Pipeline", "churn", "spec.steps[1].resources.gpu"]}
}

test_other_owners_keep_the_default_limit if {
	denials := _deny_gpus(9, _owner_limits({"team-vision": 16}))
	_found(denials, "gpu-limit") == {["Pipeline", "churn", "spec.steps[1].resources.gpu"]}
}

test_gpu_limit_checks_steps_when_facts_lack_the_gpu_count if {
	p := object.union(_with_train_step({"resources": {"gpu": 9}}, 0), {"facts": {"images": []}})
	unfacted := object.remove(p, ["facts"])
	denials := data.trainyard.platform.deny with input as _pipeline_input(unfacted) with data.trainyard.config as _config
	_found(denials, "gpu-limit") == {["Pipeline", "churn", "spec.steps[1].resources.gpu"]}
}

# gpu-schedule-frequency

_gpu_pipeline := _with_train_step({"resources": {"gpu": 4}}, 4)

_cpu_pipeline := _with_train_step({"resources": {"gpu": 0}}, 0)

test_daily_gpu_schedule_is_allowed if {
	denials := data.trainyard.platform.deny with input as _schedule_input(_gpu_pipeline, "0 2 * * *", 86400)
		with data.trainyard.config as _config
	count(denials) == 0
}

test_gpu_schedule_at_the_minimum_interval_is_allowed if {
	denials := data.trainyard.platform.deny with input as _schedule_input(_gpu_pipeline, "*/15 * * * *", 900)
		with data.trainyard.config as _config
	count(denials) == 0
}

test_gpu_schedule_more_frequent_than_allowed_is_denied if {
	denials := data.trainyard.platform.deny with input as _schedule_input(_gpu_pipeline, "*/5 * * * *", 300)
		with data.trainyard.config as _config
	_found(denials, "gpu-schedule-frequency") == {["Schedule", "churn-nightly", "spec.cron"]}
	_messages(denials, "gpu-schedule-frequency") == [`schedule "churn-nightly" runs GPU pipeline "churn" as often as every 5 minutes (cron "*/5 * * * *"); GPU pipelines may be scheduled at most once every 15 minutes`]
}

test_configured_schedule_interval_is_used if {
	config := object.union(_config, {"gpu_schedule_min_interval_seconds": 7200})
	denials := data.trainyard.platform.deny with input as _schedule_input(_gpu_pipeline, "0 * * * *", 3600)
		with data.trainyard.config as config
	_found(denials, "gpu-schedule-frequency") == {["Schedule", "churn-nightly", "spec.cron"]}
	contains(_messages(denials, "gpu-schedule-frequency")[0], "every 1 hour (cron")
	contains(_messages(denials, "gpu-schedule-frequency")[0], "once every 2 hours")
}

test_cpu_pipeline_may_be_scheduled_often if {
	denials := data.trainyard.platform.deny with input as _schedule_input(_cpu_pipeline, "* * * * *", 60)
		with data.trainyard.config as _config
	count(denials) == 0
}

test_schedule_of_unknown_pipeline_is_not_judged_here if {
	denials := data.trainyard.platform.deny with input as _schedule_input(null, "* * * * *", 60)
		with data.trainyard.config as _config
	count(denials) == 0
}

test_durations_are_written_in_whole_units if {
	data.trainyard.platform._duration(45) == "45 seconds"
	data.trainyard.platform._duration(90) == "90 seconds"
	data.trainyard.platform._duration(60) == "1 minute"
	data.trainyard.platform._duration(900) == "15 minutes"
	data.trainyard.platform._duration(3600) == "1 hour"
	data.trainyard.platform._duration(86400) == "1 day"
	data.trainyard.platform._duration(172800) == "2 days"
}

# gpu-step-timeout

test_gpu_step_with_timeout_is_not_warned if {
	warnings := data.trainyard.platform.warn with input as _pipeline_input(_with_train_step({"resources": {"gpu": 2}, "timeout": "4h"}, 2))
		with data.trainyard.config as _config
	count(warnings) == 0
}

test_gpu_step_without_timeout_is_warned if {
	warnings := data.trainyard.platform.warn with input as _pipeline_input(_with_train_step({"resources": {"gpu": 2}, "timeout": null}, 2))
		with data.trainyard.config as _config
	_found(warnings, "gpu-step-timeout") == {["Pipeline", "churn", "spec.steps[1]"]}
	_messages(warnings, "gpu-step-timeout") == [`GPU step "train" has no timeout; set one (for example timeout: 4h) so a hung run does not hold 2 GPUs indefinitely`]
}

test_gpu_step_without_timeout_is_only_a_warning if {
	denials := data.trainyard.platform.deny with input as _pipeline_input(_with_train_step({"resources": {"gpu": 2}, "timeout": null}, 2))
		with data.trainyard.config as _config
	count(denials) == 0
}

test_cpu_step_without_timeout_is_not_warned if {
	warnings := data.trainyard.platform.warn with input as _pipeline_input(_with_train_step({"resources": {"gpu": 0}, "timeout": null}, 0))
		with data.trainyard.config as _config
	count(warnings) == 0
}
