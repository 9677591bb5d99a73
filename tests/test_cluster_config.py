"""Offline checks of ``cluster.yaml`` (the AWS Ray cluster launcher config).

What ``ray up cluster.yaml`` does with the file (``ray.autoscaler._private.commands._bootstrap_config``):

1. ``prepare_config``: merge ``ray/autoscaler/aws/defaults.yaml``, merge the common ``setup_commands``
   into the head/worker ones, check the docker section, fill per-node-type min/max workers. Offline.
2. ``AWSNodeProvider.fillout_available_node_types_resources``: asks EC2 for instance types. Network.
3. ``validate_config``: the JSON schema ``ray/autoscaler/ray-schema.json`` plus cross-field checks
   (head type exists, sum of ``min_workers`` <= ``max_workers``, ...). Offline.
4. ``AWSNodeProvider.bootstrap_config``: IAM, key pairs, subnets, security groups. Network.

This module runs steps 1 and 3 only (Ray's own code, no boto3, no cluster started; sockets are
blocked to prove it), then checks the project-specific facts Ray cannot know: the image's Ray
version equals the pin in pyproject.toml, GPU work only goes to GPU node types, setup installs
the project, and every placeholder a user must replace is marked ``# EDIT:``.
"""

from __future__ import annotations

import copy
import re
import socket
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
PYPROJECT = ROOT / "pyproject.toml"

# EC2 instance families with NVIDIA GPUs (x86_64) that the Deep Learning Base GPU AMI supports.
GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en"}
# (vCPUs, GPUs) of the instance types this config uses or its comments suggest.
KNOWN_INSTANCES = {
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "m5.4xlarge": (16, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.12xlarge": (48, 4),
    "g6.48xlarge": (192, 8),
    "p4d.24xlarge": (96, 8),
}
IMAGE_RE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>3)(?P<minor>\d+)-(?P<platform>gpu|cu\d+)$")
REAL_AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
PLACEHOLDER = "REPLACE"
EDIT_MARK = "# EDIT:"


# ----------------------------------------------------------------------------------------------
# helpers


def load_cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def pinned_ray_version() -> str:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.fullmatch(r"ray(\[[^\]]*\])?\s*==\s*(\S+)", dep.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"pyproject.toml pins no exact ray version: {deps}")


def requires_python() -> SpecifierSet:
    return SpecifierSet(tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"])


def docker_images(config: dict) -> list[str]:
    docker = config.get("docker", {})
    images = [docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)]
    for node_type in config["available_node_types"].values():
        if node_type.get("docker", {}).get("worker_image"):
            images.append(node_type["docker"]["worker_image"])
    return images


def project_problems(config: dict) -> list[str]:
    """Project rules Ray's validators do not enforce. Empty list = fine."""
    problems: list[str] = []
    node_types = config["available_node_types"]
    head = config["head_node_type"]

    # Head: Tune driver only, never a GPU.
    head_type = node_types[head]
    head_instance = head_type["node_config"].get("InstanceType", "")
    if head_instance.split(".")[0] in GPU_FAMILIES:
        problems.append(f"head {head!r} uses a GPU instance type {head_instance}")
    if head_type.get("resources", {}).get("GPU", None) != 0:
        problems.append(f"head {head!r} must declare resources GPU: 0 (got {head_type.get('resources')})")

    workers = {name: t for name, t in node_types.items() if name != head}
    if not workers:
        problems.append("no worker node types")
    for name, t in workers.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers")
        if hi is None:
            problems.append(f"{name}: max_workers not set")
        elif lo > hi:
            problems.append(f"{name}: min_workers {lo} > max_workers {hi}")
        elif hi < 1:
            problems.append(f"{name}: max_workers {hi} < 1 (the type could never start)")
        instance = t["node_config"].get("InstanceType", "")
        if instance.split(".")[0] not in GPU_FAMILIES:
            problems.append(f"{name}: {instance!r} is not a GPU instance type")
        gpus = t.get("resources", {}).get("GPU", 0)
        if gpus < 1:
            problems.append(f"{name}: resources GPU must be >= 1 (got {gpus})")
        if instance in KNOWN_INSTANCES:
            cpus_known, gpus_known = KNOWN_INSTANCES[instance]
            res = t.get("resources", {})
            if res.get("GPU") != gpus_known or res.get("CPU") != cpus_known:
                problems.append(
                    f"{name}: resources {res} do not match {instance} ({cpus_known} CPU, {gpus_known} GPU)"
                )
    total_max = sum(t.get("max_workers", 0) for t in workers.values())
    if config.get("max_workers", 0) < total_max:
        problems.append(f"global max_workers {config.get('max_workers')} < sum of worker max_workers {total_max}")
    return problems


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (boto3, docker hub, ...) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("cluster config checks must stay offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture()
def config() -> dict:
    return load_cluster_config()


@pytest.fixture()
def prepared(config) -> dict:
    return prepare_config(copy.deepcopy(config))


# ----------------------------------------------------------------------------------------------
# Ray's own checks


def test_raw_file_passes_ray_schema(config):
    # The file spells out every top-level key (cluster_synced_files etc.), so even the raw file,
    # before defaults are merged, satisfies validate_config.
    validate_config(config)


def test_prepared_config_passes_ray_validation(config, prepared):
    validate_config(prepared)
    # prepare_config merged the common setup commands into head/worker setup.
    assert prepared["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]
    assert prepared["worker_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]
    # And kept our explicit values over aws/defaults.yaml.
    assert prepared["provider"]["cache_stopped_nodes"] is False
    assert prepared["head_node_type"] == config["head_node_type"]
    assert set(prepared["available_node_types"]) == set(config["available_node_types"])


def _misspelled_top_level_key(c):
    c["max_worker"] = c.pop("max_workers")


def _misspelled_node_type_key(c):
    c["available_node_types"]["gpu_1x"]["min_worker"] = c["available_node_types"]["gpu_1x"].pop("min_workers")


def _unknown_head_type(c):
    c["head_node_type"] = "head_gpu"


def _min_workers_above_global_max(c):
    c["available_node_types"]["gpu_1x"]["min_workers"] = c["max_workers"] + 1


def _fractional_gpu_resource(c):
    c["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5


def _unknown_docker_key(c):
    c["docker"]["shm_size"] = "8g"


def _node_type_without_node_config(c):
    del c["available_node_types"]["gpu_8x"]["node_config"]


BROKEN = [
    (_misspelled_top_level_key, "'max_worker' was unexpected"),
    (_misspelled_node_type_key, "'min_worker' was unexpected"),
    (_unknown_head_type, "must be one of `available_node_types`"),
    (_min_workers_above_global_max, "smaller than the sum of `min_workers`"),
    (_fractional_gpu_resource, "is not of type 'integer'"),
    (_unknown_docker_key, "'shm_size' was unexpected"),
    (_node_type_without_node_config, "'node_config' is a required property"),
]


@pytest.mark.parametrize("break_it, error", BROKEN, ids=[f.__name__.strip("_") for f, _ in BROKEN])
def test_ray_rejects_broken_configs(config, break_it, error):
    broken = copy.deepcopy(config)
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(error)):
        validate_config(prepare_config(broken))


def test_docker_image_without_container_name_is_rejected(config):
    broken = copy.deepcopy(config)
    broken["docker"]["container_name"] = ""
    with pytest.raises(AssertionError, match="container"):
        prepare_config(broken)


def test_per_type_min_above_max_is_caught_by_project_check(config):
    # Ray's validate_config only compares the SUM of min_workers with the global max_workers; a
    # node type with min_workers > its own max_workers passes it. Our project check catches it.
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_8x"]["min_workers"] = 3  # max_workers is 2
    validate_config(prepare_config(copy.deepcopy(broken)))  # Ray: fine
    assert any("min_workers 3 > max_workers 2" in p for p in project_problems(broken))


# ----------------------------------------------------------------------------------------------
# project facts


def test_basic_identity(config):
    assert config["cluster_name"] == "indistill-study"
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"]
    assert config["provider"]["cache_stopped_nodes"] is False
    assert config["auth"]["ssh_user"] == "ubuntu"


def test_docker_image_matches_pinned_ray_and_python(config):
    pin = pinned_ray_version()
    images = docker_images(config)
    assert images, "cluster.yaml must run in a docker image"
    for image in images:
        m = IMAGE_RE.match(image)
        assert m, f"{image!r} is not a rayproject/ray:<version>-py3XX-gpu image"
        assert m["ray"] == pin, f"image {image} has Ray {m['ray']}, pyproject pins {pin}"
        py = Version(f"{m['major']}.{m['minor']}")
        assert py in requires_python(), f"image Python {py} outside requires-python {requires_python()}"
        assert m["platform"] != "cpu"
    assert config["docker"]["container_name"]
    assert any("nofile" in opt for opt in config["docker"].get("run_options", []))


def test_local_ray_matches_pin():
    # The laptop's `ray up` writes the bootstrap config the head's autoscaler reads: same version.
    assert ray.__version__ == pinned_ray_version()


def test_node_types_follow_project_rules(config):
    assert project_problems(config) == []


def test_project_check_rejects_gpu_head_and_cpu_workers(config):
    broken = copy.deepcopy(config)
    head = broken["head_node_type"]
    broken["available_node_types"][head]["node_config"]["InstanceType"] = "g5.xlarge"
    broken["available_node_types"][head]["resources"] = {"CPU": 4, "GPU": 1}
    broken["available_node_types"]["gpu_1x"]["node_config"]["InstanceType"] = "m5.xlarge"
    problems = project_problems(broken)
    assert any("head" in p and "GPU instance" in p for p in problems)
    assert any("GPU: 0" in p for p in problems)
    assert any("gpu_1x" in p and "not a GPU instance" in p for p in problems)


def test_setup_installs_the_mounted_project(config):
    mounts = config["file_mounts"]
    project_paths = [remote for remote, local in mounts.items() if Path(local) in (Path("."), ROOT)]
    assert project_paths, f"file_mounts must upload the repository ('.'): {mounts}"
    remote = project_paths[0]
    installs = [c for c in config["setup_commands"] if "pip install" in c and remote in c]
    assert installs, f"setup_commands must `pip install` {remote}: {config['setup_commands']}"
    assert any("-e" in c.split() for c in installs)
    # The upload must not drag the local virtualenv / git history along.
    assert ".gitignore" in config["rsync_filter"]
    assert {".venv", ".git"} <= set(config["rsync_exclude"])


def test_start_commands_are_the_standard_ones(config):
    head, worker = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    assert head[0] == "ray stop" and worker[0] == "ray stop"
    head_start = head[-1]
    assert "ray start --head" in head_start
    assert "--port=6379" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "--dashboard-host=0.0.0.0" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker[-1]
    assert "--object-manager-port=8076" in head_start and "--object-manager-port=8076" in worker[-1]


def test_every_node_type_has_an_ami_and_instance_profile(config):
    for name, t in config["available_node_types"].items():
        nc = t["node_config"]
        ami = nc.get("ImageId", "")
        assert REAL_AMI_RE.match(ami) or PLACEHOLDER in ami, f"{name}: ImageId {ami!r}"
        assert nc.get("IamInstanceProfile", {}).get("Arn", "").startswith("arn:aws:iam::"), name


def test_placeholders_are_marked_for_editing():
    lines = CLUSTER_YAML.read_text().splitlines()
    placeholder_lines = [ln for ln in lines if PLACEHOLDER in ln.split("#", 1)[0]]
    assert placeholder_lines, "expected the shipped file to carry placeholders"
    for ln in placeholder_lines:
        assert EDIT_MARK in ln, f"placeholder without {EDIT_MARK!r}: {ln.strip()}"
    # Every ImageId is either defined on a marked line or an alias (*name) of one.
    for ln in lines:
        code = ln.split("#", 1)[0]
        if "ImageId:" in code:
            value = code.split("ImageId:", 1)[1].strip()
            assert value.startswith("*") or EDIT_MARK in ln, f"unmarked ImageId line: {ln.strip()}"


def _gpu_checks(commands: list[str]) -> list[str]:
    """The ``python -c`` programs among ``commands`` that check ``torch.cuda.is_available()``."""
    import shlex

    programs = []
    for command in commands:
        words = shlex.split(command)
        if words[:2] == ["python", "-c"] and "torch.cuda.is_available()" in words[2]:
            programs.append(words[2])
    return programs


@pytest.mark.parametrize("available", [True, False])
def test_gpu_workers_fail_their_setup_when_torch_cannot_use_cuda(prepared, monkeypatch, capsys, available):
    # every worker type is a GPU type (test_node_types_follow_project_rules): the check runs on each worker
    # node, after the project's install, and never on the CPU head
    programs = _gpu_checks(prepared["worker_setup_commands"])
    assert len(programs) == 1, prepared["worker_setup_commands"]
    assert _gpu_checks(prepared["head_setup_commands"]) == []
    install = next(i for i, c in enumerate(prepared["worker_setup_commands"]) if "pip install -q -e" in c)
    check = next(i for i, c in enumerate(prepared["worker_setup_commands"]) if "torch.cuda.is_available()" in c)
    assert install < check
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    with pytest.raises(SystemExit) as info:
        exec(compile(programs[0], "worker_setup_commands", "exec"), {})
    out = capsys.readouterr().out
    assert f"torch {torch.__version__} built for CUDA {torch.version.cuda} cuda available {available}" in out
    if available:
        assert info.value.code == 0
    else:  # a message is exit status 1, printed to stderr by the interpreter
        assert isinstance(info.value.code, str) and "docs/devices.md" in info.value.code
        assert "torch.cuda.is_available() is False" in info.value.code
