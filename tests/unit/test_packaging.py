"""The deployment files: compose parses, the image has CUDA, the configs they use are valid."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from node.config import load_config
from tests.helpers import IN_CI

REPO = Path(__file__).resolve().parents[2]


def compose_command() -> list[str] | None:
    """`docker compose` where the Docker CLI has it, else Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_is_valid_for_docker_compose() -> None:
    command = compose_command()
    if command is None:
        if IN_CI:
            pytest.fail("neither `docker compose` nor docker-compose is installed")
        pytest.skip("no docker compose here")
    done = subprocess.run(
        [*command, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_compose_runs_the_node_on_a_gpu_beside_orthanc() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    node = compose["services"]["radnode"]
    assert node["build"] == "."
    [device] = node["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "11112:11112" in node["ports"]
    assert "orthanc" in compose["services"]
    config_path = node["command"][-1].replace("/opt/radnode/", "")
    config = load_config(REPO / config_path, environ={})
    assert config.node.host == "0.0.0.0"
    assert config.destination("demo-pacs") is not None


def test_image_is_built_on_a_cuda_runtime() -> None:
    first = (REPO / "Dockerfile").read_text().split("\nFROM ", 1)[1].split()[0]
    assert first.startswith("nvidia/cuda:") and "runtime" in first


def test_onnxruntime_gpu_on_linux_x86_64_and_cpu_build_elsewhere() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"]
    gpu = next(d for d in deps if d.startswith("onnxruntime-gpu"))
    cpu = next(d for d in deps if d.startswith("onnxruntime>") or d.startswith("onnxruntime;"))
    assert "platform_machine == 'x86_64'" in gpu and "sys_platform == 'linux'" in gpu
    assert "platform_machine != 'x86_64'" in cpu
    assert project["scripts"]["radnode"] == "node.cli.main:main"
    assert project["requires-python"] == ">=3.11"
