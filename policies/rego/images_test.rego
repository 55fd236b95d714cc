# Tests of the image rules: image-pinned and allowed-registries.
package trainyard.platform_test

_registries(allowed) := object.union(_config, {"allowed_registries": allowed})

_deny_images(images, config) := denials if {
	denials := data.trainyard.platform.deny with input as _pipeline_input(_with_images(images))
		with data.trainyard.config as config
}

test_clean_pipeline_has_no_violations if {
	count(data.trainyard.platform.deny) == 0 with input as _pipeline_input(_clean_pipeline) with data.trainyard.config as _config
	count(data.trainyard.platform.warn) == 0 with input as _pipeline_input(_clean_pipeline) with data.trainyard.config as _config
}

test_pinned_images_are_allowed if {
	denials := _deny_images(
		[
			{"step": "prepare", "image": _image, "field": "spec.image"},
			{"step": "train", "image": concat("", ["python:3.12@sha256:", _digest]), "field": "spec.steps[1].image"},
		],
		_config,
	)
	_found(denials, "image-pinned") == set()
}

test_unpinned_image_is_denied if {
	denials := _deny_images(
		[
			{"step": "prepare", "image": _image, "field": "spec.image"},
			{"step": "train", "image": "python:3.12", "field": "spec.steps[1].image"},
		],
		_config,
	)
	_found(denials, "image-pinned") == {["Pipeline", "churn", "spec.steps[1].image"]}
	_messages(denials, "image-pinned") == [`image "python:3.12" of step "train" is not pinned by digest; use an image reference ending in @sha256:<digest>`]
}

test_unpinned_image_from_repository_settings_is_reported_on_spec if {
	denials := _deny_images([{"step": "prepare", "image": "reg.example.com/ml/base:latest", "field": null}], _config)
	_found(denials, "image-pinned") == {["Pipeline", "churn", "spec"]}
}

test_uppercase_digest_is_denied if {
	digest := upper(_digest)
	denials := _deny_images([{"step": "train", "image": concat("", ["reg.example.com/ml/churn@sha256:", digest]), "field": "spec.image"}], _config)
	_found(denials, "image-pinned") == {["Pipeline", "churn", "spec.image"]}
	contains(_messages(denials, "image-pinned")[0], "malformed digest")
}

test_short_digest_is_denied if {
	denials := _deny_images([{"step": "train", "image": "reg.example.com/ml/churn@sha256:0123abcd", "field": "spec.image"}], _config)
	_found(denials, "image-pinned") == {["Pipeline", "churn", "spec.image"]}
}

test_digest_without_image_name_is_denied if {
	denials := _deny_images([{"step": "train", "image": concat("", ["@sha256:", _digest]), "field": "spec.image"}], _config)
	_found(denials, "image-pinned") == {["Pipeline", "churn", "spec.image"]}
}

test_step_without_image_is_denied if {
	denials := _deny_images([{"step": "train", "image": null, "field": null}], _config)
	_found(denials, "image-pinned") == {["Pipeline", "churn", "spec"]}
	contains(_messages(denials, "image-pinned")[0], `step "train" has no image`)
}

test_any_registry_is_allowed_when_none_are_configured if {
	denials := _deny_images([{"step": "train", "image": concat("", ["ghcr.io/acme/train@sha256:", _digest]), "field": "spec.image"}], _config)
	count(denials) == 0
}

test_image_from_allowed_registry_is_allowed if {
	denials := _deny_images(
		[{"step": "train", "image": _image, "field": "spec.image"}],
		_registries(["ghcr.io", "reg.example.com"]),
	)
	count(denials) == 0
}

test_image_from_other_registry_is_denied if {
	denials := _deny_images(
		[
			{"step": "prepare", "image": _image, "field": "spec.image"},
			{"step": "train", "image": concat("", ["ghcr.io/acme/train@sha256:", _digest]), "field": "spec.steps[1].image"},
		],
		_registries(["reg.example.com"]),
	)
	_found(denials, "allowed-registries") == {["Pipeline", "churn", "spec.steps[1].image"]}
	contains(_messages(denials, "allowed-registries")[0], `registry "ghcr.io", which is not allowed`)
}

test_docker_hub_image_is_denied_when_docker_io_is_not_allowed if {
	denials := _deny_images(
		[{"step": "train", "image": concat("", ["python@sha256:", _digest]), "field": "spec.image"}],
		_registries(["reg.example.com"]),
	)
	_found(denials, "allowed-registries") == {["Pipeline", "churn", "spec.image"]}
	contains(_messages(denials, "allowed-registries")[0], `registry "docker.io"`)
}

test_docker_hub_images_are_allowed_as_docker_io if {
	denials := _deny_images(
		[
			{"step": "prepare", "image": concat("", ["python@sha256:", _digest]), "field": "spec.image"},
			{"step": "train", "image": concat("", ["pytorch/pytorch@sha256:", _digest]), "field": "spec.steps[1].image"},
		],
		_registries(["docker.io"]),
	)
	count(denials) == 0
}

test_registry_is_the_host_part_of_the_reference if {
	data.trainyard.platform._registry("reg.example.com/ml/churn:1") == "reg.example.com"
	data.trainyard.platform._registry("localhost:5000/churn") == "localhost:5000"
	data.trainyard.platform._registry("localhost/churn") == "localhost"
	data.trainyard.platform._registry("pytorch/pytorch:2.3") == "docker.io"
	data.trainyard.platform._registry("python:3.12") == "docker.io"
	data.trainyard.platform._registry("python") == "docker.io"
}

test_images_are_judged_per_pipeline if {
	clean := _clean_pipeline
	tagged := _pipeline({
		"name": "tagged",
		"facts": {"images": [{"step": "train", "image": "python:3.12", "field": "spec.steps[1].image"}]},
	})
	denials := data.trainyard.platform.deny with input as {"pipelines": [clean, tagged], "schedules": []}
		with data.trainyard.config as _registries(["reg.example.com"])
	_found(denials, "image-pinned") == {["Pipeline", "tagged", "spec.steps[1].image"]}
	_found(denials, "allowed-registries") == {["Pipeline", "tagged", "spec.steps[1].image"]}
}

test_every_step_using_an_unpinned_image_is_reported if {
	denials := _deny_images(
		[
			{"step": "prepare", "image": "python:3.12", "field": "spec.image"},
			{"step": "train", "image": "python:3.12", "field": "spec.image"},
		],
		_config,
	)
	count({v | some v in denials; v.rule == "image-pinned"}) == 2
}
