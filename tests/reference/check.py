"""Golden check of the C engine against the float64 NumPy reference: same prompt ids,
greedy generation on both sides, logits compared row by row and greedy tokens compared.

  /usr/bin/python3 tests/reference/check.py --bin BUILD/bin --model M.gguf \
      [--prompt-tokens 32] [--gen 32] [--tol 1e-3] [--no-token-match] [--kv-type f16|f32]

Exit 0 when the engine matches, 1 on any mismatch or error, 2 on bad arguments.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as ref                      # noqa: E402  (path set just above)
from gguf import GGUFError               # noqa: E402

# A fixed English text; growing prefixes of it supply a prompt of the wanted length.
TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk, "
        "carrying a lantern, a notebook and a flask of strong tea. From the top he "
        "could see the fishing boats returning to the harbour, the gulls circling over "
        "the nets, and the first stars appearing above the dark line of the hills. He "
        "wrote down the wind, the tide and the colour of the sky, as his father had done "
        "before him, and his grandfather before that, for more than seventy years.")

RUN_TIMEOUT_S = 600
TOKENIZE_TIMEOUT_S = 60


class CheckError(Exception):
    """The check could not be carried out (engine failed, bad output, ...)."""


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="folder holding the moeshard binary")
    ap.add_argument("--model", required=True, help="GGUF model file")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--tol", type=float, default=1e-3, help="max |logit difference| per row")
    ap.add_argument("--kv-type", choices=("f16", "f32"), default="f16",
                    help="the engine's KV cache type (its --kv-type; default f16 as the engine's); "
                         "the reference rounds keys and values the same way")
    ap.add_argument("--rtol", type=float, default=0.0,
                    help="add RTOL * max|reference logit| of the row to the per-row bound")
    ap.add_argument("--median-rtol", type=float, default=None,
                    help="also require the median over rows of max|delta| / max|reference "
                         "logit| to be at most this")
    ap.add_argument("--no-token-match", action="store_true",
                    help="do not require identical greedy tokens; compare logits on the "
                         "engine's own token sequence instead (for quantised activations)")
    a = ap.parse_args(argv)
    if a.prompt_tokens < 1 or a.gen < 1:
        ap.error("--prompt-tokens and --gen must be >= 1")
    for name in ("tol", "rtol", "median_rtol"):
        v = getattr(a, name)
        if v is not None and not (v >= 0 and np.isfinite(v)):
            ap.error("--%s must be a finite number >= 0" % name.replace("_", "-"))
    if a.tol == 0 and a.rtol == 0:
        ap.error("--tol and --rtol cannot both be 0")
    return a


# --- talking to the engine ----------------------------------------------------------


def run_cmd(cmd, timeout_s):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise CheckError("cannot execute %s" % cmd[0]) from None
    except subprocess.TimeoutExpired:
        raise CheckError("timed out after %d s: %s" % (timeout_s, " ".join(cmd))) from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()[-20:]
        raise CheckError("exit %d from: %s\n  %s" % (p.returncode, " ".join(cmd), "\n  ".join(err)))
    return p.stdout.decode("utf-8", "replace")


def tokenize(moeshard, model_path, text, vocab):
    out = run_cmd([moeshard, "tokenize", "--model", model_path, text], TOKENIZE_TIMEOUT_S)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise CheckError("tokenize printed %d non-empty lines, expected one line of ids" % len(lines))
    try:
        ids = [int(t) for t in lines[0].split()]
    except ValueError:
        raise CheckError("tokenize printed something other than ids: %r" % lines[0][:200]) from None
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise CheckError("tokenize printed ids outside the vocabulary (0..%d): %s" % (vocab - 1, bad[:10]))
    return ids


def find_prompt(moeshard, model_path, n_tokens, vocab):
    """The shortest prefix of TEXT that tokenizes to exactly n_tokens ids: whole words
    first, then single characters inside the word where the count jumps past n_tokens."""
    cache = {}

    def ids_of(end):
        if end not in cache:
            cache[end] = tokenize(moeshard, model_path, TEXT[:end], vocab)
        return cache[end]

    ends = [i for i, c in enumerate(TEXT) if c == " "] + [len(TEXT)]
    prev = 0
    for end in ends:
        n = len(ids_of(end))
        if n == n_tokens:
            return TEXT[:end], ids_of(end)
        if n > n_tokens:
            for e in range(prev + 1, end):
                if len(ids_of(e)) == n_tokens:
                    return TEXT[:e], ids_of(e)
            raise CheckError("no prefix of the text tokenizes to exactly %d ids (%d chars -> %d "
                             "ids, %d chars -> %d ids)" % (n_tokens, prev, len(ids_of(prev)) if prev
                                                          else 0, end, n))
        prev = end
    raise CheckError("the whole text gives only %d ids, fewer than %d" % (len(ids_of(len(TEXT))), n_tokens))


def run_engine(moeshard, model_path, text, n_gen, out_path, kv_type):
    run_cmd([moeshard, "run", "--model", model_path, "--prompt", text, "-n", str(n_gen),
             "--temp", "0", "--threads", "2", "--kv-type", kv_type, "--dump-logits", out_path], RUN_TIMEOUT_S)
    try:
        a = np.load(out_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckError("cannot read the dumped logits %s: %s" % (out_path, e)) from None
    return a


def check_dump(a, n_prompt, n_gen, vocab, eos):
    """Validate the dump; return how many tokens the engine generated."""
    if a.dtype != np.float32 or a.ndim != 2 or a.shape[1] != vocab:
        raise CheckError("dumped logits are %s %s, expected float32 [rows, %d]" % (a.dtype, a.shape, vocab))
    want = n_prompt + n_gen - 1
    rows = a.shape[0]
    if not np.all(np.isfinite(a)):
        raise CheckError("dumped logits hold NaN or Inf (first bad row %d)"
                         % int(np.argmax(~np.all(np.isfinite(a), axis=1))))
    if rows == want:
        return n_gen
    # Fewer rows are fine only when generation stopped on the end-of-sequence token.
    if n_prompt <= rows < want and eos is not None and int(np.argmax(a[-1])) == eos:
        return rows - n_prompt + 1
    raise CheckError("dumped logits have %d rows, expected %d (%d prompt + %d generated - 1)"
                     % (rows, want, n_prompt, n_gen))


# --- comparing -------------------------------------------------------------------------


class Verdict:
    """Row-by-row comparison of engine logits with reference logits (same rows)."""

    def __init__(self, args, dump, ref_logits):
        self.delta = np.max(np.abs(dump.astype(np.float64) - ref_logits), axis=1)
        self.scale = np.max(np.abs(ref_logits), axis=1)
        self.bound = args.tol + args.rtol * self.scale
        bad = np.nonzero(self.delta > self.bound)[0]
        self.first_bad = int(bad[0]) if bad.size else None
        self.median_rel = float(np.median(self.delta / np.maximum(self.scale, 1e-30)))
        self.median_ok = args.median_rtol is None or self.median_rel <= args.median_rtol
        self.median_rtol = args.median_rtol

    @property
    def ok(self):
        return self.first_bad is None and self.median_ok

    def describe(self):
        if self.first_bad is not None:
            r = self.first_bad
            return ("first row over the bound: %d (max |delta| %.3g, bound %.3g); max |delta| "
                    "over all rows %.3g" % (r, self.delta[r], self.bound[r], self.delta.max()))
        if not self.median_ok:
            return ("median relative row error %.3g exceeds --median-rtol %g"
                    % (self.median_rel, self.median_rtol))
        return "max |delta| %.3g over %d rows" % (self.delta.max(), self.delta.size)


def route_note(m, seq, row):
    """Say whether the reference's expert choice at the token of `row` was a near-tie,
    which would make a small rounding difference change the experts used."""
    trace = {}
    ref.forward(m, seq[:row + 1], trace=trace)
    margin = trace["route_margin"][:, row]
    layer = int(np.argmin(margin))
    return "reference routing margin at that token: %.3g (layer %d)" % (margin[layer], layer)


def print_tokens(eng_tok, ref_tok):
    print("  engine tokens:    %s" % " ".join(map(str, eng_tok)))
    print("  reference tokens: %s" % " ".join(map(str, ref_tok)))


def top2_margin(row):
    s = np.sort(row)
    return float(s[-1] - s[-2]) if s.size > 1 else float("inf")


def compare_strict(args, m, prompt, dump, eng_tok, ref_tok, ref_logits):
    """Tokens must be identical and every row within the bound."""
    v = Verdict(args, dump, ref_logits[:dump.shape[0]])
    if v.ok and eng_tok == ref_tok:
        print("%s: max |delta| %.3g (tol %g) over %d rows, %d/%d tokens match"
              % (m.name, v.delta.max(), args.tol, v.delta.size, len(eng_tok), len(eng_tok)))
        return True
    print("FAIL %s: %s" % (m.name, "greedy tokens differ" if eng_tok != ref_tok else "logits differ"))
    print("  " + v.describe())
    if v.first_bad is not None:
        print("  " + route_note(m, list(prompt) + ref_tok, v.first_bad))
    print_tokens(eng_tok, ref_tok)
    diff = [i for i, (x, y) in enumerate(zip(eng_tok, ref_tok)) if x != y]
    if diff:
        i = diff[0]
        print("  first differing token: %d; reference top-2 logit margin there %.3g"
              % (i, top2_margin(ref_logits[len(prompt) - 1 + i])))
    return False


def compare_teacher_forced(args, m, prompt, dump, eng_tok, ref_tok):
    """Reference run on the engine's own tokens, so each row compares like with like
    even where the two broke a near-tie differently; tokens are only reported."""
    seq = list(prompt) + list(eng_tok[:-1])
    v = Verdict(args, dump, ref.forward(m, seq))
    agree = sum(int(x == y) for x, y in zip(eng_tok, ref_tok))
    print_tokens(eng_tok, ref_tok)
    if not v.ok:
        print("FAIL %s: logits differ on the engine's sequence: %s" % (m.name, v.describe()))
        if v.first_bad is not None:
            print("  " + route_note(m, seq, v.first_bad))
        return False
    print("%s: max |delta| %.3g (tol %g + rtol %g * row scale), median relative error %.3g, "
          "over %d rows of the engine's sequence; %d/%d greedy tokens agree (not required)"
          % (m.name, v.delta.max(), args.tol, args.rtol, v.median_rel, v.delta.size,
             agree, len(eng_tok)))
    return True


def compare(args, m, prompt, dump, eng_tok):
    ref_tok, ref_logits = ref.greedy(m, prompt, args.gen)
    ref_tok = ref_tok[:len(eng_tok)]
    if args.no_token_match:
        return compare_teacher_forced(args, m, prompt, dump, eng_tok, ref_tok)
    return compare_strict(args, m, prompt, dump, eng_tok, ref_tok, ref_logits)


def main(argv):
    args = parse_args(argv)
    moeshard = os.path.join(args.bin, "moeshard")
    if not os.access(moeshard, os.X_OK):
        print("FAIL: %s is missing or not executable" % moeshard)
        return 1
    tmp = tempfile.mkdtemp(prefix="ms-check-", dir=os.environ.get("TMPDIR") or "/tmp")
    try:
        m = ref.load(args.model, kv_f16=args.kv_type == "f16")
        eos = m.file.get("tokenizer.ggml.eos_token_id")
        text, prompt = find_prompt(moeshard, args.model, args.prompt_tokens, m.vocab)
        print("%s (%s): prompt %r -> %d ids" % (m.name, m.hp.arch, text, len(prompt)))
        dump = run_engine(moeshard, args.model, text, args.gen, os.path.join(tmp, "logits.npy"), args.kv_type)
        print("  KV cache %s" % args.kv_type)
        n_gen = check_dump(dump, len(prompt), args.gen, m.vocab, eos)
        if n_gen < args.gen:
            print("  engine stopped at end-of-sequence after %d tokens" % n_gen)
        eng_tok = [int(t) for t in np.argmax(dump[len(prompt) - 1:], axis=1)]
        return 0 if compare(args, m, prompt, dump, eng_tok) else 1
    except (CheckError, GGUFError, ValueError) as e:
        print("FAIL %s: %s" % (args.model, e))
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
