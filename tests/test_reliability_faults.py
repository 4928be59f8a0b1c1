"""Faults and security (issue 8): broken model files, malicious pickles, kill -9, YAML, sockets, paths.

- Model file faults through the real node (missing, truncated, corrupt, empty, wrong architecture,
  another ONNX graph, a directory, /dev/zero, a NUL byte, the wrong suffix, a malicious pickle):
  configure fails with ONE clear error line on /rosout (never a traceback), the lifecycle state is
  back to `unconfigured`, and the node configures and serves once the parameter is fixed. A bad
  input_topic fails activation with a clear line (rclpy itself would swallow the exception).
- A pickle whose __reduce__ would create a file, in place of weights or a checkpoint, is refused by
  load_weights, load_checkpoint, the torch backend, `mobius eval`'s loader and `mobius train
  --resume`; the file is never created. A source scan finds no unsafe loader anywhere.
- `kill -9` of a real `mobius train` process, then `--resume auto`: metrics.csv holds every step
  exactly once, the resumed steps repeat the killed run's losses, the last checkpoint is complete.
- Interrupted checkpoint writes (kill -9 of a process saving in a loop; every truncation length)
  never leave a file at a checkpoint path that loads as valid.
- YAML goes through safe_load: a `!!python/object` tag in a recipe, model config or node parameter
  file is refused and not executed.
- The node process opens the same kinds of sockets as a bare rclpy node: no other listeners.
"""
from __future__ import annotations

import ast
import csv
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import torch
from lifecycle_msgs.srv import GetState
from rcl_interfaces.msg import Log
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from test_ros_node import Rig, header, wait_until

from mobius_ros.images import array_to_image
from perception_core.training import engine
from runtime_models import tiny_weights

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "training" / "recipes" / "tiny_overfit.yaml"
PROMPTS = ["red star", "blue circle"]
SOURCE_DIRS = ("perception_core", "mobius_ros", "bench", "launch", "training")


class CreatesFile:
    """Unpickling this calls open(path, 'w'): the file appearing means code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def evil_files(folder: Path) -> tuple[Path, dict[str, Path]]:
    """(marker, {kind: file}) with a raw pickle and a torch.save zip, both as .pt and .pth."""
    marker = folder / "code_ran"
    files = {"raw pickle .pt": folder / "evil_raw.pt", "torch.save zip .pth": folder / "evil_zip.pth",
             "pickle named .safetensors": folder / "evil.safetensors"}
    payload = {"format": engine.CHECKPOINT_FORMAT, "model": CreatesFile(marker), "step": 1}
    with open(files["raw pickle .pt"], "wb") as file:
        pickle.dump(payload, file, protocol=2)
    torch.save(payload, files["torch.save zip .pth"])
    files["pickle named .safetensors"].write_bytes(files["raw pickle .pt"].read_bytes())
    assert not marker.exists()
    return marker, files


@pytest.fixture(scope="module")
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from test_training_engine import write_tiny_coco

    root = tmp_path_factory.mktemp("reliability_synth")
    write_tiny_coco(root, 8)
    return root


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ----------------------------------------------------------------------------- model files -> node

def small_onnx(path: Path) -> Path:
    """A valid ONNX graph that is not a MOBIUS model (one Identity)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def deform_conv_onnx(path: Path) -> Path:
    """A graph with a DeformConv node at opset 18, where onnxruntime has none (as an onnxruntime without
    the opset-19 kernel answers for the default export)."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("DeformConv", ["x", "w", "offset"], ["y"], kernel_shape=[1, 1])
    graph = helper.make_graph([node], "deform", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                                                 (("x", [1, 1, 2, 2]), ("w", [1, 1, 1, 1]), ("offset", [1, 2, 2, 2]))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    return path


def model_faults(folder: Path, weights: Path) -> tuple[list[tuple[str, dict, str]], Path]:
    """([(name, parameter values, text the error line must contain)], marker of the malicious pickles)."""
    marker, evil = evil_files(folder)
    data = weights.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "weights.onnx").write_bytes(data)
    onnx_bytes = small_onnx(folder / "identity.onnx").read_bytes()
    deform_conv_onnx(folder / "deform_conv.onnx")
    (folder / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    (folder / "a_directory.onnx").mkdir()
    (folder / "zero.onnx").symlink_to("/dev/zero")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    (folder / "model.bin").write_bytes(onnx_bytes)
    torch_, onnx_ = {"backend": "torch"}, {"backend": "onnx"}
    return [
        ("missing weights", {**torch_, "model_path": str(folder / "nowhere.safetensors")}, "not found"),
        ("truncated safetensors", {**torch_, "model_path": str(folder / "truncated.safetensors")},
         "could not load weights"),
        ("random bytes as safetensors", {**torch_, "model_path": str(folder / "random.safetensors")},
         "could not load weights"),
        ("empty safetensors", {**torch_, "model_path": str(folder / "empty.safetensors")}, "could not load weights"),
        ("weights of another architecture", {**torch_, "preset": "mobius_nano"}, "do not match the model config"),
        ("malicious raw pickle", {**torch_, "model_path": str(evil["raw pickle .pt"])}, "could not load weights"),
        ("malicious torch.save zip", {**torch_, "model_path": str(evil["torch.save zip .pth"])},
         "could not load weights"),
        ("pickle named .safetensors", {**torch_, "model_path": str(evil["pickle named .safetensors"])},
         "could not load weights"),
        (".onnx file for backend torch", {**torch_, "model_path": str(folder / "identity.onnx")},
         "must end in .safetensors"),
        ("preset /dev/zero", {**torch_, "preset": "/dev/zero"}, "unknown model config '/dev/zero'"),
        ("preset symlink to /dev/zero", {**torch_, "preset": str(folder / "zero.yaml")}, "not found"),
        ("missing ONNX", {**onnx_, "model_path": str(folder / "nowhere.onnx")}, "not found"),
        ("truncated ONNX", {**onnx_, "model_path": str(folder / "truncated.onnx")},
         "could not be loaded by onnxruntime"),
        ("another ONNX graph", {**onnx_, "model_path": str(folder / "identity.onnx")}, "has inputs ('x',)"),
        ("DeformConv this onnxruntime cannot run", {**onnx_, "model_path": str(folder / "deform_conv.onnx")},
         "--sampler grid_sample"),
        ("weights named .onnx", {**onnx_, "model_path": str(folder / "weights.onnx")},
         "could not be loaded by onnxruntime"),
        ("directory as model_path", {**onnx_, "model_path": str(folder / "a_directory.onnx")}, "is a directory"),
        ("/dev/zero as model_path", {**onnx_, "model_path": "/dev/zero"}, "must end in .onnx"),
        ("symlink to /dev/zero", {**onnx_, "model_path": str(folder / "zero.onnx")}, "not a regular file"),
        ("non-.onnx file", {**onnx_, "model_path": str(folder / "model.bin")}, "must end in .onnx"),
        ("NUL byte in the path", {**onnx_, "model_path": str(folder / "a\0b.onnx")}, "contains a NUL byte"),
    ], marker


def lifecycle_state(r: Rig) -> str:
    client = r.client.create_client(GetState, f"/{r.ns}/mobius_segmenter/get_state")
    assert client.wait_for_service(10)
    future = client.call_async(GetState.Request())
    wait_until(future.done, what="get_state")
    return future.result().current_state.label  # the client goes with the rig's node (not under spin)


def test_model_file_faults_fail_configure_clearly_and_the_node_recovers(context, tmp_path):
    model = tiny_weights()
    good = {"backend": "torch", "model_path": str(model.weights), "preset": str(model.preset)}
    r = Rig(context, "rel_faults", {**good, "input_size": 64, "threads": 1, "score_threshold": 0.0,
                                    "prompts": PROMPTS, "autostart": False, "publish_overlay": False,
                                    "qos_reliability": "reliable"})
    try:
        r.wait_for_rosout()
        faults, marker = model_faults(tmp_path, model.weights)
        problems = []
        for name, values, expected in faults:
            results = r.node.set_parameters([Parameter(k, value=v) for k, v in {**good, **values}.items()])
            assert all(result.successful for result in results), (name, [x.reason for x in results])
            seen = len(r.node_logs(Log.ERROR))
            if r.node.trigger_configure() != TransitionCallbackReturn.FAILURE:
                problems.append(f"{name}: configure did not fail")
                r.node.trigger_cleanup()
                continue
            wait_until(lambda: len(r.node_logs(Log.ERROR)) > seen, what=f"the error line for {name}")
            lines = r.node_logs(Log.ERROR)[seen:]
            if len(lines) != 1 or expected not in lines[0] or "Traceback" in lines[0]:
                problems.append(f"{name}: {lines} (expected one line with {expected!r})")
        assert problems == [], "\n".join(problems)
        assert not marker.exists(), "a malicious pickle ran code"
        assert lifecycle_state(r) == "unconfigured"
        assert not any("Traceback" in log.msg for log in r.logs)

        # a bad topic name fails activation with a reason instead of vanishing into rclpy
        r.node.set_parameters([Parameter(k, value=v) for k, v in good.items()]
                              + [Parameter("input_topic", value="/camera/bad topic!")])
        assert r.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        seen = len(r.node_logs(Log.ERROR))
        assert r.node.trigger_activate() == TransitionCallbackReturn.FAILURE
        wait_until(lambda: len(r.node_logs(Log.ERROR)) > seen, what="the activation error line")
        assert "input_topic '/camera/bad topic!'" in r.node_logs(Log.ERROR)[seen]
        assert lifecycle_state(r) == "inactive"

        r.node.set_parameters([Parameter("input_topic", value=f"/{r.ns}/camera/image")])
        assert r.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        wait_until(lambda: r.publisher.get_subscription_count() > 0
                   and all(s.get_publisher_count() > 0 for s in r.subscriptions[:2]), what="discovery")
        clip = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        key = r.send(array_to_image(clip, "rgb8", header(5)))
        assert r.ids[key].header.frame_id == "camera_optical_5"
    finally:
        r.close()


# ----------------------------------------------------------------------------- malicious pickles

def test_malicious_pickles_are_refused_by_every_loader(tmp_path):
    from perception_core.evaluation.predict import load_torch_model
    from perception_core.model.build import build_from_name, load_weights
    from perception_core.runtime.processor import FrameProcessor, ProcessorConfig

    marker, files = evil_files(tmp_path)
    model = tiny_weights()
    for kind, path in files.items():
        with pytest.raises(ValueError, match="could not load weights"):
            load_weights(build_from_name(str(model.preset)), path)
        with pytest.raises(engine.CheckpointError, match="truncated or corrupt"):
            engine.load_checkpoint(path)
        with pytest.raises(ValueError, match="could not"):
            FrameProcessor(ProcessorConfig(backend="torch", model=str(path), preset=str(model.preset), size=64),
                           PROMPTS)
        if path.suffix != ".safetensors":
            with pytest.raises(ValueError, match="could not read checkpoint"):
                load_torch_model(path)  # what `mobius eval --weights` uses
        assert not marker.exists(), f"{kind}: code ran"


def test_train_resume_refuses_a_malicious_checkpoint(tmp_path, tiny_data):
    marker, files = evil_files(tmp_path)
    process = subprocess.run(train_command(tiny_data, tmp_path / "run", 4, "--resume", str(files["raw pickle .pt"])),
                             capture_output=True, text=True, env=child_env(), timeout=120)
    assert process.returncode == 1, process.stderr
    assert "not loadable with weights_only=True" in process.stderr and "Traceback" not in process.stderr
    assert not marker.exists() and not (tmp_path / "run" / "metrics.csv").exists()


def unsafe_calls(tree: ast.AST) -> list[str]:
    """Calls that can execute code while loading data."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all"):
            found.append(f"yaml.{name}")
        elif owner in ("pickle", "cPickle", "dill", "marshal", "joblib", "shelve") and name in ("load", "loads", "open"):
            found.append(f"{owner}.{name}")
        elif owner == "torch" and name == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append("torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load":
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append("np.load with allow_pickle")
        elif isinstance(func, ast.Name) and name in ("eval", "exec", "__import__"):
            found.append(name)
        elif "Loader" in keywords and not (isinstance(keywords["Loader"], ast.Attribute)
                                           and keywords["Loader"].attr in ("SafeLoader", "CSafeLoader")):
            found.append(f"{name} with an unsafe Loader")
    return found


def test_no_unsafe_loader_in_the_sources():
    sources = [p for folder in SOURCE_DIRS for p in (ROOT / folder).rglob("*.py")] + [ROOT / "setup.py"]
    assert len(sources) > 50
    hits = {str(p.relative_to(ROOT)): unsafe_calls(ast.parse(p.read_text(), str(p))) for p in sources}
    assert {path: found for path, found in hits.items() if found} == {}
    # the scanner itself finds what it looks for
    probe = "yaml.load(t)\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\neval('1')\n" \
            "np.load(f, allow_pickle=True)\nyaml.load(t, Loader=yaml.FullLoader)\ntorch.load(p, weights_only=True)"
    assert len(unsafe_calls(ast.parse(probe))) == 7


# ----------------------------------------------------------------------------- YAML

def test_yaml_python_tags_are_refused_everywhere(tmp_path):
    from perception_core.config import ConfigError, load_model_config
    from perception_core.training.recipe import load_train_config

    from mobius_ros import parameters

    marker = tmp_path / "yaml_code_ran"
    tag = f"!!python/object/apply:builtins.open ['{marker}', 'w']"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE.read_text().replace("seed: 0", f"seed: {tag}"))
    model = tmp_path / "model.yaml"
    model.write_text(f"hidden_dim: {tag}\n")
    node_params = tmp_path / "segment.yaml"
    node_params.write_text((ROOT / "config" / "segment.yaml").read_text().replace(
        "ros__parameters:", f"ros__parameters:\n    evil: {tag}", 1))
    assert "evil" in node_params.read_text()
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(recipe)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(str(model))
    with pytest.raises(ValueError, match="not valid YAML"):
        parameters.load_defaults(node_params)
    assert not marker.exists()


# ----------------------------------------------------------------------------- kill -9 and resume

def train_command(data: Path, output: Path, max_steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "perception_core.cli", "train", "--config", str(TINY_RECIPE),
            f"data.train_annotations={data / 'instances.json'}", f"data.train_images={data}",
            f"output_dir={output}", "data.train_sizes=[64]", "data.max_size=96", f"optim.max_steps={max_steps}",
            "checkpoint_interval=5", "log_interval=1", "--no-progress", "--device", "cpu", *extra]


def metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("seconds_per_step")]  # complete rows only


def test_kill_9_during_training_then_resume_loses_and_repeats_nothing(tmp_path, tiny_data):
    output, steps = tmp_path / "run", 16
    killed = subprocess.Popen(train_command(tiny_data, output, steps), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=child_env())
    try:
        wait_until(lambda: killed.poll() is not None or (metrics(output / "metrics.csv")
                                                         and int(metrics(output / "metrics.csv")[-1]["step"]) >= 7),
                   timeout=120, what="step 7 of the run to be killed")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = metrics(output / "metrics.csv")
    checkpoint_step = engine.load_checkpoint(output / "checkpoints" / "last.pt")["step"]
    assert checkpoint_step % 5 == 0 and 5 <= checkpoint_step < int(before[-1]["step"])  # work was lost

    resumed = subprocess.run(train_command(tiny_data, output, steps, "--resume", "auto"), capture_output=True,
                             text=True, env=child_env(), timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {checkpoint_step}" in resumed.stderr and "Traceback" not in resumed.stderr
    after = metrics(output / "metrics.csv")
    assert [int(row["step"]) for row in after] == list(range(1, steps + 1))  # none lost, none repeated
    assert after[:checkpoint_step] == before[:checkpoint_step]                # history before the checkpoint kept
    redone = [int(row["step"]) for row in before[checkpoint_step:]]
    np.testing.assert_allclose([float(after[s - 1]["loss"]) for s in redone],  # the lost steps, done again
                               [float(row["loss"]) for row in before[checkpoint_step:]], rtol=1e-5)
    final = engine.load_checkpoint(output / "checkpoints" / "last.pt")
    assert final["step"] == steps
    print(f"\nkill -9 at step {before[-1]['step']} (last checkpoint: step {checkpoint_step}); --resume auto "
          f"redid steps {redone[0]}-{redone[-1]} with the same losses and finished at step {steps}; metrics.csv "
          f"steps 1..{steps} once each")
    for path in sorted((output / "checkpoints").glob("step_*.pt")):
        assert engine.load_checkpoint(path)["step"] == int(path.stem.split("_")[1])


# ----------------------------------------------------------------------------- interrupted writes

SAVER = """
import sys, torch
from perception_core.training import engine
folder = sys.argv[1]
weights = torch.arange(4_000_000, dtype=torch.float32)
step = 0
while True:
    step += 1
    engine.save_checkpoint(f"{folder}/step_{step:07d}.pt", {"format": engine.CHECKPOINT_FORMAT, "step": step,
                                                             "model": {"w": weights + step}})
    print(step, flush=True)
"""


def test_kill_9_while_saving_never_leaves_a_valid_looking_partial_file(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    saver = subprocess.Popen([sys.executable, "-c", SAVER, str(folder)], stdout=subprocess.PIPE, text=True,
                             env=child_env())
    try:
        assert saver.stdout.readline().strip() == "1"  # one complete save, then kill in the middle of others
        time.sleep(0.35)
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait(30)
    final = sorted(folder.glob("step_*.pt"))
    assert final, "no checkpoint was completed"
    for path in final:  # every file at a checkpoint path is complete and right
        contents = engine.load_checkpoint(path)
        step = int(path.stem.split("_")[1])
        assert contents["step"] == step and torch.equal(contents["model"]["w"][:3], torch.tensor([0.0, 1, 2]) + step)
    partial = [p for p in folder.iterdir() if p not in final]
    assert all(p.name.startswith(".step_") and ".tmp-" in p.name for p in partial)  # hidden temporaries only


def test_no_truncation_of_a_checkpoint_or_weights_loads_as_valid(tmp_path):
    from perception_core.model.build import build_from_name, load_weights

    path = engine.save_checkpoint(tmp_path / "last.pt", {"format": engine.CHECKPOINT_FORMAT, "step": 3,
                                                        "model": {"w": torch.arange(50_000.0)}})
    data = path.read_bytes()
    cuts = sorted({0, 1, 10, 100, len(data) - 1, len(data) - 2, len(data) - 22, len(data) - 100,
                   *np.linspace(0, len(data), 40, endpoint=False, dtype=int).tolist()})
    for cut in cuts:
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(engine.CheckpointError):
            engine.load_checkpoint(tmp_path / "cut.pt")
    weights = tiny_weights()
    data = weights.weights.read_bytes()
    model = build_from_name(str(weights.preset))
    for cut in sorted({0, 7, 8, 100, len(data) - 1, *np.linspace(0, len(data), 20, endpoint=False, dtype=int)}):
        (tmp_path / "cut.safetensors").write_bytes(data[:cut])
        with pytest.raises(ValueError):
            load_weights(model, tmp_path / "cut.safetensors")
    # a stale temporary next to last.pt is never what --resume auto picks
    (tmp_path / "checkpoints").mkdir()
    os.replace(path, tmp_path / "checkpoints" / "last.pt")
    (tmp_path / "checkpoints" / ".last.pt.tmp-999").write_bytes(data[:100])
    from perception_core.training.train_command import resolve_resume

    assert resolve_resume("auto", str(tmp_path)) == tmp_path / "checkpoints" / "last.pt"


# ----------------------------------------------------------------------------- sockets

def socket_kinds(pid: int) -> set[tuple[str, str, str, str]]:
    """(protocol, state, local address class, port class) of every inet socket the process holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    domain = int(os.environ.get("ROS_DOMAIN_ID", "0"))
    dds = range(7400 + 250 * domain, 7400 + 250 * (domain + 1))  # RTPS well-known ports of the domain
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    kinds = set()
    for protocol in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        table = Path(f"/proc/{pid}/net/{protocol}")
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            address, port = fields[1].rsplit(":", 1)
            port = int(port, 16)
            where = "any" if set(address) == {"0"} else "loopback" if address in ("0100007F",) else "host"
            # Fast DDS also binds 7000 + participant index (seen in a bare rclpy process as well)
            port_class = "dds" if port in dds else "ephemeral" if low <= port <= high else \
                "fastdds 7000+i" if 7000 <= port < 7100 else str(port)
            kinds.add((protocol, {"0A": "LISTEN", "07": "unconnected", "01": "ESTABLISHED"}.get(fields[3], fields[3]),
                       where, port_class))
    return kinds


def start(args: list[str], ready: str) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=child_env())
    lines: list[str] = []
    def read() -> None:
        for line in process.stdout:
            lines.append(line)
    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: any(ready in line for line in lines) or process.poll() is not None, timeout=90,
               what=f"{ready!r} from {args[:3]}")
    assert process.poll() is None, "".join(lines)
    return process, lines


def test_node_process_opens_only_ros_transport_sockets(context):
    model = tiny_weights()
    node_args = [sys.executable, "-m", "mobius_ros.segment_node", "--ros-args", "--params-file",
                 str(ROOT / "config" / "segment.yaml"), "-r", "__ns:=/rel_sockets", "-p", "autostart:=true",
                 "-p", "backend:=torch", "-p", f"model_path:={model.weights}", "-p", f"preset:={model.preset}",
                 "-p", "input_size:=64", "-p", "threads:=1", "-p", "input_topic:=/rel_sockets/image",
                 "-p", "qos_reliability:=reliable", "-p", "prompts:=['red star']"]
    bare_args = [sys.executable, "-c", "import rclpy\nrclpy.init()\nnode = rclpy.create_node('bare')\n"
                 "print('bare ready', flush=True)\ntry:\n    rclpy.spin(node)\nexcept BaseException:\n    pass"]
    bare, _ = start(bare_args, "bare ready")
    node, lines = start(node_args, "active: segmenting")
    client = rclpy.create_node("rel_sockets_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    got = []
    from sensor_msgs.msg import Image

    from test_ros_node import RELIABLE
    subscription = client.create_subscription(Image, "/rel_sockets/mobius_segmenter/instances", got.append, RELIABLE)
    publisher = client.create_publisher(Image, "/rel_sockets/image", RELIABLE)
    spinner.start()
    try:  # serve a frame first: sockets opened lazily would show up too
        wait_until(lambda: publisher.get_subscription_count() > 0 and subscription.get_publisher_count() > 0,
                   timeout=30, what="discovery of the node process")
        publisher.publish(array_to_image(np.zeros((48, 64, 3), np.uint8), "rgb8", header(1)))
        wait_until(lambda: got, what="the node process's output")
        node_kinds, bare_kinds = socket_kinds(node.pid), socket_kinds(bare.pid)
    finally:
        for process in (node, bare):
            process.send_signal(signal.SIGINT)
        for process in (node, bare):
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        executor.shutdown()
        spinner.join(5)
        client.destroy_node()
    print(f"\nsockets (protocol, state, address, port class): node {sorted(node_kinds)}, bare rclpy {sorted(bare_kinds)}")
    assert bare_kinds, "no sockets found for the bare rclpy process: cannot compare"
    assert not any(state == "LISTEN" or protocol.startswith("tcp") for protocol, state, _, _ in node_kinds), node_kinds
    assert node_kinds == bare_kinds, f"node process {sorted(node_kinds)} vs bare rclpy {sorted(bare_kinds)}"
