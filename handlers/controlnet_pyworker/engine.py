"""The generation engine: manifest variants loaded into diffusers SDXL ControlNet pipelines.

- A variant = SDXL base (diffusers folder or single file) + depth ControlNet + fp16-safe VAE
  + an optional speed LoRA, which is fused into that variant's UNet once at load time (no
  per-step cost). ControlNet and VAE objects are shared between loaded variants.
- Loaded variants live in an LRU bounded by `max_loaded` (`MAX_LOADED_VARIANTS`, 2).
- Era LoRAs are loaded once per variant as PEFT adapters (on first use) and switched per
  request with `set_adapters(weight=lora_strength)` / `disable_lora()`, never reloaded.
- Schedulers are built per request from the variant's base config (they hold state).
- Generation is serialized on the device by `SerialQueue`, which also bounds the waiting line.
- fp16 + SDPA on CUDA (xformers only when installed and `ENABLE_XFORMERS` is not 0),
  fp32 on CPU. Same seed + same parameters -> same image on the same device.
- `REQUIRE_CUDA=1` (set in the GPU image) refuses to build an engine without a usable CUDA device
  (`DeviceUnusable`), instead of running SDXL on the CPU of a billed GPU machine.
- A variant that fails to load (download, unreadable files) fails the request naming the variant
  and is not remembered: the next request loads it again.
"""

from __future__ import annotations

import gc
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.jobs import JobError
from handlers.controlnet_pyworker import fetch
from handlers.controlnet_pyworker.manifest import Era, Manifest, Variant
from handlers.controlnet_pyworker.schema import GenerateRequest
from handlers.controlnet_pyworker.settings import Settings

log = logging.getLogger("controlnet.engine")

SPEED_ADAPTER = "speed"


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"generation queue is full; retry in {retry_after}s")
        self.retry_after = retry_after


class Ticket:
    """A place in the generation queue: entering waits for the device, leaving frees the place."""

    def __init__(self, queue: SerialQueue) -> None:
        self.queue = queue
        self._entered = False
        self._released = False
        self._start = 0.0

    def __enter__(self) -> Ticket:
        self.queue._run.acquire()
        self._entered, self._start = True, time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._entered:
            q = self.queue
            q.avg_seconds = 0.7 * q.avg_seconds + 0.3 * (time.perf_counter() - self._start)
            self._entered = False
            q._run.release()
        self.release()

    def release(self) -> None:
        """Give the place back (idempotent; also for a ticket that was never entered)."""
        with self.queue._count:
            if not self._released:
                self._released = True
                self.queue.pending -= 1


class SerialQueue:
    """One generation at a time; at most `max_waiting` more wait for their turn."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._run = threading.Lock()
        self._count = threading.Lock()
        self.pending = 0          # admitted: running + waiting
        self.avg_seconds = 2.0

    def retry_after(self) -> int:
        return max(1, math.ceil(self.pending * self.avg_seconds))

    def admit(self) -> Ticket:
        """A ticket, or `QueueFull` when one is running and `max_waiting` are already waiting."""
        with self._count:
            if self.pending > self.max_waiting:
                raise QueueFull(self.retry_after())
            self.pending += 1
        return Ticket(self)


@dataclass
class LoadedVariant:
    name: str
    pipe: Any
    scheduler_config: dict
    eras: set[str] = field(default_factory=set)      # era adapters loaded into this pipeline
    active: tuple[str, float] | None = None           # (era, weight) currently set


@dataclass
class Generation:
    images: list                 # PIL images
    seeds: list[int]
    variant: str
    era: str | None
    steps: int
    cfg: float
    scheduler: str
    lora_strength: float | None
    controlnet_strength: float
    width: int
    height: int
    depth_source: str
    timings: dict[str, float]


@dataclass(frozen=True)
class Plan:
    """A request resolved against the manifest: every value the generation uses."""
    variant: Variant
    era: Era | None
    lora_strength: float | None
    seeds: list[int]
    steps: int
    cfg: float
    scheduler: str
    prompt: str
    negative_prompt: str | None


class DeviceUnusable(JobError):
    """No usable CUDA device where one is required: no request can succeed in this process."""

    def __init__(self, reason: str) -> None:
        super().__init__("engine_failed", f"CUDA is unusable and REQUIRE_CUDA=1 (this GPU image does not fall back "
                                          f"to the CPU): {reason}")


def cuda_problem(device: str, *, forced: bool = False) -> str | None:
    """Why `device` is not a usable CUDA device, or None when it is; `forced`: DEVICE named it."""
    import torch

    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support"
    if not device.startswith("cuda"):
        if forced:
            return f"DEVICE={device}"
        try:
            torch.cuda.init()
        except Exception as exc:  # the driver's own words: no driver, driver too old, no device...
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return "no CUDA device is visible"
    return None


def require_cuda(device: str, settings: Settings) -> None:
    """Raise `DeviceUnusable` when REQUIRE_CUDA is on and `device` is not a usable CUDA device."""
    if not settings.require_cuda:
        return
    problem = cuda_problem(device, forced=bool(settings.device))
    if problem:
        raise DeviceUnusable(problem)


def device_unusable(exc: BaseException) -> bool:
    """A CUDA error other than out-of-memory leaves the CUDA context unusable for this process."""
    text = str(exc)
    return ("CUDA error" in text or type(exc).__name__ == "AcceleratorError") and "out of memory" not in text


def pick_device(settings: Settings) -> str:
    import torch

    if settings.device:
        return settings.device
    return "cuda" if torch.cuda.is_available() else "cpu"


class Engine:
    def __init__(self, manifest: Manifest, models_dir: Path, *, settings: Settings | None = None,
                 device: str | None = None, max_loaded: int | None = None, max_waiting: int | None = None,
                 fetch_missing: bool = True) -> None:
        """`settings` (default: the environment's) gives what the keyword arguments leave unset."""
        self.settings = settings = settings or Settings.from_env()
        self.manifest = manifest
        self.models_dir = Path(models_dir)
        self.device = device or pick_device(settings)
        require_cuda(self.device, settings)
        self.max_loaded = max_loaded or settings.max_loaded_variants
        self.queue = SerialQueue(max_waiting if max_waiting is not None else settings.max_queue)
        self.xformers = settings.enable_xformers
        self.fetch_missing = fetch_missing
        self.stats = {"variant_loads": 0, "lora_loads": 0, "generations": 0, "depth_model_loads": 0}
        self.broken: str | None = None   # set when the device is unusable (a CUDA error, not an OOM)
        self._variants: OrderedDict[str, LoadedVariant] = OrderedDict()
        self._shared: dict[str, Any] = {}     # ControlNet / VAE objects by component key
        self._depth = None
        self._load_lock = threading.RLock()

    # -- properties -------------------------------------------------------------------
    @property
    def dtype(self):
        import torch

        return torch.float16 if self.device.startswith("cuda") else torch.float32

    def loaded(self) -> list[str]:
        return list(self._variants)

    # -- loading ----------------------------------------------------------------------
    def _ensure_files(self, components) -> None:
        missing = fetch.missing_files(components, self.models_dir)
        if not missing:
            return
        if not self.fetch_missing:
            names = ", ".join(str(p) for _, p in missing[:3])
            raise JobError("engine_failed", f"model files missing from MODELS_DIR: {names}")
        fetch.ensure(components, self.models_dir)

    def _shared_component(self, key: str):
        if key not in self._shared:
            from diffusers import AutoencoderKL, ControlNetModel

            comp = self.manifest.components[key]
            cls = ControlNetModel if comp.kind == "controlnet" else AutoencoderKL
            model = cls.from_pretrained(str(comp.local_path(self.models_dir)), dtype=self.dtype,
                                        variant=comp.variant)
            self._shared[key] = model.to(self.device)
        return self._shared[key]

    def _build_pipeline(self, v: Variant):
        import diffusers
        import transformers
        from diffusers import StableDiffusionXLControlNetPipeline

        diffusers.utils.logging.disable_progress_bar()   # per-file loading bars only clutter the log
        transformers.utils.logging.disable_progress_bar()

        base = self.manifest.components[v.base]
        kwargs: dict[str, Any] = {"controlnet": self._shared_component(v.controlnet), "dtype": self.dtype,
                                  "add_watermarker": False}
        if v.vae:
            kwargs["vae"] = self._shared_component(v.vae)
        if base.kind == "sdxl_single_file":
            config = self.manifest.components[base.config].local_path(self.models_dir) if base.config else None
            pipe = StableDiffusionXLControlNetPipeline.from_single_file(
                str(base.local_path(self.models_dir)), config=str(config) if config else None,
                local_files_only=True, **kwargs)
        else:
            pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
                str(base.local_path(self.models_dir)), variant=base.variant, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(self.device)   # before fusing: the merge runs on the device, not in fp16 on the CPU
        if v.speed_lora:
            lora = self.manifest.components[v.speed_lora.component]
            pipe.load_lora_weights(str(lora.local_path(self.models_dir)), adapter_name=SPEED_ADAPTER)
            pipe.fuse_lora(lora_scale=v.speed_lora.weight, adapter_names=[SPEED_ADAPTER])
            pipe.unload_lora_weights()   # the fused weights stay; the adapter layers go
            self.stats["lora_loads"] += 1
        if self.device.startswith("cuda"):
            self._tune_cuda(pipe)
        return pipe

    def _tune_cuda(self, pipe) -> None:
        import importlib.util

        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        pipe.unet.to(memory_format=torch.channels_last)
        if importlib.util.find_spec("xformers") and self.xformers:
            try:
                pipe.enable_xformers_memory_efficient_attention()
            except Exception as exc:  # SDPA stays the attention backend
                log.warning("xformers unavailable (%s); using SDPA", exc)

    def get(self, name: str) -> LoadedVariant:
        """The loaded variant (loading it, and evicting the least recently used, if needed)."""
        with self._load_lock:
            if name in self._variants:
                self._variants.move_to_end(name)
                return self._variants[name]
            v = self.manifest.variants[name]
            t0 = time.perf_counter()
            with self._failures("loading failed", f"variant '{name}'"):
                self._ensure_files(self.manifest.components_for(name, eras=False))
                while len(self._variants) >= self.max_loaded:
                    old, _ = self._variants.popitem(last=False)
                    log.info("evicting variant %s", old)
                    self._free_memory()
                pipe = self._build_pipeline(v)
            self.stats["variant_loads"] += 1
            lv = LoadedVariant(name=name, pipe=pipe, scheduler_config=dict(pipe.scheduler.config))
            self._variants[name] = lv
            log.info("loaded variant %s on %s in %.1fs", name, self.device, time.perf_counter() - t0)
            return lv

    @contextmanager
    def _failures(self, failed: str, what: str | None = None):
        """Exceptions inside become `engine_failed: [<what>: ]<failed>: <type>: <first line>`, and a
        JobError gets `<what>: ` in front (the variant or era being loaded). A CUDA error that leaves
        the device unusable marks the engine broken; any other failure frees what it allocated."""
        named = f"{what}: " if what else ""
        try:
            yield
        except JobError as exc:
            if what is None:
                raise
            raise JobError(exc.code, f"{named}{exc.message}", exc.details) from None
        except Exception as exc:
            log.exception("%s%s", named, failed)
            msg = str(exc).splitlines()[0][:200] if str(exc) else ""
            if device_unusable(exc):
                self.broken = f"{type(exc).__name__}: {msg}"
            else:
                self._free_memory()
            raise JobError("engine_failed", f"{named}{failed}: {type(exc).__name__}: {msg}") from None

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _apply_era(self, lv: LoadedVariant, era: str | None, weight: float) -> None:
        if era is None:
            if lv.active is not None:
                lv.pipe.disable_lora()
                lv.active = None
            return
        adapter = f"era_{era}"
        if era not in lv.eras:
            comp = self.manifest.components[self.manifest.eras[era].lora]
            with self._failures("loading failed", f"era '{era}'"):
                self._ensure_files([comp])
                lv.pipe.load_lora_weights(str(comp.local_path(self.models_dir)), adapter_name=adapter)
            lv.eras.add(era)
            self.stats["lora_loads"] += 1
        if lv.active != (era, weight):
            lv.pipe.enable_lora()
            lv.pipe.set_adapters([adapter], adapter_weights=[weight])
            lv.active = (era, weight)

    # -- schedulers and depth ---------------------------------------------------------
    def scheduler_name(self, v: Variant, requested: str) -> str:
        if requested == "auto":
            return v.scheduler
        if requested == "euler":
            return "euler" if v.scheduler == "euler" else "euler_trailing"
        return requested

    @staticmethod
    def make_scheduler(name: str, config: dict, seed: int):
        from diffusers import DDIMScheduler, DPMSolverSDEScheduler, EulerDiscreteScheduler

        if name == "euler":
            return EulerDiscreteScheduler.from_config(config)
        if name == "euler_trailing":
            return EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing")
        if name == "ddim_trailing":
            return DDIMScheduler.from_config(config, timestep_spacing="trailing")
        if name == "dpm_sde":   # seeded Brownian tree so the same seed gives the same image
            return DPMSolverSDEScheduler.from_config(config, use_karras_sigmas=True, noise_sampler_seed=seed)
        raise ValueError(f"unknown scheduler {name}")

    def depth_estimator(self):
        with self._load_lock:
            if self._depth is None:
                from handlers.controlnet_pyworker.depth import DepthEstimator

                comp = self.manifest.components[self.manifest.depth_estimator]
                self._ensure_files([comp])
                self._depth = DepthEstimator(str(comp.local_path(self.models_dir)), self.device)
                self.stats["depth_model_loads"] += 1
            return self._depth

    def depth_image(self, req: GenerateRequest):
        from handlers.controlnet_pyworker import depth

        if req.depth_map_b64 is not None:
            return depth.from_b64(req.depth_map_b64, req.width, req.height), "depth_map_b64"
        if req.auto_depth:
            return self.depth_estimator()(req.image_b64, req.width, req.height), "auto_depth"
        return depth.mock(req.width, req.height), "mock_depth"

    # -- generation -------------------------------------------------------------------
    def plan(self, req: GenerateRequest) -> Plan:
        """`req` with the variant's and era's defaults filled in, and the seeds drawn."""
        v = self.manifest.variants[req.model or self.manifest.default_variant]
        era = self.manifest.eras.get(req.era) if req.era else None
        weight = (req.lora_strength if req.lora_strength is not None else era.weight) if era else None
        base_seed = req.seed if req.seed is not None else secrets.randbelow(2**32 - req.num_images)
        negative = ", ".join(x for x in (req.negative_prompt, era.negative_prompt if era else "") if x)
        return Plan(variant=v, era=era, lora_strength=weight,
                    seeds=[(base_seed + i) % 2**32 for i in range(req.num_images)], steps=req.steps or v.steps,
                    cfg=req.cfg if req.cfg is not None else v.cfg, scheduler=self.scheduler_name(v, req.scheduler),
                    prompt=(era.prompt_prefix if era else "") + req.prompt, negative_prompt=negative or None)

    def generate(self, req: GenerateRequest, *, on_step: Callable[[int, int], None] | None = None,
                 stop: threading.Event | None = None) -> Generation:
        """Run one request (the caller holds an entered `queue.admit()` ticket); engine errors become `engine_failed`.

        Setting `stop` (the job was cancelled, the HTTP client went away) ends the denoising loop at the
        next step through the pipeline's interrupt flag, so the device goes to the next request."""
        if stop is not None and stop.is_set():
            raise JobError("cancelled", "the request was cancelled before it reached the device")
        plan = self.plan(req)
        timings: dict[str, float] = {}
        with self._failures("generation failed"):
            t = time.perf_counter()
            control, depth_source = self.depth_image(req)
            timings["depth"] = time.perf_counter() - t
            t = time.perf_counter()
            pipe = self._prepare(plan)
            timings["load"] = time.perf_counter() - t
            t = time.perf_counter()
            images = self._denoise(pipe, plan, req, control, on_step, stop)
            timings["inference"] = time.perf_counter() - t
        self.stats["generations"] += 1
        return Generation(images=images, seeds=plan.seeds, variant=plan.variant.name, era=req.era, steps=plan.steps,
                          cfg=plan.cfg, scheduler=plan.scheduler, lora_strength=plan.lora_strength,
                          controlnet_strength=req.controlnet_strength, width=req.width, height=req.height,
                          depth_source=depth_source, timings={k: round(s, 3) for k, s in timings.items()})

    def _prepare(self, plan: Plan):
        """The plan's variant loaded, its era adapter set and a fresh scheduler: the pipeline to call."""
        lv = self.get(plan.variant.name)
        self._apply_era(lv, plan.era.name if plan.era else None, plan.lora_strength or 0.0)
        pipe = lv.pipe
        pipe.scheduler = self.make_scheduler(plan.scheduler, lv.scheduler_config, plan.seeds[0])
        return pipe

    def _denoise(self, pipe, plan: Plan, req: GenerateRequest, control, on_step, stop) -> list:
        """The pipeline call, reporting each step and stopping at the next one once `stop` is set."""
        import torch

        if req.width * req.height > 1024 * 1024:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        gens = [torch.Generator(device=self.device).manual_seed(s) for s in plan.seeds]
        done = [0]

        def step_end(p, i, _t, kwargs):
            done[0] = i + 1
            if on_step:
                on_step(i + 1, p.num_timesteps)
            if stop is not None and stop.is_set():
                p._interrupt = True  # diffusers' documented way to end the loop early
            return kwargs

        with torch.inference_mode():
            out = pipe(prompt=plan.prompt, negative_prompt=plan.negative_prompt, image=control,
                       num_inference_steps=plan.steps, guidance_scale=plan.cfg,
                       controlnet_conditioning_scale=req.controlnet_strength, width=req.width, height=req.height,
                       num_images_per_prompt=req.num_images, generator=gens if len(gens) > 1 else gens[0],
                       callback_on_step_end=step_end, output_type="pil")
        if stop is not None and stop.is_set() and done[0] < plan.steps:
            log.info("generation stopped after step %d/%d: cancelled", done[0], plan.steps)
            raise JobError("cancelled", f"generation stopped after step {done[0]}/{plan.steps}: the request was "
                                        "cancelled")
        return list(out.images)
