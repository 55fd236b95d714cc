# Tests of the sweep rule: matrix-instances.
package trainyard.platform_test

_deny_matrix(matrix, config) := denials if {
	denials := data.trainyard.platform.deny with input as _pipeline_input(_with_train_step({"matrix": matrix}, 0))
		with data.trainyard.config as config
}

_six := {"lr": [0.1, 0.01], "seed": [1, 2, 3]}

test_a_sweep_within_the_default_limit_is_allowed if {
	_found(_deny_matrix(_six, _config), "matrix-instances") == set()
}

test_a_sweep_over_the_configured_limit_is_denied if {
	config := object.union(_config, {"max_matrix_instances": 4})
	denials := _deny_matrix(_six, config)
	_found(denials, "matrix-instances") == {["Pipeline", "churn", "spec.steps[1].matrix"]}
	_messages(denials, "matrix-instances") == [`step "train" runs 6 matrix instances per run, but the platform allows at most 4; sweep fewer values or ask the platform team to raise the limit`]
}

test_a_step_without_a_matrix_is_one_instance if {
	config := object.union(_config, {"max_matrix_instances": 1})
	_found(_deny_matrix({}, config), "matrix-instances") == set()
}
