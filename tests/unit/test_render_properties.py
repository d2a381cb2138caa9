"""Property tests: no spec value can add a Dockerfile instruction or a shell command, or split a data line.

For arbitrary strings in the fields a user types, either validation refuses the spec with a one-line
message that names the field (starts with `spec.`), or the Dockerfile is byte-for-byte the one rendered from
a harmless spec of the same shape (same base image, same layers): spec values never reach it except the
validated base image.
"""

from __future__ import annotations

import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kenv.errors import SpecError, describe_validation_error
from kenv.models import IMAGE_REF_PATTERN, EnvironmentSpec, spec_from_body
from kenv.render import BuildContext, Externals, build_channels, canonical_yaml, render_context, uses_conda
from kenv.validation import canonical_requirements, check_requirements_body

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
EXTERNALS = Externals(ca_bundle=CA)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that break out of lines, quotes or shell words, plus everything str.splitlines() splits on.
NASTY = list("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\\\"'`$;&|#<> \t-=:/@")
FRAGMENTS = st.sampled_from(NASTY + ["RUN ", "FROM ", "-r ", "${X}", "$(id)", "\\\n", "\nRUN id\n"])
text = st.lists(st.characters(codec="utf-8") | FRAGMENTS, max_size=12).map("".join)
word = st.lists(st.sampled_from(list("abcxyz019._-=<>")) | FRAGMENTS, min_size=1, max_size=10).map("".join)
strings = st.one_of(word, text)
urls = st.one_of(st.builds("https://{}/simple".format, word), text)
# Valid references (a simple subset of IMAGE_REF_PATTERN, cheap to generate) or anything at all.
IMAGE_SUBSET = r"([a-z0-9.]{1,12}(:[0-9]{2,4})?/)?[a-z0-9]{1,10}(:[A-Za-z0-9_.-]{1,12})?"
valid_images = st.from_regex(IMAGE_SUBSET, fullmatch=True)
images = st.one_of(valid_images.filter(lambda s: re.fullmatch(IMAGE_REF_PATTERN, s) is not None), text)


@st.composite
def bodies(draw) -> dict:
    body: dict = {}
    if draw(st.booleans()):
        body["pip"] = {
            k: v
            for k, v in {
                "packages": draw(st.lists(strings, max_size=3)),
                "requirements": draw(st.one_of(st.none(), strings)),
                "indexUrl": draw(st.one_of(st.none(), urls)),
                "extraIndexUrls": draw(st.lists(urls, max_size=2)),
            }.items()
            if v is not None
        }
    if draw(st.booleans()):
        if draw(st.booleans()):
            body["conda"] = {
                "environmentYaml": draw(
                    st.one_of(strings, st.builds("dependencies:\n  - {}\n".format, strings))
                )
            }
        else:
            body["conda"] = {
                "channels": draw(st.lists(strings, max_size=2)),
                "packages": draw(st.lists(strings, max_size=3)),
                "pipPackages": draw(st.lists(strings, max_size=2)),
            }
    if draw(st.booleans()):
        body["docker"] = {"baseImage": draw(images)}
    if draw(st.booleans()):
        body["environmentVariables"] = draw(st.dictionaries(strings, strings, max_size=2))
    return body


def reference(spec: EnvironmentSpec) -> EnvironmentSpec:
    """A spec with the same base image and layers as `spec` but only harmless, fixed values."""
    body: dict = {}
    if spec.docker.base_image:
        body["docker"] = {"baseImage": spec.docker.base_image}
    files = render_context(spec).files
    if uses_conda(spec):
        body["conda"] = {"packages": ["numpy"], "pipPackages": ["rich"] if "conda-requirements.txt" in files else []}
    if "requirements.txt" in files:
        body["pip"] = {"packages": ["rich"]}
    return spec_from_body(body)


def instruction_lines(dockerfile: str) -> list[str]:
    """Dockerfile instruction lines: not comments, not blank, not continuations of the previous line."""
    lines, continued = [], False
    for line in dockerfile.split("\n"):
        if line.strip() and not line.startswith("#") and not continued:
            lines.append(line)
        continued = line.endswith("\\")
    return lines


def template_lines() -> set[str]:
    """Every instruction line the templates can produce for a fixed base image."""
    lines: set[str] = set()
    for body in ({"pip": {"packages": ["a"]}},
                 {"conda": {"packages": ["a"], "pipPackages": ["a"]}, "pip": {"packages": ["a"]}}):
        lines |= set(instruction_lines(render_context(spec_from_body(body), EXTERNALS).files["Dockerfile"]))
    return lines


TEMPLATE = template_lines()


def assert_refusal_names_a_field(error: Exception) -> None:
    message = describe_validation_error(error) if isinstance(error, ValidationError) else str(error)
    assert message.startswith("spec."), message
    assert "\n" not in message and "\r" not in message, message


def render_or_refuse(body: dict) -> tuple[EnvironmentSpec, BuildContext] | None:
    """The validated spec and its context, or None after checking that the refusal names a field."""
    try:
        spec = spec_from_body(body)
        return spec, render_context(spec, EXTERNALS)
    except (ValidationError, SpecError) as error:
        assert_refusal_names_a_field(error)
        return None


@SETTINGS
@given(body=bodies())
def test_no_spec_value_reaches_the_dockerfile(body):
    rendered = render_or_refuse(body)
    if rendered is None:
        return
    spec, context = rendered
    dockerfile = context.files["Dockerfile"]
    assert dockerfile == render_context(reference(spec), EXTERNALS).files["Dockerfile"]
    for line in instruction_lines(dockerfile):
        if line.startswith("FROM "):
            assert line.split() in (["FROM", spec.docker.base_image or EXTERNALS.default_base_image],
                                    ["FROM", EXTERNALS.conda_installer_image, "AS", "kenv-conda"])
        else:
            assert line in TEMPLATE, line


@SETTINGS
@given(
    packages=st.lists(strings, min_size=1, max_size=3),
    index=st.one_of(st.none(), urls),
    extra=st.lists(urls, max_size=2),
    conda_pip=st.lists(strings, max_size=2),
)
def test_every_list_item_stays_one_line_of_requirements(packages, index, extra, conda_pip):
    """pip reads requirements files with str.splitlines(): each package or URL must stay exactly one line."""
    body: dict = {"pip": {"packages": packages, "extraIndexUrls": extra}}
    if index is not None:
        body["pip"]["indexUrl"] = index
    if conda_pip:
        body["conda"] = {"pipPackages": conda_pip}
    try:
        spec = spec_from_body(body)
        requirements = render_context(spec).files.get("requirements.txt")
    except (ValidationError, SpecError) as error:
        assert_refusal_names_a_field(error)
        return
    if requirements is None or spec.pip is None:
        return
    lines = requirements.splitlines()
    expected = ([f"--index-url {spec.pip.index_url}"] if spec.pip.index_url else []) + [
        f"--extra-index-url {url}" for url in spec.pip.extra_index_urls
    ]
    assert lines[: len(expected)] == expected
    if spec.pip.packages:
        assert lines[-len(spec.pip.packages) :] == [p.strip() for p in spec.pip.packages]  # rendered stripped
    assert not any(re.match(r"\s*(-r|-c|--requirement|--constraint)", line) for line in lines)
    assert all(len(item.splitlines()) == 1 for item in spec.conda.pip_packages) if spec.conda else True


@SETTINGS
@given(
    path=st.one_of(st.builds("/usr/{}".format, text), st.from_regex(r"/[a-z0-9/._+-]{0,30}", fullmatch=True))
)
def test_interpreter_path_is_a_single_plain_shell_word(path):
    body = {"python": {"interpreterPath": path}, "pip": {"packages": ["rich"]}}
    try:
        spec = spec_from_body(body)
    except ValidationError as error:
        assert describe_validation_error(error).startswith("spec.python.interpreterPath:")
        return
    run = [
        line
        for line in instruction_lines(render_context(spec).files["Dockerfile"])
        if line.startswith("RUN ")
    ]
    assert len(run) == 2  # the install, then the package lock, written with the same interpreter
    assert run[0].split()[:4] == ["RUN", path, "-m", "pip"]
    assert run[1].split()[:5] == ["RUN", "for", "py", "in", path]
    assert re.fullmatch(r"/[A-Za-z0-9._+/-]*", path)


# --- canonical content hash ------------------------------------------------------------------------------

requirement_names = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True)
specifiers = st.sampled_from(["", "==1.0", ">=1,<2", "~=2.4", "[extra]==3", " ; python_version >= \"3.10\""])
requirements = st.builds("{}{}".format, requirement_names, specifiers)
option_lines = st.sampled_from(
    ["--index-url https://pypi.example.com/simple", "--extra-index-url https://x.example/whl", "--pre",
     "--only-binary :all:", "-f https://x.example/wheels", "# a comment", "numpy  # pinned"]
)
spaces = st.sampled_from(["", " ", "  ", "\t", " \t "])
line_ends = st.sampled_from(["\n", "\r\n", "\n\n", "\n  \n", "\n\t\n"])


@st.composite
def requirement_bodies(draw) -> tuple[str, str]:
    """The same requirements body twice: once plain, once with whitespace-only edits."""
    lines = draw(st.lists(st.one_of(requirements, option_lines), min_size=1, max_size=8))
    plain = "\n".join(lines) + "\n"
    noisy = draw(line_ends) if draw(st.booleans()) else ""
    for line in lines:
        noisy += draw(spaces) + line + draw(spaces) + draw(line_ends)
    return plain, noisy


@SETTINGS
@given(bodies=requirement_bodies())
def test_whitespace_only_edits_of_requirements_keep_the_hash(bodies):
    plain, noisy = bodies
    first, second = spec_from_body({"pip": {"requirements": plain}}), spec_from_body({"pip": {"requirements": noisy}})
    assert render_context(first).hash == render_context(second).hash
    assert render_context(first).files["requirements.txt"] == plain


@SETTINGS
@given(bodies=requirement_bodies(), extra=requirement_names)
def test_content_edits_of_requirements_move_the_hash(bodies, extra):
    plain, _ = bodies
    edited = plain + extra + "==9.9.9\n"
    assert render_context(spec_from_body({"pip": {"requirements": plain}})).hash != render_context(
        spec_from_body({"pip": {"requirements": edited}})
    ).hash


conda_specs = st.builds("{}{}".format, requirement_names, st.sampled_from(["", "=1.2", " >=1,<2", "=1.2=py*"]))


@st.composite
def environment_documents(draw) -> dict:
    document: dict = {"dependencies": draw(st.lists(conda_specs, min_size=1, max_size=5, unique=True))}
    if draw(st.booleans()):
        document["channels"] = draw(st.lists(st.sampled_from(["conda-forge", "pytorch", "nvidia"]), unique=True))
    if draw(st.booleans()):
        document["name"] = draw(requirement_names)
    if draw(st.booleans()):
        document["dependencies"].append({"pip": draw(st.lists(requirements, min_size=1, max_size=3))})
    return document


def shuffled_dump(document: dict, order: list[int], flow: bool, indent: int) -> str:
    keys = sorted(document)
    keys = [keys[i % len(keys)] for i in order if keys[i % len(keys)]] + keys
    reordered = {k: document[k] for k in dict.fromkeys(keys)}
    return "# generated\n" + yaml.safe_dump(reordered, sort_keys=False, default_flow_style=flow, indent=indent)


@SETTINGS
@given(
    document=environment_documents(),
    order=st.lists(st.integers(0, 5), max_size=3),
    flow=st.sampled_from([False, True, None]),
    indent=st.integers(2, 6),
)
def test_key_order_comments_and_layout_of_environment_yaml_keep_the_hash(document, order, flow, indent):
    reference = render_context(spec_from_body({"conda": {"environmentYaml": yaml.safe_dump(document)}}))
    edited = render_context(
        spec_from_body({"conda": {"environmentYaml": shuffled_dump(document, order, flow, indent)}})
    )
    assert edited.hash == reference.hash
    channels = build_channels(document.get("channels", []))  # the user's, then conda-forge
    assert yaml.safe_load(edited.files["environment.yml"]) == {**document, "channels": channels}


@SETTINGS
@given(document=environment_documents(), extra=requirement_names)
def test_content_edits_of_environment_yaml_move_the_hash(document, extra):
    edited = {**document, "dependencies": [*document["dependencies"], extra + "=0.0.1"]}
    assert render_context(spec_from_body({"conda": {"environmentYaml": yaml.safe_dump(document)}})).hash != (
        render_context(spec_from_body({"conda": {"environmentYaml": yaml.safe_dump(edited)}})).hash
    )


dockerfile_lines = st.sampled_from(
    ["FROM ubuntu:22.04", "RUN apt-get update && \\", "    apt-get install -y git", "ENV A=1", "# comment",
     "WORKDIR /app", "COPY --from=a:1 /x /y", "RUN echo \"a  b\""]
)


@SETTINGS
@given(lines=st.lists(dockerfile_lines, min_size=1, max_size=8), data=st.data())
def test_whitespace_only_edits_of_the_dockerfile_keep_the_hash(lines, data):
    plain = "\n".join(lines) + "\n"
    noisy = "".join(line + data.draw(spaces) + data.draw(line_ends) for line in lines)
    first = render_context(spec_from_body({"docker": {"dockerfile": plain}}))
    second = render_context(spec_from_body({"docker": {"dockerfile": noisy}}))
    assert first.hash == second.hash
    assert plain in first.files["Dockerfile"]


@SETTINGS
@given(body=bodies())
def test_rendered_requirements_are_a_fixed_point(body):
    """The rendered requirements.txt is what pip reads: re-reading it gives the same lines, all valid."""
    rendered = render_or_refuse(body)
    if rendered is None:
        return
    _, context = rendered
    requirements = context.files.get("requirements.txt")
    if requirements is not None:
        assert canonical_requirements(requirements) == requirements.splitlines()
        check_requirements_body(requirements, "requirements.txt")
    if "environment.yml" in context.files:
        text = context.files["environment.yml"]
        assert canonical_yaml(yaml.safe_load(text)) == text
