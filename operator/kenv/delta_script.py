"""Install an edit's added pip requirements (and its conda changes) into the running previous image and write what
changed as layers.

Copied into an incremental build's context as kenv-delta.py and run by the previous version's image's own python
(README, "Incremental builds"): it records the files under the interpreter's install paths (and the conda prefix),
updates the conda environment when the edit changed it (kenv-conda.py --update, with the py-rattler the tools
container copied), runs the same `pip install -r` steps the Dockerfile runs, with uv where it runs uv (the old
lines are already satisfied, so only what the added lines need is installed), writes the package lock again, and
records the files once more. What was added or changed becomes layer.tar; what was removed, an OCI whiteout in it;
the lock file alone becomes lock.tar, so the image's last layer is its lock, as in a full build. The kenv image's
`kenv append-layers` pushes both.

It runs on whatever python the image has (3.8 or newer): the standard library only.

Usage: kenv-delta.py --out=DIR --lock-script=F --pip-cache=OPTION [--requirements=F | --uv-requirements=F]...
       [--uv-pin=F --uv-cache=OPTION]
       [--conda-environment=F --conda-prefix=DIR --conda-installer=F --conda-tools=DIR [--conda-option=O]...]
       -- LOCK_ARG...
"""

import argparse
import compileall
import csv
import os
import re
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile

WHITEOUT = ".wh."
IMAGE_COPIES = "/tmp/kenv"  # where the Dockerfile copies the requirements files


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
    """What a layer records of one path: type and mode, owner, size, modification time, link target, and the
    inode (stable within the container for a file left alone; an installer that replaces a file by another of
    the same size and time, as rattler linking from its cache may, gives it a new one)."""
    info = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    return (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns, target, info.st_ino)


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


def arguments(argv):
    parser = argparse.ArgumentParser(prog="kenv-delta.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--lock-script", required=True)
    parser.add_argument("--pip-cache", required=True, help="pip's cache option")
    # Both kinds in one list, in the order given: the Dockerfile's install steps, each with its installer.
    parser.add_argument("--requirements", action="append", dest="installs", default=[],
                        type=lambda path: ("pip", path), help="a requirements file pip installs, in order")
    parser.add_argument("--uv-requirements", action="append", dest="installs", type=lambda path: ("uv", path),
                        help="a requirements file uv installs, in order")
    parser.add_argument("--uv-pin", help="the requirements file pinning uv (pip-installed for the install only)")
    parser.add_argument("--uv-cache", default="--no-cache", help="uv's cache option")
    parser.add_argument("--conda-environment", help="the environment file to update the conda prefix to")
    parser.add_argument("--conda-prefix")
    parser.add_argument("--conda-installer", help="kenv-conda.py")
    parser.add_argument("--conda-tools", help="where py-rattler and PyYAML are")
    parser.add_argument("--conda-option", action="append", default=[], help="an option of kenv-conda.py")
    parser.add_argument("lock_args", nargs="*")
    args = parser.parse_args(argv)
    if uses_uv(args) and not args.uv_pin:
        parser.error("--uv-requirements needs --uv-pin, the requirements file uv is installed from")
    return args


def uses_uv(args):
    """Whether uv installs one of the requirements files."""
    return any(kind == "uv" for kind, _ in args.installs)


def pip_install(args, *arguments):
    """pip's install command as the Dockerfile runs it (its cache option, no version check), with `arguments`."""
    return [sys.executable, "-m", "pip", "install", args.pip_cache, "--disable-pip-version-check", *arguments]


def site_folders():
    """The interpreter's site-packages folders (pure and platform-specific: often one)."""
    return sorted({sysconfig.get_paths()[name] for name in ("purelib", "platlib")})


def pip_owned(folders):
    """{path: distribution} of the files pip (or uv) installed (a dist-info whose INSTALLER is not conda) in the
    site folders, from their RECORD."""
    owned = {}
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            info = os.path.join(folder, name)
            if not name.endswith(".dist-info") or not os.path.isfile(os.path.join(info, "RECORD")):
                continue
            try:
                with open(os.path.join(info, "INSTALLER")) as installer:
                    if installer.read().strip() == "conda":
                        continue
            except OSError:
                pass
            try:
                with open(os.path.join(info, "RECORD"), encoding="utf-8", newline="") as record:
                    rows = list(csv.reader(record))
            except (OSError, UnicodeDecodeError, csv.Error):
                rows = [[os.path.join(name, "RECORD")]]  # unreadable: its own files at least count as pip's
            for row in rows:
                if row and row[0]:
                    owned[os.path.normpath(os.path.join(folder, row[0]))] = name[:-len(".dist-info")]
    return owned


def python_version(python):
    """major.minor of the interpreter at `python` now (None if it no longer runs)."""
    try:
        return subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def conda_blocker(args):
    """Why the conda environment cannot be updated in place, or None."""
    meta = os.path.join(args.conda_prefix, "conda-meta")
    if not os.path.isdir(meta):
        return f"{args.conda_prefix} holds no conda environment (no conda-meta)"
    if not os.access(meta, os.W_OK):
        return (f"{meta} is not writable by this image's user (uid {os.getuid()}), so the conda environment "
                "cannot be updated in place")
    return None


def update_conda(args):
    """kenv-conda.py --update with py-rattler from the tools folder (for it alone: pip and the lock script must
    not see those copies); the environment file's pip list is left to the pip steps that follow."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [args.conda_tools, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, args.conda_installer, "--update", "--no-pip"] + args.conda_option + \
        [args.conda_environment, args.conda_prefix]
    return subprocess.call(command, env=env) == 0


def update_conda_over_pip(args, roots, before, skip):
    """Update the conda environment; why a full build must follow instead, or None."""
    owned = pip_owned(site_folders())
    if not update_conda(args):
        return "the conda update failed"
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    now = python_version(sys.executable)
    if now != running:  # the solve preferred the installed python but needed another: pip's packages stay behind
        return f"the conda update replaced python {running} with {now or 'nothing that runs'}"
    # A conda package that replaced or removed files pip installed over it (pip pinned another version of a conda
    # package) leaves pip's record wrong, which pip's next run trusts; a full build installs in order. Only pip's
    # files are looked at again: the final snapshot sees the rest.
    watched = [path for path in owned if any(within(path, root) for root in roots)]
    updated = snapshot([], watched, skip)
    clobbered = sorted({owned[path] for path in watched if before.get(path) != updated.get(path)})
    return f"the conda update changed files pip installed ({', '.join(clobbered)})" if clobbered else None


def install_uv(args, folder):
    """uv into `folder` (outside the image's install paths, left out of its snapshots), as the Dockerfile's uv
    step installs it; the path of its binary, or None if pip could not install it."""
    installed = subprocess.call(pip_install(args, "--target", folder, "-r", args.uv_pin)) == 0
    return os.path.join(folder, "bin", "uv") if installed else None


def compiles_site_packages(args):
    """Whether site-packages is compiled to bytecode after the installs: after a conda update with uv installing
    spec.pip. The full build's uv step compiles the whole of site-packages after its conda stage
    (--compile-bytecode does), the conda packages' files included; uv with nothing left to install compiles
    nothing, so the ones the update linked are compiled here, as that step would have."""
    return bool(args.conda_environment) and uses_uv(args)


def install_command(installer, requirements, args, uv):
    """The Dockerfile's install step for one requirements file: pip's, or uv's with the same options."""
    if installer == "pip":
        return pip_install(args, "-r", requirements)
    cache = args.uv_cache
    if cache.startswith("--cache-dir=") and not os.access(os.path.dirname(cache.partition("=")[2]), os.W_OK):
        cache = "--no-cache"  # the cache volume is root's and this image's user is not: uv goes without, as pip
    return [uv, "pip", "install", cache, "--system", "--python", sys.executable, "--break-system-packages",
            "--index-strategy", "unsafe-best-match", "--compile-bytecode", "-r", requirements]


def main(argv):
    args = arguments(argv[1:])
    roots = install_roots()
    if args.conda_prefix and not any(within(args.conda_prefix, root) for root in roots):
        roots = [root for root in roots if not within(root, args.conda_prefix)] + [args.conda_prefix]
    copies = [os.path.join(IMAGE_COPIES, os.path.basename(path)) for _, path in args.installs]
    files = sorted(set(args.lock_args[:2]) | set(copies))
    uv_folder = tempfile.mkdtemp(prefix="kenv-uv-") if uses_uv(args) else None
    skip = {os.path.normpath(args.out), *([os.path.normpath(uv_folder)] if uv_folder else [])}
    try:
        return install_and_write(args, roots, files, copies, skip, uv_folder)
    finally:
        if uv_folder:
            shutil.rmtree(uv_folder, ignore_errors=True)


def install_and_write(args, roots, files, copies, skip, uv_folder):
    """main's work once the paths are known: check, snapshot, install, snapshot again, write the layers."""
    out, lock_args = args.out, args.lock_args
    lock_paths = set(lock_args[:2])
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
    blocker = conda_blocker(args) if args.conda_environment else None
    if blocker:
        print(f"kenv: {blocker}; a full build follows", file=sys.stderr, flush=True)
        return 1
    before = snapshot(roots, files, skip)
    print(f"kenv: installing the edit into the previous image ({len(before)} paths under {', '.join(roots)})",
          flush=True)
    if args.conda_environment:
        problem = update_conda_over_pip(args, roots, before, skip)
        if problem:
            print(f"kenv: {problem}; a full build follows", file=sys.stderr, flush=True)
            return 1
    uv = install_uv(args, uv_folder) if uv_folder else None
    if uv_folder and uv is None:
        print("kenv: uv could not be installed; a full build follows", flush=True)
        return 1
    env = dict(os.environ, UV_LINK_MODE="copy")  # as the Dockerfile's uv step: no hard links into the cache
    for installer, requirements in args.installs:
        if subprocess.call(install_command(installer, requirements, args, uv), env=env) != 0:
            print(f"kenv: {installer} install failed; a full build follows", flush=True)
            return 1
    if compiles_site_packages(args):
        for folder in site_folders():  # as uv does: every level, failures (Python 2 files, say) passed over
            compileall.compile_dir(folder, maxlevels=sys.getrecursionlimit(), quiet=2)
    for requirements, copy in zip([path for _, path in args.installs], copies):  # noqa: B905 - python 3.8
        try:  # the image's copy of the requirements (the Dockerfile's COPY) says what it was built from
            if os.path.exists(copy):
                shutil.copyfile(requirements, copy)
        except OSError as error:
            print(f"kenv: {copy} keeps the previous requirements: {error}", file=sys.stderr, flush=True)
    locked = subprocess.call([sys.executable, args.lock_script] + lock_args) == 0
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
