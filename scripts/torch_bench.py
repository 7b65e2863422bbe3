# PyTorch CPU peer benchmark: MLP train step and reference rectified-flow DiT train step, and
# (added for rectiflow's `bench sample`) guided sampling from the default DiT.
# Usage: python torch_bench.py {mlp|dit-default|dit-digits|dit-mnist|sample-default|all} [--steps N] [--warmup W]
# Copied from the project's peer benchmarks; see README ("Speed") for how the ratios were taken.
import argparse, math, statistics, time, os, sys
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.set_num_interop_threads(1)

# ---------------------------------------------------------------- MLP
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                                 nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, 2))
    def forward(self, x):
        return self.net(x)

# ---------------------------------------------------------------- DiT (minRF / DiT style)
def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

class TimestepEmbedder(nn.Module):
    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
    def forward(self, t):  # t in [0,1]
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t * 1000.0)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb)

class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(self.hd, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.hd, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
    def forward(self, x):
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = self.q_norm(q), self.k_norm(k)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, T, C))

class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN[1].weight); nn.init.zeros_(self.adaLN[1].bias)
    def forward(self, x, c):
        sa, sca, ga, sm, scm, gm = self.adaLN(c).chunk(6, dim=1)
        x = x + ga.unsqueeze(1) * self.attn(modulate(self.norm1(x), sa, sca))
        x = x + gm.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sm, scm))
        return x

class FinalLayer(nn.Module):
    def __init__(self, dim, patch, ch):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * ch)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        for m in (self.linear, self.adaLN[1]):
            nn.init.zeros_(m.weight); nn.init.zeros_(m.bias)
    def forward(self, x, c):
        shift, scale = self.adaLN(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))

class DiT(nn.Module):
    def __init__(self, img, ch, patch, dim, depth, heads, num_classes):
        super().__init__()
        self.img, self.ch, self.p = img, ch, patch
        self.T = (img // patch) ** 2
        self.x_embed = nn.Conv2d(ch, dim, patch, patch)           # patchify
        self.pos = nn.Parameter(torch.randn(1, self.T, dim) * 0.02)  # learned 2D pos-emb
        self.t_embed = TimestepEmbedder(dim)
        self.y_embed = nn.Embedding(num_classes + 1, dim)           # +1 null class (CFG)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.final = FinalLayer(dim, patch, ch)
    def unpatchify(self, x):
        B, p, c, h = x.shape[0], self.p, self.ch, self.img // self.p
        x = x.reshape(B, h, h, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, c, h * p, h * p)
    def forward(self, x, t, y):
        x = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos
        c = self.t_embed(t) + self.y_embed(y)
        for blk in self.blocks:
            x = blk(x, c)
        return self.unpatchify(self.final(x, c))

def rf_loss(model, x, y):
    b = x.shape[0]
    t = torch.sigmoid(torch.randn(b))
    eps = torch.randn_like(x)
    tt = t.view(b, 1, 1, 1)
    zt = (1 - tt) * x + tt * eps
    return F.mse_loss(model(zt, t, y), eps - x)

CONFIGS = {
    "dit-default": dict(img=8, ch=1, patch=2, dim=64, depth=4, heads=4, num_classes=10, batch=64),  # rectiflow's default run
    "dit-digits": dict(img=8, ch=1, patch=1, dim=128, depth=4, heads=4, num_classes=10, batch=128),
    "dit-mnist": dict(img=28, ch=1, patch=2, dim=256, depth=6, heads=8, num_classes=10, batch=64),
}

def analytic_fwd_flops(cfg):
    d, L, B = cfg["dim"], cfg["depth"], cfg["batch"]
    T = (cfg["img"] // cfg["patch"]) ** 2
    pp = cfg["patch"] ** 2 * cfg["ch"]
    tok = B * T
    f = 2 * tok * pp * d                      # patchify
    f += 2 * B * (256 * d + d * d)            # timestep MLP
    f += L * (2 * tok * 12 * d * d            # qkv, proj, mlp(4x)
              + 4 * B * T * T * d             # QK^T and AV
              + 2 * B * d * 6 * d)            # adaLN modulation
    f += 2 * B * d * 2 * d + 2 * tok * d * pp # final adaLN + linear
    return f

def time_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), max(ts)

def run_mlp(args):
    torch.manual_seed(0)
    m = MLP(); opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = torch.randn(4096, 2); y = torch.randn(4096, 2)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(m(x), y); loss.backward(); opt.step()
        return loss.item()
    med, lo, hi = time_steps(step, args.warmup, args.steps)
    nparam = sum(p.numel() for p in m.parameters())
    fwd = 2 * 4096 * (2 * 256 + 256 * 256 * 2 + 256 * 2)
    print(f"mlp: params={nparam} step median {med*1e3:.3f} ms (min {lo*1e3:.3f}, max {hi*1e3:.3f}) over {args.steps}; "
          f"fwd FLOPs {fwd/1e9:.3f} G, x3 = {3*fwd/1e9:.3f} G/step -> {3*fwd/med/1e9:.2f} GFLOP/s")

def run_dit(name, args):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    m = DiT(**{k: v for k, v in cfg.items() if k != "batch"})
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.0)
    B = cfg["batch"]
    x = torch.randn(B, cfg["ch"], cfg["img"], cfg["img"]); y = torch.randint(0, 10, (B,))
    nparam = sum(p.numel() for p in m.parameters())
    # count forward FLOPs with torch's counter (matmul/conv/sdpa)
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False)
    with fc:
        loss = rf_loss(m, x, y)
    fwd_counted = fc.get_total_flops()
    fc2 = FlopCounterMode(display=False)
    with fc2:
        loss.backward()
    bwd_counted = fc2.get_total_flops()
    m.zero_grad(set_to_none=True)
    fwd_an = analytic_fwd_flops(cfg)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = rf_loss(m, x, y); loss.backward(); opt.step()
        return loss.item()
    med, lo, hi = time_steps(step, args.warmup, args.steps)
    print(f"{name}: params={nparam} batch={B} tokens={m.T} step median {med*1e3:.1f} ms (min {lo*1e3:.1f}, max {hi*1e3:.1f}) over {args.steps}")
    print(f"  fwd FLOPs analytic {fwd_an/1e9:.3f} G (counter {fwd_counted/1e9:.3f} G; counted bwd {bwd_counted/1e9:.3f} G); "
          f"est step FLOPs = 3*fwd = {3*fwd_an/1e9:.2f} G -> {3*fwd_an/med/1e9:.2f} GFLOP/s achieved")

def run_sample(args):
    # rectiflow bench sample: 500 digits from the default DiT, 20 Euler steps, guidance 2, the
    # conditional and unconditional halves as one doubled batch of 1000.
    cfg = CONFIGS["dit-default"]
    torch.manual_seed(0)
    m = DiT(**{k: v for k, v in cfg.items() if k != "batch"}).eval()
    n, steps, w = 500, 20, 2.0
    y = torch.cat([torch.arange(n) % 10, torch.full((n,), 10)])
    def draw():
        with torch.no_grad():
            z = torch.randn(n, 1, 8, 8)
            for i in range(steps):
                t = 1.0 - i / steps
                v = m(torch.cat([z, z]), torch.full((2 * n,), t), y)
                vc, vu = v[:n], v[n:]
                z = z - (1.0 / steps) * (vu + w * (vc - vu))
        return z
    med, lo, hi = time_steps(draw, 1, max(3, args.steps // 5))
    print(f"sample-default: {n} samples, {steps} Euler steps, guidance {w}: median {med:.3f} s "
          f"(min {lo:.3f}, max {hi:.3f}) -> {n / med:.1f} samples/s")

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what"); ap.add_argument("--steps", type=int, default=20); ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    print("torch", torch.__version__, "threads", torch.get_num_threads(), "mkldnn", torch.backends.mkldnn.is_available(),
          "BLAS_INFO=mkl" in torch.__config__.show() and "blas=mkl" or "blas=?",
          [l.strip() for l in torch.__config__.show().splitlines() if "CPU capability" in l])
    if args.what in ("mlp", "all"): run_mlp(args)
    for n in CONFIGS:
        if args.what in (n, "all"): run_dit(n, args)
    if args.what in ("sample-default", "all"): run_sample(args)
