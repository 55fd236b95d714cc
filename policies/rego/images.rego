# Rules about the container images pipeline steps run in.
package trainyard.platform

# image-pinned: every effective image is pinned by a sha256 digest.
deny contains v if {
	count(_unpinned_images) > 0
	some p in input.pipelines
	some img in p.facts.images
	img.image in _unpinned_images
	v := _pipeline_violation(p, "image-pinned", _image_field(img), _unpinned_msg(img))
}

# allowed-registries: images come from a configured registry (when any are configured).
deny contains v if {
	count(_disallowed_images) > 0
	some p in input.pipelines
	some img in p.facts.images
	img.image in _disallowed_images
	v := _pipeline_violation(p, "allowed-registries", _image_field(img), sprintf(
		"image %q of step %q comes from registry %q, which is not allowed; use an image from one of: %s",
		[img.image, img.step, _registry(img.image), concat(", ", sort(_allowed_registries))],
	))
}

# The image rules judge each distinct image reference once, however many steps
# use it, and walk the pipelines' images only when some reference is reported.
# Whether an image is reported depends only on the reference itself, never on
# other documents.
_image_refs := {img.image | some p in input.pipelines; some img in p.facts.images}

_unpinned_images := {ref | some ref in _image_refs; not _pinned(ref)}

_disallowed_images := {ref |
	count(_allowed_registries) > 0
	some ref in _image_refs
	is_string(ref)
	not _registry(ref) in _allowed_registries
}

_allowed_registries := {r | some r in object.get(config, "allowed_registries", [])}

# A reference is pinned when it is `<name>@sha256:<64 lowercase hex digits>`.
_pinned(ref) if {
	is_string(ref)
	parts := split(ref, "@sha256:")
	count(parts) == 2
	parts[0] != ""
	count(parts[1]) == 64
	trim(parts[1], "0123456789abcdef") == ""
}

# The document field an image came from; images set in repository settings have none.
_image_field(img) := img.field if {
	is_string(img.field)
} else := "spec"

_unpinned_msg(img) := msg if {
	not is_string(img.image)
	msg := sprintf(
		"step %q has no image; set spec.image or the step's image to a reference pinned by digest (ending in @sha256:<digest>)",
		[img.step],
	)
} else := msg if {
	contains(img.image, "@sha256:")
	msg := sprintf(
		"image %q of step %q has a malformed digest; a sha256 digest is 64 lowercase hexadecimal characters",
		[img.image, img.step],
	)
} else := sprintf(
	"image %q of step %q is not pinned by digest; use an image reference ending in @sha256:<digest>",
	[img.image, img.step],
)

# The registry of an image reference: the part before the first "/" when it
# looks like a host (contains "." or ":", or is "localhost"), else docker.io.
_registry(ref) := host if {
	i := indexof(ref, "/")
	i > 0
	host := substring(ref, 0, i)
	_is_host(host)
} else := "docker.io"

_is_host(h) if contains(h, ".")

_is_host(h) if contains(h, ":")

_is_host(h) if h == "localhost"
