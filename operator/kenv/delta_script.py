"""Install an edit's added pip requirements into the running previous image and write what changed as layers.

Copied into an incremental build's context as kenv-delta.py and run by the previous version's image's own python
(README, "Incremental builds"): it records the files under the interpreter's install paths, runs the same
`pip install -r requirements.txt` the Dockerfile runs (the old lines are already satisfied, so pip installs only
what the added lines need), writes the package lock again, and records the files once more. What was added or
changed becomes layer.tar; what was removed, an OCI whiteout in it; the lock file alone becomes lock.tar, so the
image's last layer is its lock, as in a full build. The kenv image's `kenv append-layers` pushes both.

It runs on whatever python the image has (3.8 or newer): the standard library only.

Usage: kenv-delta.py OUT_DIR REQUIREMENTS LOCK_SCRIPT PIP_CACHE_OPTION LOCK_ARG...
"""

import os
import re
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
import tarfile

WHITEOUT = ".wh."
IMAGE_REQUIREMENTS = "/tmp/kenv/requirements.txt"  # where the Dockerfile copies them


def within(path, root):
    """Whether `path` is `root` or under it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def install_roots():
    """The folders pip writes to: the interpreter's install paths, the user site and pip's target, prefix or root
    if the environment sets them; a folder inside another is walked with it."""
    paths = set(sysconfig.get_paths().values())
    paths.update([site.getuserbase(), site.getusersitepackages()])
    # pip's own redirections, set by the image's ENV (the container has them, as the Dockerfile's RUN had)
    paths.update(os.environ.get(name, "") for name in ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT"))
    roots: list[str] = []  # not evaluated at run time: fine on python 3.8
    for path in sorted(os.path.normpath(p) for p in paths if p):
        if not any(within(path, root) for root in roots):
            roots.append(path)
    return roots


def mounts_under(roots, allowed, mountinfo):
    """The mount points (fields of /proc/self/mountinfo) that are, or are under, a root, besides `allowed`: an image
    VOLUME the runtime mounted there, where pip's files would land outside the image."""
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:  # the fifth field, with space, tab, newline and backslash as octal escapes
            points.add(re.sub(r"\\([0-7]{3})", lambda found: chr(int(found.group(1), 8)), fields[4]))
    return sorted(point for point in points - set(allowed) if any(within(point, root) for root in roots))


def entry(path):
    """What a layer records of one path: type and mode, owner, size, modification time, link target."""
    info = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    return (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns, target)


def snapshot(roots, files, skip):
    """Every path under the folders `roots` (not following links, nor into another filesystem: the pod's mounts
    are not the image's) and each of `files` that exists, with its entry; unreadable folders are passed over."""
    found = {path: entry(path) for path in files if os.path.lexists(path)}
    for root in roots:
        if not os.path.lexists(root):
            continue
        found[root] = entry(root)
        device = os.lstat(root).st_dev
        for folder, dirs, names in os.walk(root, onerror=lambda error: None):
            kept = []
            for name in dirs:
                path = os.path.join(folder, name)
                try:
                    if path not in skip and os.lstat(path).st_dev == device:
                        kept.append(name)
                except OSError:
                    continue
            dirs[:] = kept
            for name in kept + names:
                path = os.path.join(folder, name)
                try:
                    found[path] = entry(path)
                except OSError:
                    continue
    return found


def changes(before, after):
    """(paths added or changed, sorted so folders precede their contents; paths removed that need a whiteout:
    the top-most of a removed tree, and none under a folder that is now a file, which hides the old tree)."""
    changed = sorted(path for path, seen in after.items() if before.get(path) != seen)
    gone = {path for path in before if path not in after}
    removed = []
    for path in sorted(gone):
        parent = os.path.dirname(path)
        if parent in after and not stat.S_ISDIR(after[parent][0]):
            continue
        ancestor = parent
        while ancestor not in gone and os.path.dirname(ancestor) != ancestor:
            ancestor = os.path.dirname(ancestor)
        if ancestor not in gone:
            removed.append(path)
    return changed, removed


def whiteout_name(path):
    folder, name = os.path.split(path)
    return os.path.join(folder, WHITEOUT + name).lstrip("/")


def write_layer(target, changed, removed):
    """A tar of the changed paths (as they are now) and a whiteout for each removed one."""
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as layer:
        for path in changed:
            layer.add(path, arcname=path.lstrip("/"), recursive=False)
        for path in removed:
            info = tarfile.TarInfo(whiteout_name(path))
            info.mode = 0o644
            layer.addfile(info)


def main(argv):
    out, requirements, lock_script, cache_option = argv[1:5]
    lock_args = argv[5:]
    lock_paths = set(lock_args[:2])
    roots, files = install_roots(), sorted(lock_paths | {IMAGE_REQUIREMENTS})
    skip = {os.path.normpath(out)}
    try:
        with open("/proc/self/mountinfo") as info:
            mounted = mounts_under(roots, skip, info.read())
    except OSError:
        mounted = []
    if mounted:
        print(f"kenv: {', '.join(mounted)}: mounted where pip installs (an image VOLUME?), so what pip wrote there "
              "would not be in the image; drop the VOLUME, or set spec.build.incremental to false", file=sys.stderr,
              flush=True)
        return 1
    before = snapshot(roots, files, skip)
    print(f"kenv: installing the added requirements into the previous image ({len(before)} paths under "
          f"{', '.join(roots)})", flush=True)
    pip = [sys.executable, "-m", "pip", "install", cache_option, "--disable-pip-version-check", "-r", requirements]
    if subprocess.call(pip) != 0:
        print("kenv: pip install failed; the build stops here and the previous image stays current", flush=True)
        return 1
    try:  # the image's copy of the requirements (the Dockerfile's COPY) says what it was built from
        if os.path.exists(IMAGE_REQUIREMENTS):
            shutil.copyfile(requirements, IMAGE_REQUIREMENTS)
    except OSError as error:
        print(f"kenv: {IMAGE_REQUIREMENTS} keeps the previous requirements: {error}", file=sys.stderr, flush=True)
    locked = subprocess.call([sys.executable, lock_script] + lock_args) == 0
    after = snapshot(roots, files, skip)
    changed, removed = changes(before, after)
    packages = [path for path in changed if path not in lock_paths]
    write_layer(os.path.join(out, "layer.tar"), packages, [path for path in removed if path not in lock_paths])
    rewritten = [path for path in changed if path in lock_paths] if locked else []
    # A previous lock not rewritten (none could be, or the other place was) is stale now: hidden. As in a full
    # build, a lock that cannot be written fails nothing.
    stale = sorted(path for path in lock_paths if path in before and path not in rewritten) \
        if rewritten or not locked else []
    write_layer(os.path.join(out, "lock.tar"), rewritten, stale)
    if not locked:
        print("kenv: the package lock could not be written", file=sys.stderr, flush=True)
    print(f"kenv: {len(packages)} paths added or changed, {len(removed)} removed; the lock is "
          f"{'rewritten' if rewritten else 'not written'}{'; the stale one hidden' if stale else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
