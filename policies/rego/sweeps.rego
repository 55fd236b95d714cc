# Rules about matrix sweeps.
package trainyard.platform

# matrix-instances: a matrix step runs no more instances per run than the platform allows
# (the format itself allows at most 64).
deny contains v if {
	some p in input.pipelines
	some i, step in p.spec.steps
	n := _instances(step)
	n > _max_matrix_instances
	v := _pipeline_violation(p, "matrix-instances", sprintf("spec.steps[%d].matrix", [i]), sprintf(
		"step %q runs %s per run, but the platform allows at most %d; sweep fewer values or ask the platform team to raise the limit",
		[step.name, _count(n, "matrix instance"), _max_matrix_instances],
	))
}

_max_matrix_instances := object.get(config, "max_matrix_instances", 64)

# The instances of a step: the product of its matrix axes' lengths (1 without a matrix).
_instances(step) := product([count(values) | some values in object.get(step, "matrix", {})])
