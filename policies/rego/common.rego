# Shared helpers of the Trainyard platform bundle.
#
# Every platform rule lives in package trainyard.platform and adds objects of
# the form {"rule", "kind", "name", "field", "msg"} to the set `deny` or `warn`.
# Rules judge one document at a time; they never aggregate across documents.
package trainyard.platform

# The Trainyard configuration, loaded by the evaluator.
config := data.trainyard.config

# A violation reported against a pipeline document.
_pipeline_violation(p, rule, field, msg) := {
	"rule": rule,
	"kind": "Pipeline",
	"name": p.name,
	"field": field,
	"msg": msg,
}

# A violation reported against a schedule document.
_schedule_violation(s, rule, field, msg) := {
	"rule": rule,
	"kind": "Schedule",
	"name": s.name,
	"field": field,
	"msg": msg,
}

# True for a number greater than zero.
_positive(n) if {
	is_number(n)
	n > 0
}

# "1 GPU", "4 GPUs", "1 minute", "15 minutes", ...
_count(n, unit) := sprintf("%v %s", [n, unit]) if {
	n == 1
} else := sprintf("%v %ss", [n, unit])

# A number of seconds in the largest whole unit, e.g. 900 -> "15 minutes".
_duration(s) := _count(s / 86400, "day") if {
	s >= 86400
	s % 86400 == 0
} else := _count(s / 3600, "hour") if {
	s >= 3600
	s % 3600 == 0
} else := _count(s / 60, "minute") if {
	s >= 60
	s % 60 == 0
} else := _count(s, "second")
