"""Package locks and SBOMs, the pure parts: kenv-lock.py run by a real interpreter, the lock as a version holds
it, package changes, reading a lock from a layer tarball, and the CycloneDX document (checked by the format's
own JSON-schema validator)."""

from __future__ import annotations

import ast
import gzip
import importlib.metadata
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from kenv import lock, oci, sbom, versionstore
from kenv.lock_script import without_credentials
from kenv.refs import EnvironmentRef
from kenv.render import LOCK_FALLBACK, LOCK_FILE
from kenv.versionstore import NewVersion, version_body

SCRIPT = Path(lock.__file__).with_name("lock_script.py")
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"registry.example:5000/kenv/environments@{DIGEST}"


def run_script(tmp_path: Path, *extra: str, target: Path | None = None) -> dict:
    target = target or tmp_path / "etc/kenv/lock.json"
    fallback = tmp_path / "fallback/lock.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(target), str(fallback), *extra], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = target if target.exists() else fallback
    return dict(json.loads(written.read_text()))


def conda_prefix(tmp_path: Path) -> Path:
    meta = tmp_path / "env/conda-meta"
    meta.mkdir(parents=True)
    (meta / "zlib-1.3.1-h4ab18f5_1.json").write_text(json.dumps({
        "name": "zlib", "version": "1.3.1", "build": "h4ab18f5_1", "sha256": "cd" * 32,
        "channel": "https://user:secret@conda.example.com/t/tok-123/private"}))
    # the conda package of a Python distribution this interpreter also imports: listed once, as conda's
    (meta / "pytest.json").write_text(json.dumps({"name": "pytest", "version": importlib.metadata.version("pytest"),
                                                  "build": "pyhd8ed1ab_0", "channel": "conda-forge"}))
    (meta / "history").write_text("not a record")
    (meta / "broken.json").write_text("{")
    return tmp_path / "env"


def test_the_script_lists_what_this_interpreter_imports_at_the_versions_it_reports(tmp_path):
    document = run_script(tmp_path)
    assert document["lockFormat"] == 1 and "error" not in document
    pip = {p["name"].lower(): p for p in document["packages"]}
    for name in ("pytest", "pydantic", "jinja2"):
        assert pip[name]["version"] == importlib.metadata.version(name)
        assert pip[name]["manager"] == "pip"
    assert pip["kenv"]["url"].startswith("file://")  # an editable install: PEP 610 says where from
    assert document["python"] == ".".join(map(str, sys.version_info[:3]))


def test_conda_records_keep_build_and_channel_lose_credentials_and_are_not_listed_twice(tmp_path):
    document = run_script(tmp_path, str(conda_prefix(tmp_path)))
    conda = [p for p in document["packages"] if p["manager"] == "conda"]
    assert [p["name"] for p in conda] == ["pytest", "zlib"]
    zlib = conda[1]
    assert zlib == {"name": "zlib", "version": "1.3.1", "manager": "conda", "build": "h4ab18f5_1",
                    "channel": "https://conda.example.com/private", "sha256": "cd" * 32}
    assert not [p for p in document["packages"] if p["manager"] == "pip" and p["name"].lower() == "pytest"]


def test_a_lock_the_build_user_cannot_write_goes_to_the_fallback(tmp_path):
    (tmp_path / "etc").write_text("a file where the directory would be")
    document = run_script(tmp_path, target=tmp_path / "etc/kenv/lock.json")
    assert (tmp_path / "fallback/lock.json").exists() and document["packages"]
    assert [LOCK_FILE.lstrip("/"), LOCK_FALLBACK.lstrip("/")] == list(oci.LOCK_MEMBERS)


def test_parse_keeps_valid_entries_and_says_what_it_left_out():
    data = json.dumps({"lockFormat": 1, "python": "3.11.9", "packages": [
        {"name": "six", "version": "1.16.0", "manager": "pip", "installer": "pip"},
        {"name": "x", "version": "1", "manager": "npm"},
        {"name": "", "version": "1", "manager": "pip"},
        {"name": "\x1b[31mred", "version": "1", "manager": "pip"},
        {"name": "idna", "version": "3.7", "manager": "pip", "sha256": "zz", "url": "https://x/" + "u" * 3000},
        "not an object"]}).encode()
    parsed = lock.parse(data, DIGEST)
    assert parsed["packages"] == [{"name": "six", "version": "1.16.0", "manager": "pip", "installer": "pip"},
                                  {"name": "idna", "version": "3.7", "manager": "pip"}]  # bad fields dropped
    assert parsed["python"] == "3.11.9" and parsed["layer"] == DIGEST
    assert parsed["error"] == "4 entries did not fit the lock's schema and were left out"
    assert lock.parse(b"[1]", DIGEST)["error"] == "the image's lock is not a JSON object"
    assert lock.parse(b"{", DIGEST)["error"].startswith("the image's lock is not JSON")
    assert lock.parse(b"[" * 100_000, DIGEST)["error"].startswith("the image's lock is not JSON")
    # the lock's own error is text from the image: stored and printed without control characters or surrogates
    assert lock.parse(b'{"error": "\\ud800 \\u001b[2J\\u009b", "packages": []}', DIGEST)["error"] == "? ?[2J?"
    many = lock.parse(json.dumps({"packages": [0] * 30_000}).encode(), DIGEST)
    assert many["packages"] == [] and many["error"].startswith("10000 packages beyond the first 20000")


def test_urls_lose_user_information_conda_tokens_query_and_fragment():
    assert without_credentials("https://user:p@ss@conda.example.com/t/tok-1/private") == \
        "https://conda.example.com/private"
    assert without_credentials("https://files.example.com/x.whl?X-Amz-Signature=s#sha256=1") == \
        "https://files.example.com/x.whl"
    assert without_credentials("git+https://u:p@github.com/a/b.git@v1.0") == "git+https://github.com/a/b.git@v1.0"
    assert without_credentials("conda-forge") == "conda-forge"
    assert without_credentials("//u:p@h/x") == "//h/x"
    assert without_credentials("file:///build/t/pkg.whl") == "file:///build/t/pkg.whl"  # a folder named t
    assert without_credentials("http://[::1") == "(a URL that could not be parsed)"


def test_the_script_parses_as_python_3_8():
    ast.parse(SCRIPT.read_text(), feature_version=(3, 8))


def test_one_unreadable_distribution_costs_only_its_own_entry(tmp_path):
    site = tmp_path / "site"
    for name, direct_url in (("broken", "{"), ("fine", '{"url": "https://u:p@h/fine.whl", "archive_info": '
                                                        '{"hashes": {"sha256": "' + "ef" * 32 + '"}}}')):
        info = site / f"{name}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "direct_url.json").write_text(direct_url)
    target = tmp_path / "lock.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(target), str(tmp_path / "fallback.json")],
                          env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    document = json.loads(target.read_text())
    fine = next(p for p in document["packages"] if p["name"] == "fine")
    assert fine["url"] == "https://h/fine.whl" and fine["sha256"] == "ef" * 32
    assert "broken" not in {p["name"] for p in document["packages"]}
    assert re.fullmatch(r"\d+ Python distributions could not be read: .*broken-1\.0\.dist-info.*", document["error"])
    assert len(document["packages"]) > 2  # the interpreter's own distributions are all still there


def test_changes_name_each_added_removed_and_moved_package():
    def locked(*packages):
        return {"packages": [dict(zip(("name", "version", "manager", "build"), p, strict=False)) for p in packages]}
    before = locked(("six", "1.16.0", "pip"), ("rich", "13.0", "pip"), ("zlib", "1.3", "conda", "h_0"))
    after = locked(("Six", "1.15.0", "pip"), ("numpy", "2.0", "pip"), ("zlib", "1.3", "conda", "h_1"),
                   ("typing_extensions", "4.0", "pip"))
    before["packages"].append({"name": "typing-extensions", "version": "4.0", "manager": "pip"})
    assert lock.changes(before, after) == [
        "~ zlib (conda) 1.3 (h_0) -> 1.3 (h_1)", "+ numpy 2.0", "- rich 13.0", "~ Six 1.16.0 -> 1.15.0"]
    assert lock.changes(before, before) == []
    # conda names are their own: conda-forge ships typing-extensions and typing_extensions as two packages
    both = locked(("typing-extensions", "4.0", "conda", "h_0"), ("typing_extensions", "4.0", "conda", "h_0"))
    one = locked(("typing_extensions", "4.0", "conda", "h_0"))
    assert lock.changes(both, one) == ["- typing-extensions (conda) 4.0 (h_0)"]


def test_table_shows_each_package_with_its_source():
    rows = lock.table({"packages": [
        {"name": "zlib", "version": "1.3", "manager": "conda", "build": "h_0", "channel": "conda-forge"},
        {"name": "six", "version": "1.16.0", "manager": "pip", "installer": "uv"}]}).splitlines()
    assert rows[0].split() == ["PACKAGE", "VERSION", "MANAGER", "SOURCE"]
    assert rows[1].split() == ["zlib", "1.3", "(h_0)", "conda", "conda-forge"]
    assert rows[2].split() == ["six", "1.16.0", "pip", "uv"]


def layer(files: dict[str, bytes], compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue()) if compress else buffer.getvalue()


def test_the_lock_is_read_from_either_place_in_a_gzip_or_plain_layer():
    assert oci.lock_from_layer(layer({"etc/kenv/": b"", "etc/kenv/lock.json": b"{}"})) == b"{}"
    assert oci.lock_from_layer(layer({"./tmp/kenv-lock.json": b"[]"}, compress=False)) == b"[]"
    assert oci.lock_from_layer(layer({"etc/other.json": b"{}"})) is None
    assert oci.lock_from_layer(b"(\xb5/\xfd not a tarball: zstd") is None
    assert oci.lock_from_layer(layer({"etc/kenv/lock.json": b"{}"})[:30]) is None  # a truncated blob


def test_a_layer_that_inflates_beyond_a_lock_layer_is_not_read_to_its_end():
    bomb = layer({"zeros": bytes(oci.MAX_LOCK_LAYER_INFLATED + 1024), "etc/kenv/lock.json": b"{}"})
    assert len(bomb) < 1024 * 1024 and oci.lock_from_layer(bomb) is None


def test_a_lock_too_big_for_its_version_keeps_its_first_packages_and_says_so():
    packages = [{"name": f"package-{i}", "version": "1.0", "manager": "conda", "build": "h" * 60,
                 "channel": "https://conda.example.com/" + "c" * 100} for i in range(5000)]
    parsed = lock.parse(json.dumps({"packages": packages}).encode(), DIGEST)
    assert parsed["packages"] == packages and "error" not in parsed
    new = NewVersion(ref=EnvironmentRef("Environment", "team-a", "train"), uid="u1", definition={"a": "b" * 900_000},
                     image=IMAGE, content_hash="c" * 64, runtime_hash=None, reason="BuildSucceeded", generation=1)
    body = version_body(new, 1, ["first version"], None, "team-a", {"lock": parsed, "sbom": IMAGE})
    kept = body["spec"]["lock"]["packages"]
    assert 0 < len(kept) < 5000 and kept == packages[:len(kept)]
    assert len(json.dumps(body)) <= versionstore.MAX_OBJECT_BYTES  # the rest of the version leaves it less room
    assert body["spec"]["lock"]["error"].startswith(f"only the first {len(kept)} of 5000 packages are kept")
    small = version_body(new, 1, [], None, "team-a", {"lock": lock.parse(json.dumps({"packages": packages[:9]})
                                                                          .encode(), DIGEST)})
    assert small["spec"]["lock"]["packages"] == packages[:9] and "error" not in small["spec"]["lock"]


def test_the_fallback_tag_follows_the_referrers_tag_schema():
    assert oci.fallback_tag(DIGEST) == "sha256-" + "ab" * 32


def test_the_sbom_is_valid_cyclonedx_describing_the_image_and_each_package():
    package_lock = {"packages": [
        {"name": "Typing_Extensions", "version": "4.12.2", "manager": "pip", "installer": "pip"},
        {"name": "zlib", "version": "1.3.1", "manager": "conda", "build": "h4ab18f5_1",
         "channel": "https://conda.anaconda.org/conda-forge", "sha256": "cd" * 32}]}
    text = sbom.cyclonedx(IMAGE, package_lock, "2026-11-28T09:30:00.123456789Z")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    assert document["metadata"]["timestamp"].startswith("2026-11-28T09:30:00.123456")  # the image's time
    assert document["metadata"]["component"]["type"] == "container"
    assert document["metadata"]["component"]["version"] == DIGEST
    components = {c["purl"]: c for c in document["components"]}
    assert set(components) == {
        "pkg:pypi/typing-extensions@4.12.2",
        "pkg:conda/zlib@1.3.1?build=h4ab18f5_1&channel=https://conda.anaconda.org/conda-forge"}
    assert components["pkg:conda/zlib@1.3.1?build=h4ab18f5_1&channel=https://conda.anaconda.org/conda-forge"][
        "hashes"] == [{"alg": "SHA-256", "content": "cd" * 32}]
    # one image, one SBOM: the same bytes whenever (and by whichever version) it is made
    assert sbom.cyclonedx(IMAGE, package_lock, "2026-11-28T09:30:00.123456789Z") == text
    other = json.loads(sbom.cyclonedx(IMAGE.replace("ab", "ef"), package_lock, None))
    assert other["serialNumber"] != document["serialNumber"]
    assert other["metadata"]["timestamp"].startswith("1970-01-01T00:00:00")  # an image that records no time


def test_the_operator_starts_without_importing_the_sbom_library() -> None:
    """Admission replicas never make an SBOM: cyclonedx is imported when the first one is made, not at start."""
    probe = "import sys, kenv.main; print(sorted(m for m in sys.modules if m.split('.')[0] in ('cyclonedx', 'kenv')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={"KENV_DESTINATION_REPO": "registry.local:5000/kenv/envs", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.replace("'", '"'))
    assert "kenv.imagecontents" in loaded and "kenv.main" in loaded  # the module that makes SBOMs is loaded ...
    assert not [m for m in loaded if m.startswith("cyclonedx") or m == "kenv.sbom"]  # ... its library is not
