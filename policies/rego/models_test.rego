# Tests of the model rules: promote-needs-gate.
package trainyard.platform_test

_deny_model(model) := denials if {
	denials := data.trainyard.platform.deny with input as _pipeline_input(_pipeline({"spec": {"model": model}}))
		with data.trainyard.config as _config
}

test_promoted_model_with_gate_is_allowed if {
	denials := _deny_model({"name": "churn-classifier", "gate": [{"metric": "auc", "not_worse_than": "champion"}], "promote": "champion"})
	_found(denials, "promote-needs-gate") == set()
}

test_promoted_model_without_gate_is_denied if {
	denials := _deny_model({"name": "churn-classifier", "gate": [], "promote": "champion"})
	_found(denials, "promote-needs-gate") == {["Pipeline", "churn", "spec.model.promote"]}
	_messages(denials, "promote-needs-gate") == [`model "churn-classifier" is promoted to "champion" without a gate; add at least one entry to spec.model.gate (for example metric: auc, min: 0.8) so a worse model cannot be promoted`]
}

test_promoted_model_with_null_gate_is_denied if {
	denials := _deny_model({"name": "churn-classifier", "gate": null, "promote": "champion"})
	_found(denials, "promote-needs-gate") == {["Pipeline", "churn", "spec.model.promote"]}
}

test_unpromoted_model_needs_no_gate if {
	denials := _deny_model({"name": "churn-classifier", "gate": [], "promote": null})
	_found(denials, "promote-needs-gate") == set()
}

test_pipeline_without_model_needs_no_gate if {
	denials := _deny_model(null)
	count(denials) == 0
}
