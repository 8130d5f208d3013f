"""ArcticInference's SuffixDecodingCache on the replay of `legato bench spec` (same tokenizer,
same held-out sessions, same greedy verification), to compare with Legato's suffix drafter.

arctic-inference ships as an sdist whose build pulls CUDA torch, so build only its suffix tree:
    pip download --no-deps arctic-inference==0.3.0 && tar xzf arctic_inference-0.3.0.tar.gz
    pip install --target /tmp/nb nanobind==2.9.2
    cd arctic_inference-0.3.0/csrc/suffix_decoding && mkdir build && cd build
    PYTHONPATH=/tmp/nb cmake .. -DPython_EXECUTABLE=$(which python) && make
    P=/tmp/arcticpkg/arctic_inference; mkdir -p $P/suffix_decoding && touch $P/__init__.py
    cp _C*.so ../../../arctic_inference/suffix_decoding/{__init__,cache}.py $P/suffix_decoding/
then, from the repository root: python scripts/compare_arctic_suffix.py 16,4 16 [TRACE]
"""

import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, "/tmp/arcticpkg")  # the hand-built package (see above)
from arctic_inference.suffix_decoding import SuffixDecodingCache

from legato.bench.spec_bench import encode_session, load_sessions, load_tokenizer, split

ks = [int(k) for k in sys.argv[1].split(",")]
nsess = int(sys.argv[2])
trace = sys.argv[3] if len(sys.argv) > 3 else "../shared/traces/miniswe_deepseek.jsonl.gz"
sessions = load_sessions(Path(trace))
train, test = split(sessions)
tok, _ = load_tokenizer(train, Path(".legato/spec"))
picked = sorted(test, key=lambda s: hashlib.sha256(s.session_id.encode()).hexdigest())[:nsess]
picked.sort(key=lambda s: s.session_id)
encoded = [encode_session(tok, s) for s in picked]
outs = [text for s in train for role, text in s.messages if role == "assistant"]
warm = [e.ids for e in tok.encode_batch(outs, add_special_tokens=False)]
for k in ks:
    t0 = time.time()
    cache = SuffixDecodingCache(max_tree_depth=24)
    rid = 0
    for out in warm:
        rid += 1
        cache.start_request(rid, [])
        cache.add_active_response(rid, out)
        cache.stop_request(rid)
    steps = total = accepted = drafted = 0
    for msgs in encoded:
        ctx = []
        for is_out, ids in msgs:
            if not is_out:
                ctx.extend(ids)
                continue
            rid += 1
            cache.start_request(rid, ctx)
            p = 0
            while p < len(ids):
                d = cache.speculate(
                    rid, ctx[-24:], max_spec_tokens=k, max_spec_factor=1.0, min_token_prob=0.1
                ).token_ids
                a = 0
                while a < len(d) and p + a < len(ids) and d[a] == ids[p + a]:
                    a += 1
                emit = min(a + 1, len(ids) - p)
                cache.add_active_response(rid, ids[p : p + emit])
                ctx.extend(ids[p : p + emit])
                steps += 1
                accepted += a
                drafted += len(d)
                p += emit
            total += len(ids)
            cache.stop_request(rid)
    print(
        json.dumps(
            {
                "drafter": "arctic-inference 0.3.0 SuffixDecodingCache",
                "k": k,
                "sessions": len(picked),
                "output_tokens": total,
                "tokens_per_step": round(total / steps, 4),
                "accepted_per_step": round(accepted / steps, 4),
                "drafted_per_step": round(drafted / steps, 3),
                "seconds": round(time.time() - t0, 1),
            }
        ),
        flush=True,
    )
