"""EMA: the recurrence with and without the decay warm-up, against a direct computation."""

import torch
from torch import nn

from unimodal.train.ema import EMA, ema_decay


def test_ema_matches_the_recurrence_with_warmup():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    init = [p.detach().clone() for p in model.parameters()]
    ema, plain = EMA(model, 0.99, warmup=True), EMA(model, 0.99, warmup=False)
    expect_w = [x.clone() for x in init]
    expect_p = [x.clone() for x in init]
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model, step)
        plain.update(model, step)
        d = min(0.99, (1 + step) / (10 + step))
        for i, p in enumerate(model.parameters()):
            expect_w[i] = d * expect_w[i] + (1 - d) * p.detach()
            expect_p[i] = 0.99 * expect_p[i] + 0.01 * p.detach()
    for got, want in zip(ema.shadow, expect_w, strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(plain.shadow, expect_p, strict=True):
        torch.testing.assert_close(got, want)
    assert ema_decay(0.999, 0, True) == 0.1 and ema_decay(0.999, 10**6, True) == 0.999
    # the first update keeps only a tenth of the initialisation
    fresh = EMA(model, 0.999)
    before = [s.clone() for s in fresh.shadow]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    fresh.update(model, 0)
    for s, b in zip(fresh.shadow, before, strict=True):
        torch.testing.assert_close(s, 0.1 * b)
