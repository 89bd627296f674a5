"""Markdown tables of the retrieval benchmarks (bench/recall_bench.py), rendered by report.render()."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from report import fmt_num, md_table  # report imports this module lazily, in render()

TARGET_ANN_QPS = 600.0  # ≥ 600 queries/s at 1M items, d≈300, recall@100 ≥ 0.95
TARGET_ANN_RECALL = 0.95
TARGET_EXACT_VS_NUMPY = 0.80  # exact batched ≥ 80% of the numpy sgemm rate


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _n(n: int) -> str:
    return f"{n // 1000:,}k" if n < 1_000_000 else f"{n / 1e6:g}M"


def _met(ok: Optional[bool]) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def _sorted(section: Dict[str, Dict]) -> List[Dict]:
    order = {"fm64": 0, "ffm4": 1}
    return [section[k] for k in sorted(section, key=lambda k: (order.get(k.split("-")[0], 9), k.split("-")[1:]))]


def _by_model_n(section: Dict[str, Dict]) -> List[Dict]:
    return sorted(section.values(), key=lambda r: (r.get("dim", 0), r.get("n_items", 0)))


def lines(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """The retrieval part of results.md: one function per section, in this order."""
    models = data.get("recall_models", {})
    if not models and not any(k.startswith("recall_") for k in data):
        return []
    out = ["## Retrieval on learned vectors (bench/recall_bench.py)", ""]
    out += _models(data)
    out += _exact(data)
    out += _exact_latency(data)
    out += _blas_sweep(data)
    for section, title, note in ANN_SECTIONS:
        out += _ann(data, section, title, note)
    out += _padding(data)
    out += _wait_policy(data)
    out += _split_builder(data)
    out += _memory(data)
    out += _lightfm(data)
    return out


ANN_SECTIONS = (
    (
        "recall_hnsw",
        'HNSW on L2-augmented vectors: `Recaller(index="hnsw", hnsw_m=32)`',
        "Build = `add_items` (item vectors + augmentation + HNSW insertion, efConstruction 80). The 1M-item "
        "indexes are built in a subprocess (its peak RSS is in the memory table) and loaded with "
        "`Recaller.load`. candidates = rows fetched from the index before exact re-scoring (the Recaller's "
        "default for k=100 is max(4k, 100) = 400); ef_search = HNSW's search breadth (default 128). faiss "
        "stops the graph walk after efSearch nodes, so the Recaller searches with max(ef_search, candidates): "
        "the default row walks 400 deep.",
    ),
    (
        "recall_hnsw_raw_ip",
        'HNSW on the raw inner product: `Recaller(index="HNSW32,Flat")`, the same index as `index="hnsw-ip"` (no augmentation)',
        "Same vectors, faiss `IndexHNSWFlat` with METRIC_INNER_PRODUCT, with the Recaller's efConstruction (80) "
        'and ef_search rule, like "hnsw". Inner product is not a metric, yet on these learned vectors '
        "(item norms within a factor of ~2 of the median) the raw-IP graph recalls more than the "
        "L2-augmented one at every search depth, and builds in half the time; the augmentation "
        "(all items pushed onto one sphere of radius 1.2·max‖p‖, the query far from all of them) "
        "matters when norms are heavy-tailed.",
    ),
    (
        "recall_ivf",
        'IVF: `Recaller(index="ivf")` (IndexIVFFlat, inner product, nlist = 4·√N)',
        "Build = k-means training (faiss: 10 iterations on up to `max_points_per_centroid`·nlist rows) + "
        "adding. At 1M items the training sample is cut to the shown points per centroid by monkeypatching "
        "`cp.max_points_per_centroid` (faiss's 256 means all 1M rows: minutes at d=301).",
    ),
)


def _models(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """The two trained models and how the catalogue and the queries were made."""
    out: List[str] = []
    models = data.get("recall_models", {})
    if models:
        rows = []
        for key in ("fm64", "ffm4"):
            r = models.get(key)
            if not r:
                continue
            s = r["sides"]
            rows.append(
                [
                    r["model"],
                    f"{len(s['user'])} user + {len(s['context'])} context × {len(s['item'])} item fields",
                    f"{r['train_rows']:,} × {r['epochs']} epochs ({r['seconds']:.0f} s)",
                    f"{r['valid_logloss']:.4f}",
                    f"{r['valid_auc']:.4f}",
                    str(r["dim"]),
                    f"{r['p_norm_median']:.2f} / {r['q_norm_median']:.2f}",
                ]
            )
        out += md_table(["model", "fields", "trained on", "valid logloss", "valid AUC", "d", "median ‖p‖ / ‖q‖"], rows)
        any_r = next(iter(models.values()))
        cat = any_r["catalogue"]
        out += [
            "",
            f"Trained on the synthetic Criteo-shaped rows above (floor logloss {any_r['floor_logloss']:.4f}, "
            f"base rate {any_r['base_rate_logloss']:.4f}). Item catalogue of up to {any_r['n_items_max']:,} items: "
            f"{min(cat['distinct_data_rows'], any_r['n_items_max']):,} distinct item-field rows of the training data "
            f"(shuffled; the smaller catalogue is a prefix), plus {cat['perturbed']:,} copies of them with 1-3 item "
            f"fields replaced by another id of that field. {any_r['queries']:,} queries = distinct query-field rows "
            f"of the validation data. q and p from `model.split(sides)`; all searches ask for k = 100 and recall@100 "
            f"is measured against exact search on the same vectors. Speed rows: best of the timed rounds; "
            f"*other load* = CPU share of other processes during the measurement (2-core machine).",
            "",
        ]
    return out


def _exact(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """Exact search (batched, per BLAS setting) and the numpy sgemm rate it is compared with."""
    out: List[str] = []
    models = data.get("recall_models", {})
    exact = data.get("recall_exact", {})
    if exact:
        out += ['### Exact search: `Recaller(index="exact")` (faiss IndexFlatIP), 1,000 queries, k=100', ""]
        rows = []
        setting_order = {"faiss-default": 0, "EXACT_BLAS": 1, "tuned": 2}
        for r in sorted(exact.values(), key=lambda r: (r["dim"], r["n_items"], setting_order.get(r["setting"], 9))):
            dflt = exact.get(f"{_key(models, r)}-{r['n_items']}-faiss-default")
            target = ""
            if r["setting"] == "tuned":
                target = f"≥ {TARGET_EXACT_VS_NUMPY:.0%} numpy" + _met(
                    r["ratio_vs_numpy_padded"] >= TARGET_EXACT_VS_NUMPY
                )
            b = r["blas"]
            rows.append(
                [
                    f"d={r['dim']} (→{r['index_dim']})",
                    _n(r["n_items"]),
                    r["setting"],
                    f"{b['distance_compute_blas_threshold']}/{b['distance_compute_blas_query_bs']}/{b['distance_compute_blas_database_bs']}",
                    fmt_num(r["qps"], "{:,.0f}"),
                    fmt_num(r["faiss_only_qps"], "{:,.0f}"),
                    fmt_num(r["numpy_qps_padded"], "{:,.0f}"),
                    _pct(r["ratio_vs_numpy_padded"]),
                    _pct(r["faiss_only_ratio_vs_numpy_padded"]),
                    fmt_num(r["qps"] / dflt["qps"], "{:.2f}×") if dflt else "–",
                    _pct(r.get("other_load")),
                    target,
                ]
            )
        out += md_table(
            [
                "vectors",
                "items",
                "BLAS setting",
                "threshold/query_bs/db_bs",
                "q/s Recaller",
                "q/s faiss only",
                "numpy sgemm q/s",
                "Recaller / numpy",
                "faiss / numpy",
                "vs faiss default",
                "other load",
                "target",
            ],
            rows,
        )
        numpy = data.get("recall_numpy", {})
        nt = next((r.get("numpy_threads") for r in numpy.values()), None)
        out += [
            "",
            "q/s Recaller = `Recaller.search(queries, 100)` end to end (query vectors from the rows, faiss, "
            "masking, top-k cut); faiss only = `index.search` on the same padded vectors with the same settings. "
            f"numpy sgemm = `Q @ P.T` (float32, numpy's OpenBLAS, {nt or '?'} threads; output chunked to ≤ 512 MB) at the "
            "index's (padded) dimension — the matrix product alone, without any top-k selection. BLAS setting "
            "*faiss-default* leaves faiss's globals alone, *EXACT_BLAS* is `fmrecall.recall.EXACT_BLAS` as shipped, "
            "*tuned* the values recommended below.",
            "",
        ]
        if numpy:
            rows = [
                [
                    f"d={r['dim']}",
                    _n(r["n_items"]),
                    fmt_num(r["numpy_qps_raw"], "{:,.0f}"),
                    fmt_num(r["gflops_raw"], "{:.0f}"),
                    f"{r['dim_padded']}",
                    fmt_num(r["numpy_qps_padded"], "{:,.0f}"),
                    fmt_num(r["gflops_padded"], "{:.0f}"),
                    _pct(r.get("other_load")),
                ]
                for r in _by_model_n(numpy)
            ]
            out += md_table(
                [
                    "vectors",
                    "items",
                    "numpy q/s (raw d)",
                    "GFLOP/s",
                    "padded d",
                    "numpy q/s (padded)",
                    "GFLOP/s",
                    "other load",
                ],
                rows,
            ) + [""]
    return out


def _exact_latency(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """Exact single-query latency."""
    out: List[str] = []
    lat = data.get("recall_exact_latency", {})
    if lat:
        out += ["#### Exact single-query latency (one query per `Recaller.search` call)", ""]
        order = {"faiss-default": 0, "tuned": 1}
        rows = [
            [
                f"d={r['dim']}",
                _n(r["n_items"]),
                r["setting"],
                fmt_num(r["p50_ms"]),
                fmt_num(r["p99_ms"]),
                str(r["n"]),
                fmt_num(r["faiss_only"]["p50_ms"]),
                fmt_num(r["faiss_only"]["p99_ms"]),
                _pct(r.get("other_load")),
            ]
            for r in sorted(lat.values(), key=lambda r: (r["dim"], r["n_items"], order.get(r["setting"], 9)))
        ]
        out += md_table(
            [
                "vectors",
                "items",
                "setting",
                "p50 ms",
                "p99 ms",
                "queries",
                "faiss-only p50 ms",
                "faiss-only p99 ms",
                "other load",
            ],
            rows,
        )
        out += [
            "",
            "p50 / p99 over up to 200 different queries (fewer when one takes long: a ~6 s budget). "
            "*faiss-only* = `index.search` of the same single query vector in the same process. "
            "Requests under 64 rows build their query vectors on one thread (train.h, `for_each_scored_row`), "
            "so a single request leaves no fmrecall OpenMP thread spinning while faiss scans.",
            "",
        ]
    return out


def _blas_sweep(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """faiss BLAS block sizes and the sequential-vs-BLAS crossover."""
    out: List[str] = []
    sweep = data.get("recall_blas_sweep", {})
    if sweep:
        out += ["### faiss BLAS settings sweep (IndexFlatIP on the padded vectors, 1,000 queries, k=100)", ""]
        for r in _by_model_n(sweep):
            qbs = sorted({b["query_bs"] for b in r["blocks"]})
            dbbs = sorted({b["database_bs"] for b in r["blocks"]})
            cell = {(b["query_bs"], b["database_bs"]): b["qps"] for b in r["blocks"]}
            out += [
                f"**d={r['dim']} (→{r['index_dim']}), {_n(r['n_items'])} items** — q/s by query_bs (rows) × "
                f"database_bs (columns), threshold 0, best of {r.get('rounds', '?')} interleaved rounds; faiss "
                f"defaults {r['faiss_default_qps']:,.0f} q/s, tuned {r['tuned_qps']:,.0f} q/s, numpy sgemm "
                f"{r['numpy_qps_padded']:,.0f} q/s; k=100 top-k by faiss's reservoir (default for k ≥ 100) "
                f"{fmt_num(r.get('reservoir_qps'), '{:,.0f}')} q/s vs heap {fmt_num(r.get('heap_qps'), '{:,.0f}')} q/s; "
                f"other load {_pct(r.get('other_load'))}",
                "",
            ]
            out += md_table(
                ["query_bs \\ database_bs"] + [f"{d:,}" for d in dbbs],
                [[f"{q:,}"] + [fmt_num(cell.get((q, d)), "{:,.0f}") for d in dbbs] for q in qbs],
            ) + [""]
            if r.get("crossover"):
                out += [
                    f"Sequential path vs BLAS by batch size (d={r['index_dim']}, {_n(r['n_items'])} items; the "
                    "threshold compares nq·d):",
                    "",
                ]
                out += md_table(
                    ["queries per call", "nq·d", "sequential q/s", "BLAS q/s", "BLAS / sequential"],
                    [
                        [
                            str(c["nq"]),
                            f"{c['nq'] * r['index_dim']:,}",
                            fmt_num(c["seq_qps"], "{:,.0f}"),
                            fmt_num(c["blas_qps"], "{:,.0f}"),
                            fmt_num(c["blas_over_seq"], "{:.2f}×"),
                        ]
                        for c in r["crossover"]
                    ],
                ) + [""]
    return out


def _ann(data: Dict[str, Dict[str, Any]], section: str, title: str, note: str) -> List[str]:
    """One ANN index: its sweep of search parameters (recall, q/s, latency) at every size."""
    out: List[str] = []
    sec = data.get(section, {})
    if not sec:
        return out
    out += [f"### {title}", ""]
    rows = []
    for r in _by_model_n(sec):
        for s in r["sweep"]:
            pt = s["point"]
            if section == "recall_ivf":
                params = [str(r["nlist"]), str(r["train_points_per_centroid"]), f"nprobe {pt}"]
            else:
                cand, ef = pt
                params = [str(cand) if cand else "400 (default)", f"{ef} (walk {max(ef, cand or 400)})"]
            target = ""
            if r["n_items"] >= 1_000_000 and r["dim"] >= 250:
                target = _met(s["qps"] >= TARGET_ANN_QPS and s["recall"] >= TARGET_ANN_RECALL)
            rows.append(
                [f"d={r['dim']} (→{r['index_dim']})", _n(r["n_items"]), fmt_num(r["build_seconds"], "{:.0f}")]
                + params
                + [
                    f"{s['recall']:.4f}",
                    fmt_num(s["qps"], "{:,.0f}"),
                    fmt_num(s["p50_ms"]),
                    fmt_num(s["p99_ms"]),
                    _pct(r.get("other_load")),
                    target,
                ]
            )
    head = ["vectors", "items", "build s"]
    head += ["nlist", "train pts/centroid", "probe"] if section == "recall_ivf" else ["candidates", "ef_search"]
    head += [
        "recall@100",
        "batched q/s",
        "1-query p50 ms",
        "p99 ms",
        "other load",
        f"≥ {TARGET_ANN_QPS:.0f} q/s & recall ≥ {TARGET_ANN_RECALL} (1M, d≈300)",
    ]
    out += md_table(head, rows) + ["", note, ""]
    return out


def _padding(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """pad=True vs pad=False."""
    out: List[str] = []
    pad = data.get("recall_padding", {})
    if pad:
        out += ["### Padding to a multiple of 16 floats (`pad=True`, the default) vs `pad=False`", ""]
        rows = []
        for r in sorted(pad.values(), key=lambda r: (r["dim"], r["index"], r["n_items"], not r["pad"])):
            other = next(
                (
                    o
                    for o in pad.values()
                    if o["dim"] == r["dim"]
                    and o["index"] == r["index"]
                    and o["n_items"] == r["n_items"]
                    and o["pad"] != r["pad"]
                ),
                None,
            )
            rows.append(
                [
                    f"d={r['dim']}",
                    r["index"],
                    "pad" if r["pad"] else "no pad",
                    str(r["index_dim"]),
                    _n(r["n_items"]),
                    fmt_num(r["qps"], "{:,.0f}"),
                    fmt_num(r["qps"] / other["qps"], "{:.2f}×") if other else "–",
                    fmt_num(r["p50_ms"]),
                    fmt_num(r["p99_ms"]),
                    f"{r['recall']:.4f}",
                    fmt_num(r["build_seconds"], "{:.1f}"),
                    _pct(r.get("other_load")),
                ]
            )
        out += md_table(
            [
                "vectors",
                "index",
                "padding",
                "index dim",
                "items",
                "batched q/s",
                "vs other",
                "1-query p50 ms",
                "p99 ms",
                "recall@100",
                "build s",
                "other load",
            ],
            rows,
        )
        out += [
            "",
            "Exact rows with the tuned BLAS settings; HNSW with the Recaller defaults (400 candidates). "
            "The HNSW dimension includes the augmentation coordinate (d+1).",
            "",
        ]
    return out


def _wait_policy(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """libgomp wait policy: single-query latency in a fresh process."""
    out: List[str] = []
    wp = data.get("recall_wait_policy", {})
    if wp:
        out += ["### OpenMP wait policy: single-query latency in a fresh process", ""]
        rows = []
        for r in sorted(
            wp.values(),
            key=lambda r: (r["dim"], r["index"], r.get("background", "idle") != "idle", r["policy"] != "default"),
        ):
            bg = r.get("background", "idle")
            other = next(
                (
                    o
                    for o in wp.values()
                    if o["dim"] == r["dim"]
                    and o["index"] == r["index"]
                    and o["policy"] != r["policy"]
                    and o.get("background", "idle") == bg
                ),
                None,
            )
            rows.append(
                [
                    f"d={r['dim']}",
                    r["index"],
                    _n(r["n_items"]),
                    "1 busy process" if bg == "busy" else "idle",
                    "libgomp default" if r["policy"] == "default" else f"OMP_WAIT_POLICY={r['policy']}",
                    fmt_num(r["p50_ms"], "{:.3f}"),
                    fmt_num(r["p99_ms"], "{:.3f}"),
                    fmt_num(r["mean_ms"], "{:.3f}"),
                    fmt_num(other["p50_ms"] / r["p50_ms"], "{:.2f}×") if other else "–",
                    fmt_num(r["batch_qps"], "{:,.0f}"),
                    _pct(r.get("other_load")),
                ]
            )
        out += md_table(
            [
                "vectors",
                "index",
                "items",
                "background",
                "OpenMP",
                "1-query p50 ms",
                "p99 ms",
                "mean ms",
                "other p50 / this p50",
                "batched q/s",
                "other load",
            ],
            rows,
        )
        out += [
            "",
            "`bench/recall_child.py --load`: the Recaller saved by the main process (exact with "
            "`EXACT_BLAS` as shipped; hnsw with its defaults), one query per `search` call. fmrecall's C++ core and "
            "faiss each bring their own libgomp; with the default policy the idle threads of one runtime spin "
            "while the other runtime's threads need the same 2 cores. *1 busy process*: a `while True: pass` "
            "Python process runs alongside (other load ≈ 50% means one of the 2 cores).",
            "",
        ]
    return out


def _split_builder(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """Split builder throughput and the GIL check."""
    out: List[str] = []
    sp = data.get("recall_split", {})
    if sp:
        out += ["### Split builder throughput (FFM k=4, 10 query × 20 item fields, d=801)", ""]
        rows = [
            [
                r["what"],
                str(r["threads"]),
                f"{r['rows']:,}",
                str(r["fields"]),
                fmt_num(r["seconds"], "{:.3f}"),
                fmt_num(r["rows_per_s"], "{:,.0f}"),
                fmt_num(r["mb_per_s"], "{:,.0f}"),
                _pct(r.get("other_load")),
            ]
            for r in sorted(sp.values(), key=lambda r: (r["what"], r["threads"]))
        ]
        out += md_table(
            ["builder", "threads", "rows", "fields per row", "seconds (min)", "rows/s", "output MiB/s", "other load"],
            rows,
        )
        g = data.get("recall_split_gil", {}).get("item_vectors-t1")
        if g:
            out += [
                "",
                f"GIL: `item_vectors` (1 thread, {g['rows']:,} rows) in a Python thread took "
                f"{g['builder_with_spinner_s']:.3f} s while another Python thread spun "
                f"({g['builder_alone_s']:.3f} s alone); the spinner did {g['spinner_during_per_s']:,.0f} "
                f"iterations/s during the call vs {g['spinner_alone_per_s']:,.0f} alone "
                f"({g['spinner_ratio']:.0%}): "
                + ("the GIL is released." if g["spinner_ratio"] > 0.3 else "the GIL is held (the spinner stalls).")
                + f" Other load {_pct(g.get('other_load'))}.",
            ]
        out += [""]
    return out


def _memory(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """Peak memory of a 1M-item Recaller."""
    out: List[str] = []
    mem = data.get("recall_memory", {})
    if mem:
        out += ["### Memory: a 1M-item Recaller in a fresh process", ""]
        rows = []
        for r in sorted(mem.values(), key=lambda r: r["index"]):
            label = r["index"] + (f" (add_items in {r['add_chunk']:,}-row slices)" if r.get("add_chunk") else "")
            rows.append(
                [
                    r["model"],
                    f"{r['n_items']:,}",
                    label,
                    str(r["index_dim"]),
                    fmt_num(r["rss_baseline_mb"], "{:,.0f}"),
                    fmt_num(r["hwm_built_mb"], "{:,.0f}"),
                    fmt_num(r["hwm_mb"], "{:,.0f}"),
                    fmt_num(r["recaller_peak_mb"], "{:,.0f}"),
                    fmt_num(r["rss_end_mb"] - r["rss_baseline_mb"], "{:,.0f}"),
                    fmt_num(r["vectors_mb"], "{:,.0f}"),
                    fmt_num(r["index_vectors_mb"], "{:,.0f}"),
                    fmt_num(r["build_seconds"], "{:.1f}"),
                ]
            )
        out += md_table(
            [
                "model",
                "items",
                "index",
                "index dim",
                "RSS before MiB",
                "peak after build MiB",
                "peak after 1,000-query search MiB",
                "peak − before MiB",
                "resident − before MiB",
                "exact vectors MiB",
                "vectors in index MiB",
                "build s",
            ],
            rows,
        )
        out += [
            "",
            "`bench/recall_child.py`: load the model and the 1M item rows (RSS before), `Recaller(...)"
            ".add_items(items, ids)`, one batched search; peak = VmHWM of that process. *Exact vectors* = the "
            "Recaller's own float32 copy kept for re-scoring (an exact Recaller reads faiss's storage instead: 0).",
            "",
        ]
    return out


def _lightfm(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """MovieLens-100K: LightFM vs fmrecall."""
    out: List[str] = []
    lf = data.get("recall_lightfm", {}).get("u1")
    if lf:
        out += ["### MovieLens-100K u1: LightFM WARP vs fmrecall (Recall@K, test users, train items excluded)", ""]
        rows = []
        for name, r in lf["fmrecall"].items():
            rows.append(
                [f"fmrecall: {name}", f"{r['recall@10']:.4f}", f"{r['recall@50']:.4f}", f"{r['recall@100']:.4f}", ""]
            )
        for name, r in lf["lightfm"].items():
            rows.append(
                [
                    name,
                    f"{r['recall@10']:.4f}",
                    f"{r['recall@50']:.4f}",
                    f"{r['recall@100']:.4f}",
                    f"{r['fit_seconds']:.1f}",
                ]
            )
        out += md_table(["system", "Recall@10", "Recall@50", "Recall@100", "fit s"], rows)
        out += [
            "",
            f"{lf['test_users']} test users of u1.test, relevant = their u1.test items, each user's u1.base items "
            "excluded, `fmrecall.metrics.recall_at_k` for all rows. fmrecall rows: `fmrecall.experiments.movielens.run(path, "
            'models=("FM",), cold=False)` (its baselines and the one FM model, exact Recaller). LightFM '
            f"{lf['lightfm_version']}: 64 components, WARP, learning rate 0.05, 30 epochs, 2 threads, all u1.base "
            "events as positives; the second row adds user demographics and item genres / decade as features.",
            "",
        ]
    return out


def _key(models: Dict, r: Dict) -> str:
    for k, m in models.items():
        if m.get("model") == r.get("model"):
            return k
    return "fm64" if r.get("dim", 0) < 100 else "ffm4"
