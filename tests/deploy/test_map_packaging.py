"""MAP packaging as the README documents it, up to where Docker takes over.

The README's packaging block ("Packaging as a MONAI Application Package (MAP)") is run as written, in a copy of
the repository, with the pinned ``holoscan package`` (holoscan-cli 4.2.0) and a ``docker`` on PATH that cannot
reach a daemon. The packager writes its build context (Dockerfile, app, model, requirements, manifests) into a
temporary folder before its first Docker call and deletes it on exit; the stand-in ``docker`` copies that folder
out when it is called, so the test reads the real generated files. No image is built (a machine with a working
Docker is not used either: the stand-in shadows it)."""

from __future__ import annotations

import filecmp
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from holoscan_cli.common.enum_types import Platform
from holoscan_cli.packager.parameters import PlatformParameters

from deploy_app.__main__ import EXIT_NO_RESULT
from deploy_app.bundle_info import resolve_model_path
from spleenseg.paths import REPO_ROOT

HOLOSCAN = Path(sys.executable).parent / "holoscan"
SECTION = "### Packaging as a MONAI Application Package (MAP)"

#: A docker that cannot reach its daemon; it first keeps every packager build context it can see.
DOCKER_STAND_IN = """#!/bin/sh
echo "$*" >> "$DOCKER_STAND_IN_LOG"
for d in "$TMPDIR"/holoscan_tmp*; do
  [ -d "$d" ] && cp -r "$d" "$DOCKER_STAND_IN_COPIES/"
done
echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
exit 1
"""


def readme_packaging_block() -> tuple[list[str], str]:
    """The README's packaging commands: the preparation lines, and the ``holoscan package`` command (one line)."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    package = [i for i, line in enumerate(lines) if line.startswith("holoscan package ")]
    assert len(package) == 1 and package[0] == len(lines) - 1, "the block ends with the one `holoscan package`"
    return lines[:-1], lines[-1]


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``root``, byte code left out."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def readme_flags(command: str) -> list[str]:
    return [token for token in shlex.split(command) if token.startswith("-")]


@pytest.fixture(scope="module")
def cli() -> Path:
    version = importlib.metadata.version("holoscan-cli")
    assert version == "4.2.0", f"requirements.txt pins holoscan-cli==4.2.0 (the packager the README uses); {version}"
    assert HOLOSCAN.is_file(), f"{HOLOSCAN}: the holoscan-cli command is missing"
    return HOLOSCAN


def test_package_help_lists_every_flag_the_readme_uses(cli):
    _, command = readme_packaging_block()
    proc = subprocess.run([str(cli), "package", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", proc.stdout))
    flags = readme_flags(command)
    assert {"--config", "--platform", "--tag", "--source", "--sdk"} <= set(flags)
    assert [f for f in flags if f not in listed] == []


@pytest.fixture(scope="module")
def packaged(cli, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The README block run in a repository copy: the packager's output and the build context it wrote."""
    root = tmp_path_factory.mktemp("map")
    work, copies, tmp, home, bin_dir = (root / n for n in ("repo", "contexts", "tmp", "home", "bin"))
    for d in (copies, tmp, home, bin_dir):
        d.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("deploy_app", "spleenseg", "bundle"):
        shutil.copytree(REPO_ROOT / part, work / part, ignore=ignore)
    docker = bin_dir / "docker"
    docker.write_text(DOCKER_STAND_IN)
    docker.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{cli.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": str(home), "TMPDIR": str(tmp), "DOCKER_STAND_IN_LOG": str(root / "docker.log"),
           "DOCKER_STAND_IN_COPIES": str(copies)}
    prepare, command = readme_packaging_block()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(prepare)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    contexts = sorted(copies.iterdir())
    return {"proc": proc, "work": work, "tmp": tmp, "docker_calls": (root / "docker.log").read_text().splitlines()
            if (root / "docker.log").exists() else [], "context": contexts[0] if len(contexts) == 1 else contexts}


def test_package_validates_the_config_and_stops_only_at_docker(packaged):
    proc, log = packaged["proc"], packaged["proc"].stdout + packaged["proc"].stderr
    assert proc.returncode == 1, log[-3000:]
    assert "Using CLI manifest file from deploy_app/map_source.json" in log  # nothing downloaded
    assert "Detected application type: Python Module" in log
    assert packaged["docker_calls"] and packaged["docker_calls"][0].startswith("buildx ls"), packaged["docker_calls"]
    assert "Cannot connect to the Docker daemon" in log
    assert "Error packaging application" in log
    assert isinstance(packaged["context"], Path), f"one build context expected: {packaged['context']}"
    assert list(packaged["tmp"].iterdir()) == []  # the packager removed its own copy


def test_dockerfile_is_cpu_only_and_installs_and_starts_the_app(packaged):
    dockerfile = (packaged["context"] / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms == ["ubuntu:24.04", "base"]
    assert "nvcr.io" not in dockerfile
    holoscan = importlib.metadata.version("holoscan-cu13")
    assert f'LABEL org.nvidia.holoscan="{holoscan}"' in dockerfile
    assert f"holoscan-cu13=={holoscan}\n" in (REPO_ROOT / "deploy_app" / "requirements.txt").read_text()
    assert 'LABEL org.monai.deploy.app-sdk="4.0.0"' in dockerfile
    for line in ("COPY ./pip/requirements.txt /tmp/requirements.txt",
                 "RUN pip install --no-cache-dir --user -r /tmp/requirements.txt",
                 "RUN pip install monai-deploy-app-sdk==4.0.0",
                 "COPY ./map/app.json /etc/holoscan/app.json",
                 "COPY ./app.config /var/holoscan/app.yaml",
                 "COPY ./app /opt/holoscan/app",
                 "ENV HOLOSCAN_MODEL_PATH=/opt/holoscan/models",
                 'ENTRYPOINT ["/var/holoscan/tools"]'):
        assert line in dockerfile.splitlines(), line
    assert re.search(r"^COPY ./models +/opt/holoscan/models$", dockerfile, re.M)
    # the entry point launches app.json's command
    app_json = json.loads((packaged["context"] / "map" / "app.json").read_text())
    assert json.loads(app_json["command"]) == ["python3", "/opt/holoscan/app"]
    assert (app_json["sdk"], app_json["sdkVersion"]) == ("monai-deploy", "4.0.0")
    assert app_json["input"]["formats"] == ["file"] and app_json["output"]["formats"] == ["file"]
    assert (packaged["context"] / "tools").is_file()


def test_build_context_holds_the_app_its_requirements_and_the_model(packaged):
    context = packaged["context"]
    app = context / "app"
    assert (app / "__main__.py").read_text() == 'import runpy\nrunpy.run_module("deploy_app", run_name="__main__")\n'
    for package in ("deploy_app", "spleenseg"):
        assert tree(app / package) == tree(REPO_ROOT / package), package
    assert (context / "app.config").read_bytes() == (REPO_ROOT / "deploy_app" / "app.yaml").read_bytes()
    requirements = (context / "pip" / "requirements.txt").read_text().splitlines()
    assert requirements[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    pins = [line for line in (REPO_ROOT / "deploy_app" / "requirements.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert "torch==2.13.0" in pins and all(pin in requirements for pin in pins)
    models = context / "models"
    assert [p.name for p in models.iterdir()] == ["spleen_ct_seg"]
    assert filecmp.cmp(models / "spleen_ct_seg" / "models" / "model.pt", REPO_ROOT / "bundle" / "models" / "model.pt",
                       shallow=False)
    assert resolve_model_path(models) == models / "spleen_ct_seg"  # the app's HOLOSCAN_MODEL_PATH is the folder
    pkg = json.loads((context / "map" / "pkg.json").read_text())
    assert pkg["models"] == {"spleen_ct_seg": "/opt/holoscan/models/spleen_ct_seg"}
    assert pkg["resources"] == {"cpu": 2, "gpu": 0, "memory": "8Gi"}


def test_the_packaged_app_folder_starts(packaged):
    """``python3 /opt/holoscan/app``, as app.json says, on the copied app folder (``--help``: no run)."""
    proc = subprocess.run([sys.executable, str(packaged["context"] / "app"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=packaged["context"],
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: python -m deploy_app" in proc.stdout and "HOLOSCAN_INPUT_PATH" in proc.stdout


# ------------------------------------------------------------------------------ the MAP as a Kubernetes Job
K8S_JOB = REPO_ROOT / "deploy_app" / "examples" / "k8s-job.yaml"


def k8s_job(study_id: str = "1-2-840-ab") -> dict:
    """The example Job with its ``STUDY_ID`` placeholder filled in, as the README's ``sed`` line does."""
    return yaml.safe_load(K8S_JOB.read_text().replace("STUDY_ID", study_id))


def dockerfile_env(dockerfile: str) -> dict[str, str]:
    """``ENV NAME=value`` lines of the packager's Dockerfile."""
    return dict(re.findall(r"^ENV (HOLOSCAN_\w+)=(\S+)$", dockerfile, re.M))


def test_k8s_job_runs_the_packaged_image_with_its_paths_user_and_resources(packaged, cli):
    job = k8s_job()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"]) and \
        len(job["metadata"]["name"]) <= 63  # a DNS-1123 label once STUDY_ID is filled in
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]

    # the image the README's `holoscan package` command tags, by the packager's own naming rule
    flags = shlex.split(readme_packaging_block()[1])
    app_yaml = yaml.safe_load((REPO_ROOT / "deploy_app" / "app.yaml").read_text())
    image = PlatformParameters(Platform(flags[flags.index("--platform") + 1]), flags[flags.index("--tag") + 1],
                               app_yaml["application"]["version"]).tag
    assert container["image"] == image
    assert image in (REPO_ROOT / "README.md").read_text()  # the `docker run` line names the same image

    # every path the Job sets is the one the image sets, and the mounts sit on them
    env = {e["name"]: e["value"] for e in container["env"]}
    image_env = dockerfile_env((packaged["context"] / "Dockerfile").read_text())
    assert {"HOLOSCAN_INPUT_PATH", "HOLOSCAN_OUTPUT_PATH", "HOLOSCAN_MODEL_PATH"} <= set(env)
    assert {k: image_env.get(k) for k in env} == env
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[env["HOLOSCAN_INPUT_PATH"]].get("readOnly") is True  # the input is never written to
    assert not mounts[env["HOLOSCAN_OUTPUT_PATH"]].get("readOnly", False)
    assert {m["subPath"] for m in mounts.values()} == {"1-2-840-ab"}  # one study in, its results out
    models = Path(env["HOLOSCAN_MODEL_PATH"])
    assert not any(models == Path(p) or Path(p) in models.parents for p in mounts)  # the image's model is kept
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {m["name"] for m in mounts.values()} <= set(volumes)
    assert volumes[mounts[env["HOLOSCAN_INPUT_PATH"]]["name"]]["persistentVolumeClaim"]["readOnly"] is True

    # resources as app.yaml (and so pkg.json) declares them; no GPU asked for
    declared = json.loads((packaged["context"] / "map" / "pkg.json").read_text())["resources"]
    for kind in ("requests", "limits"):
        assert container["resources"][kind] == {"cpu": str(declared["cpu"]), "memory": declared["memory"]}
    assert declared["gpu"] == 0 and "nvidia.com/gpu" not in container["resources"]["limits"]

    # the image's user: the packager's --uid/--gid defaults, which the README command does not change
    assert not {"--uid", "--gid", "--username"} & set(flags)
    help_text = subprocess.run([str(cli), "package", "--help"], capture_output=True, text=True, timeout=60).stdout
    uid, gid = (re.search(rf"^ +--{flag} \w+ .*\(default:(\d+)\)$", help_text, re.M).group(1)
                for flag in ("uid", "gid"))
    security = pod["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (int(uid), int(gid), int(gid))

    # bad input and "no spleen found" fail the Job at once; only an unexpected failure (exit 1) is retried
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy needs it
    [rule] = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == container["name"]
    assert (rule["onExitCodes"]["operator"], sorted(rule["onExitCodes"]["values"])) == ("In", [2, EXIT_NO_RESULT])
    assert job["spec"]["backoffLimit"] >= 1
