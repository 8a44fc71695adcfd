"""Float64 NumPy forward pass of the MoE architectures moeshard serves (llama/Mixtral,
qwen2moe, qwen3moe, olmoe, deepseek2), the golden reference the C engine is checked against.

Written from the project's architecture specification and the original model
definitions (transformers, llama.cpp's GGUF conventions), not from the engine. No KV cache: every call recomputes the whole causal sequence, which is
cheap at test sizes and leaves no state to get wrong.
"""

import math

import numpy as np

from gguf import GGUFError, GGUFFile, GGML_BF16, GGML_F16, GGML_Q8_0

ARCHS = ("llama", "qwen2moe", "qwen3moe", "olmoe", "deepseek2")
NEOX_ARCHS = ("qwen2moe", "qwen3moe", "olmoe")     # RoPE pairs (j, j + rot/2)
NORM_TOPK_DEFAULT = {"llama": True, "qwen3moe": True, "qwen2moe": False, "olmoe": False, "deepseek2": False}


class Hparams:
    """Hyperparameters read from ARCH.* metadata with the documented defaults."""

    def __init__(self, g):
        arch = g.get("general.architecture")
        if arch not in ARCHS:
            raise GGUFError("general.architecture %r is not one of %s" % (arch, ", ".join(ARCHS)))
        self.arch = arch
        self.d = _req_int(g, arch + ".embedding_length")
        self.n_layer = _req_int(g, arch + ".block_count")
        self.n_head = _req_int(g, arch + ".attention.head_count")
        self.n_head_kv = _opt_int(g, arch + ".attention.head_count_kv", self.n_head)
        self.eps = _req_float(g, arch + ".attention.layer_norm_rms_epsilon")
        self.freq_base = _opt_float(g, arch + ".rope.freq_base", 10000.0)
        if self.d % self.n_head:
            default_hd = None
        else:
            default_hd = self.d // self.n_head
        if arch == "deepseek2":
            # newer conversions give the per-head sizes in the _mla keys
            suffix = "_mla" if g.get(arch + ".attention.key_length_mla") is not None else ""
            self.hd_k = _req_int(g, arch + ".attention.key_length" + suffix)
            self.hd_v = _req_int(g, arch + ".attention.value_length" + suffix)
        else:
            self.hd_k = _opt_int(g, arch + ".attention.key_length", default_hd)
            self.hd_v = _opt_int(g, arch + ".attention.value_length", default_hd)
        if self.hd_k is None or self.hd_v is None:
            raise GGUFError("%s.attention.key_length/value_length missing and embedding_length "
                            "%d is not a multiple of head_count %d" % (arch, self.d, self.n_head))
        self.n_rot = _opt_int(g, arch + ".rope.dimension_count", self.hd_k)
        self.n_expert = _req_int(g, arch + ".expert_count")
        self.n_expert_used = _req_int(g, arch + ".expert_used_count")
        self.ctx = _opt_int(g, arch + ".context_length", None)
        self.norm_topk = g.get(arch + ".expert_weights_norm", NORM_TOPK_DEFAULT[arch])
        if not isinstance(self.norm_topk, bool):
            raise GGUFError("%s.expert_weights_norm is not a bool" % arch)
        self.neox = arch in NEOX_ARCHS
        if arch == "deepseek2":
            self._deepseek2(g)
        self._check(arch)

    def _deepseek2(self, g):
        """MLA sizes, dense leading layers, shared experts, V3 routing, YaRN (DeepSeek's config names
        in comments)."""
        a = "deepseek2."
        self.n_rot = _req_int(g, a + "rope.dimension_count")                  # qk_rope_head_dim
        self.nope = self.hd_k - self.n_rot                                       # qk_nope_head_dim
        self.n_dense = _req_nonneg_int(g, a + "leading_dense_block_count")      # first_k_dense_replace
        self.q_lora = _opt_int(g, a + "attention.q_lora_rank", 0)
        self.kv_lora = _req_int(g, a + "attention.kv_lora_rank")
        self.n_shared = _req_nonneg_int(g, a + "expert_shared_count")
        self.routed_scale = _req_float(g, a + "expert_weights_scale")          # routed_scaling_factor
        gating = g.get(a + "expert_gating_func", 0)
        if gating not in (0, 1, 2):
            raise GGUFError("%sexpert_gating_func %r is not 1 (softmax) or 2 (sigmoid)" % (a, gating))
        self.sigmoid = gating == 2                                               # scoring_func
        self.n_group = _opt_int(g, a + "expert_group_count", 1)
        self.topk_group = _opt_int(g, a + "expert_group_used_count", self.n_group)
        self.softmax_scale = self.hd_k ** -0.5
        self.yarn = g.get(a + "rope.scaling.type") == "yarn"
        if self.yarn:
            self.yarn_factor = _req_float(g, a + "rope.scaling.factor")
            self.yarn_orig = _req_int(g, a + "rope.scaling.original_context_length")
            # the file carries 0.1 * mscale_all_dim; DeepSeek: mscale = 0.1 * mscale_all_dim * ln(factor) + 1
            log_mul = g.get(a + "rope.scaling.yarn_log_multiplier", 0.0)
            mscale = log_mul * math.log(self.yarn_factor) + 1.0 if self.yarn_factor > 1 else 1.0
            self.softmax_scale *= mscale * mscale

    def _check(self, arch):
        if self.n_head_kv == 0 or self.n_head % self.n_head_kv:
            raise GGUFError("%s.attention.head_count %d is not a multiple of head_count_kv %d"
                            % (arch, self.n_head, self.n_head_kv))
        if self.n_rot % 2 or self.n_rot > self.hd_k:
            raise GGUFError("%s.rope.dimension_count %d must be even and <= head dim %d"
                            % (arch, self.n_rot, self.hd_k))
        if not 1 <= self.n_expert_used <= self.n_expert:
            raise GGUFError("%s.expert_used_count %d not in 1..expert_count %d"
                            % (arch, self.n_expert_used, self.n_expert))
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise GGUFError("%s.attention.layer_norm_rms_epsilon %r must be > 0" % (arch, self.eps))
        if not (self.freq_base > 0 and math.isfinite(self.freq_base)):
            raise GGUFError("%s.rope.freq_base %r must be > 0" % (arch, self.freq_base))


def _req_int(g, key):
    v = g.get(key)
    if v is None:
        raise GGUFError("required metadata %s is missing" % key)
    return _as_int(key, v)


def _req_nonneg_int(g, key):
    v = g.get(key)
    if v is None or isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise GGUFError("metadata %s = %r is not an integer >= 0" % (key, v))
    return v


def _opt_int(g, key, default):
    v = g.get(key)
    return default if v is None else _as_int(key, v)


def _as_int(key, v):
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise GGUFError("metadata %s = %r is not a positive integer" % (key, v))
    return v


def _req_float(g, key):
    v = g.get(key)
    if v is None:
        raise GGUFError("required metadata %s is missing" % key)
    return _as_float(key, v)


def _opt_float(g, key, default):
    v = g.get(key)
    return default if v is None else _as_float(key, v)


def _as_float(key, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise GGUFError("metadata %s = %r is not a number" % (key, v))
    return float(v)


class Model:
    """Hyperparameters plus every weight dequantised to float64, shape-checked.
    kv_f16: every key and value (the latent and rope key under latent attention)
    is rounded to the nearest IEEE half before attention uses it, as the engine's
    f16 KV cache holds it."""

    def __init__(self, path, kv_f16=False):
        self.kv_f16 = kv_f16
        self.file = GGUFFile(path)
        self.hp = Hparams(self.file)
        self.name = self.file.get("general.name", path)
        self.types = {}                      # tensor name -> ggml type, for emulation
        hp = self.hp
        emb = self._w("token_embd.weight", 2)
        self.vocab = emb.shape[0]
        v = self.file.get(hp.arch + ".vocab_size")
        if v is not None and v != self.vocab:
            raise GGUFError("%s.vocab_size %r != token_embd rows %d" % (hp.arch, v, self.vocab))
        self._shape("token_embd.weight", (self.vocab, hp.d))
        self.tok_embd = emb                                  # [vocab, d]
        self.output_norm = self._vec("output_norm.weight", hp.d)
        if self.file.has_tensor("output.weight"):
            self.output = self._mat("output.weight", self.vocab, hp.d)
            self.output_name = "output.weight"
        else:
            self.output = self.tok_embd                      # tied embeddings
            self.output_name = "token_embd.weight"
        self.layers = [self._layer(i) for i in range(hp.n_layer)]

    def _layer(self, i):
        if self.hp.arch == "deepseek2":
            return self._layer_deepseek2(i)
        hp, p = self.hp, "blk.%d." % i
        H, Hkv, hk, hv, d, E = hp.n_head, hp.n_head_kv, hp.hd_k, hp.hd_v, hp.d, hp.n_expert
        L = {"prefix": p}
        L["attn_norm"] = self._vec(p + "attn_norm.weight", d)
        L["wq"] = self._mat(p + "attn_q.weight", H * hk, d)          # [H*hk, d]
        L["wk"] = self._mat(p + "attn_k.weight", Hkv * hk, d)        # [Hkv*hk, d]
        L["wv"] = self._mat(p + "attn_v.weight", Hkv * hv, d)        # [Hkv*hv, d]
        L["wo"] = self._mat(p + "attn_output.weight", d, H * hv)     # [d, H*hv]
        if hp.arch == "qwen2moe":
            L["bq"] = self._vec(p + "attn_q.bias", H * hk)
            L["bk"] = self._vec(p + "attn_k.bias", Hkv * hk)
            L["bv"] = self._vec(p + "attn_v.bias", Hkv * hv)
        if hp.arch == "qwen3moe":
            L["q_norm"] = self._vec(p + "attn_q_norm.weight", hk)
            L["k_norm"] = self._vec(p + "attn_k_norm.weight", hk)
        if hp.arch == "olmoe":
            L["q_norm"] = self._vec(p + "attn_q_norm.weight", H * hk)
            L["k_norm"] = self._vec(p + "attn_k_norm.weight", Hkv * hk)
        L["ffn_norm"] = self._vec(p + "ffn_norm.weight", d)
        L["router"] = self._mat(p + "ffn_gate_inp.weight", E, d)     # [E, d]
        self._experts(L, p)
        if hp.arch == "qwen2moe":
            self._shared_expert(L, p)
        return L

    def _experts(self, L, p):
        hp, d, E = self.hp, self.hp.d, self.hp.n_expert
        gate = self._w(p + "ffn_gate_exps.weight", 3)                 # [E, F, d]
        F = gate.shape[1]
        if hp.arch in ("qwen2moe", "qwen3moe", "deepseek2"):
            key = hp.arch + ".expert_feed_forward_length"
        else:
            key = hp.arch + ".feed_forward_length"
        meta_f = self.file.get(key)
        if meta_f is not None and meta_f != F:
            raise GGUFError("%s = %r but %s has expert width %d" % (key, meta_f, p + "ffn_gate_exps.weight", F))
        self._shape(p + "ffn_gate_exps.weight", (E, F, d))
        L["gate_exps"] = gate
        L["up_exps"] = self._w(p + "ffn_up_exps.weight", 3)
        self._shape(p + "ffn_up_exps.weight", (E, F, d))
        L["down_exps"] = self._w(p + "ffn_down_exps.weight", 3)       # [E, d, F]
        self._shape(p + "ffn_down_exps.weight", (E, d, F))

    def _layer_deepseek2(self, i):
        hp, p = self.hp, "blk.%d." % i
        H, d, C, nope, hv = hp.n_head, hp.d, hp.kv_lora, hp.nope, hp.hd_v
        L = {"prefix": p, "attn_norm": self._vec(p + "attn_norm.weight", d)}
        if hp.q_lora:
            L["wq_a"] = self._mat(p + "attn_q_a.weight", hp.q_lora, d)                 # q_a_proj
            L["q_a_norm"] = self._vec(p + "attn_q_a_norm.weight", hp.q_lora)
            L["wq_b"] = self._mat(p + "attn_q_b.weight", H * hp.hd_k, hp.q_lora)      # q_b_proj
        else:
            L["wq"] = self._mat(p + "attn_q.weight", H * hp.hd_k, d)                  # q_proj
        L["wkv_a"] = self._mat(p + "attn_kv_a_mqa.weight", C + hp.n_rot, d)          # kv_a_proj_with_mqa
        L["kv_a_norm"] = self._vec(p + "attn_kv_a_norm.weight", C)
        if self.file.has_tensor(p + "attn_k_b.weight"):
            # split by the converter: k_b [H, C, nope] (transposed), v_b [H, hv, C]; put kv_b_proj back
            k_b = self._w(p + "attn_k_b.weight", 3)
            self._shape(p + "attn_k_b.weight", (H, C, nope))
            v_b = self._w(p + "attn_v_b.weight", 3)
            self._shape(p + "attn_v_b.weight", (H, hv, C))
            kv_b = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1).reshape(H * (nope + hv), C)
            L["wkv_b"], L["kv_b_name"] = kv_b, p + "attn_k_b.weight"
        else:
            L["wkv_b"] = self._mat(p + "attn_kv_b.weight", H * (nope + hv), C)      # kv_b_proj
            L["kv_b_name"] = p + "attn_kv_b.weight"
        L["wo"] = self._mat(p + "attn_output.weight", d, H * hv)
        L["ffn_norm"] = self._vec(p + "ffn_norm.weight", d)
        if i < hp.n_dense:
            F = _req_int(self.file, "deepseek2.feed_forward_length")
            L["dense"] = [self._mat(p + "ffn_gate.weight", F, d), self._mat(p + "ffn_up.weight", F, d),
                          self._mat(p + "ffn_down.weight", d, F)]
            return L
        L["router"] = self._mat(p + "ffn_gate_inp.weight", hp.n_expert, d)
        if self.file.has_tensor(p + "exp_probs_b.bias"):
            L["bias"] = self._vec(p + "exp_probs_b.bias", hp.n_expert)             # e_score_correction_bias
        self._experts(L, p)
        if hp.n_shared:
            Fs = hp.n_shared * L["gate_exps"].shape[1]
            L["gate_shexp"] = self._mat(p + "ffn_gate_shexp.weight", Fs, d)
            L["up_shexp"] = self._mat(p + "ffn_up_shexp.weight", Fs, d)
            L["down_shexp"] = self._mat(p + "ffn_down_shexp.weight", d, Fs)
        return L

    def _shared_expert(self, L, p):
        hp, d = self.hp, self.hp.d
        L["shexp_gate_inp"] = self._vec(p + "ffn_gate_inp_shexp.weight", d)
        L["gate_shexp"] = self._w(p + "ffn_gate_shexp.weight", 2)     # [Fs, d]
        Fs = L["gate_shexp"].shape[0]
        meta = self.file.get(hp.arch + ".expert_shared_feed_forward_length")
        if meta is not None and meta != Fs:
            raise GGUFError("%s.expert_shared_feed_forward_length = %r but %s has width %d"
                            % (hp.arch, meta, p + "ffn_gate_shexp.weight", Fs))
        L["gate_shexp"] = self._mat(p + "ffn_gate_shexp.weight", Fs, d)
        L["up_shexp"] = self._mat(p + "ffn_up_shexp.weight", Fs, d)
        L["down_shexp"] = self._mat(p + "ffn_down_shexp.weight", d, Fs)

    def _w(self, name, ndim):
        if not self.file.has_tensor(name):
            raise GGUFError("%s: required tensor %r is missing" % (self.file.path, name))
        t = self.file.tensors[name]
        if len(t.ne) != ndim:
            raise GGUFError("tensor %r has %d dims, expected %d" % (name, len(t.ne), ndim))
        self.types[name] = t.ggml_type
        return self.file.tensor(name)

    def _shape(self, name, shape):
        got = self.file.tensors[name].shape
        if got != tuple(shape):
            raise GGUFError("tensor %r has ne %s, expected ne %s"
                            % (name, list(reversed(got)), list(reversed(shape))))

    def _mat(self, name, n_out, n_in):
        w = self._w(name, 2)
        self._shape(name, (n_out, n_in))
        return w

    def _vec(self, name, n):
        w = self._w(name, 1)
        self._shape(name, (n,))
        return w


def load(path, kv_f16=False):
    return Model(path, kv_f16)


def _cache_round(model, x):
    """x as the engine's KV cache holds it: rounded to the nearest half (f16 cache),
    else unchanged."""
    return x.astype(np.float16).astype(np.float64) if model.kv_f16 else x


# --- building blocks (all float64) ---------------------------------------------------


def rmsnorm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def rope(x, positions, n_rot, freq_base, neox):
    """Rotate the first n_rot dims of every head. x: [n, heads, hd]; positions: [n]."""
    half = n_rot // 2
    j = np.arange(half, dtype=np.float64)
    theta = np.asarray(positions, dtype=np.float64)[:, None] * freq_base ** (-2.0 * j / n_rot)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]      # [n, 1, half]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    return out


def causal_attention(q, k, v, scale):
    """q: [n, H, hk], k: [n, Hkv, hk], v: [n, Hkv, hv] -> [n, H * hv]."""
    n, H, _ = q.shape
    group = H // k.shape[1]
    mask = np.triu(np.ones((n, n), dtype=bool), 1)          # True where key is in the future
    out = np.empty((n, H, v.shape[2]))
    for h in range(H):
        kv = h // group
        s = q[:, h, :] @ k[:, kv, :].T * scale                # [n, n]
        s[mask] = -np.inf
        out[:, h, :] = softmax(s) @ v[:, kv, :]
    return out.reshape(n, -1)


def top_k(p, k):
    """Indices of the k largest entries per row; ties go to the lower index."""
    order = np.argsort(-p, axis=-1, kind="stable")
    return order[:, :k]


# --- activation emulation (only for estimating tolerances, never for golden values) ---


def _round_q8_0(x):
    """Round rows of x the way a Q8_0 activation block would be: per 32 values,
    d = max|x| / 127 stored as f16, q = round-half-away(x / d)."""
    n_in = x.shape[-1]
    if n_in % 32:
        return x
    b = x.reshape(x.shape[:-1] + (n_in // 32, 32))
    amax = np.max(np.abs(b), axis=-1, keepdims=True)
    d = amax / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    t = b * inv
    q = np.sign(t) * np.floor(np.abs(t) + 0.5)
    return (q * d.astype(np.float16).astype(np.float64)).reshape(x.shape)


def _round_act(x, ggml_type):
    if ggml_type == GGML_Q8_0:
        return _round_q8_0(x)
    if ggml_type == GGML_F16:
        return x.astype(np.float16).astype(np.float64)
    if ggml_type == GGML_BF16:
        f = x.astype(np.float32)
        u = f.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16        # round to nearest even
        return (u.astype(np.uint32)).view(np.float32).astype(np.float64)
    return x


class _Ctx:
    """Per-call options: emulate=True rounds each matmul's activations to the vector
    type a llama.cpp-style kernel would use for that weight type."""

    def __init__(self, model, emulate):
        self.model = model
        self.emulate = emulate

    def mm(self, x, w, name):
        """x: [n, n_in] times w: [n_out, n_in] transposed -> [n, n_out]."""
        if self.emulate:
            x = _round_act(x, self.model.types.get(name))
        return x @ w.T


# --- the forward pass ------------------------------------------------------------------


def forward(model, tokens, emulate_act=False, trace=None):
    """Logits [len(tokens), vocab] (float64) of a full causal pass at positions 0..n-1.
    When trace is a dict, trace["route_margin"] gets [n_layer, n]: per layer and token,
    p(K-th chosen expert) - p(best unchosen expert), inf when all experts are chosen;
    a tiny margin marks a routing decision that rounding elsewhere could flip."""
    hp = model.hp
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError("tokens must be a non-empty 1-D sequence")
    if np.any(tokens < 0) or np.any(tokens >= model.vocab):
        raise ValueError("token id outside 0..%d" % (model.vocab - 1))
    if hp.ctx is not None and tokens.size > hp.ctx:
        raise ValueError("%d tokens exceed context_length %d" % (tokens.size, hp.ctx))
    ctx = _Ctx(model, emulate_act)
    x = model.tok_embd[tokens].copy()                                   # [n, d]
    pos = np.arange(tokens.size)
    ctx.margins = []
    ds = hp.arch == "deepseek2"
    for L in model.layers:
        x = x + (_attention_mla if ds else _attention)(ctx, L, rmsnorm(x, L["attn_norm"], hp.eps), pos)
        x = x + (_ffn_deepseek2 if ds else _moe)(ctx, L, rmsnorm(x, L["ffn_norm"], hp.eps))
    if trace is not None:
        trace["route_margin"] = np.array(ctx.margins)
    h = rmsnorm(x, model.output_norm, hp.eps)
    return ctx.mm(h, model.output, model.output_name)


def _attention(ctx, L, h, pos):
    hp, p, n = ctx.model.hp, L["prefix"], h.shape[0]
    q = ctx.mm(h, L["wq"], p + "attn_q.weight")
    k = ctx.mm(h, L["wk"], p + "attn_k.weight")
    v = ctx.mm(h, L["wv"], p + "attn_v.weight")
    if hp.arch == "qwen2moe":
        q, k, v = q + L["bq"], k + L["bk"], v + L["bv"]
    if hp.arch == "olmoe":
        # OLMoE normalises the whole projected vector, before splitting into heads.
        q = rmsnorm(q, L["q_norm"], hp.eps)
        k = rmsnorm(k, L["k_norm"], hp.eps)
    q = q.reshape(n, hp.n_head, hp.hd_k)
    k = k.reshape(n, hp.n_head_kv, hp.hd_k)
    v = v.reshape(n, hp.n_head_kv, hp.hd_v)
    if hp.arch == "qwen3moe":
        q = rmsnorm(q, L["q_norm"], hp.eps)                  # per head
        k = rmsnorm(k, L["k_norm"], hp.eps)
    q = rope(q, pos, hp.n_rot, hp.freq_base, hp.neox)
    k = _cache_round(ctx.model, rope(k, pos, hp.n_rot, hp.freq_base, hp.neox))
    v = _cache_round(ctx.model, v)
    att = causal_attention(q, k, v, 1.0 / math.sqrt(hp.hd_k))
    return ctx.mm(att, L["wo"], p + "attn_output.weight")


def _moe(ctx, L, h):
    hp, p = ctx.model.hp, L["prefix"]
    probs = softmax(ctx.mm(h, L["router"], p + "ffn_gate_inp.weight"))    # [n, E]
    chosen = top_k(probs, hp.n_expert_used)                              # [n, K]
    w = np.take_along_axis(probs, chosen, axis=-1)
    ctx.margins.append(_route_margin(probs, hp.n_expert_used))
    if hp.norm_topk:
        w = w / np.sum(w, axis=-1, keepdims=True)
    out = np.zeros_like(h)
    for e in np.unique(chosen):
        rows, slot = np.nonzero(chosen == e)
        y = _expert(ctx, L, h[rows], e)
        out[rows] += w[rows, slot][:, None] * y
    if hp.arch == "qwen2moe":
        g = sigmoid(ctx.mm(h, L["shexp_gate_inp"][None, :], p + "ffn_gate_inp_shexp.weight"))
        up = ctx.mm(h, L["up_shexp"], p + "ffn_up_shexp.weight")
        gate = ctx.mm(h, L["gate_shexp"], p + "ffn_gate_shexp.weight")
        out += g * ctx.mm(silu(gate) * up, L["down_shexp"], p + "ffn_down_shexp.weight")
    return out


# --- deepseek2, written from DeepSeek-V2/V3's modelling code (naive form: K and V expanded
# per head from the latent, as the original does; the engine's absorbed form is checked by it)


def _yarn_inv_freq(hp):
    """Per-pair inverse frequencies of the rope dims, with DeepSeek's YaRN blend when scaled."""
    dim, base = hp.n_rot, hp.freq_base
    extra = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if not hp.yarn:
        return extra
    inter = extra / hp.yarn_factor

    def corr_dim(n_rot):                   # dims whose wavelength makes n_rot turns over the original context
        return dim * math.log(hp.yarn_orig / (n_rot * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(corr_dim(32)), 0)            # beta_fast 32
    high = min(math.ceil(corr_dim(1)), dim - 1)       # beta_slow 1
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    mask = 1.0 - ramp                       # 1: keep the original (extrapolated) frequency
    return inter * (1 - mask) + extra * mask


def _rope_deepseek(x, positions, inv_freq):
    """DeepSeek's apply_rotary_pos_emb: the rope dims are stored interleaved, so they are first
    regrouped (evens then odds) and then rotated by rotate_half. x: [n, heads, n_rot]."""
    n, h, d = x.shape
    x = x.reshape(n, h, d // 2, 2).transpose(0, 1, 3, 2).reshape(n, h, d)
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]    # [n, d/2]
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]                        # [n, 1, d]
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * np.cos(emb) + rot * np.sin(emb)


def _attention_mla(ctx, L, h, pos):
    hp, p, n = ctx.model.hp, L["prefix"], h.shape[0]
    H, C, nope, hv = hp.n_head, hp.kv_lora, hp.nope, hp.hd_v
    if hp.q_lora:
        q = ctx.mm(rmsnorm(ctx.mm(h, L["wq_a"], p + "attn_q_a.weight"), L["q_a_norm"], hp.eps),
                   L["wq_b"], p + "attn_q_b.weight")
    else:
        q = ctx.mm(h, L["wq"], p + "attn_q.weight")
    q = q.reshape(n, H, hp.hd_k)
    kv_a = ctx.mm(h, L["wkv_a"], p + "attn_kv_a_mqa.weight")                   # [n, C + n_rot]
    c = _cache_round(ctx.model, rmsnorm(kv_a[:, :C], L["kv_a_norm"], hp.eps))
    kv = ctx.mm(c, L["wkv_b"], L["kv_b_name"]).reshape(n, H, nope + hv)
    inv_freq = _yarn_inv_freq(hp)
    q_pe = _rope_deepseek(q[..., nope:], pos, inv_freq)
    k_pe = _cache_round(ctx.model, _rope_deepseek(kv_a[:, None, C:], pos, inv_freq))  # one head, shared
    qf = np.concatenate([q[..., :nope], q_pe], axis=-1)                          # [n, H, hd_k]
    kf = np.concatenate([kv[..., :nope], np.broadcast_to(k_pe, (n, H, hp.n_rot))], axis=-1)
    att = causal_attention(qf, kf, kv[..., nope:], hp.softmax_scale)
    return ctx.mm(att, L["wo"], p + "attn_output.weight")


def _mlp(ctx, h, gate, up, down, names):
    return ctx.mm(silu(ctx.mm(h, gate, names[0])) * ctx.mm(h, up, names[1]), down, names[2])


def _ffn_deepseek2(ctx, L, h):
    hp, p = ctx.model.hp, L["prefix"]
    if "dense" in L:
        return _mlp(ctx, h, *L["dense"], [p + "ffn_gate.weight", p + "ffn_up.weight", p + "ffn_down.weight"])
    logits = ctx.mm(h, L["router"], p + "ffn_gate_inp.weight")
    scores = sigmoid(logits) if hp.sigmoid else softmax(logits)
    choice = scores + L["bias"] if "bias" in L else scores.copy()               # selection only
    if hp.topk_group < hp.n_group:
        g = choice.reshape(choice.shape[0], hp.n_group, -1)
        top2 = -np.sort(-g, axis=-1)[..., :2]
        group_score = top2.sum(axis=-1)                                          # [n, n_group]
        keep = top_k(group_score, hp.topk_group)
        mask = np.zeros(group_score.shape, dtype=bool)
        np.put_along_axis(mask, keep, True, axis=-1)
        # llama.cpp (and so DeepSeek as people run it) drops the other groups with -inf
        choice = np.where(np.repeat(mask, g.shape[-1], axis=-1), choice, -np.inf)
    chosen = top_k(choice, hp.n_expert_used)
    ctx.margins.append(_route_margin(choice, hp.n_expert_used))
    w = np.take_along_axis(scores, chosen, axis=-1)
    if hp.norm_topk:
        w = w / (np.sum(w, axis=-1, keepdims=True) + 1e-20)
    w = w * hp.routed_scale
    out = np.zeros_like(h)
    for e in np.unique(chosen):
        rows, slot = np.nonzero(chosen == e)
        out[rows] += w[rows, slot][:, None] * _expert(ctx, L, h[rows], e)
    if hp.n_shared:
        out += _mlp(ctx, h, L["gate_shexp"], L["up_shexp"], L["down_shexp"],
                    [p + "ffn_gate_shexp.weight", p + "ffn_up_shexp.weight", p + "ffn_down_shexp.weight"])
    return out


def _route_margin(probs, k):
    if k == probs.shape[1]:
        return np.full(probs.shape[0], np.inf)
    s = -np.sort(-probs, axis=-1)
    return s[:, k - 1] - s[:, k]


def _expert(ctx, L, h, e):
    p = L["prefix"]
    gate = ctx.mm(h, L["gate_exps"][e], p + "ffn_gate_exps.weight")
    up = ctx.mm(h, L["up_exps"][e], p + "ffn_up_exps.weight")
    return ctx.mm(silu(gate) * up, L["down_exps"][e], p + "ffn_down_exps.weight")


def greedy(model, prompt, n_gen, emulate_act=False):
    """Generate n_gen tokens greedily (argmax, lowest id on ties) from prompt ids.
    Returns (tokens, logits) with logits [len(prompt) + n_gen - 1, vocab]: one row per
    prompt token, then one per generated token that was fed back."""
    seq = list(prompt)
    rows = [forward(model, seq, emulate_act)]
    gen = [int(np.argmax(rows[0][-1]))]
    while len(gen) < n_gen:
        seq.append(gen[-1])
        last = forward(model, seq, emulate_act)[-1:]
        rows.append(last)
        gen.append(int(np.argmax(last[0])))
    return gen, np.concatenate(rows, axis=0)
