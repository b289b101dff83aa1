"""Per-block diffusion samplers, in-house (diffusers is only needed by the tests that check them).

Each visual block is generated from fresh noise by its own short denoising loop, so a sampler is a pure
function of (prediction function, starting noise, generator): `Sampler.sample` keeps every piece of solver
state (DPM-Solver++ history, Heun's half step) in local variables, which resets it per block by construction,
and one sampler object can serve every block and every batch.

- ε-models (`ddpm_eps`, integer DDPM steps 0..999 as the model's t): `ddpm` (ancestral), `ddim` (η = 0 by
  default) and `dpmpp_2m` (DPM-Solver++ 2M, multistep). They follow diffusers' `DDPMScheduler`,
  `DDIMScheduler` and `DPMSolverMultistepScheduler` step for step, including their timestep spacings.
- flow models (`flow`, x_t = (1 - t) x0 + t ε, velocity ε - x0, t in [0, 1]): `euler` and `heun`, as diffusers'
  `FlowMatchEulerDiscreteScheduler` / `FlowMatchHeunDiscreteScheduler` (sigmas from 1 down, `shift`, last
  step to 0). The model's t is the sigma itself, not diffusers' sigma * 1000.

The default `dpmpp_2m` settings reproduce the official ACDiT sampler,
`DPMSolverMultistepScheduler.from_config(DDIMScheduler().config)`: `from_config` drops the config entries that
`DDIMScheduler()` left at their defaults, so the DPM-Solver keeps its own `timestep_spacing='linspace'`
(25 steps: 999, 959, ..., 40), not DDIM's 'leading'.

Arithmetic follows diffusers (schedule coefficients in float32); the running sample is float32 (float64 if
the starting noise is float64) and is returned in the starting noise's dtype.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from .diffusion import NUM_TRAIN_STEPS, ddpm_alphas_cumprod

PredictFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""fn(x, t, i) -> the model's prediction for x at model time t (ε or velocity); i counts calls in the block."""

SPACINGS = ("leading", "trailing", "linspace")
DIFFUSION_KINDS = ("ddpm_eps", "flow")


class Sampler(ABC):
    """One denoising method for one block; `timesteps` are the model-input times of its calls, in order."""

    name: ClassVar[str]
    diffusion_kind: ClassVar[str]
    timesteps: torch.Tensor

    def __init__(self, num_steps: int) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"{self.name}: num_steps must be an integer >= 1, got {num_steps!r}")
        self.num_steps = int(num_steps)

    @property
    def num_calls(self) -> int:
        """Model calls per block (num_steps, except heun: 2 * num_steps - 1)."""
        return int(self.timesteps.numel())

    @property
    def unit_timesteps(self) -> torch.Tensor:
        """The call times mapped to [0, 1] with 1 = pure noise (DDPM steps / 999; flow t as is), float32.

        Guidance intervals are stated in these units so that one config fits both parameterisations."""
        return self.timesteps.to(torch.float32)

    def sample(self, fn: PredictFn, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise noise `x` to x0, calling `fn(x, t, i)` once per entry of `timesteps`.

        `t` is a 0-dim CPU tensor in model units (long DDPM step, or float32 flow time); `x` is passed in the
        working dtype (float32, or float64). `generator` (one, or one per row of `x`) drives the noise of
        stochastic samplers (ddpm, ddim with eta > 0); deterministic ones ignore it."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.name}: x must be a floating-point tensor")
        work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
        return self._run(fn, work, generator).to(x.dtype)

    @abstractmethod
    def _run(self, fn: PredictFn, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor: ...

    def _predict(self, fn: PredictFn, x: torch.Tensor, i: int) -> torch.Tensor:
        pred = fn(x, self.timesteps[i], i)
        if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
            got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise ValueError(f"{self.name}: the prediction function returned {got}, expected shape {tuple(x.shape)}")
        return pred.to(x.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps}, calls={self.num_calls})"


def _noise_like(x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise as diffusers' `randn_tensor` draws it (on the generator's device, then moved).

    A list of generators draws row `r` of `x` from generator `r`, so a batch gets the noise each
    of its rows would get alone (batched generation equals one-at-a-time)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for {x.shape[0]} rows")
        return torch.cat([_noise_like(x[r : r + 1], g) for r, g in enumerate(generator)])
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


# ---------------------------------------------------------------------------------------------- ε-models


class _EpsSampler(Sampler):
    """Common to the samplers of ε-prediction models on the DDPM linear-β schedule."""

    diffusion_kind = "ddpm_eps"

    def __init__(self, num_steps: int, timestep_spacing: str, steps_offset: int) -> None:
        super().__init__(num_steps)
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"{self.name}: timestep_spacing must be one of {SPACINGS}, got {timestep_spacing!r}")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)) or steps_offset < 0:
            raise ValueError(f"{self.name}: steps_offset must be an integer >= 0, got {steps_offset!r}")
        if steps_offset and timestep_spacing != "leading":
            raise ValueError(f"{self.name}: steps_offset applies to 'leading' spacing only (as in diffusers)")
        if self.num_steps > NUM_TRAIN_STEPS:
            raise ValueError(f"{self.name}: num_steps={self.num_steps} exceeds the {NUM_TRAIN_STEPS} training steps")
        self.timestep_spacing, self.steps_offset = timestep_spacing, int(steps_offset)
        self.alphas_cumprod = ddpm_alphas_cumprod()

    def _set_timesteps(self, ts: np.ndarray) -> None:
        ts = np.asarray(ts, dtype=np.int64)
        if ts.max() >= NUM_TRAIN_STEPS or ts.min() < 0:
            raise ValueError(f"{self.name}: timesteps {ts.tolist()} leave 0..{NUM_TRAIN_STEPS - 1} (steps_offset?)")
        if len(ts) > 1 and not (np.diff(ts) < 0).all():
            raise ValueError(
                f"{self.name}: num_steps={self.num_steps} with {self.timestep_spacing!r} spacing repeats timesteps; "
                "use fewer steps"
            )
        self.timesteps = torch.from_numpy(ts)

    @property
    def unit_timesteps(self) -> torch.Tensor:
        return self.timesteps.to(torch.float32) / (NUM_TRAIN_STEPS - 1)

    def _acp(self, t: int) -> torch.Tensor:
        """ᾱ_t as a float32 0-dim tensor; t < 0 means the clean end (ᾱ = 1)."""
        return self.alphas_cumprod[t] if t >= 0 else torch.tensor(1.0)


def _ddpm_ddim_timesteps(n: int, spacing: str, offset: int) -> np.ndarray:
    """diffusers' DDPMScheduler / DDIMScheduler.set_timesteps."""
    T = NUM_TRAIN_STEPS
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = T // n
        return (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + offset
    ratio = T / n
    return np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1


class DDPMSampler(_EpsSampler):
    """Ancestral DDPM sampling (diffusers `DDPMScheduler`), noise drawn from `generator` at every step with t > 0.

    Defaults as `DDPMScheduler()` (leading spacing, fixed_small variance) except `clip_sample=False`: clipping
    x0 to [-1, 1] suits pixels, not VAE latents."""

    name = "ddpm"

    def __init__(
        self,
        num_steps: int,
        *,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        variance_type: str = "fixed_small",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
    ) -> None:
        super().__init__(num_steps, timestep_spacing, steps_offset)
        if variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"ddpm: variance_type must be 'fixed_small' or 'fixed_large', got {variance_type!r}")
        self.variance_type, self.clip_sample, self.clip_sample_range = variance_type, clip_sample, clip_sample_range
        self._set_timesteps(_ddpm_ddim_timesteps(self.num_steps, timestep_spacing, self.steps_offset))
        ts = self.timesteps.tolist()
        self._coefs = []  # (sqrt(1-ᾱ_t), sqrt(ᾱ_t), x0 coefficient, x_t coefficient, noise std, draws noise)
        for k, t in enumerate(ts):
            prev = ts[k + 1] if k + 1 < len(ts) else -1
            a, a_prev = self._acp(t), self._acp(prev)
            b, b_prev = 1 - a, 1 - a_prev
            cur_alpha = a / a_prev
            cur_beta = 1 - cur_alpha
            c_x0 = a_prev**0.5 * cur_beta / b
            c_x = cur_alpha**0.5 * b_prev / b
            if variance_type == "fixed_small":
                std = torch.clamp(b_prev / b * cur_beta, min=1e-20) ** 0.5
            else:
                std = cur_beta**0.5
            self._coefs.append((float(b**0.5), float(a**0.5), float(c_x0), float(c_x), float(std), t > 0))

    def _run(self, fn: PredictFn, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for i, (sqrt_b, sqrt_a, c_x0, c_x, std, noisy) in enumerate(self._coefs):
            eps = self._predict(fn, x, i)
            x0 = (x - sqrt_b * eps) / sqrt_a
            if self.clip_sample:
                x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
            x = c_x0 * x0 + c_x * x
            if noisy:
                x = x + std * _noise_like(x, generator)
        return x


class DDIMSampler(_EpsSampler):
    """DDIM (diffusers `DDIMScheduler`, η = 0 by default: deterministic).

    Like diffusers, the step from t goes to t - 1000 // num_steps (which is the next timestep only for 'leading'
    spacing). Defaults as `DDIMScheduler()` except `clip_sample=False` (latents are not in [-1, 1])."""

    name = "ddim"

    def __init__(
        self,
        num_steps: int,
        *,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        eta: float = 0.0,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
    ) -> None:
        super().__init__(num_steps, timestep_spacing, steps_offset)
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0 <= eta and math.isfinite(eta)):
            raise ValueError(f"ddim: eta must be a finite number >= 0, got {eta!r}")
        self.eta, self.clip_sample, self.clip_sample_range = float(eta), clip_sample, clip_sample_range
        self._set_timesteps(_ddpm_ddim_timesteps(self.num_steps, timestep_spacing, self.steps_offset))
        final = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        jump = NUM_TRAIN_STEPS // self.num_steps
        self._coefs = []  # (sqrt(1-ᾱ_t), sqrt(ᾱ_t), sqrt(ᾱ_prev), ε direction coefficient, noise std)
        for t in self.timesteps.tolist():
            prev = t - jump
            a = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[prev] if prev >= 0 else final
            var = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
            std = self.eta * var**0.5
            direction = torch.clamp(1 - a_prev - std**2, min=0) ** 0.5
            self._coefs.append((float((1 - a) ** 0.5), float(a**0.5), float(a_prev**0.5), float(direction), float(std)))

    def _run(self, fn: PredictFn, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for i, (sqrt_b, sqrt_a, sqrt_a_prev, direction, std) in enumerate(self._coefs):
            eps = self._predict(fn, x, i)
            x0 = (x - sqrt_b * eps) / sqrt_a
            if self.clip_sample:
                x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
            x = sqrt_a_prev * x0 + direction * eps
            if self.eta > 0:
                x = x + std * _noise_like(x, generator)
        return x


def _dpm_timesteps(n: int, spacing: str, offset: int) -> np.ndarray:
    """diffusers' DPMSolverMultistepScheduler.set_timesteps (no λ clipping: the linear-β schedule needs none)."""
    last = NUM_TRAIN_STEPS
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + offset
    ratio = NUM_TRAIN_STEPS / n
    return np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1


class DPMSolverPP2MSampler(_EpsSampler):
    """DPM-Solver++ 2M (diffusers `DPMSolverMultistepScheduler`, solver_order=2, algorithm 'dpmsolver++').

    The first step of every block is first order (no history yet); so is the last with `final_sigmas_type='zero'`
    (it lands on x0 exactly). Defaults reproduce `DPMSolverMultistepScheduler.from_config(DDIMScheduler().config)`,
    the official ACDiT sampler: linspace spacing, midpoint solver, lower_order_final, final sigma 0."""

    name = "dpmpp_2m"

    def __init__(
        self,
        num_steps: int,
        *,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        super().__init__(num_steps, timestep_spacing, steps_offset)
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"dpmpp_2m: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"dpmpp_2m: final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
        self.solver_type, self.final_sigmas_type = solver_type, final_sigmas_type
        self._set_timesteps(_dpm_timesteps(self.num_steps, timestep_spacing, self.steps_offset))
        acp = self.alphas_cumprod
        all_sigmas = ((1 - acp) / acp) ** 0.5  # float32, as diffusers
        last = all_sigmas[0] if final_sigmas_type == "sigma_min" else torch.tensor(0.0)
        sigmas = torch.cat([all_sigmas[self.timesteps], last.reshape(1)])
        alpha_t = 1 / ((sigmas**2 + 1) ** 0.5)
        sigma_t = sigmas * alpha_t
        lam = torch.log(alpha_t) - torch.log(sigma_t)  # +inf at a final sigma of 0
        n = self.num_steps
        self._coefs = []  # (sigma_s, alpha_s, order, x coefficient, D0 coefficient, D1 coefficient, 1 / r0)
        for k in range(n):
            h = lam[k + 1] - lam[k]
            phi = alpha_t[k + 1] * (torch.exp(-h) - 1.0)
            final = k == n - 1 and (euler_at_final or (lower_order_final and n < 15) or final_sigmas_type == "zero")
            order = 1 if (k == 0 or final) else 2
            inv_r0, c_d1 = 0.0, 0.0
            if order == 2:
                inv_r0 = float(1.0 / ((lam[k] - lam[k - 1]) / h))  # 1 / r0, in float32 as diffusers
                if solver_type == "midpoint":
                    c_d1 = float(-0.5 * phi)
                else:
                    c_d1 = float(alpha_t[k + 1] * ((torch.exp(-h) - 1.0) / h + 1.0))
            c_x = float(sigma_t[k + 1] / sigma_t[k])
            self._coefs.append((float(sigma_t[k]), float(alpha_t[k]), order, c_x, float(-phi), c_d1, inv_r0))

    def _run(self, fn: PredictFn, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        prev_x0: torch.Tensor | None = None  # the history lives here, so every call starts fresh
        for i, (sigma_s, alpha_s, order, c_x, c_d0, c_d1, inv_r0) in enumerate(self._coefs):
            eps = self._predict(fn, x, i)
            m0 = (x - sigma_s * eps) / alpha_s
            if order == 1:
                x = c_x * x + c_d0 * m0
            else:
                d1 = inv_r0 * (m0 - prev_x0)
                x = c_x * x + c_d0 * m0 + c_d1 * d1
            prev_x0 = m0
        return x


# --------------------------------------------------------------------------------------------- flow models


class _FlowSampler(Sampler):
    """Common to the flow samplers: diffusers' FlowMatch sigma schedule, used directly as the model's t."""

    diffusion_kind = "flow"

    def __init__(self, num_steps: int, shift: float) -> None:
        super().__init__(num_steps)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (shift > 0 and math.isfinite(shift)):
            raise ValueError(f"{self.name}: shift must be a finite number > 0, got {shift!r}")
        self.shift = float(shift)
        # as FlowMatch*DiscreteScheduler: sigma_min is the shifted 1/1000 of __init__, and set_timesteps shifts the
        # linspace between sigma_max and sigma_min once more
        T = NUM_TRAIN_STEPS
        base = torch.from_numpy(np.linspace(1, T, T, dtype=np.float32)[::-1].copy()) / T
        base = shift * base / (1 + (shift - 1) * base)
        sigma_max, sigma_min = base[0].item(), base[-1].item()
        s = np.linspace(sigma_max * T, sigma_min * T, self.num_steps) / T
        s = shift * s / (1 + (shift - 1) * s)
        self.sigmas = torch.cat([torch.from_numpy(s).to(torch.float32), torch.zeros(1)])  # num_steps + 1, ends at 0


class EulerSampler(_FlowSampler):
    """Euler on the flow ODE (diffusers `FlowMatchEulerDiscreteScheduler`): x += (σ_next - σ) · v.

    `stochastic=True` is diffusers' `stochastic_sampling`: each step forms the clean estimate
    x̂0 = x - σ · v and noises it afresh to the next level, x = (1 - σ_next) x̂0 + σ_next ε
    (ε from `generator`), so errors of earlier steps are forgotten rather than carried."""

    name = "euler"

    def __init__(self, num_steps: int, *, shift: float = 1.0, stochastic: bool = False) -> None:
        super().__init__(num_steps, shift)
        if not isinstance(stochastic, bool):
            raise ValueError(f"{self.name}: stochastic must be true or false, got {stochastic!r}")
        self.stochastic = stochastic
        self.timesteps = self.sigmas[:-1].clone()
        self._dts = [float(self.sigmas[k + 1] - self.sigmas[k]) for k in range(self.num_steps)]

    def _run(self, fn: PredictFn, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        sig = self.sigmas.tolist()
        for i, dt in enumerate(self._dts):
            v = self._predict(fn, x, i)
            if self.stochastic:
                x = (1.0 - sig[i + 1]) * (x - sig[i] * v) + sig[i + 1] * _noise_like(x, generator)
            else:
                x = x + dt * v
        return x


class HeunSampler(_FlowSampler):
    """Heun on the flow ODE (diffusers `FlowMatchHeunDiscreteScheduler`): an Euler step corrected by the velocity
    at its end point, except the last step to σ = 0, which stays Euler. 2 * num_steps - 1 model calls; their
    times are σ0, σ1, σ1, σ2, σ2, ... (the correction at σ_k+1, then the next step from σ_k+1)."""

    name = "heun"

    def __init__(self, num_steps: int, *, shift: float = 1.0) -> None:
        super().__init__(num_steps, shift)
        s = self.sigmas[:-1]
        self.timesteps = torch.cat([s[:1], s[1:].repeat_interleave(2)])
        self._dts = [float(self.sigmas[k + 1] - self.sigmas[k]) for k in range(self.num_steps)]

    def _run(self, fn: PredictFn, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        sig = self.sigmas.tolist()
        i = 0
        for k, dt in enumerate(self._dts):
            # derivatives go through the x0 estimate as in diffusers ((x - (x - v σ)) / σ, not v itself), which
            # keeps the two bit-compatible; the rounding this adds (~1e-7 / σ relative) is far below sampling noise
            d = (x - (x - self._predict(fn, x, i) * sig[k])) / sig[k]
            i += 1
            if k == self.num_steps - 1:
                x = x + d * dt
                break
            x_end = x + d * dt
            d_end = (x_end - (x_end - self._predict(fn, x_end, i) * sig[k + 1])) / sig[k + 1]
            i += 1
            x = x + 0.5 * (d + d_end) * dt
        return x


# ---------------------------------------------------------------------------------------------- factory

SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (DDPMSampler, DDIMSampler, DPMSolverPP2MSampler, EulerSampler, HeunSampler)
}
DEFAULT_SAMPLER = {"ddpm_eps": "dpmpp_2m", "flow": "euler"}


def sampler_options(name: str) -> dict[str, Any]:
    """The options `name` accepts, with their defaults."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    params = inspect.signature(SAMPLERS[name].__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make_sampler(name: str, num_steps: int, diffusion_kind: str, **options: Any) -> Sampler:
    """The sampler `name` with `num_steps` steps per block for a model of parameterisation `diffusion_kind`.

    Raises ValueError for an unknown sampler, a sampler that does not fit the parameterisation (ε-samplers
    need 'ddpm_eps', Euler/Heun need 'flow'), an unknown option, or a bad step count."""
    kind = getattr(diffusion_kind, "kind", diffusion_kind)  # a Diffusion object works too
    if kind not in DIFFUSION_KINDS:
        raise ValueError(f"diffusion kind must be one of {DIFFUSION_KINDS}, got {kind!r}")
    allowed = sampler_options(name)
    cls = SAMPLERS[name]
    if cls.diffusion_kind != kind:
        fits = sorted(n for n, c in SAMPLERS.items() if c.diffusion_kind == kind)
        raise ValueError(
            f"sampler {name!r} is for {cls.diffusion_kind!r} models, but this model is {kind!r}; use one of {fits}"
        )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"sampler {name!r}: unknown option(s) {unknown}; it accepts {sorted(allowed)}")
    return cls(num_steps, **options)
