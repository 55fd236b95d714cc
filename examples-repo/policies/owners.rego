# Repository rule: every pipeline is owned by a team, not by a person, so that
# failures and model promotions always reach a group that is still around.
#
# Trainyard evaluates `deny` with this input:
#   input.pipelines: [{name, owner, file, spec, facts}]
#   input.schedules: [...]
# Every element of `deny` is reported as a violation by `trainyard validate`.
package trainyard.repo.owners

deny contains v if {
	some p in input.pipelines
	not startswith(p.owner, "team-")
	v := {
		"rule": "owner-is-a-team",
		"kind": "Pipeline",
		"name": p.name,
		"field": "metadata.owner",
		"msg": sprintf("owner %q of pipeline %q is not a team (team-...)", [p.owner, p.name]),
	}
}
