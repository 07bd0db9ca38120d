"""The images really build and run: the CPU target of each image, built on a local Debian base
(no registry), run with `docker run` on its own test_inputs/<image>/test_input.json.

The runpod SDK's test-input mode exits 0 when the handler returned without an `error`, so each
test also reads the printed result (`Job result: {...}`) for the expected output.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.fakes.threaded_http import free_port
from tests.fixtures.docker import TEST_TAG

# The first test also pays for the session's image builds (minutes on a cold 2-core machine).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]


def printed_result(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    match = re.search(r"Job result: (\{.*?)\n(?:INFO|DEBUG|WARN|ERROR|\Z)", out + "\n", re.DOTALL)
    assert match, f"no 'Job result' printed (exit {proc.returncode}):\n{out[-4000:]}"
    return match.group(1)


def writable_copy(src: Path, dest: Path) -> Path:
    """A copy the container's unprivileged user (uid 10001) can write to."""
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    subprocess.run(["chmod", "-R", "a+rwX", str(dest)], check=True)
    return dest


def bad_input_file(tmp_path: Path, job_input: dict) -> Path:
    path = tmp_path / "bad_test_input.json"
    path.write_text(json.dumps({"input": job_input}))
    path.chmod(0o644)
    return path


# --- all images ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["controlnet-pyworker", "diffusion-pipe-trainer", "swarm-worker"])
def test_cpu_target_is_unprivileged_with_its_test_input_and_no_weights(docker, cpu_images, name):
    script = ("id -u; cmp /app/test_input.json /expected.json && echo same-input; "
              "find / -xdev \\( -name '*.safetensors' -o -name '*.ckpt' -o -name '*.gguf' -o -name '*.bin' \\) "
              "-size +1M -print | head -5")
    expected = REPO / "test_inputs" / name / "test_input.json"
    proc = subprocess.run([docker.binary, "run", "--rm", "--entrypoint", "sh", "-v", f"{expected}:/expected.json:ro",
                           cpu_images[name], "-c", script], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.split()
    assert lines[:2] == ["10001", "same-input"], proc.stdout + proc.stderr
    assert lines[2:] == [], f"model weights baked into {name}: {lines[2:]}"


# --- controlnet-pyworker ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cn_volume(cn_models, tmp_path_factory) -> Path:
    return writable_copy(cn_models, tmp_path_factory.mktemp("cn-docker") / "models")


def test_controlnet_runs_its_test_input(docker, cpu_images, cn_volume, image_version):
    proc = docker.run(cpu_images["controlnet-pyworker"], volumes={str(cn_volume): "/workspace/models"})
    printed = printed_result(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed.startswith("{'output': {'seed': 42, 'seeds': [42], 'model': 'lightning', 'era': 'wilderness', "
                              "'steps': 6, 'cfg': 2.0"), printed[:500]
    assert "'images': ['iVBORw0KGgo" in printed, "a base64 PNG in the result"
    assert "'error'" not in printed
    assert f"'worker_version': '{image_version}'" in printed, "the version build_images stamped in"


def test_controlnet_bad_test_input_fails_with_the_field(docker, cpu_images, cn_volume, tmp_path):
    bad = bad_input_file(tmp_path, {"prompt": "x", "width": 100, "era": "medieval"})
    proc = docker.run(cpu_images["controlnet-pyworker"],
                      volumes={str(cn_volume): "/workspace/models", str(bad): "/app/test_input.json:ro"})
    assert proc.returncode != 0
    assert "job local_test failed: invalid_input: width: must be a multiple of 64" in proc.stderr, proc.stderr[-3000:]
    assert "era: unknown era 'medieval'" in proc.stderr


def test_controlnet_model_server_in_the_container(docker, cpu_images, cn_volume):
    """Published outside the container, the model server needs MODEL_SERVER_HOST and its token."""
    port = free_port()
    name = f"cn-server-{port}"
    token = "container-model-token-1"
    auth = {"Authorization": f"Bearer {token}"}
    started = subprocess.run(
        [docker.binary, "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:5001",
         "-e", "CONTROLNET_MODE=server", "-e", "FETCH_ON_START=0", "-e", "PRELOAD_MODEL=lightning",
         "-e", "MODEL_SERVER_HOST=0.0.0.0", "-e", f"MODEL_SERVER_TOKEN={token}",
         "-v", f"{cn_volume}:/workspace/models", cpu_images["controlnet-pyworker"]],
        capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        health = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"{url}/checkhealth", headers=auth, timeout=5)
                if r.status_code == 200 and r.json().get("ready"):
                    health = r.json()
                    break
            except requests.RequestException:
                pass
            if subprocess.run([docker.binary, "inspect", name], capture_output=True).returncode != 0:
                break
            time.sleep(1)
        logs = subprocess.run([docker.binary, "logs", name], capture_output=True, text=True).stderr
        assert health, f"model server in the container never became ready:\n{logs[-3000:]}"
        assert "lightning" in health["loaded"] and health["device"] == "cpu"

        assert requests.post(f"{url}/generate", json={"prompt": "x"}, timeout=30).status_code == 401
        r = requests.post(f"{url}/generate", json={"prompt": "a hut in the woods", "mock_depth": True,
                                                  "seed": 7, "width": 256, "height": 256}, headers=auth, timeout=240)
        assert r.status_code == 200, r.text[:2000]
        out = r.json()
        assert out["seed"] == 7 and out["steps"] == 6 and out["images"][0].startswith("iVBORw0KGgo")

        r = requests.post(f"{url}/generate", json={"prompt": "x", "width": 100}, headers=auth, timeout=30)
        assert r.status_code == 422 and "width" in r.text
    finally:
        subprocess.run([docker.binary, "rm", "-f", name], capture_output=True, timeout=60)


# --- diffusion-pipe-trainer ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dataset_input(tmp_path_factory) -> Path:
    """test_input.json with its dataset URL moved to a free port on which the host serves the tiny
    dataset (the container runs with --network host and ALLOW_PRIVATE_DOWNLOADS=1): a fixed port
    fails whenever anything else on the machine holds it."""
    from scripts.demo_trainer import DATASET_NAME, serve, tiny_dataset

    job = json.loads((REPO / "test_inputs/diffusion-pipe-trainer/test_input.json").read_text())
    www = tmp_path_factory.mktemp("trainer-www")
    (www / DATASET_NAME).write_bytes(tiny_dataset(captioned=True))
    httpd = serve(www, 0)
    url = job["input"]["dataset"]["images_url"]
    port = httpd.server_address[1]
    job["input"]["dataset"]["images_url"] = re.sub(r"^(http://127\.0\.0\.1):\d+/", rf"\1:{port}/", url)
    assert job["input"]["dataset"]["images_url"] == f"http://127.0.0.1:{port}/{DATASET_NAME}", url
    path = www / "test_input.json"
    path.write_text(json.dumps(job))
    path.chmod(0o644)
    yield path
    httpd.shutdown()


def test_trainer_dry_run_of_its_test_input(docker, cpu_images, tiny_dataset_input, image_version):
    proc = docker.run(cpu_images["diffusion-pipe-trainer"], network_host=True,
                      volumes={str(tiny_dataset_input): "/app/test_input.json:ro"},
                      env={"ALLOW_PRIVATE_DOWNLOADS": "1", "RUNPOD_SKIP_GPU_CHECK": "true"})
    printed = printed_result(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed.startswith("{'output': {'status': 'dry_run', 'job_id': 'local_test', 'model_type': 'sdxl'"), \
        printed[:2000]
    assert "\\nepochs = 10\\n" in printed and "\\nrank = 16\\n" in printed, "the job's training keys in config.toml"
    assert "'images': 4" in printed and "'trigger_word': 'ohwx'" in printed, "the served tiny dataset, all 4 images"
    assert "'train.py', '--deepspeed'" in printed
    assert f"'worker_version': '{image_version}'" in printed


def test_trainer_bad_test_input_fails_before_download(docker, cpu_images, tmp_path):
    bad = bad_input_file(tmp_path, {"model_type": "sd15", "dataset": {"type": "images"}})
    proc = docker.run(cpu_images["diffusion-pipe-trainer"], volumes={str(bad): "/app/test_input.json:ro"})
    assert proc.returncode != 0
    assert "job local_test failed: invalid_input: model_type: Input should be 'flux', 'sdxl'" in proc.stderr, \
        proc.stderr[-3000:]
    assert "dataset: type 'images' needs 'images_url'" in proc.stderr, "every problem reported at once"
    assert "downloaded" not in proc.stderr


# --- swarm-worker -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swarm_volume(tmp_path_factory) -> Path:
    from tests.swarm_helpers import make_volume

    root = tmp_path_factory.mktemp("swarm-docker")
    make_volume(root)
    subprocess.run(["chmod", "-R", "a+rwX", str(root)], check=True)
    return root / "SwarmUI" / "Models"


def swarm_env() -> dict[str, str]:
    from tests.fakes.swarmui import launch_command

    return {"SWARMUI_LAUNCH_CMD": launch_command("python"), "SWARMUI_MODEL_ROOT": "/models",
            "SWARMUI_STARTUP_TIMEOUT": "60", "FAKE_SWARMUI_STEP_SECONDS": "0.01"}


def test_swarm_runs_its_test_input_against_the_swarmui_stand_in(docker, cpu_images, swarm_volume, image_version):
    proc = docker.run(cpu_images["swarm-worker"], env=swarm_env(),
                      volumes={str(REPO / "tests"): "/app/tests:ro", str(swarm_volume): "/models"})
    printed = printed_result(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed.startswith("{'output': {'success': True, 'outputs': [{'filename': "), printed[:3000]
    assert "'mime': 'image/png'" in printed and "'base64': 'iVBORw0KGgo" in printed, "the PNG inline"
    assert "'delivery': 'inline'" in printed and "'seed': 42" in printed and "'steps': 4" in printed
    assert f"'worker_version': '{image_version}'" in printed


def test_swarm_bad_test_input_names_the_action(docker, cpu_images, swarm_volume, tmp_path):
    bad = bad_input_file(tmp_path, {"action": "generate", "params": {"prompt": "x", "width": "wide"}})
    proc = docker.run(cpu_images["swarm-worker"], env=swarm_env(),
                      volumes={str(REPO / "tests"): "/app/tests:ro", str(swarm_volume): "/models",
                               str(bad): "/app/test_input.json:ro"})
    assert proc.returncode != 0
    assert "job local_test failed: invalid_input: params.width: Input should be a valid integer" in proc.stderr, \
        proc.stderr[-3000:]


def test_swarm_prewarm_runs_in_the_image_against_the_stand_in(docker, cpu_images):
    """The GPU target's build step (`python -m handlers.swarm_worker.prewarm`), with the image's own
    Python and packages; the stand-in needs `--cpu` (no GPU) and installs on its first start."""
    env = {**swarm_env(), "FAKE_SWARMUI_NO_GPU": "1", "FAKE_SWARMUI_LIB_DIR": "/tmp/lib"}
    proc = docker.run(cpu_images["swarm-worker"], "python3", "-m", "handlers.swarm_worker.prewarm", "--timeout", "60",
                      env=env, volumes={str(REPO / "tests"): "/app/tests:ro"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "first boot installed 3 package(s)" in proc.stderr and "pre-warm done" in proc.stderr
    offline = docker.run(cpu_images["swarm-worker"], "python3", "-m", "handlers.swarm_worker.prewarm", "--timeout",
                         "60", env={**env, "FAKE_SWARMUI_PIP_OFFLINE": "1"}, volumes={str(REPO / "tests"): "/app/tests:ro"})
    assert offline.returncode == 1 and "SwarmUI still installs at start" in offline.stderr, offline.stderr[-3000:]


# --- the RunPod Hub's single-file Dockerfile ----------------------------------------------------

def test_hub_dockerfile_builds_and_answers_its_test_input(docker, cpu_images, cn_volume, image_version):
    """.runpod/Dockerfile (base + controlnet stages in one file, what the Hub builds) builds on its
    own and its image runs like the two-step build's."""
    from scripts.build_images import HUB_DOCKERFILE, docker_build, prepare_extras
    from scripts.local_base_image import DEFAULT_TAG

    torch_args = prepare_extras(target="cpu", python_tag="cp311", log=lambda *_: None)
    docker_build(docker.binary, HUB_DOCKERFILE, "controlnet-pyworker-hub:test", target="cpu", quiet=True,
                 build_args={"BASE_IMAGE": DEFAULT_TAG, **torch_args, "WORKER_VERSION": image_version})
    proc = docker.run("controlnet-pyworker-hub:test", volumes={str(cn_volume): "/workspace/models"})
    printed = printed_result(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed.startswith("{'output': {'seed': 42, 'seeds': [42], 'model': 'lightning'"), printed[:500]
    assert "'images': ['iVBORw0KGgo" in printed


def test_controlnet_bakes_a_variant_from_a_manifest(docker, cpu_images, cn_models, image_version, tmp_path):
    """BAKE_VARIANT fetches the variant at build time (here from the tiny models served on
    127.0.0.1, named by a manifest passed as a build secret); the image then runs its
    test_input.json with no volume at all."""
    from scripts.build_images import docker_build, prepare_extras
    from scripts.demo_trainer import serve

    httpd = serve(cn_models)
    try:
        manifest = json.loads((cn_models / "manifest.json").read_text())
        for component in manifest["components"].values():
            for entry in component["files"]:
                rel = "/".join(part for part in (component["path"], entry["name"]) if part)
                entry["source"] = f"http://127.0.0.1:{httpd.server_address[1]}/{rel}"
        manifest_file = tmp_path / "manifest.json"
        manifest_file.write_text(json.dumps(manifest))
        torch_args = prepare_extras(target="cpu", python_tag="cp311", log=lambda *_: None)
        docker_build(docker.binary, REPO / "images" / "controlnet-pyworker" / "Dockerfile", "controlnet-pyworker:test-baked",
                     target="cpu", quiet=True, network="host", secrets=[f"id=model_manifest,src={manifest_file}"],
                     build_args={"WORKER_BASE": f"gpu-worker-base:{TEST_TAG}-cpu", "WORKER_VERSION": image_version,
                                 "BAKE_VARIANT": "lightning", "BAKE_ALLOW_LAN": "1", "MODELS_DIR": "/opt/models",
                                 **torch_args})
    finally:
        httpd.shutdown()
    proc = docker.run("controlnet-pyworker:test-baked")
    printed = printed_result(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed.startswith("{'output': {'seed': 42, 'seeds': [42], 'model': 'lightning', 'era': 'wilderness'"), \
        printed[:500]
    assert "'images': ['iVBORw0KGgo" in printed
