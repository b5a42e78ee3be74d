"""The wheel set of the GPU tier, for a bare, offline GPU machine that has only its own CUDA torch.

    python scripts/gpu/wheels.py fetch [--python 3.12] [--cuda 12.8] [--dest .whl]   # here, with PyPI
    python scripts/gpu/wheels.py install --target /tmp/tinyllama-site [--wheels .whl] # there, no network

``fetch`` downloads, for the target's Python and CUDA, exactly the packages the tier needs that such a machine
lacks: the tier's roots (ROOTS) and everything they require, at the versions this repository tests with (its pins in
requirements*.txt, else the version installed beside this script's Python, which ``make install`` resolved from
those pins), minus what the machine brings with its torch (PROVIDED). Then it strips what the GPU does not use (STRIP: bitsandbytes' builds for other CUDA versions and ROCm,
pyarrow's Flight and S3 libraries and headers, test suites), installs them with pip into an empty folder for
the target's Python and platform (``pip install --target --python-version --platform``, no index, no dependency
resolution: the set is complete) and packs that folder into ``<dest>/site-py<version>.tar.xz`` beside
``MANIFEST.txt`` (the target, every wheel and its size). Packed as one xz archive, the installed set is about 47 MiB
(Python 3.11, 2026-12-06), where the stripped wheels themselves are about 80 (their per-file compression leaves transformers'
thousands of Python files large): small enough to carry to a machine that is lent for minutes. The downloaded wheels
stay in ``~/.cache/tinyllama-gpu-wheels``. DeepSpeed is published as source only: it is built here into a
pure-Python wheel (its CUDA ops, which the tier does not use, would be JIT-built there).

``install`` unpacks the archive into an empty folder after checking that this Python is the one the set was fetched
for; ``PYTHONPATH=<target>`` then puts it before the machine's own packages (its transformers, say).
scripts/gpu/tier.sh does this on the GPU machine.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What the tier imports (tests/gpu, the recipes and scripts it runs); their requirements come along.
ROOTS = ["transformers", "accelerate", "deepspeed", "trl", "peft", "datasets", "bitsandbytes", "liger-kernel",
         "safetensors", "tokenizers", "huggingface-hub", "pyyaml", "tqdm", "filelock", "sentencepiece", "protobuf",
         "pytest"]
# What a CUDA torch image has, at versions the tier works with: torch and the requirements of it that no package of
# the set pins narrowly, the CUDA libraries (nvidia-*), numpy. Not brought. (typing-extensions, filelock and fsspec,
# also torch's, come along: pydantic and datasets need versions an older image may lack.)
PROVIDED = ["torch", "triton", "numpy", "setuptools", "sympy", "mpmath", "networkx", "jinja2", "markupsafe"]
SOURCE_ONLY = ["deepspeed"]  # no wheel on PyPI: built here, pure Python
NOT_NEEDED = ["hf-xet"]  # huggingface_hub's Xet downloads: the machine is offline
# Files of a wheel the tier does not need on the GPU (fnmatch patterns on the paths inside the wheel).
STRIP = {
    "bitsandbytes": ["bitsandbytes/libbitsandbytes_*"],  # all native builds but the target's CUDA (see strip_patterns)
    "pyarrow": ["pyarrow/include/*", "pyarrow/src/*", "pyarrow/tests/*", "pyarrow/*.pxd", "pyarrow/*.pyx",
                "pyarrow/includes/*", "pyarrow/libarrow_flight.so*", "pyarrow/_flight*.so",
                "pyarrow/libarrow_python_flight.so*", "pyarrow/libarrow_s3.so*", "pyarrow/_s3fs*.so"],
    # (not libarrow_substrait: pyarrow.lib links it; tests/test_gpu_wheels.py imports the set)
    "pandas": ["pandas/tests/*"],
    "numpy": ["numpy/*/tests/*"],
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "linux_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """name -> version of every ``name==version`` line in requirements*.txt."""
    out = {}
    for path in sorted(REPO.glob("requirements*.txt")):
        for line in path.read_text().splitlines():
            if m := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#;]+)", line.strip()):
                out[canonical(m[1])] = m[2]
    return out


def requirements(name: str, python: str) -> list[str]:
    """The installed distribution's requirements that apply on Linux x86-64 CPython ``python`` (no extras)."""
    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix", "extra": "",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    out = []
    for text in md.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.append(canonical(req.name))
    return out


def plan(python: str) -> dict[str, str]:
    """name -> version of every package to bring: ROOTS and their requirements, less what the machine provides."""
    pinned, skip = pins(), {canonical(n) for n in PROVIDED + NOT_NEEDED}
    todo, out = [canonical(r) for r in ROOTS], {}
    while todo:
        name = todo.pop()
        if name in out or name in skip or name.startswith("nvidia-"):
            continue
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            installed = None
        version = pinned.get(name, installed)
        if version is None:
            raise SystemExit(f"{name}: neither pinned in requirements*.txt nor installed beside {sys.executable}")
        out[name] = version
        if installed is not None:  # (the GPU-only extras are not installed here; their requirements are provided)
            todo += requirements(name, python)
    return dict(sorted(out.items()))


def strip_patterns(name: str, cuda: str) -> list[str]:
    patterns = STRIP.get(name, [])
    if name == "bitsandbytes":
        keep = f"bitsandbytes/libbitsandbytes_cuda{cuda.replace('.', '')}.so"
        return [p for p in patterns] + [f"!{keep}", "!bitsandbytes/libbitsandbytes_cpu.so"]
    return patterns


def strip(wheel: Path, patterns: list[str]) -> int:
    """Rewrite ``wheel`` without the files matching ``patterns`` (a leading ! keeps a file), RECORD updated.
    Returns the number of files dropped. (pip installs a wheel by its RECORD; no tool in the ecosystem drops files
    from a built wheel, hence this.)"""
    keep = [p[1:] for p in patterns if p.startswith("!")]
    drop = [p for p in patterns if not p.startswith("!")]

    def dropped(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) for p in drop) and not any(fnmatch.fnmatch(path, k) for k in keep)

    tmp = wheel.with_suffix(".tmp")
    n = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            if dropped(info.filename):
                n += 1
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not dropped(line.split(",", 1)[0])) + "\n").encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    tmp.replace(wheel)
    return n


def fetch(python: str, cuda: str, dest: Path) -> None:
    wanted = plan(python)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinyllama-gpu-wheels" / \
        f"py{python}-cuda{cuda}"  # the downloads as PyPI serves them (pip skips those already there)
    cache.mkdir(parents=True, exist_ok=True)
    binary = [f"{n}=={v}" for n, v in wanted.items() if n not in SOURCE_ONLY]
    platform = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for tag in PLATFORMS:
        platform += ["--platform", tag]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["download", "-q", "--no-deps", *platform, "-d", str(cache), *binary], check=True)
    for name in SOURCE_ONLY:
        if not list(cache.glob(f"{name}-{wanted[name]}-*.whl")):
            subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(cache),
                                  f"{name}=={wanted[name]}"], check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
    work = Path(tempfile.mkdtemp())
    names = {f"{canonical(n)}-{v}" for n, v in wanted.items()}
    for wheel in cache.glob("*.whl"):  # (only this plan's: the cache may hold other versions)
        name, version = wheel.name.split("-")[:2]
        if f"{canonical(name)}-{version}" in names:
            shutil.copy(wheel, work / wheel.name)
    lines = [f"python {python}", f"cuda {cuda}"]
    wheels = sorted(work.glob("*.whl"))
    for wheel in wheels:
        name = canonical(wheel.name.split("-")[0])
        dropped = strip(wheel, strip_patterns(name, cuda)) if name in STRIP else 0
        lines.append(f"{wheel.name} {wheel.stat().st_size / 2**20:.2f} MiB"
                     + (f" ({dropped} files stripped)" if dropped else ""))
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"site-py{python}.tar.xz"
    with tempfile.TemporaryDirectory() as stage:
        subprocess.run(pip + ["install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", stage,
                              *platform, *map(str, wheels)], check=True)
        subprocess.run(f"tar -C {stage} -cf - . | xz -9 -T0 > {archive}.tmp", shell=True, check=True)
    shutil.rmtree(work)
    os.replace(f"{archive}.tmp", archive)
    for old in dest.glob("site-py*.tar.xz"):
        if old != archive:
            old.unlink()
    lines.append(f"{archive.name}: {len(wheels)} wheels installed, {archive.stat().st_size / 2**20:.1f} MiB")
    (dest / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def install(wheels: Path, target: Path) -> None:
    import tarfile

    manifest = wheels / "MANIFEST.txt"
    if not manifest.is_file():
        raise SystemExit(f"{wheels}: no MANIFEST.txt; fetch the set first (python scripts/gpu/wheels.py fetch)")
    python = manifest.read_text().splitlines()[0].split()[1]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python != here:
        raise SystemExit(f"the wheel set in {wheels} is for Python {python}, this is Python {here}: fetch it again "
                         f"with --python {here}")
    if target.exists():
        shutil.rmtree(target)  # an empty folder, so nothing of an older set stays behind
    target.mkdir(parents=True)
    with tarfile.open(wheels / f"site-py{python}.tar.xz") as archive:
        archive.extractall(target, filter="data")
    print(f"installed the set of {manifest} into {target}: PYTHONPATH={target}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download and pack the set for a target (needs PyPI)")
    f.add_argument("--python", default="3.12", help="the GPU machine's Python, major.minor (default 3.12)")
    f.add_argument("--cuda", default="12.8", help="its torch's CUDA (torch.version.cuda): the bitsandbytes build kept")
    f.add_argument("--dest", type=Path, default=REPO / ".whl")
    i = sub.add_parser("install", help="unpack the set into an empty folder (no network)")
    i.add_argument("--wheels", type=Path, default=REPO / ".whl")
    i.add_argument("--target", type=Path, required=True)
    a = p.parse_args()
    if a.command == "fetch":
        fetch(a.python, a.cuda, a.dest)
    else:
        install(a.wheels, a.target)


if __name__ == "__main__":
    main()
