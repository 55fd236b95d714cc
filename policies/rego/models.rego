# Rules about model registration and promotion.
package trainyard.platform

# promote-needs-gate: a model that is promoted must pass at least one gate.
deny contains v if {
	some p in input.pipelines
	model := p.spec.model
	not model.gate[0]
	_is_set(model.promote)
	v := _pipeline_violation(p, "promote-needs-gate", "spec.model.promote", sprintf(
		"model %q is promoted to %q without a gate; add at least one entry to spec.model.gate (for example metric: auc, min: 0.8) so a worse model cannot be promoted",
		[model.name, model.promote],
	))
}

_is_set(x) if {
	x != null
	x != false
	x != ""
}
