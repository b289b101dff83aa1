"""In-house per-block samplers against diffusers' schedulers, and the guidance schedules.

Both sides are driven by the same deterministic prediction function (a fixed linear map of x plus a function
of t), and every x handed to the model is compared, so a wrong timestep, coefficient or solver order shows up
at the step where it happens. DDPM (and DDIM with eta > 0) get generators with the same seed: diffusers draws
its noise the same way, so the trajectories match draw for draw.
"""

import pytest
import torch

from unimodal.diffusion import Diffusion, ddpm_alphas_cumprod
from unimodal.guidance import GuidanceConfig, apply
from unimodal.samplers import DEFAULT_SAMPLER, SAMPLERS, make_sampler, sampler_options

# diffusers 0.42's DPM-Solver builds its sigmas with np.array(tensor), which numpy 2 flags; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

STEPS = [1, 2, 10, 25]
SPACINGS = ["leading", "trailing", "linspace"]
D = 8
TOL = dict(rtol=1e-5, atol=1e-5)


def predictor(seed: int = 0):
    """A deterministic 'model': x @ W + b(t), t in model units (DDPM step as long, or flow time)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, D, generator=g) * 0.3 / D**0.5
    freq = torch.randn(D, generator=g)

    def fn(x, t, i=0):
        tt = t.float() / 1000 if t.dtype == torch.long else t.float()
        return x @ w + torch.sin(3 * tt * freq + torch.arange(D))

    return fn


def noise(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, D, generator=torch.Generator().manual_seed(seed))


def run_ours(sampler, fn, x, generator=None):
    """Final x and every x the model saw."""
    seen, calls = [], []

    def f(x, t, i):
        seen.append(x.clone())
        calls.append(i)
        return fn(x, t)

    out = sampler.sample(f, x.clone(), generator)
    assert calls == list(range(sampler.num_calls))
    return out, seen


def run_diffusers(sched, n, fn, x, to_model_t=lambda t: t, generator=None, **step_kw):
    """The standard diffusers denoising loop with the same prediction function."""
    sched.set_timesteps(n)
    seen, y = [], x.clone()
    for t in sched.timesteps:
        seen.append(y.clone())
        y = sched.step(fn(y, to_model_t(t)), t, y, generator=generator, **step_kw).prev_sample
    return y, seen, sched.timesteps


def check_same(sampler, sched, n, to_model_t=lambda t: t, seeded=False, **step_kw):
    fn, x = predictor(), noise()
    g1 = torch.Generator().manual_seed(7) if seeded else None
    g2 = torch.Generator().manual_seed(7) if seeded else None
    out, seen = run_ours(sampler, fn, x, g1)
    ref, ref_seen, ref_t = run_diffusers(sched, n, fn, x, to_model_t, g2, **step_kw)
    assert len(seen) == len(ref_seen) == sampler.num_calls
    for a, b in zip(seen, ref_seen, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(out, ref, **TOL)
    return ref_t


# ------------------------------------------------------------------------------------- against diffusers


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddpm_matches_diffusers(n, spacing):
    diffusers = pytest.importorskip("diffusers")
    s = make_sampler("ddpm", n, "ddpm_eps", timestep_spacing=spacing)
    ref_t = check_same(s, diffusers.DDPMScheduler(clip_sample=False, timestep_spacing=spacing), n, seeded=True)
    assert torch.equal(s.timesteps, ref_t)


@pytest.mark.parametrize(
    "opts", [dict(steps_offset=1), dict(variance_type="fixed_large"), dict(clip_sample=True, clip_sample_range=0.5)]
)
def test_ddpm_options_match_diffusers(opts):
    diffusers = pytest.importorskip("diffusers")
    s = make_sampler("ddpm", 10, "ddpm_eps", **opts)
    check_same(s, diffusers.DDPMScheduler(**{"clip_sample": False, **opts}), 10, seeded=True)


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_matches_diffusers(n, spacing):
    diffusers = pytest.importorskip("diffusers")
    s = make_sampler("ddim", n, "ddpm_eps", timestep_spacing=spacing)
    ref_t = check_same(s, diffusers.DDIMScheduler(clip_sample=False, timestep_spacing=spacing), n)
    assert torch.equal(s.timesteps, ref_t)


@pytest.mark.parametrize(
    "opts, step_kw",
    [
        (dict(steps_offset=1), {}),
        (dict(set_alpha_to_one=False), {}),
        (dict(clip_sample=True), {}),
        (dict(eta=0.5), dict(eta=0.5)),
    ],
)
def test_ddim_options_match_diffusers(opts, step_kw):
    diffusers = pytest.importorskip("diffusers")
    s = make_sampler("ddim", 10, "ddpm_eps", **opts)
    sched_opts = {"clip_sample": False, **{k: v for k, v in opts.items() if k != "eta"}}
    check_same(s, diffusers.DDIMScheduler(**sched_opts), 10, seeded="eta" in opts, **step_kw)


@pytest.mark.parametrize("n", STEPS)
def test_dpmpp_2m_default_is_the_official_acdit_sampler(n):
    """Defaults == DPMSolverMultistepScheduler.from_config(DDIMScheduler().config), exactly what ACDiT samples with."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDIMScheduler().config)
    s = make_sampler("dpmpp_2m", n, "ddpm_eps")
    ref_t = check_same(s, sched, n)
    assert torch.equal(s.timesteps, ref_t)
    if n == 25:  # from_config keeps the DPM-Solver's own 'linspace' default, not DDIM's 'leading'
        assert s.timesteps[:3].tolist() == [999, 959, 919] and s.timesteps[-1].item() == 40


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize(
    "opts",
    [
        dict(timestep_spacing="leading"),
        dict(timestep_spacing="leading", steps_offset=1),
        dict(timestep_spacing="trailing"),
        dict(solver_type="heun"),
        dict(final_sigmas_type="sigma_min"),
        dict(final_sigmas_type="sigma_min", lower_order_final=False),
        dict(final_sigmas_type="sigma_min", euler_at_final=True),
    ],
)
def test_dpmpp_2m_options_match_diffusers(n, opts):
    diffusers = pytest.importorskip("diffusers")
    s = make_sampler("dpmpp_2m", n, "ddpm_eps", **opts)
    ref_t = check_same(s, diffusers.DPMSolverMultistepScheduler(**opts), n)
    assert torch.equal(s.timesteps, ref_t)


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("name", ["euler", "heun"])
def test_flow_samplers_match_diffusers(name, n, shift):
    diffusers = pytest.importorskip("diffusers")
    cls = diffusers.FlowMatchEulerDiscreteScheduler if name == "euler" else diffusers.FlowMatchHeunDiscreteScheduler
    s = make_sampler(name, n, "flow", shift=shift)
    ref_t = check_same(s, cls(shift=shift), n, to_model_t=lambda t: t / 1000)
    # diffusers' timesteps are sigma * 1000; ours are the sigma itself, the flow model's t
    torch.testing.assert_close(s.timesteps * 1000, ref_t, rtol=1e-6, atol=1e-4)
    assert s.timesteps[0].item() == 1.0


@pytest.mark.parametrize("n", STEPS)
def test_stochastic_euler_matches_diffusers(n):
    """euler with stochastic=True against FlowMatchEulerDiscreteScheduler(stochastic_sampling=True),
    the same generator driving both; a different seed gives a different sample."""
    diffusers = pytest.importorskip("diffusers")
    s = make_sampler("euler", n, "flow", shift=3.0, stochastic=True)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    check_same(s, sched, n, to_model_t=lambda t: t / 1000, seeded=True)
    if n > 1:
        fn, x = predictor(), noise()
        a = s.sample(fn, x.clone(), torch.Generator().manual_seed(1))
        assert not torch.allclose(a, s.sample(fn, x.clone(), torch.Generator().manual_seed(2)))


# --------------------------------------------------------------------------------------------- behaviour


def test_dpmpp_2m_history_resets_between_blocks():
    diffusers = pytest.importorskip("diffusers")
    s = make_sampler("dpmpp_2m", 10, "ddpm_eps")
    fa, fb = predictor(0), predictor(1)
    xa, xb = noise(1), noise(2)
    block_a = s.sample(lambda x, t, i: fa(x, t), xa)
    block_b = s.sample(lambda x, t, i: fb(x, t), xb)  # same sampler object, second block
    fresh_b = make_sampler("dpmpp_2m", 10, "ddpm_eps").sample(lambda x, t, i: fb(x, t), xb)
    assert torch.equal(block_b, fresh_b)
    # diffusers needs set_timesteps per block to reset its history; with it, both blocks match ours
    sched = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDIMScheduler().config)
    torch.testing.assert_close(block_a, run_diffusers(sched, 10, fa, xa)[0], **TOL)
    torch.testing.assert_close(block_b, run_diffusers(sched, 10, fb, xb)[0], **TOL)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("ddim", dict(timestep_spacing="leading")),
        ("ddim", dict(timestep_spacing="trailing")),
        ("ddim", dict(timestep_spacing="linspace")),
        ("dpmpp_2m", {}),
        ("dpmpp_2m", dict(timestep_spacing="leading", solver_type="heun")),
        ("ddpm", {}),
    ],
)
@pytest.mark.parametrize("n", [1, 5, 25])
def test_true_eps_returns_x0(name, opts, n):
    """Given the exact ε of a fixed x0 at every call, the ε-samplers land on x0."""
    acp = ddpm_alphas_cumprod().double()
    x0 = torch.randn(4, D, dtype=torch.float64)

    def true_eps(x, t, i):
        a = acp[t]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = make_sampler(name, n, "ddpm_eps", **opts).sample(true_eps, torch.randn(4, D, dtype=torch.float64))
    # ddpm adds noise of std <= 1e-10 at its last step when that step's t > 0. A single step from t = 999 divides
    # by sqrt(ᾱ) = 0.0064, which turns the float32 rounding of the schedule's coefficients into ~1e-5
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6 if n > 1 else 5e-5)


@pytest.mark.parametrize("name", ["euler", "heun"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_true_velocity_returns_x0(name, shift):
    x0, eps = torch.randn(4, D), torch.randn(4, D)
    s = make_sampler(name, 7, "flow", shift=shift)

    def true_velocity(x, t, i):  # the straight path through x0: exact at any x
        return (x - x0) / t

    out = s.sample(true_velocity, eps)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-6)


def test_timesteps_in_model_units():
    for name in ("ddpm", "ddim", "dpmpp_2m"):
        s = make_sampler(name, 25, "ddpm_eps")
        assert s.timesteps.dtype == torch.long and s.timesteps.shape == (25,) and s.num_calls == 25
        assert 0 <= s.timesteps.min() and s.timesteps.max() <= 999
        assert (s.timesteps.diff() < 0).all()
        u = s.unit_timesteps
        assert u.dtype == torch.float32 and torch.allclose(u, s.timesteps.float() / 999)
    e = make_sampler("euler", 25, "flow")
    assert e.timesteps.dtype == torch.float32 and e.timesteps[0] == 1.0 and 0 < e.timesteps[-1] < 0.1
    assert torch.equal(e.unit_timesteps, e.timesteps)
    h = make_sampler("heun", 4, "flow")
    assert h.num_calls == 7
    sig = make_sampler("euler", 4, "flow").timesteps
    assert torch.equal(h.timesteps, torch.stack([sig[0], sig[1], sig[1], sig[2], sig[2], sig[3], sig[3]]))
    # the t handed to the model is a 0-dim entry of `timesteps`
    got = []
    make_sampler("ddim", 3, "ddpm_eps").sample(lambda x, t, i: got.append(t) or torch.zeros_like(x), noise())
    assert [t.item() for t in got] == [666, 333, 0] and all(t.dim() == 0 and t.dtype == torch.long for t in got)


def test_dtype_and_generator():
    fn = predictor()
    x = noise().to(torch.bfloat16)
    dtypes = []
    out = make_sampler("dpmpp_2m", 3, "ddpm_eps").sample(lambda x, t, i: dtypes.append(x.dtype) or fn(x, t), x)
    assert out.dtype == torch.bfloat16 and set(dtypes) == {torch.float32}
    s = make_sampler("ddpm", 5, "ddpm_eps")

    def f(x, t, i):
        return fn(x, t)

    a = s.sample(f, noise(), torch.Generator().manual_seed(3))
    b = s.sample(f, noise(), torch.Generator().manual_seed(3))
    c = s.sample(f, noise(), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("plms", 10, "ddpm_eps")
    with pytest.raises(ValueError, match="'euler' is for 'flow' models.*'ddpm_eps'.*ddim"):
        make_sampler("euler", 10, "ddpm_eps")
    with pytest.raises(ValueError, match="'dpmpp_2m' is for 'ddpm_eps'.*heun"):
        make_sampler("dpmpp_2m", 10, Diffusion("flow"))
    with pytest.raises(ValueError, match="diffusion kind"):
        make_sampler("ddim", 10, "v_pred")
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="num_steps"):
            make_sampler("ddim", bad, "ddpm_eps")
        with pytest.raises(ValueError, match="num_steps"):
            make_sampler("euler", bad, "flow")
    with pytest.raises(ValueError, match="exceeds"):
        make_sampler("ddpm", 1001, "ddpm_eps")
    with pytest.raises(ValueError, match="repeats timesteps"):
        make_sampler("dpmpp_2m", 1000, "ddpm_eps")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['shift'\]"):
        make_sampler("ddim", 10, "ddpm_eps", shift=3.0)
    with pytest.raises(ValueError, match="timestep_spacing"):
        make_sampler("ddim", 10, "ddpm_eps", timestep_spacing="karras")
    with pytest.raises(ValueError, match="steps_offset applies to 'leading'"):
        make_sampler("dpmpp_2m", 10, "ddpm_eps", steps_offset=1)
    with pytest.raises(ValueError, match="leave 0..999"):
        make_sampler("ddim", 1, "ddpm_eps", steps_offset=1000)
    with pytest.raises(ValueError, match="shift"):
        make_sampler("euler", 10, "flow", shift=0.0)
    with pytest.raises(ValueError, match="eta"):
        make_sampler("ddim", 10, "ddpm_eps", eta=-1.0)
    with pytest.raises(ValueError, match="stochastic must be true or false"):
        make_sampler("euler", 10, "flow", stochastic=1)
    with pytest.raises(ValueError, match="expected shape"):
        make_sampler("euler", 2, "flow").sample(lambda x, t, i: x[0], noise())
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpmpp_2m", "euler", "heun"}
    assert sampler_options("euler") == {"shift": 1.0, "stochastic": False}
    assert all(SAMPLERS[v].diffusion_kind == k for k, v in DEFAULT_SAMPLER.items())


# ---------------------------------------------------------------------------------------------- guidance


def test_guidance_schedules():
    assert [GuidanceConfig(scale=1.5).scale_at(i, 4) for i in range(4)] == [1.5] * 4
    ramp = GuidanceConfig(schedule="linear", start_scale=1.0, scale=4.0)
    assert [ramp.scale_at(i, 4) for i in range(4)] == [1.0, 2.0, 3.0, 4.0]
    assert ramp.scale_at(0, 1) == 4.0  # a one-call block is at its last call
    inter = GuidanceConfig(schedule="interval", scale=3.0, t_lo=0.2, t_hi=0.6)
    assert [inter.scale_at(0, 1, t) for t in (0.0, 0.19, 0.2, 0.4, 0.6, 0.61, 1.0)] == [1, 1, 3, 3, 3, 1, 1]
    assert inter.scale_at(0, 1, torch.tensor(0.5)) == 3.0
    assert inter.needs_uncond(0, 1, 0.4) and not inter.needs_uncond(0, 1, 0.9)
    assert not GuidanceConfig(scale=1.0).needs_uncond(0, 1)
    # over a sampler's calls: a DDPM step t maps to t / 999
    s = make_sampler("dpmpp_2m", 25, "ddpm_eps")
    on = [inter.scale_at(i, s.num_calls, s.unit_timesteps[i]) != 1 for i in range(s.num_calls)]
    expect = [0.2 <= t / 999 <= 0.6 for t in s.timesteps.tolist()]
    assert on == expect and any(on) and not all(on)
    with pytest.raises(ValueError, match="needs the call's unit time"):
        inter.scale_at(0, 4)
    with pytest.raises(ValueError, match="step index"):
        ramp.scale_at(4, 4)


def test_guidance_apply():
    cond, uncond = torch.randn(3, D), torch.randn(3, D)
    assert torch.equal(apply(cond, uncond, 1.0), cond)  # bit for bit, not just close
    assert torch.equal(apply(cond, uncond, 1), cond)
    torch.testing.assert_close(apply(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(apply(cond, uncond, 2.5), uncond + 2.5 * (cond - uncond))
    per_sample = torch.tensor([1.0, 2.0, 1.0])[:, None]
    out = apply(cond, uncond, per_sample)
    assert torch.equal(out[0], cond[0]) and torch.equal(out[2], cond[2])
    torch.testing.assert_close(out[1], uncond[1] + 2 * (cond[1] - uncond[1]))


def test_guided_sampling_at_scale_1_is_conditional():
    """A CFG loop over a sampler: scale 1 everywhere gives exactly the conditional run."""
    cond_fn, uncond_fn = predictor(0), predictor(1)
    s = make_sampler("dpmpp_2m", 10, "ddpm_eps")
    for cfg in (GuidanceConfig(scale=1.0), GuidanceConfig(schedule="interval", scale=1.0, t_lo=0.1, t_hi=0.9)):

        def guided(x, t, i, cfg=cfg):
            scale = cfg.scale_at(i, s.num_calls, s.unit_timesteps[i])
            return apply(cond_fn(x, t), uncond_fn(x, t), scale)

        assert torch.equal(s.sample(guided, noise()), s.sample(lambda x, t, i: cond_fn(x, t), noise()))
    guided = GuidanceConfig(scale=2.0)
    out = s.sample(lambda x, t, i: apply(cond_fn(x, t), uncond_fn(x, t), guided.scale_at(i, s.num_calls)), noise())
    assert not torch.allclose(out, s.sample(lambda x, t, i: cond_fn(x, t), noise()))


def test_guidance_config_validation():
    cfg = GuidanceConfig.from_dict({"schedule": "interval", "scale": 2, "t_lo": 0.1, "t_hi": 0.5})
    assert cfg.scale == 2.0 and isinstance(cfg.scale, float)
    assert GuidanceConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown guidance key\(s\) \['scael'\]"):
        GuidanceConfig.from_dict({"scael": 2.0})
    with pytest.raises(ValueError, match="schedule must be one of"):
        GuidanceConfig(schedule="cosine")
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        GuidanceConfig(schedule="interval", t_lo=0.7, t_hi=0.3)
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        GuidanceConfig(schedule="interval", t_hi=1.5)
    with pytest.raises(ValueError, match=">= 0"):
        GuidanceConfig(scale=-1.0)
    with pytest.raises(ValueError, match="finite number"):
        GuidanceConfig(scale=float("nan"))
    with pytest.raises(ValueError, match="finite number"):
        GuidanceConfig(scale="2")
    with pytest.raises(ValueError, match=r"'constant' does not use \['t_lo'\]"):
        GuidanceConfig(scale=2.0, t_lo=0.3)
    with pytest.raises(ValueError, match="mapping"):
        GuidanceConfig.from_dict([("scale", 2.0)])
