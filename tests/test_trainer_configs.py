"""Request validation and the generated diffusion-pipe TOML, per model type (no downloads, no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from common.jobs import JobError
from handlers.diffusion_pipe_trainer import configs
from handlers.diffusion_pipe_trainer.models import REGISTRY
from handlers.diffusion_pipe_trainer.schema import parse_request

MODELS = Path("/vol/models")
IMG = {"type": "images", "images_url": "https://example.com/i.zip"}
VID = {"type": "videos", "videos_url": "https://example.com/v.zip"}
KEYS = {"huggingface_token": "hf_abcdefghijklmnop", "gemini_api_key": "gem-key-123456"}


def render(model_type: str, training: dict | None = None, ds: dict | None = None, tmp: Path = Path("/job")):
    dataset = ds or (VID if model_type == "wan14b_i2v" else IMG)
    req = parse_request({"model_type": model_type, "dataset": dataset, "training": training or {}, "api_keys": KEYS})
    spec = REGISTRY[model_type]
    cfg = configs.build_config(spec, req.training, models_dir=MODELS, output_dir=tmp / "out",
                               dataset_toml=tmp / "config" / "dataset.toml")
    kinds = req.dataset.kinds()
    dirs = configs.DatasetDirs(tmp / "images" if "images" in kinds else None,
                               tmp / "videos" if "videos" in kinds else None,
                               req.dataset.image_repeats, req.dataset.video_repeats)
    texts = {"config.toml": configs.to_toml(cfg), "dataset.toml": configs.to_toml(configs.build_dataset(spec, req.training, dirs))}
    return tomllib.loads(texts["config.toml"]), tomllib.loads(texts["dataset.toml"])


# What the engine reads from [model] for each job model type (diffusion-pipe models/*.py at the pinned commit).
EXPECTED_MODEL = {
    "flux": {"type": "flux", "diffusers_path": "/vol/models/FLUX.1-dev", "dtype": "bfloat16",
             "transformer_dtype": "float8", "flux_shift": True},
    "sdxl": {"type": "sdxl", "checkpoint_path": "/vol/models/sdxl/sd_xl_base_1.0.safetensors", "dtype": "bfloat16"},
    "wan13": {"type": "wan", "ckpt_path": "/vol/models/Wan2.1-T2V-1.3B", "dtype": "bfloat16",
              "transformer_dtype": "bfloat16", "timestep_sample_method": "logit_normal"},
    "wan14b_t2v": {"type": "wan", "ckpt_path": "/vol/models/Wan2.1-T2V-14B", "dtype": "bfloat16",
                   "transformer_dtype": "float8", "timestep_sample_method": "logit_normal"},
    "wan14b_i2v": {"type": "wan", "ckpt_path": "/vol/models/Wan2.1-I2V-14B-480P", "dtype": "bfloat16",
                   "transformer_dtype": "float8", "timestep_sample_method": "logit_normal"},
    "qwen": {"type": "qwen_image", "diffusers_path": "/vol/models/Qwen-Image", "dtype": "bfloat16",
             "transformer_dtype": "float8", "timestep_sample_method": "logit_normal"},
    "z_image_turbo": {
        "type": "z_image",
        "diffusion_model": "/vol/models/z_image/split_files/diffusion_models/z_image_turbo_bf16.safetensors",
        "vae": "/vol/models/z_image/split_files/vae/ae.safetensors",
        "text_encoders": [{"path": "/vol/models/z_image/split_files/text_encoders/qwen_3_4b.safetensors",
                           "type": "lumina2"}],
        "merge_adapters": ["/vol/models/zimage_adapter/zimage_turbo_training_adapter_v2.safetensors"],
        "dtype": "bfloat16",
    },
}


@pytest.mark.parametrize("model_type", sorted(EXPECTED_MODEL))
def test_config_per_model_type(model_type):
    cfg, ds = render(model_type)
    assert cfg["model"] == EXPECTED_MODEL[model_type]
    # seed defaults mapped to the engine's keys
    assert cfg["output_dir"] == "/job/out" and cfg["dataset"] == "/job/config/dataset.toml"
    assert cfg["epochs"] == 100 and cfg["micro_batch_size_per_gpu"] == 1
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["gradient_clipping"] == 1.0
    assert cfg["warmup_steps"] == 100 and cfg["save_every_n_epochs"] == 10
    assert cfg["checkpoint_every_n_minutes"] == 120 and cfg["save_dtype"] == "bfloat16"
    assert cfg["activation_checkpointing"] is True and cfg["caching_batch_size"] == 1
    assert cfg["adapter"] == {"type": "lora", "rank": 32, "dtype": "bfloat16"}
    assert cfg["optimizer"] == {"type": "adamw_optimi", "lr": 2e-5, "betas": [0.9, 0.99], "weight_decay": 0.01,
                                "eps": 1e-8}
    assert "alpha" not in cfg["adapter"]
    spec = REGISTRY[model_type]
    if "videos" in spec.media:
        assert cfg["video_clip_mode"] == ("single_beginning" if model_type == "wan14b_i2v" else "single_middle")
        assert ds["frame_buckets"] == [1, 33] and ds["resolutions"] == [512]
    else:
        assert "video_clip_mode" not in cfg and "frame_buckets" not in ds
        assert ds["resolutions"] == [1024]
    kind = "videos" if model_type == "wan14b_i2v" else "images"
    repeats = 5 if kind == "videos" else 1
    assert ds["directory"] == [{"path": f"/job/{kind}", "num_repeats": repeats}]
    assert ds["enable_ar_bucket"] is True


def test_seed_keys_and_passthrough_land_where_the_engine_reads_them():
    cfg, ds = render("wan13", {
        "epochs": 3, "learning_rate": 1e-4, "lora_rank": 16, "batch_size": 2, "gradient_accumulation_steps": 1,
        "resolution": 768, "frame_buckets": [33, 1, 17], "video_clip_mode": "single_beginning",
        "optimizer_type": "AdamW8bitKahan", "optimizer": {"stabilize": False},
        "lr_scheduler": "cosine", "blocks_to_swap": 8, "transformer_dtype": "float8",
        "num_ar_buckets": 3, "checkpoint_every_n_epochs": 1,
    }, ds={"type": "both", "images_url": "https://e/i.zip", "videos_url": "https://e/v.zip", "video_repeats": 2})
    assert cfg["epochs"] == 3 and cfg["micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 1
    assert cfg["optimizer"]["lr"] == 1e-4 and cfg["optimizer"]["type"] == "AdamW8bitKahan"
    assert cfg["optimizer"]["stabilize"] is False
    assert cfg["adapter"]["rank"] == 16
    assert cfg["lr_scheduler"] == "cosine" and cfg["blocks_to_swap"] == 8
    assert cfg["model"]["transformer_dtype"] == "float8"  # model keys go into [model]
    assert cfg["checkpoint_every_n_epochs"] == 1 and "checkpoint_every_n_minutes" not in cfg
    assert cfg["video_clip_mode"] == "single_beginning"
    assert ds["resolutions"] == [768] and ds["frame_buckets"] == [1, 17, 33] and ds["num_ar_buckets"] == 3
    assert "num_ar_buckets" not in cfg
    assert [d["num_repeats"] for d in ds["directory"]] == [1, 2]


def test_transformer_dtype_uses_the_key_each_model_class_reads():
    cfg, _ = render("z_image_turbo", {"transformer_dtype": "float8"})
    assert cfg["model"]["diffusion_model_dtype"] == "float8" and "transformer_dtype" not in cfg["model"]
    cfg, _ = render("qwen", {"diffusion_model_dtype": "bfloat16"})
    assert cfg["model"]["transformer_dtype"] == "bfloat16"


def test_write_configs_reads_back(tmp_path):
    cfg = {"output_dir": str(tmp_path), "epochs": 1, "model": {"type": "sdxl", "dtype": "bfloat16"},
           "optimizer": {"betas": [0.9, 0.99]}}
    texts = configs.write_configs(tmp_path, cfg, {"resolutions": [512], "directory": [{"path": "/x", "num_repeats": 1}]})
    assert tomllib.loads((tmp_path / "config.toml").read_text()) == cfg
    assert texts["dataset.toml"] == (tmp_path / "dataset.toml").read_text()
    assert "[[directory]]" in texts["dataset.toml"]


def invalid(raw: dict) -> str:
    with pytest.raises(JobError) as ei:
        parse_request(raw)
    assert ei.value.code == "invalid_input"
    return ei.value.message


@pytest.mark.parametrize("raw, expected", [
    ({"model_type": "sd15", "dataset": IMG}, "model_type: Input should be 'flux'"),
    ({"dataset": IMG}, "model_type: Field required"),
    ({"model_type": "sdxl"}, "dataset: required"),
    ({"model_type": "sdxl", "dataset": {"type": "images"}}, "type 'images' needs 'images_url'"),
    ({"model_type": "sdxl", "dataset": {"type": "both", "images_url": "https://e/i.zip"}}, "needs 'videos_url'"),
    ({"model_type": "sdxl", "dataset": {"type": "precaptioned"}}, "needs 'images_url' and/or 'videos_url'"),
    ({"model_type": "sdxl", "dataset": {"type": "images", "images_url": "file:///etc/passwd"}},
     "dataset.images_url: must be an http(s)://"),
    ({"model_type": "flux", "dataset": IMG}, "api_keys.huggingface_token: flux needs a Hugging Face token"),
    ({"model_type": "wan13", "dataset": VID}, "api_keys.gemini_api_key: dataset type 'videos' captions videos"),
    ({"model_type": "wan14b_i2v", "dataset": {"type": "precaptioned", "images_url": "https://e/i.zip"}},
     "dataset.images_url: Wan 14B I2V trains on videos only"),
    ({"model_type": "sdxl", "dataset": {"type": "precaptioned", "videos_url": "https://e/v.zip"}},
     "dataset.videos_url: SDXL trains on images only"),
    ({"model_type": "wan13", "dataset": IMG, "training": {"video_clip_mode": "random"}},
     "training.video_clip_mode: Input should be 'single_beginning' or 'single_middle'"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"adapter": {"alpha": 16}}},
     "adapter.alpha: not accepted, diffusion-pipe forces alpha = rank"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"alpha": 16}}, "alpha: not accepted"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"model": {"type": "flux"}}}, "model.type: not accepted"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"output_dir": "/tmp/x"}}, "output_dir: not accepted"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"blocks_to_swap": None}}, "null is not allowed"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"lora_rank": "big"}}, "training.lora_rank"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"epochs": 0}}, "training.epochs"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"lora_dtype": "int4"}}, "training.lora_dtype"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"frame_buckets": [1, 33]}}, "SDXL is an image model"),
    ({"model_type": "sdxl", "dataset": IMG, "training": {"weird": {"x": 1}}}, "weird: diffusion-pipe reads no such key"),
    ({"model_type": "sdxl", "dataset": IMG, "bogus": 1}, "bogus: unknown field"),
    ({"model_type": "sdxl", "dataset": IMG, "resume": "../etc"}, "resume: must be a job id"),
])
def test_bad_requests_name_field_and_reason(raw, expected, monkeypatch):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert expected in invalid(raw)


def test_secret_values_are_not_echoed_in_errors():
    msg = invalid({"model_type": "sdxl", "dataset": IMG, "api_keys": {"gemini_api_key": 12345678901}})
    assert "12345678901" not in msg and "api_keys.gemini_api_key" in msg


# --- routing: every key to where diffusion-pipe reads it (handlers/diffusion_pipe_trainer/engine_keys.py) --------

def test_model_and_dataset_keys_are_routed_where_the_engine_reads_them():
    cfg, ds = render("sdxl", {"debiased_estimation_loss": True, "min_snr_gamma": 5, "skip_empty_caption": False,
                              "cache_shuffle_num": 2, "lr_scheduler": "linear", "huber_delta": 0.5})
    assert cfg["model"]["debiased_estimation_loss"] is True and cfg["model"]["min_snr_gamma"] == 5  # models/sdxl.py
    assert ds["skip_empty_caption"] is False and ds["cache_shuffle_num"] == 2  # utils/dataset.py
    assert cfg["lr_scheduler"] == "linear" and cfg["huber_delta"] == 0.5  # top level
    for key in ("debiased_estimation_loss", "skip_empty_caption", "cache_shuffle_num", "min_snr_gamma"):
        assert key not in {k for k, v in cfg.items() if not isinstance(v, dict)}
    cfg, ds = render("wan13", {"text_encoder_fp8": True, "cache_text_embeddings": False, "min_t": 0.1,
                               "size_buckets": [[512, 512, 1], [512, 512, 33]], "model": {"shift": 3.0}})
    assert cfg["model"]["text_encoder_fp8"] is True and cfg["model"]["cache_text_embeddings"] is False
    assert cfg["model"]["min_t"] == 0.1 and cfg["model"]["shift"] == 3.0
    assert ds["size_buckets"] == [[512, 512, 1], [512, 512, 33]] and "size_buckets" not in cfg


@pytest.mark.parametrize("model_type, training, expected", [
    # keys the engine reads nowhere, or not for this model
    ("sdxl", {"transformer_dtype": "float8"}, "training.transformer_dtype: diffusion-pipe's sdxl model reads no"),
    ("sdxl", {"model": {"flux_shift": True}}, "training.model.flux_shift: diffusion-pipe's sdxl model reads no"),
    ("flux", {"min_t": 0.2}, "training.min_t: diffusion-pipe's flux model reads no such key"),
    ("qwen", {"text_encoder_fp8": True}, "diffusion-pipe's qwen_image model reads no such key"),
    ("sdxl", {"learning_rte": 1e-4}, "learning_rte: diffusion-pipe reads no such key"),
    ("sdxl", {"regenerate_cache": True}, "regenerate_cache: not accepted, train.py:305-308"),
    ("sdxl", {"steps_per_print": 10}, "steps_per_print: not accepted"),
    ("sdxl", {"eval_every_n_epochs": 1}, "eval_every_n_epochs: not accepted, evaluation"),
    ("sdxl", {"micro_batch_size_per_gpu": 2}, "use training.batch_size"),
    # worker-owned paths
    ("qwen", {"vae_path": "/etc"}, "vae_path: not accepted, the worker fetches the weights"),
    ("qwen", {"text_encoder_path": "/x"}, "text_encoder_path: not accepted"),
    ("wan13", {"model": {"llm_path": "/x"}}, "model.llm_path: not accepted"),
    ("wan13", {"transformer_path": "/x"}, "transformer_path: not accepted"),
    ("flux", {"model": {"transformer_path": "/x"}}, "model.transformer_path: not accepted"),
    ("sdxl", {"model": {"checkpoint_path": "/x"}}, "model.checkpoint_path: not accepted"),
    ("sdxl", {"adapter": {"init_from_existing": "/runpod-volume/other/epoch3"}}, "adapter.init_from_existing"),
    ("flux", {"adapter": {"fuse_adapters": [{"path": "/x"}]}}, "adapter.fuse_adapters: not accepted"),
    ("z_image_turbo", {"model": {"merge_adapters": ["/x"]}}, "model.merge_adapters: not accepted"),
    # engine limits
    ("sdxl", {"resolutions": [512, 640, 768, 896]}, "resolutions: a list of 1 to 3 sizes"),
    ("sdxl", {"adapter": {"type": "lokr"}}, "SDXL cannot save a LoKr adapter"),
    ("flux", {"adapter": {"type": "lokr"}}, "Flux cannot save a LoKr adapter"),
    ("sdxl", {"adapter": {"type": "dora"}}, "adapter.type: must be 'lora' or 'lokr'"),
    ("sdxl", {"lr_scheduler": "onecycle"}, "lr_scheduler: must be one of"),
    ("sdxl", {"blocks_to_swap": 4, "pipeline_stages": 2}, "blocks_to_swap: diffusion-pipe swaps blocks only"),
    # optimizers: names train.py knows, and only the keyword arguments each takes
    ("sdxl", {"optimizer_type": "Lion"}, "training.optimizer_type: must be one of the optimizers"),
    ("sdxl", {"optimizer": {"type": "os.system"}}, "optimizer.type: must be one of the optimizers"),
    ("sdxl", {"optimizer_type": "sgd", "optimizer_betas": [0.9, 0.9]}, "the sgd optimizer takes no 'betas'"),
    ("sdxl", {"optimizer_type": "automagic", "optimizer_eps": 1e-6}, "the automagic optimizer takes no 'eps' in this form"),
    ("sdxl", {"optimizer": {"momentum": 0.9}}, "training.optimizer.momentum: the adamw_optimi optimizer takes no"),
    ("sdxl", {"optimizer": {"lr": 1}}, "optimizer.lr: use training.learning_rate"),
    # bounds on every count
    ("sdxl", {"max_steps": 10**9}, "training.max_steps"),
    ("sdxl", {"caching_batch_size": 1000}, "training.caching_batch_size"),
    ("wan13", {"frame_buckets": list(range(1, 40))}, "training.frame_buckets"),
    ("wan13", {"frame_buckets": [1, 100000]}, "training.frame_buckets"),
    ("sdxl", {"resolutions": [100000]}, "resolutions: each entry is a size from 64 to 4096"),
    ("sdxl", {"blocks_to_swap": 10**6}, "blocks_to_swap: must be a number from 0 to 200"),
    ("sdxl", {"num_ar_buckets": 10**6}, "num_ar_buckets: must be a number from 1 to 64"),
    ("sdxl", {"partition_split": list(range(100))}, "partition_split: at most 64 entries"),
    ("sdxl", {"warmup_steps": 10**8}, "training.warmup_steps"),
])
def test_keys_the_engine_would_ignore_or_fail_on_are_refused(model_type, training, expected):
    ds = VID if model_type == "wan14b_i2v" else IMG
    assert expected in invalid({"model_type": model_type, "dataset": ds, "training": training, "api_keys": KEYS})


@pytest.mark.parametrize("optimizer, written", [
    ("adamw_optimi", {"betas", "eps", "weight_decay"}),
    ("AdamW8bitKahan", {"betas", "eps", "weight_decay"}),
    ("sgd", {"weight_decay"}),
    ("automagic", {"weight_decay"}),  # automagic's eps is a pair (optimizers/automagic.py:42)
])
def test_optimizer_table_holds_only_what_its_constructor_takes(optimizer, written):
    cfg, _ = render("sdxl", {"optimizer_type": optimizer})
    assert set(cfg["optimizer"]) == {"type", "lr"} | written
    assert cfg["optimizer"]["type"] == optimizer


def test_lokr_is_accepted_where_the_model_saves_it():
    cfg, _ = render("wan13", {"adapter": {"type": "lokr", "decompose_factor": 4}})
    assert cfg["adapter"]["type"] == "lokr" and cfg["adapter"]["decompose_factor"] == 4
