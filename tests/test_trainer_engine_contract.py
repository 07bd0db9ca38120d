"""Contract with the real diffusion-pipe: the engine's own code over every config this worker generates.

Runs when DIFFUSION_PIPE_DIR points at a diffusion-pipe checkout (the commit
images/diffusion-pipe-trainer/Dockerfile pins); skipped, saying why, when it does not. No GPU:

- `set_config_defaults` is taken from the checkout's train.py (its AST, so that train.py's
  module-level argparse, wandb and deepspeed imports do not run) and run over each generated
  config.toml, loaded the way train.py loads it (`json.loads(json.dumps(toml.load(f)))`, train.py:282-284);
- every key the worker writes must be one the engine's source reads: the keys are collected from the
  checkout's own code (subscripts, .get/.setdefault/.pop and `in` tests on its config dicts), not from
  this worker's lists; and each key those lists say a model class reads must appear in that class's file;
- with the engine's Python dependencies importable (deepspeed, datasets, imageio, multiprocess, toml),
  utils/dataset.py parses each generated dataset.toml (DirectoryDataset), puts each image in its
  aspect-ratio bucket, and cuts the buckets to the global batch (ConcatenatedBatchedDataset): the worker's
  bucket arithmetic (buckets.py) must agree. ComfyUI is a submodule; when the checkout lacks it, the two
  ComfyUI modules utils/dataset.py imports (for video decoding and model offloading, neither used here)
  are replaced by empty modules.

The real train.py does not run on a CPU: it calls torch.cuda.set_device unconditionally (train.py:299).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import types
from pathlib import Path

import pytest

from handlers.diffusion_pipe_trainer import buckets, configs, engine_keys
from handlers.diffusion_pipe_trainer.models import MODEL_TYPES, REGISTRY
from handlers.diffusion_pipe_trainer.schema import parse_request
from tests.trainer_fixtures import png

ENGINE = Path(os.environ.get("DIFFUSION_PIPE_DIR") or "/nonexistent")
pytestmark = pytest.mark.skipif(
    not (ENGINE / "train.py").is_file() or not (ENGINE / "utils" / "dataset.py").is_file(),
    reason="DIFFUSION_PIPE_DIR does not point at a diffusion-pipe checkout (set it to one at the commit "
           "images/diffusion-pipe-trainer/Dockerfile pins to run the engine's own config code)",
)

# Per job model type: what the generated config must survive, beyond the defaults.
VARIANTS: dict[str, list[dict]] = {
    "flux": [{}, {"optimizer_type": "AdamW8bitKahan", "optimizer": {"stabilize": False}, "flux_shift": False}],
    "sdxl": [{}, {"optimizer_type": "sgd", "debiased_estimation_loss": True, "unet_lr": 4e-5},
             {"optimizer_type": "automagic", "optimizer": {"eps": [1e-30, 1e-3]}, "min_snr_gamma": 5}],
    "wan13": [{}, {"adapter": {"type": "lokr"}, "text_encoder_fp8": True, "cache_text_embeddings": False,
                   "min_t": 0.1, "max_t": 0.9, "blocks_to_swap": 4, "lr_scheduler": "cosine"}],
    "wan14b_t2v": [{}],
    "wan14b_i2v": [{}],
    "qwen": [{}, {"shift": 3.0, "timestep_sample_method": "uniform", "skip_empty_caption": False}],
    "z_image_turbo": [{}, {"transformer_dtype": "float8", "size_buckets": [[512, 512, 1], [640, 384, 1]]}],
}
MODEL_FILES = {"flux": ["models/flux.py"], "sdxl": ["models/sdxl.py"], "wan": ["models/wan/wan.py"],
               "qwen_image": ["models/qwen_image.py"], "z_image": ["models/z_image.py", "models/base.py"]}


def generate(model_type: str, training: dict, tmp: Path) -> tuple[Path, Path]:
    spec = REGISTRY[model_type]
    ds = {"type": "precaptioned", ("videos_url" if model_type == "wan14b_i2v" else "images_url"): "https://e/x.zip"}
    req = parse_request({"model_type": model_type, "dataset": ds, "training": training,
                         "api_keys": {"huggingface_token": "hf_contracttest0"}})
    images = tmp / "images"
    images.mkdir(parents=True, exist_ok=True)
    dirs = configs.DatasetDirs(None if model_type == "wan14b_i2v" else images,
                               tmp / "videos" if model_type == "wan14b_i2v" else None, 1, 5)
    cfg = configs.build_config(spec, req.training, models_dir=tmp / "models", output_dir=tmp / "out",
                               dataset_toml=tmp / "config" / "dataset.toml")
    configs.write_configs(tmp / "config", cfg, configs.build_dataset(spec, req.training, dirs))
    return tmp / "config" / "config.toml", tmp / "config" / "dataset.toml"


def load_like_train_py(path: Path) -> dict:
    toml = pytest.importorskip("toml", reason="train.py reads its TOML with the `toml` package (train.py:14, 284)")
    with open(path) as f:
        return json.loads(json.dumps(toml.load(f)))


def engine_function(rel: str, name: str, namespace: dict):
    source = (ENGINE / rel).read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module([node], []), str(ENGINE / rel), "exec"), namespace)
    return namespace[name]


def engine_dtype_map() -> dict:
    import torch

    tree = ast.parse((ENGINE / "utils" / "common.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "DTYPE_MAP")
    return eval(compile(ast.Expression(node.value), "utils/common.py", "eval"), {"torch": torch})  # noqa: S307


def keys_read(*rels: str, container: str = "config") -> set[str]:
    """String keys the engine's code reads from dicts whose expression mentions `container`."""
    found: set[str] = set()
    for rel in rels:
        for node in ast.walk(ast.parse((ENGINE / rel).read_text())):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and container in ast.unparse(node.value):
                found.add(node.slice.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("get", "setdefault", "pop") and node.args \
                    and isinstance(node.args[0], ast.Constant) and container in ast.unparse(node.func.value):
                found.add(node.args[0].value)
            elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) \
                    and any(isinstance(op, ast.In) for op in node.ops) \
                    and container in ast.unparse(node.comparators[0]):
                found.add(node.left.value)
    return {k for k in found if isinstance(k, str)}


CASES = [(m, i) for m in MODEL_TYPES for i in range(len(VARIANTS[m]))]


@pytest.mark.parametrize("model_type, variant", CASES)
def test_set_config_defaults_accepts_every_generated_config(model_type, variant, tmp_path):
    import torch

    cfg_path, _ = generate(model_type, VARIANTS[model_type][variant], tmp_path)
    config = load_like_train_py(cfg_path)
    written = json.loads(json.dumps(config))
    set_config_defaults = engine_function("train.py", "set_config_defaults", {"DTYPE_MAP": engine_dtype_map()})
    set_config_defaults(config)
    assert config["model"]["dtype"] is torch.bfloat16
    assert config["adapter"]["alpha"] == config["adapter"]["rank"]  # train.py:122
    # every key written is one the engine reads, where it reads it
    engine_type = written["model"]["type"]
    top = keys_read("train.py", "utils/saver.py", "models/base.py")
    assert set(written) - {"model", "adapter", "optimizer"} <= top, set(written) - top
    model_keys = keys_read("train.py", "utils/common.py", *MODEL_FILES[engine_type], container="model")
    model_keys |= keys_read("utils/common.py", container="model_config")
    assert set(written["model"]) <= model_keys, set(written["model"]) - model_keys
    adapter_keys = keys_read("train.py", "models/base.py", container="adapter")
    assert set(written["adapter"]) <= adapter_keys, set(written["adapter"]) - adapter_keys


def test_engine_keys_cite_what_the_source_reads():
    """handlers/diffusion_pipe_trainer/engine_keys.py against the checkout: each key is read where it says."""
    top = keys_read("train.py", "utils/saver.py", "models/base.py")
    assert set(engine_keys.TOP_LEVEL) <= top, set(engine_keys.TOP_LEVEL) - top
    dataset_keys = keys_read("utils/dataset.py")
    assert set(engine_keys.DATASET) <= dataset_keys, set(engine_keys.DATASET) - dataset_keys
    for engine_type, reads in engine_keys.MODEL.items():
        found = keys_read("train.py", *MODEL_FILES[engine_type], container="model")
        found |= keys_read("utils/common.py", container="model_config")
        assert set(reads) <= found, (engine_type, set(reads) - found)


# ---------------------------------------------------------------- utils/dataset.py


@pytest.fixture(scope="module")
def engine_dataset():
    for module in ("deepspeed", "datasets", "imageio", "multiprocess", "toml"):
        pytest.importorskip(module, reason=f"utils/dataset.py needs the engine's dependency '{module}' "
                                           "(install diffusion-pipe's requirements.txt)")
    saved = dict(sys.modules)
    if not (ENGINE / "submodules" / "ComfyUI" / "comfy").is_dir():
        # the ComfyUI submodule is missing: its two modules utils/dataset.py imports (video decoding, model
        # offloading) are not used by what these tests call
        comfy_api = types.ModuleType("comfy_api")
        latest = types.ModuleType("comfy_api.latest")
        latest.InputImpl = types.SimpleNamespace()
        comfy = types.ModuleType("comfy")
        comfy.model_management = types.ModuleType("comfy.model_management")
        sys.modules.update({"comfy_api": comfy_api, "comfy_api.latest": latest, "comfy": comfy,
                            "comfy.model_management": comfy.model_management})
    sys.path.insert(0, str(ENGINE))
    try:
        import utils.dataset as dataset_util

        dataset_util.is_main_process = lambda: True  # no torch.distributed here
        yield dataset_util
    finally:
        sys.path.remove(str(ENGINE))
        for name in set(sys.modules) - set(saved):
            if name == "utils" or name.startswith(("utils.", "comfy")):
                del sys.modules[name]


SIZES = [(40, 30)] * 7 + [(30, 60)] + [(64, 64)] * 3 + [(100, 40)] + [(48, 40)] * 2


@pytest.mark.parametrize("training", [{}, {"resolutions": [512, 768]}, {"min_ar": 0.25, "max_ar": 4.0,
                                                                         "num_ar_buckets": 9}])
@pytest.mark.parametrize("world", [1, 2])
def test_buckets_match_the_engines(engine_dataset, tmp_path, training, world, caplog, monkeypatch):
    _, ds_path = generate("sdxl", {"gradient_accumulation_steps": 2, **training}, tmp_path)
    for i, size in enumerate(SIZES):
        (tmp_path / "images" / f"img{i:02d}.png").write_bytes(png(i, size))
        (tmp_path / "images" / f"img{i:02d}.txt").write_text("ohwx, a photo")
    dataset_config = load_like_train_py(ds_path)
    directory = dataset_config["directory"][0]
    files = sorted((tmp_path / "images").glob("*.png"))
    ours = buckets.plan(json.loads(json.dumps(dataset_config)),
                        [buckets.Directory(buckets.media_of(files, "images"), directory["num_repeats"],
                                           Path(directory["path"]))],
                        micro_batch=1, grad_accum=2, world_size=world)
    # the engine's own metadata pass over the folder (listing, shuffle, captions, AR buckets: utils/dataset.py
    # 533-729), then its size buckets (419-436) without encoding latents
    engine_dir = engine_dataset.DirectoryDataset(dict(directory), dataset_config, "sdxl", framerate=None,
                                                 round_to_multiple=buckets.ROUND_TO_MULTIPLE)
    engine_dir.cache_metadata()
    monkeypatch.setattr(engine_dataset.SizeBucketDataset, "cache_latents", lambda self, *a, **k: None)
    engine_order = {}
    for ar_dataset in engine_dir.ar_bucket_datasets:
        ar_dataset.cache_latents(None)
        for sb in ar_dataset.get_size_bucket_datasets():
            engine_order[tuple(sb.size_bucket)] = [Path(spec[1]) for spec in sb.metadata_dataset["image_spec"]]
    # the same buckets, the files in the same order (so the same ones left out by the cut)
    assert {b.key: b.files for b in ours.buckets} == engine_order
    # and the stand-in (tests/fakes/diffusion_pipe_train.py) buckets as the engine does
    from tests.fakes import diffusion_pipe_train as stand_in

    for key, members in engine_order.items():
        for f in members:
            assert key in stand_in._bucket_of(dataset_config, *stand_in._media_size(f)), (f, key)
    # the same cut to the global batch (utils/dataset.py:347-396): steps per bucket and whole-bucket drops
    engine_steps = 0
    engine_dataset.logger.addHandler(caplog.handler)  # DeepSpeed's logger does not propagate
    try:
        for b in ours.buckets:
            concat = engine_dataset.ConcatenatedBatchedDataset([_Sized(b.key, b.entries)])
            concat.post_init({None: 1 * 2 * world}, {None: 1 * 2 * world}, 0, world)
            assert len(concat) == b.steps, (b.key, len(concat), b.steps)
            trained = {engine_order[b.key][j % len(b.files)] for _, j in concat.iteration_order}
            assert set(b.files) - trained == set(b.left_out()), b.key
            engine_steps += len(concat)
    finally:
        engine_dataset.logger.removeHandler(caplog.handler)
    assert engine_steps == ours.steps_per_epoch
    dropped = [r.getMessage() for r in caplog.records if "completely dropped" in r.getMessage()]
    assert len(dropped) == sum(1 for b in ours.buckets if b.kept == 0) > 0
    assert any(b.kept and b.left_out() for b in ours.buckets)  # a bucket cut short, not dropped


class _Sized:
    """A SizeBucketDataset as ConcatenatedBatchedDataset sees it: a size bucket and a length."""

    def __init__(self, size_bucket: tuple, length: int) -> None:
        self.size_bucket, self._length = size_bucket, length

    def __len__(self) -> int:
        return self._length


def test_more_than_three_resolutions_make_the_engine_quit(engine_dataset, tmp_path):
    """What the schema refuses, and the stand-in mimics: DirectoryDataset.validate quit()s (exit code 0)."""
    (tmp_path / "images").mkdir()
    config = {"resolutions": [512, 640, 768, 1024], "directory": [{"path": str(tmp_path / "images")}]}
    with pytest.raises(SystemExit) as ei:
        engine_dataset.DirectoryDataset(dict(config["directory"][0]), config, "sdxl")
    assert ei.value.code in (None, 0)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "automagic"])
def test_the_optimizer_table_constructs_the_engines_optimizer(optimizer, tmp_path):
    """train.py:666 passes [optimizer] minus type/gradient_release to the class as keyword arguments
    (torch.optim.AdamW at :672, torch.optim.SGD at :683, optimizers/automagic.py at :693)."""
    import torch

    cfg_path, _ = generate("sdxl", {"optimizer_type": optimizer}, tmp_path)
    optim_config = load_like_train_py(cfg_path)["optimizer"]
    kwargs = {k: v for k, v in optim_config.items() if k not in ("type", "gradient_release")}
    if optimizer == "automagic":
        pytest.importorskip("optimum.quanto", reason="optimizers/automagic.py needs the engine's optimum-quanto")
        sys.path.insert(0, str(ENGINE))
        try:
            from optimizers.automagic import Automagic as klass
        finally:
            sys.path.remove(str(ENGINE))
    else:
        klass = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    klass([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)  # a TypeError here is the engine's crash
