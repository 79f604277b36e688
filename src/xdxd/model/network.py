"""The XDXD denoiser: an equivariant message-passing network over the symmetry-expanded cell.

Input: a batch of asymmetric-unit (ASU) coordinates of one problem at noise level sigma.
The network sees every image of every ASU atom (all space-group operations) with its
Cartesian geometry, edges to the k nearest images (minimum image), the Patterson function
at each edge vector, the data-misfit gradient at each image as an input vector, and a
global context from an attention encoder over the reflections. It predicts a Cartesian
vector per image (equivariant, PaiNN-style: Schütt et al., ICML 2021, "Equivariant message
passing for the prediction of tensorial properties"), maps each back to its ASU atom through
the inverse operation and averages over the atom's images. The output is the noise
estimate eps (B,N,3) in Å/sigma units, the same for every image of an atom, so a sample
only ever moves ASU atoms and keeps exactly the space group it was given.

Reads in one sitting: ModelConfig, ReflectionEncoder, MessageBlock, UpdateBlock, Denoiser.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from xdxd.model.graph import PATTERSON_BLURS, Graph


@dataclass
class ModelConfig:
    hidden: int = 64          # scalar channels per image
    vectors: int = 16         # vector channels per image (the costly part on a CPU)
    layers: int = 4           # message-passing rounds
    knn: int = 12             # neighbours per image (nearest images, periodic)
    n_rbf: int = 24           # radial basis functions on edge length
    r_max_A: float = 8.0      # radial basis range in Å (a smooth envelope ends here)
    n_elements: int = 100     # atomic numbers embedded (0..n_elements-1)
    token_dim: int = 64       # reflection-encoder width
    token_layers: int = 2     # transformer layers over reflections
    token_heads: int = 4
    max_tokens: int = 256     # reflections (after symmetry expansion) the encoder sees
    sigma_min_A: float = 0.01  # noise schedule range, Å (diffusion.py)
    sigma_max_A: float = 6.0
    n_sigmas: int = 1000      # discrete noise levels in the buffered schedule

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding (…, dim) of a scalar (…)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device) / half)
    arg = x[..., None].float() * freqs
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class ReflectionEncoder(nn.Module):
    """Transformer over reflection tokens (T,7) -> a global context vector (hidden,).

    Tokens: h* (Å⁻¹, Cartesian), s = 1/d, |E|, sigma(|E|), 1/d_min; no phases, so nothing
    here depends on the origin. Pooling: mean plus one learned attention query.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.token_dim
        self.inp = mlp(7 + 16, d, d)
        layer = nn.TransformerEncoderLayer(d, cfg.token_heads, 2 * d, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.token_layers, enable_nested_tensor=False)
        self.query = nn.Parameter(torch.randn(1, 1, d) / math.sqrt(d))
        self.pool = nn.MultiheadAttention(d, cfg.token_heads, batch_first=True)
        self.out = nn.Linear(2 * d, cfg.hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([tokens, sinusoidal(tokens[:, 3] * 20.0, 16)], dim=-1)  # (T,23)
        x = self.encoder(self.inp(x)[None])  # (1,T,d)
        pooled, _ = self.pool(self.query, x, x)  # (1,1,d)
        return self.out(torch.cat([x.mean(1), pooled[:, 0]], dim=-1))[0]  # (hidden,)


class MessageBlock(nn.Module):
    """PaiNN message: scalars and vectors gathered from neighbours, filtered by the edge."""

    def __init__(self, cfg: ModelConfig, edge_dim: int):
        super().__init__()
        H, V = cfg.hidden, cfg.vectors
        self.sizes = (H, V, V)
        self.phi = mlp(H, H, H + 2 * V)
        self.filt = nn.Linear(edge_dim, H + 2 * V)

    def forward(self, h, v, edge, env, unit, nbr):
        # h (B,K,H), v (B,K,V,3), edge (B,K,k,E), env (B,K,k,1), unit (B,K,k,3), nbr (B,K,k)
        B, K, k = nbr.shape
        V = v.shape[2]
        flat = nbr.reshape(B, K * k)
        phi = self.phi(h)
        phi_j = torch.gather(phi, 1, flat[..., None].expand(-1, -1, phi.shape[-1]))
        x = phi_j.reshape(B, K, k, -1) * self.filt(edge) * env  # (B,K,k,H+2V)
        a, b, c = x.split(self.sizes, dim=-1)  # (B,K,k,H), (B,K,k,V), (B,K,k,V)
        v_j = torch.gather(v.reshape(B, K, V * 3), 1, flat[..., None].expand(-1, -1, 3 * V))
        v_j = v_j.reshape(B, K, k, V, 3)
        dv = torch.einsum("bnkv,bnkvc->bnvc", b, v_j) + torch.einsum("bnkv,bnkc->bnvc", c, unit)
        return h + a.sum(2), v + dv  # (B,K,H), (B,K,V,3)


class UpdateBlock(nn.Module):
    """PaiNN update: mix vector channels, exchange information between scalars and norms."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, V = cfg.hidden, cfg.vectors
        self.sizes = (V, V, H)
        self.U = nn.Linear(V, V, bias=False)
        self.V = nn.Linear(V, V, bias=False)
        self.mix = mlp(H + V, H, 2 * V + H)
        self.dot = nn.Linear(V, H, bias=False)
        self.norm = nn.LayerNorm(H)

    def forward(self, h, v):
        Uv = self.U(v.transpose(-1, -2)).transpose(-1, -2)  # (B,K,V,3)
        Vv = self.V(v.transpose(-1, -2)).transpose(-1, -2)
        vnorm = torch.sqrt((Vv ** 2).sum(-1) + 1e-8)  # (B,K,V)
        a_vv, a_sv, a_ss = self.mix(torch.cat([self.norm(h), vnorm], dim=-1)).split(self.sizes, -1)
        h = h + self.dot(a_sv * (Uv * Vv).sum(-1)) + a_ss
        v = v + a_vv[..., None] * Uv
        return h, v


class Denoiser(nn.Module):
    """eps_hat (B,N,3) = Denoiser(problem, graph, sigma, context, misfit, grad)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.element = nn.Embedding(cfg.n_elements, H)
        self.time = mlp(32, H, H)
        self.reflections = ReflectionEncoder(cfg)
        self.global_in = mlp(H + 2, H, H)
        self.grad_in = nn.Linear(1, cfg.vectors, bias=False)  # input vector (the misfit gradient) -> channels
        edge_dim = cfg.n_rbf + len(PATTERSON_BLURS)
        self.messages = nn.ModuleList(MessageBlock(cfg, edge_dim) for _ in range(cfg.layers))
        self.updates = nn.ModuleList(UpdateBlock(cfg) for _ in range(cfg.layers))
        self.gate = mlp(H, H, cfg.vectors)
        self.register_buffer("rbf_centres", torch.linspace(0.0, cfg.r_max_A, cfg.n_rbf))

    def context(self, problem) -> torch.Tensor:
        """Global context (hidden,) of a problem's reflections; compute once per problem."""
        return self.reflections(problem.tokens)

    def forward(self, problem, graph: Graph, sigma: torch.Tensor, context: torch.Tensor,
                misfit: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """sigma (B,) Å; context (hidden,); misfit (B,); grad (B,N,3) Å⁻¹ -> eps (B,N,3)."""
        cfg = self.cfg
        B, K, k = graph.nbr.shape
        O = problem.n_ops
        N = K // O
        # scalars per image: element, noise level, global context, data misfit
        g_ctx = self.global_in(torch.cat([context.expand(B, -1), torch.log(misfit + 1e-6)[:, None],
                                          torch.log(sigma)[:, None]], dim=-1))  # (B,H)
        t_emb = self.time(sinusoidal(torch.log(sigma) * 10.0, 32))  # (B,H)
        h = self.element(graph.z.clamp(max=cfg.n_elements - 1))[None] + (g_ctx + t_emb)[:, None]
        # the misfit gradient, normalised per sample, rotated onto every image: (B,K,3)
        g = grad / grad.pow(2).sum(-1).mean(-1).sqrt().clamp_min(1e-12)[:, None, None]
        g_img = torch.einsum("oij,bnj->bnoi", problem.rot_cart, g).reshape(B, K, 3)
        v = self.grad_in(g_img[..., None]).transpose(-1, -2)  # (B,K,V,3)
        # edges: radial basis with a smooth envelope, Patterson at the edge vector
        dist = graph.dist[..., None]  # (B,K,k,1)
        width = cfg.r_max_A / cfg.n_rbf
        rbf = torch.exp(-((dist - self.rbf_centres) / width) ** 2)  # (B,K,k,n_rbf)
        # smooth envelope, zero at r_max_A or at the (k+1)-th neighbour, whichever is nearer
        r_cut = graph.cutoff.clamp(max=cfg.r_max_A)[..., None, None]  # (B,K,1,1)
        env = 0.5 * (torch.cos(math.pi * (dist / r_cut).clamp(max=1.0)) + 1.0)  # (B,K,k,1)
        edge = torch.cat([rbf, graph.patterson], dim=-1)  # (B,K,k,E)
        unit = graph.vec / graph.dist[..., None].clamp_min(1e-6)  # (B,K,k,3)
        for msg, upd in zip(self.messages, self.updates):
            h, v = msg(h, v, edge, env, unit, graph.nbr)
            h, v = upd(h, v)
        out = (self.gate(h)[..., None] * v).sum(2)  # (B,K,3) Cartesian, per image
        # back to the ASU: image o of atom n moved by R_o d, so d = R_o^T (out) (R orthogonal)
        out = torch.einsum("oji,bnoj->bnoi", problem.rot_cart, out.reshape(B, N, O, 3))
        return out.mean(2)  # (B,N,3)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
