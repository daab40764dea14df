"""Writes the example notebooks (examples/NN_*.ipynb) from the cell lists below, without outputs.

The notebooks are generated so a change reads as a plain diff of this file; run
`python examples/_build_notebooks.py` after editing it and commit both. tests/examples/test_notebooks.py
checks that the committed .ipynb files match what this script writes, then executes them.

Every notebook starts with a settings cell: PROXYLAB_NOTEBOOK_SMALL=1 (the test suite) shrinks the sizes so
all four run in a few minutes on two cores; PROXYLAB_NOTEBOOK_OUT names the folder for pictures and
working files (default examples/notebook_out/<notebook>/).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
Cell = Tuple[str, str]  # ("md" | "code", source)


def _settings(name: str, sizes: str) -> Cell:
    return ("code", f'''# Settings. PROXYLAB_NOTEBOOK_SMALL=1 (the test suite) shrinks every size so the notebook runs in
# about a minute; leave it unset for the real thing (a few minutes on a laptop CPU).
import os
from pathlib import Path

import torch

SMALL = os.environ.get("PROXYLAB_NOTEBOOK_SMALL") == "1"
OUT = Path(os.environ.get("PROXYLAB_NOTEBOOK_OUT") or Path("notebook_out") / "{name}")
OUT.mkdir(parents=True, exist_ok=True)  # pictures and working files of this notebook
if SMALL:
    torch.set_num_threads(1)  # CI shares two cores among many jobs; one thread each is fastest there
SEED = 0
{sizes}''')


SHOW = '''from IPython.display import Image, display


def show(path):
    """Display a picture file written by proxylab.plots (what you see is the file on disk)."""
    display(Image(filename=str(path)))
    print(path)'''

NB01: List[Cell] = [
    ("md", """# 01 · Search a proxy on a shipped table

A *proxy* is a small formula over a network's per-layer statistics that predicts, without any training, how
accurate the network will be when each layer is quantized to a given bit-width. A *bench table* holds the real
accuracies of many quantized configurations of one network, so a proxy can be scored by how well its ranking
of the configurations matches the measured one (Spearman's ρ).

This notebook: load a shipped table, compute the network's statistics, evolve a proxy (EMQ-style), look at the
search history, at the found proxy's scores against accuracy on held-out configurations, and at the known proxies
from the literature side by side. The same steps on the command line:

```
proxylab bench show resnet20-mnist5k
proxylab search --bench resnet20-mnist5k --space emq --pop 50 --iters 300 --out runs/my-search
proxylab proxy eval --bench resnet20-mnist5k --all-known --plot known.png
```"""),
    _settings("01_search_a_proxy", '''TABLE = "resnet20-mnist5k"
POP, ITERS = (8, 12) if SMALL else (50, 300)
# The Hessian statistics (used by the HAWQ proxies) take about a minute; the small run leaves them out and
# those proxies are reported as not computable rather than silently dropped.
HESSIAN = not SMALL
'''),
    ("code", SHOW),
    ("md", """## The table

Each row is one bit configuration (a bit-width per layer) with its measured test accuracy, size and BitOps. The rows
are split into `search` (the search fits on it), `select` (picks the search's answer) and `test` (only for reporting).
The *noise ceiling* is the Spearman correlation between accuracies measured on two halves of the test images: no proxy
can rank the configurations more consistently than the measurement repeats itself."""),
    ("code", '''from proxylab import load_table

table = load_table(TABLE)
print(f"{table.name}: {len(table)} configurations of {len(table.layer_names)} layers, bits {table.bit_choices}")
print({split: len(table.split(split)) for split in ("search", "select", "test")})
print(f"accuracy {table.acc.min():.3f} .. {table.acc.max():.3f}, noise ceiling {table.noise_ceiling:.3f}")
print("first row:", next(iter(table)))'''),
    ("md", "## Statistics of the reference network (computed once, then cached on disk)"),
    ("code", '''from proxylab import stats_for_table

stats = stats_for_table(table, hessian=HESSIAN)
print(len(stats.layer_names), "layers;", "first:", stats.layer_names[:3])'''),
    ("md", """## Evolve a proxy

Fitness = Spearman's ρ on the search split. The run's answer is the hall-of-fame member with the best ρ on the
select split, so the test split stays unseen until the report."""),
    ("code", '''from proxylab import ProxySearch

search = ProxySearch(space="emq", pop=POP, iters=ITERS, seed=SEED).fit([table], [stats])
best = search.hall_of_fame_[0]
print("best proxy:", search.best_formula_)
print(f"search-split ρ {best['search_fitness']:.3f}, select-split ρ {best['select_fitness']:.3f}")'''),
    ("code", '''from proxylab import plots

fig = plots.search_history(search, OUT / "01_search_history.png", title=f"proxy search on {TABLE}")
show(OUT / "01_search_history.png")'''),
    ("md", """**Caption:** best and mean fitness of the population per iteration (search split); the dotted line is the
chosen proxy's ρ on the select split."""),
    ("md", "## The found proxy on the test split"),
    ("code", '''from proxylab.proxy.report import scores_on_table

test = table.split("test")
found = scores_on_table(search.best_proxy_, table, stats, "test")
plots.proxy_scatter({"searched: " + search.best_formula_: found}, table.acc[test], OUT / "01_searched_proxy.png",
                    title=f"{TABLE}, test split", noise_ceiling=table.subset(test).noise_ceiling)
show(OUT / "01_searched_proxy.png")'''),
    ("md", """**Caption:** one point per held-out configuration: the searched proxy's score (x) against the measured
accuracy (y); the legend gives Spearman's ρ and the noise ceiling."""),
    ("md", "## The known proxies, side by side"),
    ("code", '''from proxylab import KNOWN_PROXIES
from proxylab.cli import render_table
from proxylab.proxy.report import evaluate_many

known = [KNOWN_PROXIES.get(name) for name in KNOWN_PROXIES.names()]
rows = evaluate_many(known, table, stats, "test")
print(render_table([{k: r[k] for k in ("proxy", "spearman", "kendall", "spearman_top20", "valid")} for r in rows]))
for r in rows:
    if not r["valid"]:
        print(f"{r['proxy']}: not computable here: {r['reason'][:100]}")'''),
    ("code", '''panels = {r["proxy"]: scores_on_table(p, table, stats, "test") for p, r in zip(known, rows) if r["valid"]}
plots.proxy_scatter(panels, table.acc[test], OUT / "01_known_proxies.png", ncols=4,
                    title=f"known proxies on {TABLE}, test split")
show(OUT / "01_known_proxies.png")'''),
    ("md", """**Caption:** each panel is one known proxy's score against measured accuracy on the same held-out
configurations, with its Spearman ρ in the legend. Compare their ρ with the searched proxy's above."""),
]

NB02: List[Cell] = [
    ("md", """# 02 · Your own network: bench, search, allocate, quantize

From a network to a mixed-precision model under a size budget:

1. **bench**: train a timm network (ResNet-18 from `timm`, narrowed) on an offline data set and measure the
   accuracy of many quantized bit configurations: your own bench table;
2. **search**: evolve a proxy on that table;
3. **allocate**: choose per-layer bit-widths under size budgets with the proxy (an exact ILP for decomposable
   proxies) and with the baseline allocators;
4. **quantize**: apply each allocation and measure its real accuracy; plot size against accuracy (Pareto).

Command line equivalents:

```
proxylab bench build --net resnet18 --net-arg width=0.25 --data digits --n 300 --epochs 6 --out runs/r18-digits
proxylab search --bench runs/r18-digits --pop 30 --iters 100 --select-by allocation --out runs/r18-search
proxylab allocate --bench runs/r18-digits --allocator all --proxy "FORMULA" --budget size_mb=0.25 --measure
proxylab quantize --bench runs/r18-digits --bits "4 4 3 ..."
```"""),
    _settings("02_your_own_network", '''NET, NET_KWARGS, DATA = "resnet18", {"width": 0.25}, "digits"
EPOCHS, N_CONFIGS = (2, 40) if SMALL else (6, 300)
POP, ITERS = (8, 10) if SMALL else (30, 100)
BUDGET_FRACTIONS = (0.2, 0.5, 0.8) if SMALL else (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)
ALLOCATORS = ["proxylab", "uniform", "bparams", "random"] + ([] if SMALL else ["ompq"])
'''),
    ("code", SHOW),
    ("md", """## 1 · Build a bench table

`build_table` trains the network, then quantizes it at the uniform configurations and `N_CONFIGS` sampled ones and
measures each on the test images (weights round-to-nearest per channel, activations 8 bit). The folder is resumable:
rerunning the cell reopens the finished table."""),
    ("code", '''from proxylab.bench.builder import BuildSettings, build_table
from proxylab.nets import create_net

print(type(create_net(NET, num_classes=10, in_channels=1, image_size=8, **NET_KWARGS)).__module__)  # timm's
settings = BuildSettings(net=NET, data=DATA, net_kwargs=NET_KWARGS, epochs=EPOCHS, n=N_CONFIGS, seed=SEED,
                         name=f"{NET}-{DATA}")
table = build_table(OUT / "table", settings, progress=False)
print(f"{len(table)} configurations, float accuracy {table.meta['float_acc']:.3f}, "
      f"quantized {table.acc.min():.3f} .. {table.acc.max():.3f}, noise ceiling {table.noise_ceiling:.3f}")'''),
    ("md", """## 2 · Search a proxy on your table

`select_by="allocation"`: the search's hall of fame and the known proxies each allocate bits at five size budgets,
each allocation is quantized and measured on the data set's *calib* images (never the test images), and the proxy
whose allocations are the most accurate is the answer; a known proxy wins only when it allocates strictly better."""),
    ("code", '''from proxylab import ProxySearch, stats_for_table

stats = stats_for_table(table, hessian=False)
search = ProxySearch(space="emq", pop=POP, iters=ITERS, seed=SEED, select_by="allocation").fit([table], [stats])
proxy = search.best_proxy_
print("best proxy:", search.best_formula_, f"({search.best_origin_})", "| decomposable:", proxy.decomposable)
print(f"select-split ρ {search.best_row_['select_fitness']:.3f}, calib accuracy of its allocations "
      f"{search.best_row_['alloc_acc']:.3f}")'''),
    ("md", """## 3 · Allocate bits under size budgets

Budgets run from near all-2-bit to near all-4-bit size. Every allocator answers every budget."""),
    ("code", '''from proxylab.allocate import AllocationProblem, budget_between, run_allocator

problem = AllocationProblem.from_stats(stats, table.bit_choices, act_bits=8)
answers = []
for fraction in BUDGET_FRACTIONS:
    budget = budget_between(problem, fraction)
    for name in ALLOCATORS:
        res = run_allocator(name, problem, budget, proxy=proxy, seed=SEED)
        answers.append({"allocator": name, "budget_mb": budget.size_mb, "size_mb": res.size_mb, "bits": list(res.bits)})
print(len(answers), "allocations; e.g.", answers[0])'''),
    ("md", """## 4 · Quantize each allocation and measure it

The same post-training quantization as the table (same protocol, calibration images and test images)."""),
    ("code", '''from proxylab import QuantizedNetwork
from proxylab.cli import render_table

model, dataset, _ = table.load_network()
protocol = (table.meta.get("protocol") or {}).get("name", "rtn")
qn = QuantizedNetwork(model, dataset.calib.x, bit_choices=table.bit_choices, act_bits=8, protocol=protocol)
for a in answers:
    qn.apply(a["bits"])
    a["acc"] = qn.evaluate(dataset.test.x, dataset.test.y)
print(render_table([{k: a[k] for k in ("allocator", "budget_mb", "size_mb", "acc")} for a in answers]))'''),
    ("code", '''from proxylab import plots

plots.pareto(answers, OUT / "02_pareto.png", background=(table.size_mb, table.acc),
             title=f"{NET} on {DATA}: allocations under {len(BUDGET_FRACTIONS)} size budgets")
show(OUT / "02_pareto.png")'''),
    ("md", """**Caption:** model size (x) against measured test accuracy (y) of every allocation, one marker per
allocator, over the grey cloud of the table's sampled configurations; the black steps join the allocations that no
other allocation beats on both size and accuracy (the Pareto front)."""),
    ("code", '''from proxylab.proxy.report import scores_on_table

test = table.split("test")
plots.proxy_scatter({search.best_formula_: scores_on_table(proxy, table, stats, "test")}, table.acc[test],
                    OUT / "02_searched_proxy.png", title=f"searched proxy on {table.name}, test split",
                    noise_ceiling=table.subset(test).noise_ceiling)
show(OUT / "02_searched_proxy.png")'''),
    ("md", """**Caption:** the proxy found on your table, its score against measured accuracy on the held-out
configurations, with Spearman's ρ and the noise ceiling in the legend."""),
]

NB03: List[Cell] = [
    ("md", """# 03 · Model retrieval: which zoo model suits my task?

Each model of a zoo is seen only as a black box (images in, class probabilities out). Its *signature* (anchor images
per class and samples near its decision boundaries, found by querying it) is turned into a *model vector*; a few
labelled images of your task become a *query vector* in the same space; a FAISS index returns the models whose vectors
are closest. No zoo model runs at query time, unless you ask for a re-rank of the top few (LEEP on your images).

This notebook builds a tiny zoo, queries it with images of a task some models were trained on (*same task*: did the
index find them?) and of a task none was trained on (*new task*: how good is what it found?), and compares what
the index returns with the ground truth: each model's accuracy on the query task after a linear probe (a
white-box oracle that the retrieval itself never uses). Command line:

```
proxylab zoo build --out runs/zoo --n-models 20 --seed 1
proxylab zoo query --index runs/zoo/index --images my_samples.npz --k 5
proxylab zoo eval --zoo runs/zoo
```"""),
    _settings("03_model_retrieval", """# The shipped encoders were trained on the zoo of seed 0: a zoo of seed 1 holds models they never saw.
ZOO_SEED = 1
N_MODELS = 4 if SMALL else 20
SHOTS = 10          # labelled images per class in a query
RERANK_K = 3 if SMALL else 5
NEW_TASK = "mnist5k-odd"  # odd digits: straddles the mnist5k-lo / -hi tasks the zoo's models learnt
"""),
    ("code", SHOW),
    ("md", """## A tiny zoo

`build_zoo` trains each model briefly on a source task (a class subset of an offline data set), captures its
signature through black-box calls only, and adds its vector to the zoo's index. Resumable: a rerun reopens it."""),
    ("code", '''from proxylab.cli import render_table
from proxylab.retrieval.zoo import build_zoo, load_zoo

zoo = load_zoo(build_zoo(OUT / "zoo", n_models=N_MODELS, seed=ZOO_SEED, progress=False))
print(render_table([{k: r[k] for k in ("id", "name", "task", "arch", "params", "test_acc")} for r in zoo.manifest]))
index = zoo.index
sig = zoo.signature(zoo.ids[0])
print(f"{len(index)} models indexed, vectors of dim {index.dim}; model 0's signature: {sig.anchors.shape[0]} anchors, "
      f"{sig.boundary.shape[0]} boundary samples, {sig.calls} model calls")'''),
    ("md", "## Two queries: a task the zoo knows, and a new one"),
    ("code", '''from proxylab.retrieval.encoders import Encoders
from proxylab.retrieval.tasks import QuerySpec

encoders = Encoders.default()
queries = {"same_task": QuerySpec(zoo.manifest[0]["task"], SHOTS, seed=SEED),
           "new_task": QuerySpec(NEW_TASK, SHOTS, seed=SEED)}
found = {}
for kind, spec in queries.items():
    (images, labels), _ = spec.load()  # few-shot support images; the scoring images stay for the oracle
    hits = index.search(encoders.encode_query(images, labels.numpy()), k=len(index))
    found[kind] = (images, labels.numpy(), hits)
    print(f"{kind}: query task {spec.task}, {len(labels)} images")
    print(render_table([{"rank": r + 1, "id": h.id, "name": h.metadata["name"], "task": h.metadata["task"],
                         "score": h.score} for r, h in enumerate(hits)]))
same_top = found["same_task"][2][0].metadata["task"]
print("same-task query: top model trained on the query's task?", same_top == queries["same_task"].task)'''),
    ("md", """## Ground truth and re-ranking

The oracle fits a linear probe on each model's penultimate features with the query's support images and scores
it on held-out images of the query task. The re-rank runs only the index's top `RERANK_K` models on the support
images (LEEP on their probabilities) and reports the model calls it spent. The zoo's models are local torch
networks, so they can also give their features (the input of their classifier layer): LogME on those is a
*gray-box* re-rank, for models whose features you can read, and it reads the very features the oracle probes."""),
    ("code", '''from proxylab import metrics, plots
from proxylab.retrieval.oracle import compute_oracle
from proxylab.retrieval.rerank import rerank

truth = {}
for row in compute_oracle(zoo.path, list(queries.values()), model_ids=zoo.ids, progress=False):
    truth.setdefault(row["query"], {})[row["model_id"]] = row["probe_acc"]

for kind, spec in queries.items():
    images, labels, hits = found[kind]
    acc = truth[spec.key]
    rest = [h.id for h in hits[RERANK_K:]]
    reranked, calls = rerank(hits[:RERANK_K], zoo.blackbox, images, labels, method="leep")
    gray, gray_calls = rerank(hits[:RERANK_K], zoo.blackbox, images, labels, method="logme")
    rankings = {"index": [h.id for h in hits],
                f"index + LEEP@{RERANK_K} ({calls} calls)": [h.id for h in reranked] + rest,
                f"index + LogME@{RERANK_K}, gray-box ({gray_calls} calls)": [h.id for h in gray] + rest,
                "largest model": sorted(acc, key=lambda i: (-zoo.get(i)["params"], i))}
    lo, hi = min(acc.values()), max(acc.values())
    gains = {i: (a - lo) / (hi - lo) if hi > lo else 1.0 for i, a in acc.items()}
    summary = [{"method": name.split(" (")[0], "1 - regret": 1 - metrics.regret(ids, acc),
                "ndcg@3": metrics.ndcg_at_k(ids, gains, 3)} for name, ids in rankings.items()]
    print(kind, render_table(summary), sep="\\n")
    plots.rank_chart(rankings, acc, OUT / f"03_rank_chart_{kind}.png", metrics=summary,
                     title=f"{kind.replace('_', ' ')} query ({spec.task}): retrieved vs oracle")
    show(OUT / f"03_rank_chart_{kind}.png")'''),
    ("md", """**Caption:** left, the oracle accuracy on the query task (y) of the model each method puts at each rank (x),
against the ideal order (dashed: every model sorted by oracle accuracy); the legend gives regret@1 (best accuracy
minus the top model's). Right, 1 - regret and NDCG@3 per method (higher is better)."""),
    ("md", """## The shipped zoo index

proxylab ships the index of a larger zoo (vectors and metadata, no weights): `proxylab zoo query` and
`proxylab serve` use it by default. Any query vector can be searched in it, here the same-task query's."""),
    ("code", '''import shutil

from proxylab.commands.serve import shipped_index_dir
from proxylab.retrieval.index import ModelIndex

if shipped_index_dir().is_dir():
    copy = OUT / "shipped_index"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(shipped_index_dir(), copy)  # a copy: opening an index may write beside it
    shipped = ModelIndex.open(str(copy))
    q = encoders.encode_query(found["same_task"][0], found["same_task"][1])
    print(f"shipped index: {len(shipped)} models; top 5 for a {queries['same_task'].task} query:")
    print(render_table([{"rank": r + 1, "name": h.metadata["name"], "task": h.metadata["task"], "score": h.score}
                        for r, h in enumerate(shipped.search(q, k=5))]))
else:
    print("this installation ships no zoo index")'''),
]

NB04: List[Cell] = [
    ("md", """# 04 · The query service

How a team shares a zoo: `proxylab serve` runs an HTTP service over a model index. Owners register their models
without handing them over: either a *signature* captured on their side from the black-box model, or the URL of a
model server that the service probes itself. Anyone can then query with a few labelled images. Writes need a token.

```
proxylab serve --index runs/service_index --port 8000 --tokens tokens.txt
proxylab zoo signature --net my_model.py:make --weights w.pt --out my_model.npz
proxylab zoo query --server http://127.0.0.1:8000 --images my_samples.npz --k 5
```"""),
    _settings("04_query_service", """N_MODELS = 2   # "your" models, trained here in seconds
SHOTS = 10
K = 5
MY_SEED = 7   # another zoo seed than the shipped zoo's, so these are models the index has never seen
"""),
    ("code", SHOW),
    ("md", "## Start the service (a subprocess on a free port, serving a fresh copy of the shipped zoo index)"),
    ("code", '''import atexit
import secrets
import shutil
import socket
import subprocess
import sys
import time

from proxylab.commands.serve import shipped_index_dir
from proxylab.errors import ProxylabError
from proxylab.service import Client

index_dir = OUT / "service_index"
shutil.rmtree(index_dir, ignore_errors=True)  # every run starts from the shipped zoo
if shipped_index_dir().is_dir():
    shutil.copytree(shipped_index_dir(), index_dir)
TOKEN = secrets.token_hex(16)
(OUT / "tokens.txt").write_text(f"{TOKEN} write\\n")
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
URL = f"http://127.0.0.1:{PORT}"
log = open(OUT / "service.log", "w")
server = subprocess.Popen([sys.executable, "-m", "proxylab.cli", "serve", "--index", str(index_dir), "--port",
                           str(PORT), "--tokens", str(OUT / "tokens.txt"), "--log-level", "warning"],
                          stdout=log, stderr=subprocess.STDOUT)
atexit.register(server.terminate)  # never leave the service running when the kernel stops
client = Client(URL, token=TOKEN)
for _ in range(240):
    try:
        print(client.health())
        break
    except ProxylabError:
        if server.poll() is not None:
            raise RuntimeError("the service stopped:\\n" + (OUT / "service.log").read_text())
        time.sleep(0.5)
else:
    raise RuntimeError("the service did not answer within 2 minutes")'''),
    ("code", '''from proxylab.cli import render_table

page = client.list(limit=5)
print(page["total"], "models served; the first few:")
print(render_table([{k: m.get(k) for k in ("id", "name", "task", "arch", "params")} for m in page["models"]]))'''),
    ("md", """## Register your models

Two small models stand in for yours. The first is registered by its signature, captured here through black-box
calls (the model never leaves this notebook); the second is served over HTTP as a black box and registered by URL:
the service captures its signature itself."""),
    ("code", '''from proxylab.retrieval.model_server import serve_model
from proxylab.retrieval.signature import capture_signature
from proxylab.retrieval.zoo import build_zoo, load_zoo

mine = load_zoo(build_zoo(OUT / "my_models", n_models=N_MODELS, seed=MY_SEED, progress=False,
                          signatures=False, index=False))


def metadata(row):
    return {"name": "mine-" + row["name"], "task": row["task"], "family": row["family"], "arch": row["arch"],
            "params": row["params"], "num_classes": row["num_classes"]}


first, second = mine.manifest[0], mine.manifest[1]
sig = capture_signature(mine.blackbox(first["id"]), seed=SEED)
registered = [client.register_signature(sig, metadata(first))]
print(f"signature of {first['name']}: {sig.calls} model calls; registered as", registered[0])

model_server = serve_model(mine.module(second["id"]))  # your model server (here in a thread of this kernel)
atexit.register(model_server.shutdown)
registered.append(client.register_url(model_server.url, metadata(second)))
print(f"{second['name']} served at {model_server.url}; registered as", registered[1])
MY_IDS = [r["id"] for r in registered]'''),
    ("md", "## Query with a few labelled images of your task"),
    ("code", '''from proxylab import plots
from proxylab.retrieval.tasks import get_task

task = get_task(first["task"])
images, labels = task.sample("test", SHOTS, seed=SEED)
answer = client.query(images.numpy(), labels.numpy(), k=K)
print(f"query: {len(labels)} images of {task.name}; answered in {answer['timing_ms']['total']:.0f} ms")
print(render_table([{"rank": r["rank"], "id": r["id"], "name": r["metadata"]["name"], "task": r["metadata"]["task"],
                     "score": r["score"]} for r in answer["results"]]))
plots.query_results(answer["results"], OUT / "04_query_results.png", highlight=MY_IDS,
                    title=f"service answer for {SHOTS} images per class of {task.name}")
show(OUT / "04_query_results.png")'''),
    ("md", """**Caption:** the models the service returned for the query, best first, with their retrieval score;
models registered in this notebook would be highlighted (whether they make the top K depends on the zoo)."""),
    ("md", """Metadata filters are applied inside the index search: here only models of the query's task, all of them
ranked, so you see where the model registered above stands among the zoo's models of that task."""),
    ("code", '''same_task = client.list(filters={"task": task.name}, limit=1)["total"]
filtered = client.query(images.numpy(), labels.numpy(), k=same_task, filters={"task": task.name})
mine_rank = [r["rank"] for r in filtered["results"] if r["id"] == MY_IDS[0]]
print(f"{same_task} models of task {task.name}; {first['name']} (registered here) ranks {mine_rank}")
plots.query_results(filtered["results"], OUT / "04_query_filtered.png", highlight=MY_IDS,
                    title=f"the same query, filtered to task {task.name}")
show(OUT / "04_query_filtered.png")'''),
    ("md", """**Caption:** the same query restricted by a metadata filter to models trained on the query's task; the
model registered in this notebook is highlighted in orange."""),
    ("md", "## Delete, and stop"),
    ("code", '''from proxylab.service import ServiceError

before = client.list()["total"]
print(client.delete(MY_IDS[1]))
try:
    client.get(MY_IDS[1])
except ServiceError as e:
    print("get after delete:", e.status, e.server_message)
else:
    raise RuntimeError(f"model {MY_IDS[1]} is still served after its deletion")
print("models served:", before, "->", client.list()["total"])
client.close()
model_server.shutdown()
server.terminate()
print("service stopped with code", server.wait(timeout=30))'''),
]

NOTEBOOKS: Dict[str, List[Cell]] = {
    "01_search_a_proxy": NB01,
    "02_your_own_network": NB02,
    "03_model_retrieval": NB03,
    "04_query_service": NB04,
}


def build(name: str, cells: List[Cell]):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids keep the files byte for byte reproducible
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    import nbformat

    return nbformat.writes(build(name, NOTEBOOKS[name])) + "\n"


def main(argv=None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        print(f"unknown notebook(s) {', '.join(unknown)}; known: {', '.join(NOTEBOOKS)}", file=sys.stderr)
        return 2
    for name in names:
        (HERE / f"{name}.ipynb").write_text(render(name))
        print(f"wrote examples/{name}.ipynb")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
