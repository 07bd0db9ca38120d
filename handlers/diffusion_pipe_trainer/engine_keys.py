"""Where diffusion-pipe reads each configuration key, so `training` keys land where they take effect.

Every list below comes from tdrussell/diffusion-pipe at the commit the image pins
(images/diffusion-pipe-trainer/Dockerfile, 8f83dbf); each entry names the line that reads it.
A pass-through key is routed to the table the engine reads it from (the main config's top
level, its `[model]` table, or dataset.toml); a key found in none of them is refused, because
the engine would silently ignore it.
"""

from __future__ import annotations

# config.toml, top level: pass-through keys the engine reads (train.py, utils/saver.py, models/base.py).
TOP_LEVEL: dict[str, str] = {
    "pipeline_stages": "train.py:97, train.py:605",
    "reentrant_activation_checkpointing": "train.py:99, train.py:594",
    "logging_steps": "train.py:135, train.py:928",
    "compile": "train.py:142, train.py:620",
    "x_axis_examples": "train.py:143, train.py:926",
    "uncond_fraction": "train.py:288",
    "map_num_proc": "train.py:289",
    "image_micro_batch_size_per_gpu": "train.py:408 (batch size of image buckets, utils/dataset.py:363)",
    "blocks_to_swap": "train.py:576",
    "partition_method": "train.py:606",
    "partition_split": "train.py:607",
    "lr_scheduler": "train.py:849",
    "force_constant_lr": "train.py:893",
    "save_every_n_steps": "utils/saver.py:165",
    "save_every_n_examples": "train.py:643",
    "huber_delta": "models/base.py:424",
    "smooth_l1_beta": "models/base.py:426",
    "monitoring": "train.py:561 (enable_wandb, wandb_api_key, wandb_tracker_name, wandb_run_name)",
}

# dataset.toml, top level: keys utils/dataset.py reads from the dataset config.
DATASET: dict[str, str] = {
    "resolutions": "utils/dataset.py:469, utils/dataset.py:525",
    "enable_ar_bucket": "utils/dataset.py:458",
    "size_buckets": "utils/dataset.py:460",
    "cache_shuffle_num": "utils/dataset.py:473",
    "cache_shuffle_delimiter": "utils/dataset.py:476",
    "skip_empty_caption": "utils/dataset.py:484",
    "ar_buckets": "utils/dataset.py:499",
    "min_ar": "utils/dataset.py:502",
    "max_ar": "utils/dataset.py:503",
    "num_ar_buckets": "utils/dataset.py:504",
    "frame_buckets": "utils/dataset.py:508",
    "shuffle_tags": "utils/dataset.py:733",
    "caption_prefix": "utils/dataset.py:734",
    "shuffle_metadata": "utils/dataset.py:736",
    "subsample_ratio": "utils/dataset.py:985",
}

# [model] keys each engine model class reads (the `type` the registry writes -> key -> line).
# Paths are not here: the worker owns them (WORKER_OWNED).
_TIMESTEPS_FLUX = {"timestep_sample_method": "models/flux.py:343", "sigmoid_scale": "models/flux.py:358",
                   "shift": "models/flux.py:362", "flux_shift": "models/flux.py:364"}
MODEL: dict[str, dict[str, str]] = {
    "flux": {"transformer_dtype": "models/flux.py:172", "bypass_guidance_embedding": "models/flux.py:189",
             "guidance": "models/flux.py:373", **_TIMESTEPS_FLUX},
    "sdxl": {"v_pred": "models/sdxl.py:374", "min_snr_gamma": "models/sdxl.py:375",
             "debiased_estimation_loss": "models/sdxl.py:376", "unet_lr": "models/sdxl.py:616",
             "text_encoder_1_lr": "models/sdxl.py:617", "text_encoder_2_lr": "models/sdxl.py:618"},
    "wan": {"cache_text_embeddings": "models/wan/wan.py:77", "text_encoder_fp8": "models/wan/wan.py:188",
            "transformer_dtype": "models/wan/wan.py:216",
            "timestep_sample_method": "models/wan/wan.py:78 -> utils/common.py:125",
            "sigmoid_scale": "utils/common.py:142", "shift": "models/wan/wan.py:354",
            "flux_shift": "models/wan/wan.py:356", "min_t": "models/wan/wan.py:360", "max_t": "models/wan/wan.py:360"},
    "qwen_image": {"transformer_dtype": "models/qwen_image.py:249",
                   "timestep_sample_method": "models/qwen_image.py:426", "sigmoid_scale": "models/qwen_image.py:441",
                   "shift": "models/qwen_image.py:445", "flux_shift": "models/qwen_image.py:447"},
    "z_image": {"diffusion_model_dtype": "models/base.py:664", "timestep_sample_method": "models/z_image.py:63",
                "sigmoid_scale": "models/z_image.py:78", "shift": "models/z_image.py:82",
                "flux_shift": "models/z_image.py:84"},
}

# [adapter] keys: train.py:115-133 (type, rank, dtype, lora dropout / lokr decompose_factor, rank_dropout),
# models/base.py:283 (exclude_modules).
ADAPTER = {"type", "rank", "dtype", "dropout", "decompose_factor", "rank_dropout", "exclude_modules"}
# lokr: flux and sdxl raise NotImplementedError when saving it (models/flux.py:231-236, models/sdxl.py:466-474).
LOKR_UNSUPPORTED = {"flux", "sdxl"}

# Keys naming files: the worker fetches and places the weights, so a job may not point elsewhere.
WORKER_OWNED: dict[str, str] = {
    "diffusers_path": "models/flux.py:186, models/qwen_image.py:204",
    "transformer_path": "models/flux.py:174, models/wan/wan.py:85, models/qwen_image.py:252",
    "checkpoint_path": "models/sdxl.py:386",
    "ckpt_path": "models/wan/wan.py:81",
    "llm_path": "models/wan/wan.py:179",
    "text_encoder_path": "models/qwen_image.py:202",
    "vae_path": "models/qwen_image.py:218",
    "diffusion_model": "models/base.py:641",
    "vae": "models/base.py:551",
    "text_encoders": "models/base.py:577",
    "merge_adapters": "models/base.py:644",
    "init_from_existing": "train.py:534 ([adapter])",
    "fuse_adapters": "models/flux.py:197 ([adapter], paths of LoRAs to fuse)",
    "mask_path": "utils/dataset.py:478", "control_path": "utils/dataset.py:479",
    "default_mask_file": "utils/dataset.py:481",
}

# Keys the engine reads but that this worker cannot honour, with the reason.
NOT_SUPPORTED: dict[str, str] = {
    "eval_datasets": "evaluation datasets are not supported by this worker",
    "eval_every_n_steps": "evaluation datasets are not supported by this worker",
    "eval_every_n_epochs": "evaluation datasets are not supported by this worker",
    "eval_every_n_examples": "evaluation datasets are not supported by this worker",
    "eval_before_first_step": "evaluation datasets are not supported by this worker",
    "eval_gradient_accumulation_steps": "evaluation datasets are not supported by this worker",
    "eval_micro_batch_size_per_gpu": "evaluation datasets are not supported by this worker",
    "eval_image_micro_batch_size_per_gpu": "evaluation datasets are not supported by this worker",
    "disable_block_swap_for_eval": "evaluation datasets are not supported by this worker",
    "regenerate_cache": "train.py:305-308 always takes the command-line flag (a store_true, never None), so the "
                        "config key has no effect; every job caches into its own folder anyway",
    "steps_per_print": "the worker reads DeepSpeed's per-step log line for progress and needs it every step",
    "lora": "the old [lora] table; use 'adapter'",
    "online_captions": "it reads a captions.json the worker does not keep; captions are .txt files",
    "num_repeats": "use dataset.image_repeats / dataset.video_repeats",
    "directory": "the worker writes the [[directory]] entries from the downloaded dataset",
    "micro_batch_size_per_gpu": "use training.batch_size",
    "lr": "use training.learning_rate",
}

# Optimizers train.py knows (train.py:668-697, matched lower-cased at 656) and the keyword arguments each
# constructor takes: the [optimizer] table minus type/gradient_release goes to it verbatim (train.py:666),
# so a key the class does not take is a TypeError after the whole dataset was cached.
_TORCH_ADAMW = {"betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable", "differentiable",
                "fused"}
_BNB_ADAMW8BIT = {"betas", "eps", "weight_decay", "amsgrad", "optim_bits", "min_8bit_size", "percentile_clipping",
                  "block_wise", "is_paged"}
_OPTIMI = {"betas", "eps", "weight_decay", "decouple_lr", "max_lr", "kahan_sum", "foreach"}
OPTIMIZER_KWARGS: dict[str, set[str]] = {
    "adamw": _TORCH_ADAMW,                                   # torch.optim.AdamW (train.py:672)
    "adamw8bit": _BNB_ADAMW8BIT,                             # bitsandbytes AdamW8bit (train.py:675)
    "adamw_optimi": _OPTIMI,                                 # optimi.AdamW (train.py:678)
    "stableadamw": _OPTIMI,                                  # optimi.StableAdamW (train.py:681)
    "sgd": {"momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable",
            "fused"},                                        # torch.optim.SGD (train.py:683)
    "adamw8bitkahan": _BNB_ADAMW8BIT | {"stabilize"},        # optimizers/adamw_8bit.py:7
    "offload": (_TORCH_ADAMW - {"fused"}) | {"offload_gradients"},  # torchao CPUOffloadOptimizer (train.py:688-691)
    "automagic": {"min_lr", "max_lr", "lr_bump", "eps", "clip_threshold", "beta2", "weight_decay",
                  "do_paramiter_swapping", "paramiter_swapping_factor"},  # optimizers/automagic.py:35-48
    "genericoptim": {"betas", "eps", "weight_decay", "correct_bias", "momentum_type", "second_moment_type",
                     "correct_dim", "cpu_offload", "kahan_buffer_offload", "muon", "adamuon", "normuon",
                     "polar_express", "automagic", "min_lr", "max_lr", "lr_bump", "lr_decrease_factor",
                     "skip_invalid_grads", "rank", "proj_type", "update_proj_gap"},  # optimizers/generic_optim.py:298
}
# Read by train.py itself for every optimizer: gradient_release (train.py:422), beta2_half_life (train.py:658,
# needs betas).
OPTIMIZER_COMMON = {"type", "lr", "gradient_release", "beta2_half_life"}
# The optimizer names as train.py spells them in its docs/examples (any case is accepted, train.py:656).
OPTIMIZER_NAMES = ("adamw", "AdamW8bit", "adamw_optimi", "StableAdamW", "sgd", "AdamW8bitKahan", "offload",
                   "automagic", "GenericOptim")
# Which of the request's optimizer_betas / optimizer_eps / optimizer_weight_decay each optimizer takes in that
# form (automagic takes eps as a pair, optimizers/automagic.py:42, so a single float is not written for it).
SEED_OPTIMIZER_KWARGS: dict[str, set[str]] = {
    name: ({"betas", "eps", "weight_decay"} & kwargs) - ({"eps"} if name == "automagic" else set())
    for name, kwargs in OPTIMIZER_KWARGS.items()
}
